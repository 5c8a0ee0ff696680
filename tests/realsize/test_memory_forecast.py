"""`vqa doctor`'s forecast against the measured peak RSS of the very workload, on full-size stand-ins.

    VQA_REALSIZE_ARCHS=qwen3-vl-2b,qwen3-vl-8b .venv/bin/python -m pytest -m realsize tests/realsize -v

Builds the stand-ins under VQA_REALSIZE_DIR (default /tmp/vqa-realsize; 4.3 GB for 2B, 17.5 GB for 8B)
and writes one JSON record per measurement under bench-results/realsize/. Needs a quiet machine: the
peak RSS of memory-mapped weights only reaches the forecast when nothing else evicts them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, subprocess_env, vqa_cmd
from tests.realsize.support import (
    ARCHS,
    FULL_BUDGET,
    SLOW_ENV,
    TOLERANCE,
    doctor_forecast,
    measured,
    picture_png,
    record,
    standin,
    within,
    wrapped,
)

pytestmark = [pytest.mark.realsize, pytest.mark.timeout(4 * 3600)]
PIXELS = FULL_BUDGET[0] * FULL_BUDGET[1]


def _fits_or_doctor_said_why(forecast: dict, name: str) -> bool:
    """A workload doctor says does not fit is not run (it would evict its own weights); the record
    keeps doctor's numbers instead, and the test checks doctor said so."""
    if forecast["fits"]:
        return True
    record(name, {"ran": False, "forecast": forecast, "reason": "doctor: does not fit in the free memory"})
    assert forecast["total_bytes"] > forecast["available_bytes"]
    return False


@pytest.mark.parametrize("arch", ARCHS)
def test_vqa_ask_batch_1_peak_is_forecast(arch: str, tmp_path: Path) -> None:
    model = standin(arch)
    forecast = doctor_forecast(model, "--batch-size", "1", "--max-pixels", str(PIXELS))
    if not _fits_or_doctor_said_why(forecast, f"{arch}-ask"):
        return
    image = tmp_path / "photo.png"
    image.write_bytes(picture_png(FULL_BUDGET, seed=1))
    run = measured(vqa_cmd("ask", str(image), "What is this product?", "--model", str(model), "--json"),
                   tmp_path / "peak")
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout)
    error = within(forecast["total_bytes"], run.peak_rss)
    record(f"{arch}-ask", {"ran": True, "command": f"vqa ask PHOTO(1024x1280) --model {arch} --json",
                           "peak_rss_bytes": run.peak_rss, "forecast": forecast, "error": round(error, 3),
                           "seconds_total": round(run.seconds, 1), "timings_ms": answer["timings"],
                           "usage": answer["usage"]})
    assert answer["usage"]["prompt_tokens"] >= 1280  # the picture reached the model at the full budget
    assert abs(error) <= TOLERANCE, f"forecast {forecast['total_bytes']:,} vs peak {run.peak_rss:,} B"


@pytest.mark.parametrize("arch", ARCHS)
def test_vqa_serve_16_concurrent_full_budget_peak_is_forecast(arch: str, tmp_path: Path) -> None:
    model = standin(arch)
    # the server splits 16 full-budget pictures at VQA_BATCH_MAX_VISUAL_TOKENS; doctor forecasts the same
    forecast = doctor_forecast(model, "--batch-size", "16", "--max-pixels", str(PIXELS))
    if not _fits_or_doctor_said_why(forecast, f"{arch}-serve16"):
        return
    port, peak_file = free_port(), tmp_path / "peak"
    env = {**SLOW_ENV, "VQA_BATCH_MAX_SIZE": "16", "VQA_BATCH_MAX_WAIT_MS": "10000", "VQA_SAFETY_IMAGE": "nudenet"}
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(wrapped(vqa_cmd("serve", "--port", str(port), "--model", str(model)), peak_file),
                                  env=subprocess_env(**env), stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            _wait_ready(port, server)
            load_s = time.monotonic() - started
            pictures = [picture_png(FULL_BUDGET, seed=100 + i) for i in range(16)]

            def one(i: int) -> httpx.Response:
                return httpx.post(f"http://127.0.0.1:{port}/v1/vqa", timeout=3600,
                                  files={"image": ("p.png", pictures[i], "image/png")},
                                  data={"question": f"What is product {i}?", "max_tokens": "32"})

            t0 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(one, range(16)))
            batch_s = time.monotonic() - t0
            assert [r.status_code for r in replies] == [200] * 16, replies[0].text
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
    peak = int(peak_file.read_text())
    error = within(forecast["total_bytes"], peak)
    record(f"{arch}-serve16", {"ran": True, "command": f"vqa serve --model {arch}, 16 concurrent /v1/vqa at "
                                                       "1024x1280, VQA_BATCH_MAX_SIZE=16",
                               "peak_rss_bytes": peak, "forecast": forecast, "error": round(error, 3),
                               "load_seconds": round(load_s, 1), "batch_seconds": round(batch_s, 1),
                               "answers_per_second": round(16 / batch_s, 3),
                               "prompt_tokens": replies[0].json()["usage"]["prompt_tokens"]})
    assert abs(error) <= TOLERANCE, f"forecast {forecast['total_bytes']:,} vs peak {peak:,} B"


def _wait_ready(port: int, server: subprocess.Popen) -> None:
    while True:
        assert server.poll() is None, "vqa serve exited while loading"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)


@pytest.mark.parametrize("arch", ARCHS)
def test_two_lora_steps_peak_is_forecast(arch: str, tmp_path: Path) -> None:
    model = standin(arch)
    flags = ["--batch-size", "2", "--gradient-checkpointing"]
    forecast = doctor_forecast(model, "--train", "--max-pixels", str(PIXELS), *flags)
    if not _fits_or_doctor_said_why(forecast, f"{arch}-lora2"):
        return
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(4):
        (tmp_path / "images" / f"{i}.png").write_bytes(picture_png(FULL_BUDGET, seed=200 + i))
        lines.append(json.dumps({"image": f"images/{i}.png", "question": "What is this product?",
                                 "answer": "A cotton jacket with two pockets."}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    run = measured(vqa_cmd("train", str(tmp_path / "data.jsonl"), "--model", str(model), "--lora",
                           "--device", "cpu", "--dtype", "bfloat16", "--steps", "2", "--grad-accum", "1",
                           "--out", str(tmp_path / "adapter"), *flags), tmp_path / "peak")
    assert run.returncode == 0, run.stderr[-3000:]
    error = within(forecast["total_bytes"], run.peak_rss)
    record(f"{arch}-lora2", {"ran": True, "command": f"vqa train --lora --model {arch} --dtype bfloat16 "
                                                     "--gradient-checkpointing --steps 2 --batch-size 2 (1024x1280)",
                             "peak_rss_bytes": run.peak_rss, "forecast": forecast, "error": round(error, 3),
                             "seconds_total": round(run.seconds, 1)})
    assert abs(error) <= TOLERANCE, f"forecast {forecast['total_bytes']:,} vs peak {run.peak_rss:,} B"
