"""One least-recently-used map for every in-process memo: bounded by entries, optionally by bytes and age.

Used by the L1 answer cache, the decoded-image memo, the vision-feature memo, the grammar cache, the
upstream image encoder, the safety checker's passed pictures and the near-duplicate memo. A library
LRU (cachetools) bounds by one measure only and refuses an item larger than the whole cache with an
error; these callers need entries AND bytes at once, and an over-size item either skipped quietly or
(`keep_newest`) kept alone. Thread-safe: several callers share one across the image pool's threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Slot(NamedTuple, Generic[V]):
    value: V
    size: int  # measured once, at put: the same number is subtracted when it leaves
    born: float


class BoundedLRU(Generic[K, V]):
    """`max_entries <= 0` stores nothing. `max_bytes` needs `size(key, value)`; `ttl_s` ages entries
    from when they were put. Bounds are plain attributes: changing one applies from the next put."""

    def __init__(self, max_entries: int, *, max_bytes: int | None = None,
                 size: Callable[[K, V], int] | None = None, ttl_s: float | None = None,
                 keep_newest: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes is not None and size is None:
            raise ValueError("max_bytes needs a size function")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        # keep_newest: the entry just put always stays (it is in use now), even alone over the bounds.
        self.keep_newest = keep_newest
        self.clock = clock
        self._size = size
        self._slots: OrderedDict[K, _Slot[V]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0  # entries pushed out by the bounds (not replaced, expired or cleared)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        """Present (expired or not); does not count as a use."""
        return key in self._slots

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None when absent or older than `ttl_s`."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return None
            if self.ttl_s is not None and self.clock() - slot.born > self.ttl_s:
                self._drop(key)
                return None
            self._slots.move_to_end(key)
            return slot.value

    def put(self, key: K, value: V) -> bool:
        """Store (replacing any value under `key`) and evict the least recently used over the bounds.
        False when the value was not stored: the map is off, or the value alone exceeds `max_bytes`."""
        size = self._size(key, value) if self._size is not None else 0
        with self._lock:
            if key in self._slots:
                self._drop(key)
            too_big = self.max_bytes is not None and size > self.max_bytes
            if self.max_entries <= 0 or (too_big and not self.keep_newest):
                return False  # larger than the whole map: not worth evicting everything for
            self._slots[key] = _Slot(value, size, self.clock())
            self._bytes += size
            floor = 1 if self.keep_newest else 0
            while len(self._slots) > floor and self._over():
                self._drop(next(iter(self._slots)))
                self.evictions += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._bytes = 0

    def _over(self) -> bool:
        return len(self._slots) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes)

    def _drop(self, key: K) -> None:
        self._bytes -= self._slots.pop(key).size
