"""`vqa bench capture`: what capturing answers costs a request (issue 29's target: <= 1 ms).

Two servers the bench starts, alike but for VQA_CAPTURE_URL: one captures into a fresh SQLite file
(or the database `--env VQA_CAPTURE_URL=...` names, e.g. PostgreSQL), the other captures nothing.
Each round sends `--requests` never-seen pictures one at a time (c=1) to each, the two in turn, the
first alternating between rounds (neither always runs on the warmer machine), for `--rounds` rounds.

    capture_hook_ms           mean time the capture hook takes per answer (building the record and
                              queueing it), from the capturing server's own vqa_stage_seconds{stage=
                              "capture"}: what capture adds to the request path
    http_p50_on_minus_off_ms  the same answers end to end, p50 with capture minus without, pooled over
                              the rounds: includes the background writer's share of the CPU (noisy on
                              a loaded machine; `--env VQA_ENGINE=scripted` leaves only the HTTP path)
    capture_written / capture_dropped   rows the capturing server wrote, and dropped (should be 0)
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqaserve.bench.config import Result
from vqaserve.bench.load import LoadResult, stage_means_ms, stage_totals
from vqaserve.errors import ConfigError

if TYPE_CHECKING:
    from vqaserve.bench.scenarios import Bench

MODES = ("off", "on")


async def run(bench: Bench) -> Result:
    cfg = bench.cfg
    if cfg.url:
        raise ConfigError("capture compares a server with capture and one without; run it without --url so the "
                          "benchmark starts both (add --env VQA_CAPTURE_URL=... to capture into a database of "
                          "your own)")
    with tempfile.TemporaryDirectory(prefix="vqa-bench-capture-") as folder, ExitStack() as servers:
        capture_url = cfg.env.get("VQA_CAPTURE_URL") or f"sqlite:///{Path(folder) / 'capture.db'}"
        envs = {"off": {"VQA_CAPTURE_URL": ""}, "on": {"VQA_CAPTURE_URL": capture_url}}
        urls = {mode: servers.enter_context(bench.server(**envs[mode]))[0] for mode in MODES}
        for mode in MODES:
            await bench.warm(urls[mode], 1)
        before = await stage_totals(urls["on"], cfg.api_key)
        runs: dict[str, list[LoadResult]] = {mode: [] for mode in MODES}
        for r in range(cfg.rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                runs[mode].append(await bench.load(urls[mode], bench.fresh_items(cfg.requests), 1,
                                                   f"capture {mode}, round {r + 1}"))
        answered = sum(len(res.ok) for res in runs["on"])
        stages = stage_means_ms(before, await stage_totals(urls["on"], cfg.api_key), answered)
        await asyncio.sleep(1.0)  # the writer flushes every 0.25 s: let the last rows land
        rows = await capture_figures(urls["on"], cfg.api_key)
    p50 = {mode: pooled_p50_ms(runs[mode]) for mode in MODES}
    figures: dict[str, Any] = {
        "capture_hook_ms": round(stages.get("capture", 0.0), 3),
        "http_p50_capture_off_ms": p50["off"], "http_p50_capture_on_ms": p50["on"],
        "http_p50_on_minus_off_ms": round(p50["on"] - p50["off"], 2),
        "capture_written": rows.get("written", 0), "capture_dropped": rows.get("dropped", 0)}
    details: dict[str, Any] = {"capture_url": "sqlite (temporary)" if "VQA_CAPTURE_URL" not in cfg.env
                               else "--env VQA_CAPTURE_URL", "rounds": cfg.rounds,
                               "requests_per_round": cfg.requests, "server_stages_mean_ms_capture_on": stages}
    for mode in MODES:
        details[f"http_capture_{mode}"] = [res.summary() for res in runs[mode]]
    return figures, details


def pooled_p50_ms(runs: list[LoadResult]) -> float:
    return round(1000.0 * statistics.median(s.seconds for res in runs for s in res.ok), 2)


async def capture_figures(url: str, api_key: str | None) -> dict[str, float]:
    """vqa_capture_written_total and the sum of vqa_capture_dropped_total from a server's /metrics."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, timeout=30.0, headers=headers) as client:
        text = (await client.get("/metrics")).text
    written = re.search(r"^vqa_capture_written_total(?:\{[^}]*\})? (\S+)$", text, re.M)
    dropped = re.findall(r"^vqa_capture_dropped_total\{[^}]*\} (\S+)$", text, re.M)
    return {"written": float(written.group(1)) if written else 0.0, "dropped": sum(float(x) for x in dropped)}
