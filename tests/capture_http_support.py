"""Helpers for the capture tests over HTTP and in the browser: an app that captures to a store the test
can read, waiting for the writer, and seeding a store with answers to review."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from vqaserve.capture import CaptureQuery, CaptureRecord, CaptureStore, open_store

T = TypeVar("T")


def with_store(url: str, work: Callable[[CaptureStore], Awaitable[T]]) -> T:
    """`work(store)` on a store of its own (the server's writer keeps its connection)."""

    async def run() -> T:
        store = open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    # A thread of its own: the caller may already run an event loop (Playwright's sync API does).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()


def stored(url: str, **filters: Any) -> list[CaptureRecord]:
    return with_store(url, lambda store: store.query(CaptureQuery(limit=1000, **filters)))


def stored_one(url: str, capture_id: str) -> CaptureRecord | None:
    return with_store(url, lambda store: store.get(capture_id))


def wait_stored(url: str, ids: list[str], timeout_s: float = 15.0) -> dict[str, CaptureRecord]:
    """The records of these ids once the writer has written them all (it writes every 0.25 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {r.id: r for r in stored(url) if r.id in ids}
        if len(found) == len(ids) or time.monotonic() > deadline:
            assert set(found) == set(ids), f"not captured: {set(ids) - set(found)}"
            return found
        time.sleep(0.1)


def seed(url: str, records: list[CaptureRecord], pictures: dict[str, bytes] | None = None) -> None:
    """Write records straight into the store (answers captured earlier, e.g. with a confidence)."""
    with_store(url, lambda store: store.write(records, pictures or {}))


def png_of(picture: Any) -> bytes:
    from vqaserve.capture.writer import encode_png

    return encode_png(picture.image)
