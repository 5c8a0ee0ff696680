"""Helpers for the hostile-input tests (HOSTILE_INPUTS.md cases 1-25): payload builders and checks."""

from __future__ import annotations

import contextlib
import io
import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from PIL import Image

from vqaserve.errors import VQAError

# What must never reach a client: tracebacks, memory addresses, file paths, internal hosts/addresses.
_INTERNALS = re.compile(
    r"Traceback|File \"|\bat 0x|0x[0-9a-f]{6,}|(?:^|[\s'\"(])/(?:etc|tmp|home|usr|work|var|proc|root|srv)\b"
    r"|[A-Za-z]:\\\\|127\.\d+\.\d+\.\d+|localhost|169\.254\.|\b10\.\d+\.\d+\.\d+|192\.168\.|::1\b|site-packages",
    re.IGNORECASE)


def assert_clean(err: VQAError, *words: str) -> None:
    """The message names the problem (all `words`, case-insensitive) and carries no internals."""
    msg = err.message
    assert not _INTERNALS.search(msg), f"internal detail leaked in {msg!r}"
    assert len(msg) < 400, msg
    for word in words:
        assert word.lower() in msg.lower(), f"{word!r} not in {msg!r}"
    body = err.to_openai()["error"]
    assert isinstance(body, dict) and body["message"] == msg


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, rows: int | None = None, end_stream: bool = True) -> bytes:
    """A real 1-bit PNG of width x height zeros (all rows unless `rows`): a few KB, huge when decoded.

    end_stream=False leaves the compressed stream unterminated (data cut off mid-stream)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height if rows is None else rows))
    body += comp.flush() if end_stream else comp.flush(zlib.Z_SYNC_FLUSH)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF header is rewritten to claim another size (a lying header)."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


def gif_frames(frames: int, size: tuple[int, int] = (4, 4)) -> bytes:
    """An animated GIF with `frames` frames, built fast: the last frame's block repeated."""
    two = _gif(2, size)
    last = two.rindex(b"\x21\xf9\x04")  # graphic control extension that starts the last frame
    head, frame = two[:last], two[last:-1]  # drop the 0x3B trailer
    return head + frame * (frames - 1) + b"\x3b"


def _gif(frames: int, size: tuple[int, int]) -> bytes:
    imgs = []
    for i in range(frames):  # every frame differs, so Pillow cannot merge them
        frame = Image.new("L", size, 0)
        frame.putpixel((i % size[0], (i // size[0]) % size[1]), 1 + i % 250)
        imgs.append(frame)
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=10, loop=0)
    return buf.getvalue()


def encoded(fmt: str, size: tuple[int, int] = (64, 48), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format=fmt, **save)  # type: ignore[arg-type]
    return buf.getvalue()


def multipage_tiff() -> bytes:
    buf = io.BytesIO()
    a, b = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    a.save(buf, format="TIFF", save_all=True, append_images=[b])
    return buf.getvalue()


FITS = b"SIMPLE  =                    T" + b" " * 50 + b"BITPIX  =                    8" + b" " * 2800
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504  # FlashPix is an OLE compound file


@contextlib.contextmanager
def pixel_access() -> Iterator[list[str]]:
    """What reached an image while active: "open" for each `Image.open` that read a header, "load" for
    each pixel decode of an image opened meanwhile. A refusal "before decoding" leaves no "load"; one
    "before the decoder" (e.g. libavif) leaves nothing. Says what happened, however busy the machine."""
    events: list[str] = []
    real_open = Image.open

    def spy_open(*args: Any, **kwargs: Any) -> Any:
        image = real_open(*args, **kwargs)
        events.append("open")
        real_load = image.load

        def load() -> Any:
            events.append("load")
            return real_load()

        image.load = load  # type: ignore[method-assign]
        return image

    Image.open = spy_open
    try:
        yield events
    finally:
        Image.open = real_open
