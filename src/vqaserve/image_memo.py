"""Decoded pictures remembered by the bytes they came from.

A cache hit still needs the picture's content hash, and computing it means decoding and resizing the
upload (~5-10 ms for a catalogue photo, far more for a 12 MP JPEG). Shops send the very same bytes
again and again, so the first decode of some bytes is remembered: the same bytes under the same
pixel budget give the same NormalizedImage (normalize is deterministic), at the cost of one
blake2b over the bytes (~0.3 ms per 300 kB). Re-encoded copies still go through the full decode and
still hit the answer cache by pixels; this only skips repeated work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict

from vqaserve import images as imgs
from vqaserve.types import NormalizedImage


class DecodedImageMemo:
    """A thread-safe LRU of NormalizedImages keyed by (bytes digest, pixel budget), bounded by
    entries and by the decoded pixels it holds. `entries=0` turns it off."""

    def __init__(self, entries: int = 128, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, NormalizedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def normalize(self, data: bytes, min_pixels: int, max_pixels: int, max_image_pixels: int,
                  name: str = "image") -> NormalizedImage:
        if self.entries <= 0:
            return imgs.normalize(data, min_pixels, max_pixels, max_image_pixels, name)
        budget = f"{min_pixels}:{max_pixels}:{max_image_pixels}".encode()
        key = hashlib.blake2b(data, digest_size=16).digest() + budget
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
        if found is not None:
            # The pixels are shared (nothing downstream writes to them); the name is this request's.
            return found if found.source == name else dataclasses.replace(found, source=name)
        image = imgs.normalize(data, min_pixels, max_pixels, max_image_pixels, name)  # may raise
        self._remember(key, image)
        return image

    def _remember(self, key: bytes, image: NormalizedImage) -> None:
        size = image.width * image.height * 3
        if size > self.max_bytes:
            return
        with self._lock:
            self.misses += 1
            if key in self._items:
                return
            self._items[key] = image
            self._bytes += size
            while len(self._items) > self.entries or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.width * old.height * 3

    def __len__(self) -> int:
        return len(self._items)
