"""Memory soak: 500 distinct catalogue pictures through a real `vqa serve`; RSS must level off.

The server's resident memory is sampled every 50 requests; after a 100-request warm-up (allocator
pools, import-time caches, first-use buffers) it may grow by less than 50 MB in all. The figure is
printed (run with -s) and written to $SOAK_REPORT when set (not a VQA_ name: fixtures clear those).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from tests.ops_support import chat_body, scripted_serve

# The machine may be shared: the RSS bound is what is tested, not the speed.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

PICTURES = 500
WARMUP = 100
EVERY = 50
LIMIT_MB = 50.0


def test_rss_stays_flat_over_500_distinct_pictures(tmp_path: Path) -> None:
    from vqaserve.train import synthetic

    with scripted_serve(tmp_path) as server:
        proc = psutil.Process(server.pid)
        samples: list[tuple[int, float]] = []
        lock = threading.Lock()
        done = [0]
        failures: list[str] = []

        def worker(offset: int, stride: int) -> None:
            with httpx.Client(timeout=30) as client:
                for i in range(offset, PICTURES, stride):
                    sample = synthetic.make_sample("train", 11, i)  # distinct picture per index
                    png = synthetic.png_bytes(sample.image)
                    r = client.post(server.url + "/v1/chat/completions",
                                    json=chat_body(f"{sample.question} (#{i})", png=png))
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"{i}: {r.status_code} {r.text[:200]}")
                        done[0] += 1
                        if done[0] % EVERY == 0:
                            samples.append((done[0], proc.memory_info().rss / 2**20))

        threads = [threading.Thread(target=worker, args=(k, 2)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # bounded by the test's timeout mark
        assert not failures, failures[:3]
        assert done[0] == PICTURES
        base = next(mb for n, mb in samples if n >= WARMUP)
        peak = max(mb for n, mb in samples if n >= WARMUP)
        growth = peak - base
        report = {"pictures": PICTURES, "warmup": WARMUP, "rss_mb_after_warmup": round(base, 1),
                  "rss_mb_peak": round(peak, 1), "growth_mb": round(growth, 1),
                  "samples": [(n, round(mb, 1)) for n, mb in samples]}
        print("soak:", json.dumps(report))
        if os.environ.get("SOAK_REPORT"):
            Path(os.environ["SOAK_REPORT"]).write_text(json.dumps(report, indent=2))
        assert growth < LIMIT_MB, report
        assert httpx.get(server.url + "/ready").status_code == 200
