"""L1: an in-process LRU of encoded answers, bounded by entry count and by bytes.

Values are kept encoded, so every `get` hands out a fresh Answer (the pipeline stamps timings and
request ids on it) and the byte bound counts what is really held.
"""

from __future__ import annotations

from vqaserve.bounded_lru import BoundedLRU
from vqaserve.cache import codec
from vqaserve.types import Answer

_ENTRY_OVERHEAD = 120  # dict slot + key string, roughly; keeps tiny values from looking free


def _size(key: str, raw: bytes) -> int:
    return len(key) + len(raw) + _ENTRY_OVERHEAD


class LRUCache:
    level = "l1"

    def __init__(self, max_entries: int = 1000, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("VQA_CACHE_SIZE and the L1 byte bound must be >= 0 (0 turns L1 off)")
        self._data: BoundedLRU[str, bytes] = BoundedLRU(max_entries, max_bytes=max_bytes, size=_size)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def max_entries(self) -> int:
        return self._data.max_entries

    @property
    def nbytes(self) -> int:
        return self._data.nbytes

    @property
    def evictions(self) -> int:
        return self._data.evictions

    def get_raw(self, key: str) -> bytes | None:
        return self._data.get(key)

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
        self._data.put(key, raw)

    def clear(self) -> None:
        self._data.clear()

    def stats(self) -> dict[str, float]:
        return {"l1_hits": self.hits, "l1_misses": self.misses, "l1_entries": len(self._data),
                "l1_bytes": self._data.nbytes, "l1_evictions": self._data.evictions}
