"""Near-duplicate photos (opt-in, VQA_CACHE_NEAR_DUPLICATES=1): one canonical hash per product photo.

The same photo re-encoded (another JPEG quality, resized, re-saved as PNG) has other pixels and so
another content hash. This index maps it to the content hash of the first copy it saw:

1. a 64-bit DCT perceptual hash (pHash) over a 32x32 grey thumbnail finds candidates within a small
   Hamming distance (a brute-force XOR + popcount over all remembered images: microseconds);
2. every candidate is *verified* on a 96x96 colour thumbnail: the original aspect ratio must agree,
   the mean difference must be small, and no thumbnail pixel may fall outside the range of the
   other picture's 3x3 neighbourhood by more than a small margin (an "envelope" test: the blur of a
   resize or JPEG's ringing stay inside the envelope, a new colour, a moved item, another pattern,
   or a label or logo a few percent of the picture wide do not), so a different product does not
   pass even when its pHash is close.

Only canonical images are remembered (a copy never becomes a new anchor, so matches cannot drift
along a chain of slightly different pictures). The index is bounded: the oldest anchors go first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqaserve.bounded_lru import BoundedLRU

if TYPE_CHECKING:
    from PIL import Image

    from vqaserve.types import NormalizedImage

HASH_SIDE = 32  # grey thumbnail for the DCT
THUMB_SIDE = 96  # colour thumbnail for verification: 27 kB per remembered image


@dataclass(frozen=True)
class Thresholds:
    max_hamming: int = 12  # of 64 pHash bits
    max_aspect_diff: float = 0.03  # relative, on the original (pre-resize) sizes
    max_mean_diff: float = 5.0  # mean |difference| of thumbnail channels, 0..255
    max_envelope_diff: int = 72  # worst pixel outside the other's 3x3 neighbourhood range, 0..255


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(HASH_SIDE)
_BITS = np.uint64(1) << np.arange(64, dtype=np.uint64)


def phash(image: Image.Image) -> int:
    """64-bit DCT hash: signs of the 8x8 lowest frequencies (bar DC) against their median."""
    from PIL import Image as PILImage

    grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), PILImage.Resampling.BOX),
                      dtype=np.float64)
    freq = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()
    low = freq[1:]
    bits = np.append(low > np.median(low), freq[0] > 0)  # DC is always positive: a constant bit
    return int(np.sum(_BITS[bits.astype(bool)]))


def thumbnail(image: Image.Image) -> np.ndarray:
    from PIL import Image as PILImage

    small = image.resize((THUMB_SIDE, THUMB_SIDE), PILImage.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def _envelope(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel max and min over each pixel's 3x3 neighbourhood."""
    p = np.pad(a, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = a.shape[:2]
    shifted = np.stack([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    return shifted.max(axis=0), shifted.min(axis=0)


def envelope_distance(a: np.ndarray, b: np.ndarray) -> int:
    """How far any pixel of one thumbnail lies outside the other's local range (symmetric)."""
    a, b = a.astype(np.int16), b.astype(np.int16)
    a_hi, a_lo = _envelope(a)
    b_hi, b_lo = _envelope(b)
    out_b = np.maximum(b - a_hi, a_lo - b)
    out_a = np.maximum(a - b_hi, b_lo - a)
    return int(max(out_a.max(), out_b.max(), 0))


def thumbnails_match(a: np.ndarray, b: np.ndarray, t: Thresholds) -> tuple[bool, float]:
    mean = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
    return (mean <= t.max_mean_diff and envelope_distance(a, b) <= t.max_envelope_diff), mean


class NearDuplicateIndex:
    """canonical(image) -> the content hash of the verified near-duplicate seen first, or its own."""

    def __init__(self, max_images: int = 2_000, thresholds: Thresholds | None = None) -> None:
        if max_images < 1:
            raise ValueError("near_duplicates_max must be >= 1")
        self.capacity = max_images
        self.t = thresholds or Thresholds()
        self._hashes = np.zeros(max_images, dtype=np.uint64)
        self._aspects = np.zeros(max_images, dtype=np.float64)
        self._thumbs = np.zeros((max_images, THUMB_SIDE, THUMB_SIDE, 3), dtype=np.uint8)
        self._canon: list[str | None] = [None] * max_images
        self._used = 0
        self._next = 0  # ring position: the oldest anchor is replaced first
        # content hash -> canonical. A remembered mapping stays valid after its anchor leaves the ring:
        # it was verified.
        self._memo: BoundedLRU[str, str] = BoundedLRU(4 * max_images)
        self._lock = threading.Lock()
        self.lookups = 0
        self.near_hits = 0

    def __len__(self) -> int:
        return self._used

    def canonical(self, image: NormalizedImage) -> str:
        with self._lock:
            self.lookups += 1
            known = self._memo.get(image.content_hash)
            if known is not None:
                return known
        h = phash(image.image)
        thumb = thumbnail(image.image)
        w, h0 = image.original_size
        aspect = w / h0 if h0 else 0.0
        with self._lock:
            found = self._match(h, aspect, thumb)
            if found is None:
                found = image.content_hash
                self._insert(h, aspect, thumb, found)
            else:
                self.near_hits += 1
            self._memo.put(image.content_hash, found)
            return found

    def _match(self, h: int, aspect: float, thumb: np.ndarray) -> str | None:
        if self._used == 0:
            return None
        n = self._used
        distance = np.bitwise_count(self._hashes[:n] ^ np.uint64(h))
        aspect_ok = np.abs(self._aspects[:n] - aspect) <= self.t.max_aspect_diff * max(aspect, 1e-9)
        candidates = np.nonzero((distance <= self.t.max_hamming) & aspect_ok)[0]
        best: tuple[float, str] | None = None
        for slot in candidates[np.argsort(distance[candidates])][:16]:
            ok, mean = thumbnails_match(self._thumbs[slot], thumb, self.t)
            canon = self._canon[slot]
            if ok and canon is not None and (best is None or mean < best[0]):
                best = (mean, canon)
        return None if best is None else best[1]

    def _insert(self, h: int, aspect: float, thumb: np.ndarray, canon: str) -> None:
        slot = self._next
        self._hashes[slot] = np.uint64(h)
        self._aspects[slot] = aspect
        self._thumbs[slot] = thumb
        self._canon[slot] = canon
        self._next = (slot + 1) % self.capacity
        self._used = min(self._used + 1, self.capacity)

    def stats(self) -> dict[str, Any]:
        return {"neardup_images": self._used, "neardup_lookups": self.lookups,
                "neardup_hits": self.near_hits}
