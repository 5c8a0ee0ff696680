"""A cheap identity of model weights on disk, so a retrained model under the same name (or a changed
adapter) never gets answers cached for the old one (the cache key includes it)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20  # sample 1 MiB at the start, middle and end: retrained weights differ everywhere
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")


def weights_fingerprint(sources: Iterable[str]) -> str:
    """Hash of each source's weight/config files (name, size, sampled bytes); hub ids by name."""
    digest = hashlib.blake2b(digest_size=8)
    for source in sources:
        root = Path(source)
        digest.update(source.encode() if not root.is_dir() else b"dir")
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if not (path.is_file() and path.suffix in WEIGHT_SUFFIXES) or path.name == "train.json":
                continue
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with path.open("rb") as handle:
                for offset in sorted({0, max(0, size // 2 - CHUNK // 2), max(0, size - CHUNK)}):
                    handle.seek(offset)
                    digest.update(handle.read(CHUNK))
    return digest.hexdigest()
