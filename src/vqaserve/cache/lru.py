"""L1: an in-process LRU of encoded answers, bounded by entry count and by bytes.

Values are kept encoded, so every `get` hands out a fresh Answer (the pipeline stamps timings and
request ids on it) and the byte bound counts what is really held.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from vqaserve.cache import codec
from vqaserve.types import Answer

_ENTRY_OVERHEAD = 120  # dict slot + key string, roughly; keeps tiny values from looking free


class LRUCache:
    level = "l1"

    def __init__(self, max_entries: int = 1000, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("VQA_CACHE_SIZE and the L1 byte bound must be >= 0 (0 turns L1 off)")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # callers may share it across threads (bench, CLI)
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @staticmethod
    def _size(key: str, raw: bytes) -> int:
        return len(key) + len(raw) + _ENTRY_OVERHEAD

    def get_raw(self, key: str) -> bytes | None:
        with self._lock:
            raw = self._data.get(key)
            if raw is not None:
                self._data.move_to_end(key)
            return raw

    async def get(self, key: str) -> Answer | None:
        answer = codec.decode(key, self.get_raw(key))
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    async def put(self, key: str, answer: Answer) -> None:
        self.put_raw(key, codec.encode(key, answer))

    def put_raw(self, key: str, raw: bytes) -> None:
        size = self._size(key, raw)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= self._size(key, old)
            if size > self.max_bytes or self.max_entries == 0:
                return  # larger than the whole cache: not worth evicting everything for
            self._data[key] = raw
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                k, v = self._data.popitem(last=False)
                self._bytes -= self._size(k, v)
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def stats(self) -> dict[str, float]:
        return {"l1_hits": self.hits, "l1_misses": self.misses, "l1_entries": len(self._data),
                "l1_bytes": self._bytes, "l1_evictions": self.evictions}
