"""`vqa bench {latency,throughput,cache,photo,soak,all}`: figures against the performance targets.

Against a running server (`--url`) or servers it starts itself (`vqa serve` subprocesses with the
settings each comparison needs). Prints a table and writes a JSON record per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vqaserve.errors import InvalidRequest

if TYPE_CHECKING:
    from vqaserve.bench.upstream import UpstreamBench

SCENARIOS = ["latency", "throughput", "cache", "photo", "soak"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure latency, throughput, cache, photo and memory figures",
                       description="Benchmark the service through HTTP (and the engine in-process).")
    p.add_argument("scenario", choices=[*SCENARIOS, "upstream", "all"],
                   help="`upstream`: a real vLLM direct vs through a gateway (not part of `all`)")
    p.add_argument("--url", help="a running server (default: start servers on free loopback ports)")
    p.add_argument("--pid", type=int, help="the --url server's process id (soak reads its RSS)")
    p.add_argument("--api-key", help="bearer key for a server started with VQA_API_KEYS")
    p.add_argument("--model", help="model for started servers and the in-process engine")
    p.add_argument("--env", action="append", default=[], metavar="VQA_NAME=VALUE",
                   help="setting for the servers the benchmark starts (repeatable)")
    p.add_argument("--requests", type=int, default=16, help="requests per measurement (default 16)")
    p.add_argument("--concurrency", help="throughput levels (default 1,4,16; upstream: 1,16)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--soak-requests", type=int, default=200)
    p.add_argument("--soak-every", type=int, default=25)
    p.add_argument("--photo-pairs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch threads for started servers (OMP_NUM_THREADS) and the in-process engine")
    p.add_argument("--no-in-process", action="store_true",
                   help="skip the in-process engine figures (e.g. the model is only on the server)")
    p.add_argument("--upstream-url", help="upstream: a running vLLM (default: start one with scripts/vllm.sh)")
    p.add_argument("--upstream-pid", type=int, help="upstream: the --upstream-url server's pid (its CPU time)")
    p.add_argument("--answers", type=int, default=200,
                   help="upstream: pictures whose answers are compared direct vs through the gateway (0: skip)")
    p.add_argument("--vllm-model", help="upstream: the model directory vLLM serves (default: bundled shop-toy)")
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


def _upstream(args: argparse.Namespace) -> UpstreamBench:
    from vqaserve.bench.upstream import UpstreamBench

    concurrency = _levels(args.concurrency or "1,16")
    return UpstreamBench(upstream_url=args.upstream_url, upstream_pid=args.upstream_pid,
                         model_dir=Path(args.vllm_model) if args.vllm_model else None, env=_env(args.env),
                         requests=args.requests, concurrency=concurrency, max_new_tokens=args.max_new_tokens,
                         seed=args.seed, photo_pairs=args.photo_pairs,
                         progress=not args.no_progress, answers=max(0, args.answers))


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise InvalidRequest("--concurrency must be a comma-separated list of positive integers, e.g. 1,4,16")
    return levels


def run(args: argparse.Namespace) -> int:
    from vqaserve.bench.report import table, write
    from vqaserve.bench.scenarios import Bench, BenchConfig

    if args.requests < 1 or args.max_new_tokens < 1:
        raise InvalidRequest("--requests and --max-new-tokens must be at least 1")
    cfg = BenchConfig(url=args.url, env=_env(args.env), model=args.model, requests=args.requests,
                      concurrency=_levels(args.concurrency or "1,4,16"), max_new_tokens=args.max_new_tokens,
                      seed=args.seed, soak_requests=args.soak_requests, soak_every=max(1, args.soak_every),
                      photo_pairs=max(1, args.photo_pairs), pid=args.pid, api_key=args.api_key,
                      in_process=not args.no_in_process, progress=not args.no_progress,
                      torch_threads=args.torch_threads,
                      out_dir=Path(args.out))
    bench = Bench(cfg)
    for scenario in SCENARIOS if args.scenario == "all" else [args.scenario]:
        started = time.time()
        if scenario == "upstream":
            figures, details = asyncio.run(_upstream(args).run())
        else:
            figures, details = asyncio.run(getattr(bench, scenario)())
        path = write(cfg.out_dir, scenario, figures, details, cfg.server_env(), started)
        print(f"\n== {scenario} ({time.time() - started:.0f} s) -> {path}")
        print(table(figures), flush=True)
    return 0
