"""The one bounded LRU behind every in-process memo: entries, bytes, age, and the over-size rules."""

from __future__ import annotations

import pytest

from vqaserve.bounded_lru import BoundedLRU

pytestmark = pytest.mark.unit


def test_least_recently_used_goes_first() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now "b" is the least recently used
    assert "b" in lru  # looking does not count as a use
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3
    assert len(lru) == 2 and lru.evictions == 1


def test_bytes_bound_and_an_over_size_value_is_skipped_and_drops_the_old_one() -> None:
    lru: BoundedLRU[str, bytes] = BoundedLRU(100, max_bytes=10, size=lambda _, v: len(v))
    assert lru.put("a", b"12345") and lru.put("b", b"12345")
    assert lru.nbytes == 10
    lru.put("c", b"1")
    assert "a" not in lru and lru.nbytes == 6
    assert not lru.put("b", b"x" * 11)  # bigger than the whole map
    assert "b" not in lru and lru.nbytes == 1 and lru.evictions == 1
    lru.put("c", b"12")  # a replacement is counted once
    assert lru.nbytes == 2


def test_keep_newest_keeps_an_over_size_value_alone() -> None:
    lru: BoundedLRU[str, bytes] = BoundedLRU(5, max_bytes=4, size=lambda _, v: len(v), keep_newest=True)
    lru.put("a", b"12")
    assert lru.put("big", b"123456789")
    assert len(lru) == 1 and lru.get("big") == b"123456789"
    lru.put("b", b"1")
    assert len(lru) == 1 and "big" not in lru


def test_entries_expire_after_ttl() -> None:
    now = [0.0]
    lru: BoundedLRU[str, int] = BoundedLRU(10, ttl_s=5.0, clock=lambda: now[0])
    lru.put("a", 1)
    now[0] = 5.0
    assert lru.get("a") == 1  # a use does not renew it: age counts from the put
    now[0] = 5.1
    assert lru.get("a") is None and len(lru) == 0 and lru.evictions == 0


def test_off_and_misconfigured() -> None:
    off: BoundedLRU[str, int] = BoundedLRU(0)
    assert not off.put("a", 1) and len(off) == 0
    with pytest.raises(ValueError, match="size function"):
        BoundedLRU(10, max_bytes=10)
    bounded: BoundedLRU[str, int] = BoundedLRU(3)
    for i in range(3):
        bounded.put(str(i), i)
    bounded.max_entries = 1  # a changed bound applies from the next put
    bounded.put("x", 9)
    assert len(bounded) == 1 and bounded.get("x") == 9
    bounded.clear()
    assert len(bounded) == 0 and bounded.nbytes == 0
