"""Shared fixtures. Subprocess helpers run `python -m vqaserve` from *this* checkout's src.

Where the shared pieces live, one of each: servers.py (uvicorn in a thread, `vqa serve` as a process),
redis_fixture.py, postgres_fixture.py, vllm_support.py (the real services: `make test` installs them,
so a missing one fails, it never skips), waiting.py (wait_until, wait_until_async), pipelines.py (a
Pipeline wired as production wires it). Data URIs: vqaserve.images.decode.data_uri.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from vqaserve.bench.procs import free_port  # noqa: F401 - one port picker, re-exported for tests

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# The fixtures of the real services, defined once for the whole run. (A fixture imported into a test
# module is a new definition there: a session-scoped server would start once per importing module.)
pytest_plugins = ["tests.redis_fixture", "tests.postgres_fixture", "tests.vllm_support"]


def vqa_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqaserve", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VQA_")}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def image_bytes(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (200, 30, 30),
                fmt: str = "PNG", **save: object) -> bytes:
    img = Image.new("RGB", size, color)
    # a little structure so resizes and hashes are not trivial
    for x in range(0, size[0], 8):
        for y in range(0, size[1], 8):
            if (x // 8 + y // 8) % 2:
                img.putpixel((x, y), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _clean_vqa_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit a developer's VQA_* environment."""
    for key in list(os.environ):
        if key.startswith("VQA_"):
            monkeypatch.delenv(key, raising=False)


def tiled_image(size: tuple[int, int] = (320, 192), tile: int = 16):
    """Uniform 16x16 tiles: JPEG (4:4:4, q=100) encodes each 8x8 block exactly alike in any rotation."""
    img = Image.new("RGB", size)
    palette = [(220, 40, 40), (40, 200, 60), (30, 60, 220), (240, 240, 240), (20, 20, 20)]
    for ty in range(0, size[1], tile):
        for tx in range(0, size[0], tile):
            color = palette[((tx // tile) * 3 + (ty // tile) * 7 + (tx * ty) % 5) % len(palette)]
            img.paste(color, (tx, ty, tx + tile, ty + tile))
    return img
