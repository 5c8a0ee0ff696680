"""One circuit breaker for every backend that may die or stall (the upstream model server, Redis).

closed (calls go through) -> after `failure_threshold` consecutive failures, open: calls fail fast
for `reset_s` -> half_open: one probe decides; success closes, failure opens again for twice as long,
up to `max_reset_s` (default `reset_s`: no growth). Failing fast matters behind a load balancer: a
replica whose backend is dead answers in microseconds and says so in /ready, instead of holding every
client for the whole connect-retry budget.

Who probes: without `probe`, the next request after `reset_s` is let through as the probe (the
upstream engine, the rate limiter). With `probe` (an async callable), a background task runs it and
requests never wait for one (the Redis cache: a skipped call is just a miss); then, while the breaker
is not closed, only that probe judges the backend: a request admitted before the breaker opened and
finishing after says nothing newer.

Callers go through `guard()`: a context manager that refuses the call when the breaker is open
(BreakerOpen), and on the way out gives the one verdict the call earned — a success, a failure (an
exception of the kinds the caller names, or one it reports with `call.fail(...)`), or none at all
(cancelled, or `call.abstain()`: e.g. the caller's own short deadline passed, which says nothing of
the backend). No call site spells out allow/record/release.

Exporters read `state`, `state_number`, `opens` and `snapshot()`; nothing here knows about metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal, TypedDict

log = logging.getLogger("vqaserve.breaker")

State = Literal["closed", "open", "half_open"]
STATE_NUMBER: dict[State, int] = {"closed": 0, "open": 1, "half_open": 2}  # for a Prometheus gauge


class BreakerSnapshot(TypedDict):
    """What /ready shows of a breaker (`trips`: how many times it opened)."""

    state: State
    consecutive_failures: int
    trips: int
    retry_after_s: float
    last_error: str


class BreakerOpen(Exception):
    """`guard()` refused a call: the backend is failing; try again in `retry_after` seconds."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(f"{breaker.name}: circuit breaker open")
        self.retry_after = breaker.retry_after()


class Call:
    """One call through `guard()`; the body may decide its verdict before it ends."""

    def __init__(self) -> None:
        self.verdict: Literal["success", "failure", "none"] | None = None
        self.reason = ""

    def succeed(self) -> None:
        """The backend answered (even if the answer is an error for the caller, such as a 400)."""
        self.verdict = "success"

    def fail(self, reason: str) -> None:
        """The backend is sick (a 5xx, a dropped connection, a hang)."""
        self.verdict, self.reason = "failure", reason

    def abstain(self) -> None:
        """The call ended without saying anything about the backend."""
        self.verdict = "none"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_s: float = 10.0, *, name: str = "backend",
                 max_reset_s: float | None = None, probe: Callable[[], Awaitable[object]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self.max_reset_s = max(reset_s, max_reset_s if max_reset_s is not None else reset_s)
        self.clock = clock
        self.failures = 0  # consecutive
        self.opens = 0  # how many times it opened (see _open)
        self.last_error = ""
        self._probe = probe
        self._opened_at: float | None = None
        self._open_for = reset_s  # the current open period (grows after failed probes)
        self._probing = False  # a half-open probe is in flight
        self._probe_started_at = 0.0
        self._task: asyncio.Task[None] | None = None

    # --- what exporters and /ready read --------------------------------------------------------------
    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at < self._open_for:
            return "open"
        return "half_open"

    @property
    def state_number(self) -> int:
        """0 closed, 1 open, 2 half-open (a gauge's value)."""
        return STATE_NUMBER[self.state]

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._open_for - (self.clock() - self._opened_at))

    def snapshot(self) -> BreakerSnapshot:
        return {"state": self.state, "consecutive_failures": self.failures, "trips": self.opens,
                "retry_after_s": round(self.retry_after(), 3), "last_error": self.last_error}

    # --- what callers report -------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, failures: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[Call]:
        """A call to the backend: BreakerOpen when it may not go now; on exit, its one verdict.

        Without a verdict from the body, leaving normally is a success, an exception of the kinds
        in `failures` a failure, anything else (cancellation above all) no verdict.
        """
        if not self.allow():
            raise BreakerOpen(self)
        call = Call()
        try:
            yield call
        except failures as exc:
            self._settle(call, default="failure", reason=type(exc).__name__)
            raise
        except BaseException:
            self._settle(call, default="none", reason="")
            raise
        self._settle(call, default="success", reason="")

    def _settle(self, call: Call, *, default: str, reason: str) -> None:
        verdict = call.verdict or default
        if verdict == "success":
            self.record_success()
        elif verdict == "failure":
            self.record_failure(call.reason or reason)
        else:
            self.release()

    def allow(self) -> bool:
        """May a call go to the backend now? Half-open: one request probe at a time, or none when a
        background probe decides."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probe is not None:
            return False
        # A probe whose owner never reported back (a leak) stops blocking after reset_s.
        if self._probing and self.clock() - self._probe_started_at < self.reset_s:
            return False
        self._probing = True
        self._probe_started_at = self.clock()
        return True

    def record_success(self) -> None:
        self.failures = 0
        if self._probe is not None and self._opened_at is not None:
            return  # the background probe alone closes it (see the module docstring)
        self._close()

    def record_failure(self, reason: str = "") -> None:
        self.failures += 1
        self.last_error = reason
        if self._probe is not None and self._opened_at is not None:
            return
        was_probe, self._probing = self._probing, False
        if was_probe:
            self._open(reason, longer=True)
        elif self.failures >= self.failure_threshold:
            self._open(reason, longer=False)

    def release(self) -> None:
        """A call that went through ended with neither verdict (e.g. the client cancelled it)."""
        self._probing = False

    # --- transitions ---------------------------------------------------------------------------------
    def _open(self, reason: str, *, longer: bool) -> None:
        if longer:  # a failed probe: the backend is still down, look again later than last time
            self._open_for = min(self._open_for * 2, self.max_reset_s)
        # `opens` counts the times calls were cut off after going through: from closed, or after a
        # request probe; a failed background probe let no call through, so it cuts nothing off.
        if self._opened_at is None or (longer and self._probe is None):
            self.opens += 1
        if self._opened_at is None:
            log.warning("%s unavailable (%s): circuit breaker open; next try in %.1f s", self.name, reason,
                        self._open_for)
        self._opened_at = self.clock()  # a late failure while open restarts the wait
        if self._probe is not None and (self._task is None or self._task.done()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover - failures are recorded inside async calls
                return
            self._task = loop.create_task(self._probe_loop(), name=f"{self.name}-breaker-probe")

    def _close(self) -> None:
        if self._opened_at is not None:
            log.warning("%s is back: circuit breaker closed", self.name)
        self._opened_at = None
        self._open_for = self.reset_s
        self._probing = False
        self.last_error = ""

    async def _probe_loop(self) -> None:
        assert self._probe is not None
        while self._opened_at is not None:
            await asyncio.sleep(self.retry_after())
            if self.state != "half_open":
                continue  # closed meanwhile, or a late failure restarted the wait
            try:
                await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any probe failure means: still down
                self.last_error = f"probe: {type(exc).__name__}"
                self._open(self.last_error, longer=True)
                continue
            self.failures = 0
            self._close()

    async def aclose(self) -> None:
        """Stop the background probe (the owner is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
