"""Closed-loop HTTP load: `concurrency` clients, each sending its next request when the last one ends.

Request bodies are encoded before the clock starts, so the figures measure the server, not JSON and
base64 work in the client (which shares the same CPUs).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    seconds: float
    status: int
    cache: str  # the x-vqa-cache header: hit | miss | bypass | "" (absent)
    answer: str = ""
    first_s: float | None = None  # a stream's first text: seconds after the request was sent
    model: str = ""  # the x-vqa-model header: the weights that answered
    id: str = ""  # the response's id (what POST /v1/feedback rates); plain answers only


@dataclass
class LoadResult:
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    @property
    def rps(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    def p(self, q: float, where: Callable[[Sample], bool] = lambda s: True) -> float | None:
        """Latency percentile in ms over successful samples matching `where`."""
        return _percentile_ms(sorted(s.seconds for s in self.ok if where(s)), q)

    def ttft(self, q: float) -> float | None:
        """Time-to-first-text percentile in ms over successful streams."""
        return _percentile_ms(sorted(s.first_s for s in self.ok if s.first_s is not None), q)

    def summary(self) -> dict[str, Any]:
        errors: dict[str, int] = {}
        for s in self.samples:
            if s.status != 200:
                errors[str(s.status)] = errors.get(str(s.status), 0) + 1
        ok = self.ok
        return {"concurrency": self.concurrency, "requests": len(self.samples), "ok": len(ok),
                "errors": errors, "wall_s": round(self.wall_s, 3), "rps": round(self.rps, 3),
                "p50_ms": _r(self.p(50)), "p90_ms": _r(self.p(90)), "p99_ms": _r(self.p(99)),
                "mean_ms": _r(1000.0 * statistics.fmean(s.seconds for s in ok) if ok else None),
                "cache": {k: sum(1 for s in ok if s.cache == k) for k in ("hit", "miss", "bypass")}}


def _percentile_ms(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return 1000.0 * xs[min(len(xs) - 1, round(q / 100.0 * (len(xs) - 1)))]


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def answer_text(payload: Any) -> str:
    try:
        return str(payload["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return ""


def answer_id_of(payload: Any) -> str:
    """A chat completion's `id`, or `/v1/vqa`'s `request_id`: what POST /v1/feedback rates."""
    if not isinstance(payload, dict):
        return ""
    return str(payload.get("id") or payload.get("request_id") or "")


async def stream_text(lines: AsyncIterator[str], sent: float) -> tuple[str, float | None, bool]:
    """(joined text, seconds from `sent` to the first text, finished cleanly) of an SSE chat stream:
    `data: <chunk>` lines, then `data: [DONE]`; an `error` event after the start is not clean."""
    parts: list[str] = []
    first: float | None = None
    async for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            return "".join(parts), first, True
        chunk = json.loads(data)
        if "error" in chunk:
            return "".join(parts), first, False
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                if first is None:
                    first = time.perf_counter() - sent
                parts.append(text)
    return "".join(parts), first, False  # the connection closed before [DONE]


async def run_load(url: str, bodies: Sequence[bytes], concurrency: int, *, label: str = "",
                   progress: bool = True, api_key: str | None = None, stream: bool = False,
                   timeout_s: float = 600.0, transport: Any = None, path: str = "/v1/chat/completions") -> LoadResult:
    """POST every body to `url` + `path` with `concurrency` clients; latencies per request. With
    `stream` the bodies ask for `stream: true`: a sample ends at `data: [DONE]` and records its first
    text's time; a stream that ends in an error event counts as status 599."""
    import httpx
    from tqdm import tqdm

    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for i, body in enumerate(bodies):
        queue.put_nowait((i, body))
    samples: list[Sample | None] = [None] * len(bodies)
    bar = tqdm(total=len(bodies), desc=label or f"c={concurrency}", unit="req", disable=not progress,
               leave=False)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, headers=headers,
                                 transport=transport) as client:

        async def worker() -> None:
            while True:
                try:
                    i, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                first: float | None = None
                try:
                    if stream:
                        async with client.stream("POST", path, content=body) as resp:
                            status, cache = resp.status_code, resp.headers.get("x-vqa-cache", "")
                            model, text, answer_id = resp.headers.get("x-vqa-model", ""), "", ""
                            if status == 200:
                                text, first, clean = await stream_text(resp.aiter_lines(), t0)
                                status = 200 if clean else 599
                    else:
                        resp = await client.post(path, content=body)
                        status, cache = resp.status_code, resp.headers.get("x-vqa-cache", "")
                        model = resp.headers.get("x-vqa-model", "")
                        payload = resp.json() if status == 200 else None
                        text, answer_id = answer_text(payload), answer_id_of(payload)
                except httpx.HTTPError:
                    status, cache, text, model, answer_id = 599, "", "", "", ""  # no answer at all
                samples[i] = Sample(time.perf_counter() - t0, status, cache, text, first, model, answer_id)
                bar.update(1)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    bar.close()
    return LoadResult(concurrency=concurrency, wall_s=wall, samples=[s for s in samples if s is not None])


def parse_stage_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """stage -> (seconds, count) from the `vqa_stage_seconds` histogram in a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "vqa_stage_seconds":
            continue
        for s in family.samples:
            slot = out.setdefault(s.labels.get("stage", "?"), [0.0, 0.0])
            if s.name.endswith("_sum"):
                slot[0] = s.value
            elif s.name.endswith("_count"):
                slot[1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


async def stage_totals(url: str, api_key: str | None = None) -> dict[str, tuple[float, float]]:
    """`parse_stage_totals` of a running server's GET /metrics."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, timeout=30.0, headers=headers) as client:
        return parse_stage_totals((await client.get("/metrics")).text)


def stage_means_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                   requests: int) -> dict[str, float]:
    """Mean milliseconds per request spent in each server stage between two `stage_totals` reads."""
    if not requests:
        return {}
    return {stage: round(1000 * (seconds - before.get(stage, (0.0, 0.0))[0]) / requests, 2)
            for stage, (seconds, _count) in after.items()}
