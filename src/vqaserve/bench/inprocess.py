"""The engine on its own, in this process: the ceiling the HTTP figures are compared with.

Same pictures, same questions, same generation settings as the HTTP runs; images go through the
same images.normalize with the pipeline's budget, outside the timed region (the engine figure is the
model alone).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

from vqaserve.bench.config import torch_threads
from vqaserve.bench.workload import Item
from vqaserve.errors import VQAError
from vqaserve.images import decode as imgs
from vqaserve.settings import Settings
from vqaserve.types import EngineRequest, GenerationParams, Part, Turn


class InProcessEngine:
    """Loads the engine the server would load (wiring.build_engine) and times generate()."""

    def __init__(self, settings: Settings, max_new_tokens: int, torch_threads: int | None = None) -> None:
        self.settings = settings
        self.torch_threads = torch_threads
        self.params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self.engine: Any = None
        self.budget: tuple[int, int] = (settings.images.min_pixels, settings.images.max_pixels)
        self._threads = contextlib.ExitStack()

    async def __aenter__(self) -> InProcessEngine:
        from vqaserve.images.budget import pixel_budget
        from vqaserve.wiring import build_engine

        self._threads.enter_context(torch_threads(self.torch_threads))  # given back on exit
        self.engine = build_engine(self.settings)
        await self.engine.start()
        self.budget = pixel_budget(self.settings.images, self.engine.info().pixel_budget).as_tuple()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.engine.close()
        finally:
            self._threads.close()

    def requests(self, items: Sequence[Item]) -> list[EngineRequest]:
        lo, hi = self.budget
        out = []
        for n, item in enumerate(items):
            image = imgs.normalize(item.data, lo, hi, self.settings.images.max_image_pixels)
            turns = [Turn(role="user", parts=[Part(image=image), Part(text=item.question)])]
            out.append(EngineRequest(turns=turns, params=self.params, request_id=f"bench-{n}"))
        return out

    async def generate(self, batch: Sequence[EngineRequest]) -> list[str]:
        fresh = [EngineRequest(turns=r.turns, params=r.params, request_id=r.request_id) for r in batch]
        results = await self.engine.generate(fresh)
        for r in results:
            if isinstance(r, VQAError):
                raise r
        return [r.text for r in results]

    async def p50_ms(self, requests: Sequence[EngineRequest]) -> dict[str, Any]:
        """One request at a time (batch 1): median latency."""
        await self.generate(requests[:1])  # warm-up
        times = []
        for r in requests:
            t0 = time.perf_counter()
            await self.generate([r])
            times.append(time.perf_counter() - t0)
        return {"requests": len(times), "p50_ms": round(1000 * statistics.median(times), 1),
                "rps": round(len(times) / sum(times), 3)}

    async def throughput(self, requests: Sequence[EngineRequest], batch_size: int) -> dict[str, Any]:
        """Requests/s when the engine is handed full batches back to back."""
        await self.generate(requests[:batch_size])  # warm-up at this batch size
        t0 = time.perf_counter()
        done = 0
        for start in range(0, len(requests) - batch_size + 1, batch_size):
            await self.generate(requests[start:start + batch_size])
            done += batch_size
        wall = time.perf_counter() - t0
        return {"batch_size": batch_size, "requests": done, "wall_s": round(wall, 3),
                "rps": round(done / wall, 3) if wall > 0 else None}

    async def answers(self, requests: Sequence[EngineRequest]) -> list[str]:
        return [(await self.generate([r]))[0] for r in requests]
