"""Helpers for the capture tests: records with real pictures, and a store of either kind."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vqaserve.capture import CapturedPicture, CaptureRecord, Feedback, open_store
from vqaserve.capture.record import utc_now
from vqaserve.images.decode import content_hash

BACKENDS = ["sqlite", "postgresql"]


def picture(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> CapturedPicture:
    image = Image.new("RGB", size, color)
    image.putpixel((1, 1), (255 - color[0], 255 - color[1], 255 - color[2]))
    return CapturedPicture(content_hash(image), image, size[0] * size[1] * 3)


def record(cid: str, *, question: str = "What is it?", answer: str = "a hat",
           pictures: tuple[CapturedPicture, ...] = (), created: datetime | None = None,
           feedback: Feedback | None = None, **fields: Any) -> CaptureRecord:
    turns = fields.pop("turns", None) or ({"role": "user", "text": question, "images": len(pictures)},)
    return CaptureRecord(id=cid, model=fields.pop("model", "shop-toy"), answer=answer, turns=turns, pictures=pictures,
                         created=created or utc_now(), feedback=feedback, **fields)


def ago(**delta: float) -> datetime:
    return utc_now() - timedelta(**delta)


def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> str:
    """A new SQLite file, or a fresh PostgreSQL database (the test's `request` gets the fixture)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'capture.db'}"
    assert request is not None
    return str(request.getfixturevalue("postgres_url"))


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> Any:
    return open_store(store_url(kind, tmp_path, request))
