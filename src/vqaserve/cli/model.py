"""`vqa model random ARCH --out DIR`: a full-size random-weight stand-in of a published Qwen3-VL."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from vqaserve.errors import InvalidRequest
from vqaserve.modeling.standins import ARCHITECTURES  # plain data: no torch at `vqa --help`


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("model", help="make model directories (full-size random-weight stand-ins)")
    model_sub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    r = model_sub.add_parser(
        "random", help="build a RANDOM-weight stand-in of a published Qwen3-VL-Instruct",
        description="Write DIR: the published architecture of Qwen3-VL-{2B,4B,8B}-Instruct with seeded "
                    "random bfloat16 weights, Qwen's vocabulary and processor. Real size, speed and code "
                    "paths for measuring memory and speed; it answers noise. 2B: 4.3 GB, 4B: 8.9 GB, "
                    "8B: 17.5 GB on disk, about one 2 GB shard of memory while building.")
    r.add_argument("arch", choices=list(ARCHITECTURES), help="which published architecture")
    r.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    r.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    r.set_defaults(func=run_random)


def run_random(args: argparse.Namespace) -> int:
    from vqaserve.modeling.standins import architecture, build_standin, parameter_count, standin_config

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidRequest(f"--out {out} exists and is not empty; give a new directory")
    arch = architecture(args.arch)
    need = parameter_count(standin_config(arch)) * 2
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need * 1.05:
        raise InvalidRequest(f"--out needs ~{need / 1e9:.1f} GB free on its disk; {free / 1e9:.1f} GB are "
                             "free. Free some space or choose another disk")
    started = time.perf_counter()
    path = build_standin(out, arch, seed=args.seed, command=shlex.join(["vqa", *sys.argv[1:]]))
    print(f"built {arch.name} ({arch.hf_id} architecture, RANDOM weights) in "
          f"{time.perf_counter() - started:.0f} s: {path}", file=sys.stderr)
    print(path)
    return 0
