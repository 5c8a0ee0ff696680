"""images.py: decoding, budget fitting (Qwen smart resize) and content hashing properties."""

from __future__ import annotations

import io
import time
import tracemalloc

import pytest
from PIL import Image

from tests.conftest import image_bytes, png_bomb, tiled_image
from vqaserve import images
from vqaserve.errors import ImageTooLarge, InvalidImage, PayloadTooLarge, UnsupportedFormat

pytestmark = pytest.mark.unit
LO, HI, LIMIT = 64 * 1024, 256 * 1024, 64_000_000


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize("size", [(640, 480), (160, 640), (1000, 37), (33, 33), (4000, 3000), (3000, 50)])
def test_resize_keeps_aspect_ratio_within_one_step_and_budget(size: tuple[int, int]) -> None:
    w, h = size
    th, tw = images.smart_resize(h, w, LO, HI)
    assert th % 32 == 0 and tw % 32 == 0
    assert LO <= th * tw <= HI or (th * tw > HI and min(th, tw) == 32)
    # aspect ratio error at most one 32-px step on either side
    assert abs(tw - w * th / h) <= 32 + 1e-6 or abs(th - h * tw / w) <= 32 + 1e-6


def test_normalized_sides_are_multiples_of_32_and_rgb() -> None:
    out = images.normalize(image_bytes((333, 211), fmt="PNG"), LO, HI, LIMIT)
    assert out.image.mode == "RGB" and out.width % 32 == 0 and out.height % 32 == 0
    assert (out.width, out.height) == out.image.size and out.original_size == (333, 211)


def test_hash_same_pixels_other_container() -> None:
    img = tiled_image((320, 256))
    png = images.normalize(encode(img, "PNG"), LO, HI, LIMIT)
    webp = images.normalize(encode(img, "WEBP", lossless=True, exact=True), LO, HI, LIMIT)
    bmp = images.normalize(encode(img, "BMP"), LO, HI, LIMIT)
    assert png.content_hash == webp.content_hash == bmp.content_hash


def test_hash_changes_when_only_dimensions_differ() -> None:
    # Same raw bytes, reshaped: 256x128 vs 128x256 of one byte buffer.
    raw = bytes(range(256)) * 384
    a = Image.frombytes("RGB", (256, 128), raw)
    b = Image.frombytes("RGB", (128, 256), raw)
    assert a.tobytes() == b.tobytes()
    assert images.content_hash(a) != images.content_hash(b)
    na = images.normalize(encode(a, "PNG"), 1024, 10**6, LIMIT)
    nb = images.normalize(encode(b, "PNG"), 1024, 10**6, LIMIT)
    assert na.content_hash != nb.content_hash


def test_exif_rotated_jpeg_hashes_like_upright() -> None:
    upright = tiled_image((320, 192))
    stored = upright.transpose(Image.Transpose.ROTATE_270)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 8  # viewers rotate 90 degrees counter-clockwise to display: undoes the above
    a = images.normalize(encode(upright, "JPEG", quality=100, subsampling=0), LO, HI, LIMIT)
    b = images.normalize(encode(stored, "JPEG", quality=100, subsampling=0, exif=exif), LO, HI, LIMIT)
    assert (a.width, a.height) == (b.width, b.height)
    assert a.content_hash == b.content_hash


def test_transparent_png_composited_on_white() -> None:
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    out = images.normalize(encode(img, "PNG"), 1024, 64 * 64, LIMIT)
    assert out.image.getpixel((10, 10)) == (255, 255, 255)


def test_big_jpeg_uses_reduced_decoding_and_fits_budget() -> None:
    big = Image.new("RGB", (4000, 3000), (90, 120, 200))
    data = encode(big, "JPEG", quality=85)
    out = images.normalize(data, LO, HI, LIMIT)
    assert out.width * out.height <= HI and out.original_size == (4000, 3000)


@pytest.mark.parametrize(("payload", "error"), [
    (b"", InvalidImage),
    (b"definitely not an image", InvalidImage),
    (image_bytes(fmt="PNG")[:40], InvalidImage),
    (image_bytes((200, 200), fmt="PNG")[: len(image_bytes((200, 200), fmt="PNG")) // 2], InvalidImage),
    (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", InvalidImage),
])
def test_bad_bytes_are_clear_errors(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        images.normalize(payload, LO, HI, LIMIT, name="image")
    assert "could not decode" in str(info.value) or "not supported" in str(info.value)


def test_unsupported_format_is_415() -> None:
    tiff = encode(Image.new("RGB", (32, 32)), "TIFF")
    with pytest.raises(UnsupportedFormat) as info:
        images.normalize(tiff, LO, HI, LIMIT)
    assert info.value.status == 415 and "TIFF" in info.value.message


def test_png_bomb_refused_before_decode_fast_and_small() -> None:
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 200_000
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        images.normalize(bomb, LO, HI, LIMIT)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "pixel limit" in info.value.message
    assert elapsed < 0.5 and peak < 20 * 1024 * 1024


def test_extreme_aspect_ratio_refused() -> None:
    with pytest.raises(InvalidImage, match="aspect ratio"):
        images.normalize(encode(Image.new("RGB", (10000, 1)), "PNG"), LO, HI, LIMIT)


def test_gif_first_frame_only() -> None:
    frames = [Image.new("RGB", (64, 64), (i, 0, 0)) for i in range(0, 250, 5)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = images.normalize(buf.getvalue(), 1024, 64 * 64, LIMIT)
    assert out.image.getpixel((5, 5))[0] < 10


def test_data_uri_checks() -> None:
    png = image_bytes()
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert images.decode_data_uri(uri, "image_url", 10**6) == png
    with pytest.raises(UnsupportedFormat):
        images.decode_data_uri("data:application/pdf;base64,AAAA", "image_url", 10**6)
    with pytest.raises(InvalidImage, match="base64"):
        images.decode_data_uri("data:image/png;base64,@@@@", "image_url", 10**6)
    with pytest.raises(PayloadTooLarge):
        images.decode_data_uri("data:image/png;base64," + "A" * 2_000_000, "image_url", 10**6)
