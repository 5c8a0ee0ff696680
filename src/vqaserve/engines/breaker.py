"""A small circuit breaker: after N consecutive failures, fail fast for a while, then let one probe through.

States: closed (normal) -> open (fail fast for `reset_s`) -> half_open (one probe in flight; its outcome
closes or re-opens the breaker). Failing fast matters behind a load balancer: a replica whose model
server is dead answers 503 in microseconds and says so in /ready, instead of holding every client for
the whole connect-retry budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    reset_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0  # consecutive
    opened_at: float | None = None
    probing: bool = False  # a half-open probe is in flight
    probe_started_at: float = 0.0
    trips: int = 0  # how many times it opened (for metrics/health)
    _last_error: str = field(default="", repr=False)

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at < self.reset_s:
            return "open"
        return "half_open"

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self.clock() - self.opened_at))

    def allow(self) -> bool:
        """May a request go upstream now? In half-open state only one probe at a time may."""
        state = self.state
        if state == "closed":
            return True
        # A probe whose owner never reported back (a leak) stops blocking after reset_s.
        if state == "open" or (self.probing and self.clock() - self.probe_started_at < self.reset_s):
            return False
        self.probing = True
        self.probe_started_at = self.clock()
        return True

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False
        self._last_error = ""

    def record_failure(self, reason: str = "") -> None:
        self.failures += 1
        self._last_error = reason
        was_probe = self.probing
        self.probing = False
        if was_probe or self.failures >= self.failure_threshold:
            if self.opened_at is None or was_probe:
                self.trips += 1
            self.opened_at = self.clock()

    def release(self) -> None:
        """A request that went through ended with neither verdict (e.g. the client cancelled it)."""
        self.probing = False

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state, "consecutive_failures": self.failures, "trips": self.trips,
                "retry_after_s": round(self.retry_after(), 3), "last_error": self._last_error}
