"""Capture off the request path: `submit()` only appends to a bounded queue; one background task
encodes pictures and writes batches. The design rule: capture never slows or fails an answer.

- `submit(record)` is a plain function (it cannot await anything): it samples, queues and returns.
  A full queue (by records or by the bytes of the pictures it holds) drops the record.
- The task writes up to `batch_max` records per transaction. A failed or slow write (past
  `write_timeout_s`) drops that batch and pauses writing for `retry_s` while the queue keeps taking
  records (the oldest overflow is dropped); then it tries again, so a database that comes back is
  used again without a restart.
- Every dropped record is counted by reason (`DROP_REASONS`), for /metrics (capture/metrics.py).
- Sampling is decided per response id with a keyed hash, so a request is in or out wherever it is
  decided (replicas, retries). Records of refused answers (`content_filter`) are never kept.
- With `retention_days`, records older than that are purged at start and every `purge_every_s`.
- `close(timeout_s)` stops taking records, writes what is queued within the timeout, counts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypeVar

from vqaserve.capture.record import CapturedPicture, CaptureRecord, Feedback, FeedbackResult, utc_now
from vqaserve.capture.store import CaptureStore

log = logging.getLogger("vqaserve.capture")
T = TypeVar("T")

DROP_REASONS = ("queue_full", "write_failed", "closed")


def sampled(response_id: str, fraction: float, key: str = "vqa-capture") -> bool:
    """Stable per id: the same id gets the same answer for the same fraction and key."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(response_id.encode(), key=key.encode()[:64], digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


@dataclass
class CaptureStats:
    written: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    sampled_out: int = 0
    refused: int = 0  # answers a safety check refused: never captured
    queued: int = 0
    queued_bytes: int = 0
    database_up: bool = True
    purged: int = 0


