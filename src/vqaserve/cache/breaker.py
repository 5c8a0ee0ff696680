"""A circuit breaker with a background half-open probe, so a dead or slow backend costs nothing.

closed: calls go through. After `failure_threshold` consecutive failures it opens: calls are
skipped at once (a cache miss, not an error) while one background task probes the backend with a
growing interval; the first successful probe closes it again. No request ever waits for a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("vqaserve.cache")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_NUMBER = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}  # for a Prometheus gauge


class CircuitBreaker:
    def __init__(self, probe: Callable[[], Awaitable[object]], *, name: str = "redis",
                 failure_threshold: int = 1, probe_interval_s: float = 0.5,
                 max_probe_interval_s: float = 5.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.name = name
        self.probe = probe
        self.failure_threshold = failure_threshold
        self.probe_interval_s = probe_interval_s
        self.max_probe_interval_s = max_probe_interval_s
        self.state = CLOSED
        self.failures = 0
        self.opens = 0
        self.opened_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def allow(self) -> bool:
        return self.state == CLOSED

    def success(self) -> None:
        self.failures = 0

    def failure(self, reason: str) -> None:
        self.failures += 1
        if self.state == CLOSED and self.failures >= self.failure_threshold:
            self._open(reason)

    def _open(self, reason: str) -> None:
        self.state = OPEN
        self.opens += 1
        self.opened_at = time.monotonic()
        log.warning("%s unavailable (%s): serving without it, probing in the background", self.name, reason)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - failures are recorded inside async calls
            return
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._probe_loop(), name=f"{self.name}-breaker-probe")

    async def _probe_loop(self) -> None:
        delay = self.probe_interval_s
        while self.state != CLOSED:
            await asyncio.sleep(delay)
            self.state = HALF_OPEN
            try:
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.state = OPEN
                delay = min(delay * 2, self.max_probe_interval_s)
                continue
            self.state = CLOSED
            self.failures = 0
            log.warning("%s is back: breaker closed", self.name)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
