"""`vqa doctor`: versions, devices, the engine's placement and the peak memory of the asked workload."""

from __future__ import annotations

import argparse

from vqaserve.errors import InvalidRequest


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("doctor", help="check this machine can serve the model (and how to fix it)",
                       description="Print versions, devices, the placement the engine would choose (and "
                                   "why) and the peak memory of serving the model (or of a LoRA training "
                                   "step, --train) against the memory that is free, with a fix per problem.")
    p.add_argument("--model", help="model dir, hub id or bundled name (default: VQA_MODEL or shop-toy)")
    p.add_argument("--json", action="store_true", help="print one JSON object (forecast terms in bytes)")
    p.add_argument("--batch-size", type=int,
                   help="requests answered at once (default VQA_BATCH_MAX_SIZE; `vqa ask` is 1) or, with "
                        "--train, examples per step (default 16, as vqa train)")
    p.add_argument("--max-pixels", type=int, help="pixels per picture (default: the pixel budget)")
    p.add_argument("--max-new-tokens", type=int, help="answer tokens per request (default VQA_MAX_NEW_TOKENS)")
    t = p.add_argument_group("training (--train: forecast one `vqa train --lora` step instead)")
    t.add_argument("--train", action="store_true")
    t.add_argument("--lora-r", type=int, default=8)
    t.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--load-in-4bit", action="store_true", help="4-bit base weights (QLoRA; CUDA only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqaserve.doctor import Workload, diagnose, render, to_json
    from vqaserve.settings import load_settings

    for flag in ("batch_size", "max_pixels", "max_new_tokens", "lora_r"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InvalidRequest(f"--{flag.replace('_', '-')} must be at least 1")
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    work = Workload(batch_size=args.batch_size, max_pixels=args.max_pixels, max_new_tokens=args.max_new_tokens,
                    train=args.train, lora_r=args.lora_r, lora_targets=targets,
                    gradient_checkpointing=args.gradient_checkpointing, load_in_4bit=args.load_in_4bit)
    report = diagnose(load_settings(model=args.model), work)
    print(to_json(report) if args.json else render(report))
    return 0 if report.ok else 1
