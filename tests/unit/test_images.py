"""images.py: decoding, budget fitting (Qwen smart resize) and content hashing properties."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from tests import phone_photos
from tests.conftest import image_bytes, tiled_image
from tests.safety.hostile_helpers import pixel_access, png_bomb
from vqaserve.errors import ImageTooLarge, InvalidImage, PayloadTooLarge, UnsupportedFormat
from vqaserve.images import decode as images

pytestmark = pytest.mark.unit
LO, HI, LIMIT = 64 * 1024, 256 * 1024, 64_000_000


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
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


def test_png_bomb_refused_before_decode_and_small() -> None:
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 200_000
    tracemalloc.start()
    with pixel_access() as touched, pytest.raises(ImageTooLarge) as info:
        images.normalize(bomb, LO, HI, LIMIT)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "pixel limit" in info.value.message
    assert "load" not in touched and peak < 20 * 1024 * 1024  # refused on its header


def test_extreme_aspect_ratio_refused() -> None:
    with pytest.raises(InvalidImage, match="aspect ratio"):
        images.normalize(encode(Image.new("RGB", (10000, 1)), "PNG"), LO, HI, LIMIT)


def test_gif_first_frame_only() -> None:
    frames = [Image.new("RGB", (64, 64), (i, 0, 0)) for i in range(0, 250, 5)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = images.normalize(buf.getvalue(), 1024, 64 * 64, LIMIT)
    pixel = out.image.getpixel((5, 5))
    assert isinstance(pixel, tuple) and pixel[0] < 10


def test_data_uri_checks() -> None:
    png = image_bytes()
    uri = images.data_uri(png)
    assert images.decode_data_uri(uri, "image_url", 10**6) == png
    with pytest.raises(UnsupportedFormat):
        images.decode_data_uri("data:application/pdf;base64,AAAA", "image_url", 10**6)
    with pytest.raises(InvalidImage, match="base64"):
        images.decode_data_uri("data:image/png;base64,@@@@", "image_url", 10**6)
    with pytest.raises(PayloadTooLarge):
        images.decode_data_uri("data:image/png;base64," + "A" * 2_000_000, "image_url", 10**6)


# Phone photos: HEIC/HEIF (pillow-heif) and AVIF (Pillow's plugin), issue 22 part 4.

def _catalogue(i: int = 0) -> Image.Image:
    from vqaserve.train.synthetic import make_sample

    return make_sample("test", 0, i).image


def test_heif_opener_is_registered_on_first_use_not_at_import() -> None:
    code = ("import sys, vqaserve.images.decode, vqaserve.cli; from PIL import Image; "
            "print('pillow_heif' in sys.modules, 'HEIF' in Image.OPEN)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(images.__file__).parents[2])})
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_lossless_heic_hashes_like_its_png() -> None:
    img = _catalogue()
    png = images.normalize(encode(img, "PNG"), LO, HI, LIMIT)
    heif = images.normalize(phone_photos.heic(img, lossless=True), LO, HI, LIMIT)
    assert heif.content_hash == png.content_hash and heif.original_size == img.size
    assert heif.encoded is None  # HEIC is never forwarded as is: vLLM may not decode it


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_lossy_phone_photo_hashes_its_decoded_pixels(fmt: str) -> None:
    img = _catalogue(1)
    data = phone_photos.heic(img, quality=80) if fmt == "HEIF" else phone_photos.avif(img, quality=80)
    out = images.normalize(data, LO, HI, LIMIT)
    assert out.content_hash == images.normalize(phone_photos.decoded_png(data), LO, HI, LIMIT).content_hash
    assert out.encoded is None


def test_heic_declared_20000_square_refused_on_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real 64x64 HEIC whose `ispe` box now declares 20000x20000: nothing but the header is read.
    lying = phone_photos.with_ispe(phone_photos.heic(Image.new("RGB", (64, 64), (9, 99, 199))), 20000, 20000)
    for layer in ("our ispe check", "pillow-heif's reported size"):
        tracemalloc.start()
        with pixel_access() as touched, pytest.raises(ImageTooLarge, match="pixel limit") as info:
            images.normalize(lying, LO, HI, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert info.value.status == 400 and "pixel limit" in info.value.message
        assert "load" not in touched and peak < 5 * 1024 * 1024, (layer, touched, peak)
        # second round: without our own box walk, pillow-heif's header size is checked before decoding
        monkeypatch.setattr(images, "_iso_declared_sizes", lambda data, name: [])


def test_avif_declared_20000_square_refused_before_libavif() -> None:
    lying = phone_photos.with_ispe(phone_photos.avif(Image.new("RGB", (64, 64), (9, 99, 199))), 20000, 20000)
    with pixel_access() as touched, pytest.raises(ImageTooLarge, match="20000x20000"):
        images.normalize(lying, LO, HI, LIMIT)
    assert touched == []  # refused on our reading of its boxes: libavif never saw it


def test_real_heic_over_the_pixel_limit_is_refused() -> None:
    data = phone_photos.heic(tiled_image((256, 256)))
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        images.normalize(data, 1024, 64 * 64, 200 * 200)


def test_rotated_heic_decodes_upright() -> None:
    # A camera held sideways stores the sensor's pixels and an irot box (pillow-heif writes it from
    # EXIF orientation 8); libheif applies it: the service sees the upright picture, pixel for pixel.
    upright = tiled_image((320, 192))
    stored = upright.transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    data = phone_photos.heic(stored, lossless=True, exif=exif.tobytes())
    assert b"irot" in data
    a = images.normalize(encode(upright, "PNG"), LO, HI, LIMIT)
    b = images.normalize(data, LO, HI, LIMIT)
    assert b.original_size == (320, 192) and b.content_hash == a.content_hash


def test_rotated_avif_decodes_upright() -> None:
    upright = Image.new("RGB", (320, 192), (220, 40, 40))
    upright.paste((40, 40, 220), (0, 0, 80, 192))  # a blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 8
    data = phone_photos.avif(upright.transpose(Image.Transpose.ROTATE_270), quality=90, exif=exif.tobytes())
    assert b"irot" in data
    out = images.normalize(data, 1024, 10**6, LIMIT)
    assert (out.width, out.height) == (320, 192)
    left, right = out.image.getpixel((20, 96)), out.image.getpixel((300, 96))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[2] > 180 > left[0] and right[0] > 180 > right[2], (left, right)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_transparent_phone_photo_composited_on_white(fmt: str) -> None:
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    data = phone_photos.heic(img) if fmt == "HEIF" else phone_photos.avif(img)
    out = images.normalize(data, 1024, 64 * 64, LIMIT)
    pixel = out.image.getpixel((10, 10))
    assert isinstance(pixel, tuple) and min(pixel) >= 250, pixel


def test_heic_to_the_gateway_is_re_encoded_with_the_same_pixels() -> None:
    from vqaserve.engines.upstream_wire import ImageEncoder

    budget = (32 * 32, 64 * 32 * 32, 10**8)
    data = phone_photos.heic(tiled_image((128, 96)), lossless=True)  # sides multiples of 32: no resize
    image = images.normalize(data, *budget)
    assert "HEIF" not in images.FORWARDABLE and "AVIF" not in images.FORWARDABLE and image.encoded is None
    uri = ImageEncoder().data_uri(image)
    mime = uri.split(";", 1)[0]
    assert mime in ("data:image/png", "data:image/jpeg") and b"ftyp" not in base64.b64decode(uri.split(",")[1])
    if mime == "data:image/png":
        received = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
        assert images.content_hash(received) == image.content_hash


def test_phone_photo_data_uris_and_other_iso_media() -> None:
    heic = phone_photos.heic(tiled_image((64, 64)))
    for mime in ("image/heic", "image/heif", "image/avif"):
        uri = f"data:{mime};base64," + base64.b64encode(heic).decode()
        assert images.decode_data_uri(uri, "image_url", 10**6) == heic
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64
    with pytest.raises(UnsupportedFormat, match="ISO media") as info:
        images.normalize(mp4, LO, HI, LIMIT)
    assert info.value.status == 415 and "HEIC" in info.value.message
