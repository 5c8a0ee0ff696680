"""`vqa bench SCENARIO`: figures against the performance targets (the scenarios: bench/registry.py).

Against a running server (`--url`) or servers it starts itself (`vqa serve` subprocesses with the
settings each comparison needs), in process where a scenario measures a part alone, and against a
real vLLM it starts (or `--upstream-url`). Prints a table and writes a JSON record per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vqaserve.bench.registry import SCENARIOS
from vqaserve.errors import InvalidRequest

if TYPE_CHECKING:
    from vqaserve.bench.config import BenchConfig


def register(sub: argparse._SubParsersAction) -> None:
    listing = "; ".join(f"{s.name}: {s.what}" for s in SCENARIOS.values())
    p = sub.add_parser("bench", help="measure the service's figures against its performance targets",
                       description=f"Benchmark the service. Scenarios: {listing}. `all` runs "
                                   f"{', '.join(s.name for s in SCENARIOS.values() if s.in_all)}.")
    p.add_argument("scenario", choices=[*SCENARIOS, "all"], metavar="SCENARIO",
                   help=f"one of {', '.join(SCENARIOS)}, or all")
    p.add_argument("--url", help="a running server (default: start servers on free loopback ports)")
    p.add_argument("--pid", type=int, help="the --url server's process id (soak reads its RSS)")
    p.add_argument("--api-key", help="bearer key for a server started with VQA_API_KEYS")
    p.add_argument("--model", help="model for started servers and the in-process engine")
    p.add_argument("--env", action="append", default=[], metavar="VQA_NAME=VALUE",
                   help="setting for the servers the benchmark starts and its in-process parts (repeatable)")
    p.add_argument("--requests", type=int, help="requests per measurement, or pictures (each scenario's "
                   "default: 16; vision-reuse 50, structured 200, near-duplicates 2000, image-safety 1000, "
                   "followups 40, adapter-vllm 200; story: sunglasses questions asked, and as many new pictures and "
                   "test questions, 200)")
    p.add_argument("--concurrency", help="levels, comma-separated (default 1,4,16; upstream 1,16; stream and "
                   "structured 16; adapter-vllm 8)")
    p.add_argument("--max-new-tokens", type=int, help="answer length (default 16; stream 32, vision-reuse 8, "
                   "structured 96; adapter-vllm: vqa eval's)")
    p.add_argument("--rounds", type=int, default=5, help="stream: rounds of plain requests and streams; capture: "
                   "rounds with capture on and off")
    p.add_argument("--soak-requests", type=int, default=200)
    p.add_argument("--soak-every", type=int, default=25)
    p.add_argument("--photo-pairs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch threads for started servers (OMP_NUM_THREADS) and the in-process engine")
    p.add_argument("--no-in-process", action="store_true",
                   help="skip the in-process engine figures (e.g. the model is only on the server)")
    p.add_argument("--upstream-url", help="vLLM scenarios: a running vLLM (default: start one with "
                   "scripts/vllm.sh); structured: ask this vLLM directly")
    p.add_argument("--upstream-pid", type=int, help="upstream: the --upstream-url server's pid (its CPU time)")
    p.add_argument("--answers", type=int, default=200,
                   help="upstream: pictures whose answers are compared direct vs through the gateway (0: skip)")
    p.add_argument("--vllm-model", help="vLLM scenarios: the model directory vLLM serves (default: bundled "
                   "shop-toy)")
    p.add_argument("--adapter", metavar="NAME=PATH", help="adapter-vllm: the adapter, NAME as vLLM serves it "
                   "(default: the bundled shop-toy-sunglasses)")
    p.add_argument("--train-steps", type=int, default=1500, help="story: the adapter's training steps (the LR "
                   "schedule; --train-minutes usually ends it first)")
    p.add_argument("--train-batch-size", type=int, default=32, help="story: pictures a training step")
    p.add_argument("--train-minutes", type=float, default=8.5, help="story: the training's time budget "
                   "(vqa train --time-budget-min; the target is the whole command within 10 minutes)")
    p.add_argument("--max-regression", type=float, default=2.0, metavar="POINTS",
                   help="story: the gate (vqa eval --compare --max-regression)")
    p.add_argument("--out", default="bench-results", help="folder for the JSON records")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _env(values: list[str]) -> dict[str, str]:
    env = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name.startswith("VQA_"):
            raise InvalidRequest(f"--env {value!r} must look like VQA_NAME=VALUE, e.g. VQA_SAFETY_IMAGE=off")
        env[name] = setting
    return env


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise InvalidRequest("--concurrency must be a comma-separated list of positive integers, e.g. 1,4,16")
    return levels


def _adapter(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    name, sep, path = text.partition("=")
    if not (sep and name and path):
        raise InvalidRequest(f"--adapter {text!r} must look like NAME=PATH, e.g. "
                             "shop-toy-sunglasses=src/vqaserve/models/shop-toy-sunglasses")
    return name, path


def config(args: argparse.Namespace, scenario: str) -> BenchConfig:
    """The configuration one scenario runs with: the options given, its own defaults for the rest."""
    from vqaserve.bench.config import BenchConfig

    for flag, value in (("--requests", args.requests), ("--max-new-tokens", args.max_new_tokens),
                        ("--rounds", args.rounds), ("--train-steps", args.train_steps),
                        ("--train-batch-size", args.train_batch_size)):
        if value is not None and value < 1:
            raise InvalidRequest(f"{flag} must be at least 1")
    if not args.train_minutes > 0:
        raise InvalidRequest("--train-minutes must be a number of minutes above 0, e.g. 8.5")
    if not args.max_regression >= 0:
        raise InvalidRequest("--max-regression must be a number of points >= 0, e.g. 2")
    s = SCENARIOS[scenario]
    return BenchConfig(url=args.url, env=_env(args.env), model=args.model, requests=args.requests or s.requests,
                       concurrency=_levels(args.concurrency) if args.concurrency else list(s.concurrency),
                       max_new_tokens=args.max_new_tokens or s.max_new_tokens, seed=args.seed,
                       soak_requests=args.soak_requests, soak_every=max(1, args.soak_every),
                       photo_pairs=max(0 if scenario == "upstream" else 1, args.photo_pairs), rounds=args.rounds,
                       pid=args.pid, api_key=args.api_key, in_process=not args.no_in_process,
                       torch_threads=args.torch_threads, upstream_url=args.upstream_url,
                       upstream_pid=args.upstream_pid, vllm_model=Path(args.vllm_model) if args.vllm_model else None,
                       answers=max(0, args.answers), adapter=_adapter(args.adapter),
                       train_steps=args.train_steps, train_batch_size=args.train_batch_size,
                       train_minutes=args.train_minutes, max_regression=args.max_regression,
                       progress=not args.no_progress, out_dir=Path(args.out))


def run(args: argparse.Namespace) -> int:
    from vqaserve.bench.report import table, write
    from vqaserve.bench.scenarios import Bench

    names = [s.name for s in SCENARIOS.values() if s.in_all] if args.scenario == "all" else [args.scenario]
    configs = {name: config(args, name) for name in names}  # every option checked before anything runs
    bench = Bench(configs[names[0]])
    for name in names:
        # One Bench for the whole run: its picture counter keeps every scenario on pictures no server saw.
        bench.cfg = configs[name]
        started = time.time()
        figures, details = asyncio.run(SCENARIOS[name].run(bench))
        path = write(bench.cfg.out_dir, name, figures, details, bench.cfg.server_env(), started)
        print(f"\n== {name} ({time.time() - started:.0f} s) -> {path}")
        print(table(figures), flush=True)
    return 0
