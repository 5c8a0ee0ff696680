"""`vqa adapter`: check a LoRA adapter before deploying it (will vLLM load all of it?), convert old ones,
and put adapters live on a running service through its admin API (load, unload, canary route, list)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("adapter", help="check a LoRA adapter for vLLM, or convert an older one")
    adapter_sub = p.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)
    c = adapter_sub.add_parser(
        "check", help="will vLLM load this adapter and apply every part of it?",
        description="Reads adapter_config.json and the weight names (no model load). Exit code 0: vLLM "
                    "loads it and applies every part (with the serve flags printed); 1: it would refuse it "
                    "or ignore a part. Example: vqa adapter check shop-toy-sunglasses --for vllm")
    c.add_argument("path", help="adapter directory or bundled adapter name")
    c.add_argument("--for", dest="target", choices=["vllm"], default="vllm", help="the server (vllm)")
    c.add_argument("--vllm-args", metavar="ARGS",
                   help="the `vllm serve` arguments you deploy with, e.g. "
                        "--vllm-args=\"--enable-lora --max-lora-rank 16\": missing flags become problems "
                        "(default: print the flags the adapter needs)")
    c.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    c.set_defaults(func=run_check)
    v = adapter_sub.add_parser(
        "convert", help="rewrite an older adapter's trainable-token rows as LoRA (the form vLLM serves)",
        description="Adapters from before vqaserve stored new-word rows as LoRA kept them as PEFT trainable "
                    "tokens, which vLLM refuses. The rows become LoRA on embed_tokens and lm_head; answers "
                    "stay the same (up to float rounding).")
    v.add_argument("path", help="adapter directory or bundled adapter name")
    v.add_argument("--model", required=True, help="the base model directory (or bundled name) it was trained on")
    v.add_argument("--out", required=True, help="directory for the converted adapter")
    v.set_defaults(func=run_convert)
    from vqaserve.cli import adapter_live

    adapter_live.register(adapter_sub)


def run_check(args: argparse.Namespace) -> int:
    from vqaserve.settings import resolve_model_path
    from vqaserve.train.adapter_format import VLLM, check_vllm

    path = resolve_model_path(args.path)
    verdict = check_vllm(path, args.vllm_args.split() if args.vllm_args is not None else None)
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
        return 0 if verdict.ok else 1
    for finding in verdict.findings:
        print(finding.line())
    if verdict.ok:
        print(f"{args.path}: {VLLM} loads it and applies every part, served with:\n"
              f"  vllm serve BASE_MODEL {' '.join(verdict.serve_flags())} --lora-modules NAME={path}")
        return 0
    problems = sum(f.level == "problem" for f in verdict.findings)
    print(f"{args.path}: {VLLM} would refuse it or ignore part of it ({problems} problem(s) above)",
          file=sys.stderr)
    return 1


def run_convert(args: argparse.Namespace) -> int:
    from vqaserve.settings import resolve_model_path
    from vqaserve.train.adapter_format import check_vllm, convert

    rows = convert(resolve_model_path(args.path), resolve_model_path(args.model), args.out)
    verdict = check_vllm(args.out)
    print(f"wrote {args.out}: {rows} new-word rows as LoRA on embed_tokens and lm_head; "
          f"vLLM flags: {' '.join(verdict.serve_flags())}", file=sys.stderr)
    return 0
