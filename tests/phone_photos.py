"""Builders for phone-photo files in tests: HEIC (pillow-heif's x265 encoder) and AVIF (Pillow's aom).

Kept apart from the service: encoding goes through `pillow_heif.from_pillow`, so the tests never
register pillow-heif's opener themselves (images/decode.py does that, lazily, on the first HEIC it reads).
"""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageOps


def heic(img: Image.Image, lossless: bool = False, exif: bytes | None = None, **kw: object) -> bytes:
    """A HEIC of `img`. lossless: x265 lossless in 4:4:4 with identity matrix, so RGB survives bit-exact."""
    import pillow_heif

    if lossless:
        kw.update(quality=-1, chroma=444, matrix_coefficients=0)
    if exif is not None:
        kw["exif"] = exif
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, **kw)
    return buf.getvalue()


def heic_many(frames: list[Image.Image], primary_index: int) -> bytes:
    """One HEIC holding several top-level pictures; `primary_index` is the one a viewer shows."""
    import pillow_heif

    heif = pillow_heif.from_pillow(frames[0])
    for frame in frames[1:]:
        heif.add_from_pillow(frame)
    buf = io.BytesIO()
    heif.save(buf, primary_index=primary_index, quality=90)
    return buf.getvalue()


def avif(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="AVIF", **kw)
    return buf.getvalue()


def avif_sequence(frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format="AVIF", save_all=True, append_images=frames[1:], duration=100, quality=90)
    return buf.getvalue()


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """`data` with every `ispe` (image spatial extent) box declaring width x height: a lying header.

    The box is a FullBox: size, 'ispe', version/flags, then the width and height as 32-bit integers."""
    out = bytearray(data)
    at = out.find(b"ispe")
    assert at > 0, "no ispe box"
    while at > 0:
        out[at + 8:at + 16] = struct.pack(">II", width, height)
        at = out.find(b"ispe", at + 4)
    return bytes(out)


def decoded_png(data: bytes) -> bytes:
    """What a lossy HEIC/AVIF decodes to, as a PNG: the pixels the service should key and answer on."""
    from vqaserve.images import decode as images

    image = images._open_checked(data, 64_000_000, "image")
    image.load()
    upright = ImageOps.exif_transpose(image) if image.format == "AVIF" else image
    buf = io.BytesIO()
    (upright or image).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()
