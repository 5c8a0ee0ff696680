"""The cache key: everything that can change an answer, and nothing that cannot.

Images enter by their normalized content hash (pixels + width, height, mode), so the same photo
as a PNG upload, a lossless JPEG or a data URI gives the same key, while the same pixel bytes in
another shape do not. Every turn's role, text and image position enters, as do the model, the
adapter, the generation params that change the output, the safety-policy version and the cache
schema version. Fields are length-prefixed so no two different requests serialize alike.

Models enter by their weights, not only their names: the base model as `NAME@FINGERPRINT` (the
pipeline's model identity) and an adapter by its version key `NAME@FINGERPRINT`
(engines/adapters.py), so an adapter reloaded with new weights never gets its predecessor's answers,
while the same weights loaded again find theirs. The adapter is the one that really answers: a canary
route (routing.py) is decided before the key is built.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vqaserve.types import NormalizedImage, Question

# Bump when the key layout or the stored value's meaning changes: old entries stop matching.
CACHE_SCHEMA_VERSION = 1


class ImageCanonicalizer(Protocol):
    """Maps an image to the hash the key uses (the near-duplicate index implements this)."""

    def canonical(self, image: NormalizedImage) -> str: ...


class CacheKeyBuilder:
    """Callable (question, model_id, policy) -> hex key; see pipeline.KeyBuilder."""

    def __init__(self, canonicalizer: ImageCanonicalizer | None = None) -> None:
        self.canonicalizer = canonicalizer
        # Tells the pipeline to build keys off the event loop (perceptual hashing costs milliseconds).
        self.blocking = canonicalizer is not None

    def _image_hash(self, image: NormalizedImage) -> str:
        if self.canonicalizer is not None:
            return self.canonicalizer.canonical(image)
        return image.content_hash

    def __call__(self, question: Question, model_id: str, policy: str) -> str:
        h = hashlib.blake2b(digest_size=20, person=b"vqaserve-cache")

        def field(tag: str, value: object) -> None:
            data = str(value).encode("utf-8", "surrogatepass")
            h.update(f"{tag}:{len(data)}:".encode())
            h.update(data)

        field("schema", CACHE_SCHEMA_VERSION)
        field("model", model_id)
        field("adapter", question.adapter or "")  # the version key: the weights' content, not the name
        field("policy", policy)
        p = question.params
        field("max_new_tokens", p.max_new_tokens)
        # All of them, even where greedy decoding would ignore one: a lost hit is cheap, a wrong one is not.
        field("decode", f"{p.temperature!r}:{p.top_p!r}:{p.top_k}:{p.seed}")
        field("stop", len(p.stop))
        for s in p.stop:
            field("s", s)
        # Only extensions away from their no-op default enter, so every key made before they
        # existed (all defaults) is unchanged and the cache survives the upgrade.
        for name, value in sorted(p.extensions().items()):
            field(name, repr(value))
        if p.json_schema:  # likewise absent for free text
            field("json_schema", p.json_schema)
        field("turns", len(question.turns))
        for turn in question.turns:
            field("role", turn.role)
            field("parts", len(turn.parts))
            for part in turn.parts:
                if part.image is not None:
                    field("img", self._image_hash(part.image))
                elif part.image_ref is not None:
                    # Never key on an unresolved reference (a URL's content can change).
                    raise ValueError("cache keys need normalized images; resolve image refs first")
                else:
                    field("txt", part.text or "")
        return h.hexdigest()