class CaptureWriter:
    def __init__(self, store: CaptureStore, *, sample: float = 1.0, images: bool = True,
                 retention_days: int = 0, queue_max: int = 1000, queue_max_bytes: int = 256 << 20,
                 batch_max: int = 64, flush_interval_s: float = 0.25, write_timeout_s: float = 10.0,
                 retry_s: float = 5.0, purge_every_s: float = 3600.0, sample_key: str = "vqa-capture") -> None:
        self.store = store
        self.sample = sample
        self.images = images
        self.retention_days = retention_days
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_s
        self.write_timeout_s = write_timeout_s
        self.retry_s = retry_s
        self.purge_every_s = purge_every_s
        self.sample_key = sample_key
        self._queue: deque[CaptureRecord] = deque()
        self._lock = threading.Lock()  # submit() may be called from another thread than the loop's
        self._stats = CaptureStats()
        self._pending: dict[str, asyncio.Event] = {}  # ids queued or being written, for set_feedback
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._abandoned: set[asyncio.Task[Any]] = set()  # timed-out writes still cancelling
        self._closing = False
        self._paused_until = 0.0

    @classmethod
    def from_settings(cls, capture: Any, **overrides: Any) -> CaptureWriter:
        """The writer for `settings.capture` (requires `capture.url`)."""
        from vqaserve.capture.store import open_store

        return cls(open_store(capture.url), sample=capture.sample, images=capture.images,
                   retention_days=capture.retention_days, queue_max=capture.queue_max,
                   queue_max_bytes=capture.queue_max_mb << 20, **overrides)

    # --- the request path -----------------------------------------------------------------------
    def wants(self, response_id: str) -> bool:
        """Whether this response is sampled in: callers may skip building the record otherwise."""
        return sampled(response_id, self.sample, self.sample_key)

    def submit(self, record: CaptureRecord) -> bool:
        """Queue a record; never waits. False when it is not kept (sampled out, refused, dropped)."""
        with self._lock:
            if record.finish_reason == "content_filter":
                self._stats.refused += 1
                return False
            if not self.wants(record.id):
                self._stats.sampled_out += 1
                return False
            if self._closing:
                self._stats.dropped["closed"] += 1
                return False
            if not self.images and record.pictures:  # hashes only: let the pictures go now
                record = replace(record, pictures=tuple(CapturedPicture(p.content_hash) for p in record.pictures))
            size = record.memory_bytes
            if len(self._queue) >= self.queue_max or self._stats.queued_bytes + size > self.queue_max_bytes:
                self._stats.dropped["queue_full"] += 1
                return False
            self._queue.append(record)
            self._stats.queued_bytes += size
            self._pending.setdefault(record.id, asyncio.Event())
            if len(self._queue) == self.batch_max:  # a full batch: write now, not at the next tick
                self._poke()
        return True

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    # --- the background task --------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background task on the running loop (the server's lifespan calls this)."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="vqa-capture-writer")

    async def _run(self) -> None:
        next_purge = time.monotonic()
        while True:
            if self.retention_days > 0 and time.monotonic() >= next_purge:
                await self._purge()
                next_purge = time.monotonic() + self.purge_every_s
            if self._closing and not self._queue:
                return
            if not self._closing and len(self._queue) < self.batch_max:
                await self._sleep(self.flush_interval_s)
            pause = self._paused_until - time.monotonic()
            if pause > 0 and not self._closing:
                await self._sleep(pause)
                continue
            await self._write_batch()

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()  # after, not before: a poke that came before the sleep ends it at once

    def _take(self) -> list[CaptureRecord]:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self.batch_max, len(self._queue)))]
            self._stats.queued_bytes -= sum(r.memory_bytes for r in batch)
            return batch

    async def _write_batch(self) -> None:
        batch = self._take()
        if not batch:
            return
        try:
            await self._bounded(self._write(batch), self.write_timeout_s)
        except asyncio.CancelledError:  # close() gave up on this batch
            self._count("closed", len(batch))
            raise
        except Exception as exc:  # noqa: BLE001 - any failure only costs these capture rows
            self._count("write_failed", len(batch))
            if self._stats.database_up:
                log.warning("capture: %d record(s) dropped, writing paused %.0f s: %s", len(batch),
                            self.retry_s, getattr(exc, "message", None) or repr(exc))
            self._stats.database_up = False
            self._paused_until = time.monotonic() + self.retry_s
        else:
            with self._lock:
                self._stats.written += len(batch)
            if not self._stats.database_up:
                log.warning("capture: the database answers again; writing resumed")
            self._stats.database_up = True
        finally:
            self._release(batch)

    async def _bounded(self, work: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """`work` within `timeout_s`, without waiting for its cancellation to finish: a driver may
        spend its own connect timeout cancelling a statement on a hung server."""
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(self._forget)
            raise TimeoutError(f"no answer in {timeout_s:g} s")
        return task.result()

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it was counted when it timed out

    async def _write(self, batch: list[CaptureRecord]) -> None:
        pictures: dict[str, bytes] = {}
        if self.images:
            images = {p.content_hash: p.image for r in batch for p in r.pictures if p.image is not None}
            missing = await self.store.missing_pictures(images)
            if missing:
                pictures = await asyncio.to_thread(lambda: {h: encode_png(images[h]) for h in sorted(missing)})
        await self.store.write(batch, pictures)

    def _release(self, batch: list[CaptureRecord]) -> None:
        """Wake set_feedback/delete callers waiting on these records (unless the id is queued again)."""
        with self._lock:
            queued = {r.id for r in self._queue}
            events = [self._pending.pop(r.id, None) for r in batch if r.id not in queued]
        for event in events:
            if event is not None:
                event.set()

    def _count(self, reason: str, n: int) -> None:
        with self._lock:
            self._stats.dropped[reason] += n

    async def _purge(self) -> None:
        try:
            gone = await self._bounded(self.store.purge(utc_now() - timedelta(days=self.retention_days)),
                                       self.write_timeout_s * 6)
        except Exception as exc:  # noqa: BLE001 - retried at the next purge
            log.warning("capture: retention purge failed (retried in %.0f s): %s", self.purge_every_s,
                        getattr(exc, "message", None) or repr(exc))
            return
        with self._lock:
            self._stats.purged += gone

    # --- for the routes and /metrics ------------------------------------------------------------
    async def set_feedback(self, capture_id: str, feedback: Feedback, wait_s: float = 2.0) -> FeedbackResult:
        """Rate a record; if it is still queued (just answered), wait up to `wait_s` for its write."""
        event = self._pending.get(capture_id)
        if event is not None:
            self._poke()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait_s)
        return await self.store.set_feedback(capture_id, feedback)

    async def delete(self, capture_id: str, wait_s: float = 2.0) -> bool:
        """Delete a record (DELETE /v1/captures/{id}), also one still queued, so a write that comes
        later cannot bring it back. False when there is no such record."""
        with self._lock:
            queued = [r for r in self._queue if r.id == capture_id]
            for r in queued:
                self._queue.remove(r)
                self._stats.queued_bytes -= r.memory_bytes
        if queued:
            self._release(queued)
        event = self._pending.get(capture_id)
        if event is not None:  # in a batch being written right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait_s)
        return await self.store.delete(capture_id) or bool(queued)

    def stats(self) -> CaptureStats:
        with self._lock:
            return CaptureStats(written=self._stats.written, dropped=dict(self._stats.dropped),
                                sampled_out=self._stats.sampled_out, refused=self._stats.refused,
                                queued=len(self._queue), queued_bytes=self._stats.queued_bytes,
                                database_up=self._stats.database_up, purged=self._stats.purged)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued within `timeout_s`; what is left is dropped ("closed") and counted."""
        with self._lock:
            self._closing = True
        task, self._task = self._task, None
        if task is not None:
            self._poke()
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)  # its batch is counted as "closed" as it stops
        left = self._take_all()
        if left:
            self._count("closed", len(left))
            log.warning("capture: %d record(s) not written before shutdown", len(left))
        with contextlib.suppress(Exception):
            await self._bounded(self.store.close(), timeout_s)

    def _take_all(self) -> list[CaptureRecord]:
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            self._stats.queued_bytes = 0
        self._release(left)
        return left
