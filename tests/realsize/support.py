"""Helpers for the full-size runs (`pytest -m realsize`): stand-ins built once under VQA_REALSIZE_DIR,
commands run with their peak RSS measured exactly, and `vqa doctor`'s forecast of the same workload.

Peak RSS: each command runs under a small wrapper whose only child it is, so the wrapper's
RUSAGE_CHILDREN.ru_maxrss is that command's own peak (the kernel's high-water mark, not a sample).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import subprocess_env, vqa_cmd

ROOT = Path(os.environ.get("VQA_REALSIZE_DIR", "/tmp/vqa-realsize"))
ARCHS = [a.strip() for a in os.environ.get("VQA_REALSIZE_ARCHS", "qwen3-vl-2b").split(",") if a.strip()]
RESULTS = Path(os.environ.get("VQA_REALSIZE_RESULTS", "bench-results/realsize"))
FULL_BUDGET = (1024, 1280)  # 1,310,720 pixels = 1280 visual tokens: the default VQA_MAX_PIXELS
TOLERANCE = 0.15
# On a 2-core CPU a full-budget 2B answer takes minutes: deadlines must not be what is measured.
SLOW_ENV = {"VQA_REQUEST_TIMEOUT_S": "3600", "VQA_LLM__UPSTREAM_TIMEOUT_S": "3600"}

_WRAPPER = """
import os, resource, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
code = child.wait()
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code)
"""


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    seconds: float


def standin(arch: str) -> Path:
    """The stand-in of `arch` under ROOT, built by `vqa model random` the first time (minutes)."""
    out = ROOT / arch
    if not (out / "standin.json").is_file():
        ROOT.mkdir(parents=True, exist_ok=True)
        subprocess.run(vqa_cmd("model", "random", arch, "--out", str(out)), env=subprocess_env(), check=True,
                       timeout=3600)
    return out


def wrapped(cmd: list[str], peak_file: Path) -> list[str]:
    return [sys.executable, "-c", _WRAPPER, str(peak_file), *cmd]


def measured(cmd: list[str], peak_file: Path, timeout: float = 7200, **env: str) -> Measured:
    started = time.monotonic()
    proc = subprocess.run(wrapped(cmd, peak_file), env=subprocess_env(**SLOW_ENV, **env), capture_output=True,
                          text=True, timeout=timeout)
    return Measured(proc.returncode, proc.stdout, proc.stderr, int(peak_file.read_text()),
                    time.monotonic() - started)


def doctor_forecast(model: Path, *args: str, **env: str) -> dict[str, Any]:
    proc = subprocess.run(vqa_cmd("doctor", "--json", "--model", str(model), *args),
                          env=subprocess_env(**env), capture_output=True, text=True, timeout=900)
    report = json.loads(proc.stdout)
    assert report["forecast"], proc.stderr
    return dict(report["forecast"])


def picture_png(size: tuple[int, int], seed: int) -> bytes:
    """A noisy photo-like picture (every patch differs, as in a real photo)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def record(name: str, data: dict[str, Any]) -> Path:
    """One JSON record per measurement (RESULTS/NAME.json), with the machine's load, for the docs."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    data = {**data, "load_average": os.getloadavg(), "cpus": os.cpu_count(), "time": time.strftime("%F %T")}
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def within(forecast: int, peak: int) -> float:
    """The forecast's error relative to the measured peak (+: over)."""
    return (forecast - peak) / peak
