"""The image stage: fetch, decode, fit to the budget and hash a question's pictures, remembering decodes.

A cache hit still needs the picture's content hash, and computing it means decoding the base64,
decoding the picture and resizing it (~5-10 ms for a catalogue photo, far more for a 12 MP JPEG).
Shops send the very same upload again and again, so the first decode is remembered under a digest
of what was sent (the upload's bytes, the data URI's text, or a fetched URL's bytes) and the pixel
budget: `normalize` is deterministic, so the same input under the same budget gives the same
NormalizedImage. A repeat then costs one blake2b (~0.1 ms per 100 kB). Re-encoded copies miss
here, are decoded in full, and still hit the answer cache by pixels: this only skips repeated work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from vqaserve.bounded_lru import BoundedLRU
from vqaserve.images import decode as imgs
from vqaserve.settings import Settings
from vqaserve.types import ImageRef, NormalizedImage, Part

if TYPE_CHECKING:
    from vqaserve.components import ImageLoader

# Inputs up to this size are hashed for the memo on the event loop (~0.1 ms per 100 kB); larger
# ones in the image pool, so a 12 MP upload never blocks the loop.
HASH_ON_LOOP_BYTES = 256 * 1024


class DecodedImageMemo:
    """A thread-safe LRU of NormalizedImages keyed by (digest of the input, pixel budget), bounded by
    entries and by the decoded pixels it holds. `entries=0` turns it off."""

    def __init__(self, entries: int = 128, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.entries = entries
        self._items: BoundedLRU[bytes, NormalizedImage] = BoundedLRU(
            entries, max_bytes=max_bytes, size=lambda _, image: image.memory_bytes)
        self.hits = 0
        self.misses = 0
        self._count_lock = threading.Lock()  # the image pool's threads share the memo

    def key(self, source: bytes | str, min_pixels: int, max_pixels: int,
            max_image_pixels: int) -> bytes | None:
        """The memo key of an input (None when the memo is off). Text (a data URI) and bytes (an
        upload) are told apart, so the same characters sent both ways are two entries."""
        if self.entries <= 0:
            return None
        raw, kind = (source.encode(), b"t") if isinstance(source, str) else (source, b"b")
        budget = f"{min_pixels}:{max_pixels}:{max_image_pixels}".encode()
        return kind + hashlib.blake2b(raw, digest_size=16).digest() + budget

    def get(self, key: bytes, name: str = "image") -> NormalizedImage | None:
        found = self._items.get(key)
        if found is None:
            return None
        with self._count_lock:
            self.hits += 1
        # The pixels are shared (nothing downstream writes to them); the name is this request's.
        return found if found.source == name else dataclasses.replace(found, source=name)

    def put(self, key: bytes, image: NormalizedImage) -> None:
        with self._count_lock:
            self.misses += 1
        self._items.put(key, image)  # a racing decode of the same input replaces it with equal pixels

    def normalize(self, data: bytes, min_pixels: int, max_pixels: int, max_image_pixels: int,
                  name: str = "image") -> NormalizedImage:
        """`images.normalize` through the memo."""
        key = self.key(data, min_pixels, max_pixels, max_image_pixels)
        found = self.get(key, name) if key is not None else None
        if found is not None:
            return found
        image = imgs.normalize(data, min_pixels, max_pixels, max_image_pixels, name)  # may raise
        if key is not None:
            self.put(key, image)
        return image

    def __len__(self) -> int:
        return len(self._items)


class PictureLoader:
    """The pipeline's image stage: every image part of a question becomes a NormalizedImage.

    URLs are fetched on the event loop (async I/O); decoding and resizing (CPU work, the GIL mostly
    released by Pillow) run in the image pool; a re-sent input comes from the memo, and a small one
    without even a hop to the pool.
    """

    def __init__(self, settings: Settings, pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.pool = pool
        self.memo = DecodedImageMemo(settings.images.decoded_memo)

    async def load(self, parts: list[Part], min_pixels: int, max_pixels: int,
                   fetcher: ImageLoader | None = None) -> None:
        """Resolve every part's image_ref into part.image (the fetcher loads URLs; None refuses them)."""
        budget = (min_pixels, max_pixels, self.settings.images.max_image_pixels)
        await asyncio.gather(*(self._one(part, budget, fetcher) for part in parts))

    async def _one(self, part: Part, budget: tuple[int, int, int], fetcher: ImageLoader | None) -> None:
        ref = part.image_ref
        assert ref is not None
        data = await imgs.read_ref(ref, self.settings, fetcher) if ref.kind == "url" else None
        key = None
        if len(data if data is not None else ref.payload) <= HASH_ON_LOOP_BYTES:
            key, found = self._remembered(ref, data, budget)
            if found is not None:
                part.image, part.image_ref = found, None
                return
        loop = asyncio.get_running_loop()
        part.image = await loop.run_in_executor(self.pool, self._decode, ref, data, key, budget)
        part.image_ref = None

    def _remembered(self, ref: ImageRef, data: bytes | None,
                    budget: tuple[int, int, int]) -> tuple[bytes | None, NormalizedImage | None]:
        """The memo key of what the client sent (fetched bytes, an upload, a data URI's text; never a
        local path, whose file may change) and the picture remembered under it, if any."""
        source = data if data is not None else ref.payload if ref.kind in ("bytes", "data") else None
        key = None if source is None else self.memo.key(source, *budget)
        return key, (self.memo.get(key, ref.name) if key is not None else None)

    def _decode(self, ref: ImageRef, data: bytes | None, key: bytes | None,
                budget: tuple[int, int, int]) -> NormalizedImage:
        if key is None:  # a large input: hashed here, off the loop
            key, found = self._remembered(ref, data, budget)
            if found is not None:
                return found
        if data is None:
            data = imgs.read_inline_ref(ref, self.settings)
        image = imgs.normalize(data, *budget, ref.name)
        if key is not None:
            self.memo.put(key, image)
        return image
