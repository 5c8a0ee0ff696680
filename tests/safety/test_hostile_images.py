"""HOSTILE_INPUTS.md cases 1-7 at the library level: by upload (bytes) and by data URI.

(By URL: test_fetch_ssrf.py; over HTTP: test_http_hostile.py once the server lands.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from hostile_helpers import (
    FITS,
    OLE,
    assert_clean,
    encoded,
    gif_frames,
    jpeg_with_size,
    multipage_tiff,
    png_bomb,
)

from tests.conftest import SRC, image_bytes, subprocess_env
from vqaserve.errors import ImageTooLarge, InvalidImage, PayloadTooLarge, UnsupportedFormat, VQAError
from vqaserve.images import decode as imgs
from vqaserve.images.decode import data_uri
from vqaserve.settings import Settings
from vqaserve.types import ImageRef

pytestmark = pytest.mark.unit
LO, HI, LIMIT = 256 * 1024, 1280 * 1024, 64_000_000


def normalize(data: bytes) -> object:
    return imgs.normalize(data, LO, HI, LIMIT, "image")


async def via(kind: str, data: bytes) -> object:
    """Run bytes through read_ref as an upload or as a data URI, then decode."""
    ref = ImageRef("bytes", data, "image") if kind == "bytes" else ImageRef("data", data_uri(data), "image")
    raw = await imgs.read_ref(ref, Settings())
    return normalize(raw)


async def assert_good_next(kind: str) -> None:
    """After any refusal, the next good image decodes (the process and module state are fine)."""
    good = await via(kind, image_bytes())
    assert good.width % 32 == 0 and good.height % 32 == 0


TRUNC_PNG = image_bytes((200, 200))
TRUNC_JPEG = image_bytes((200, 200), fmt="JPEG")
# (case, payload, error type, words the message must contain)
CASES = [
    ("1 bomb 144 MP png", png_bomb(12_000, 12_000), ImageTooLarge, ["pixel limit"]),
    ("1 bomb 110 MP png", png_bomb(11_000, 10_000, rows=8), ImageTooLarge, ["pixel limit"]),
    ("1 bomb 72 MP png", png_bomb(9_000, 8_000, rows=8), ImageTooLarge, ["pixel limit"]),
    ("2 zero width png", png_bomb(0, 10, rows=1), InvalidImage, ["image"]),
    ("2 jpeg claims 60000x60000", jpeg_with_size(encoded("JPEG"), 60_000, 60_000), ImageTooLarge,
     ["pixel limit"]),
    ("2 jpeg claims 0x0", jpeg_with_size(encoded("JPEG"), 0, 0), InvalidImage, ["image"]),
    ("2 png claims 5000x5000 with 8 rows", png_bomb(5000, 5000, rows=8, end_stream=False), InvalidImage,
     ["could not decode"]),
    ("3 garbage", b"this is not an image at all" * 10, InvalidImage, ["could not decode"]),
    ("3 empty", b"", InvalidImage, ["empty"]),
    ("3 truncated header", TRUNC_PNG[:20], InvalidImage, ["could not decode"]),
    ("3 half png", TRUNC_PNG[: len(TRUNC_PNG) // 2], InvalidImage, ["could not decode"]),
    ("3 half jpeg", TRUNC_JPEG[: len(TRUNC_JPEG) // 2], InvalidImage, ["could not decode"]),
    ("4 pdf", encoded("PDF"), UnsupportedFormat, ["PDF", "not supported"]),
    ("4 eps", encoded("EPS"), UnsupportedFormat, ["EPS", "not supported"]),
    ("4 fits", FITS, UnsupportedFormat, ["FITS"]),
    ("4 jpeg2000", encoded("JPEG2000"), UnsupportedFormat, ["JPEG 2000"]),
    ("4 fpx", OLE, UnsupportedFormat, ["FlashPix"]),
    ("4 multipage tiff", multipage_tiff(), UnsupportedFormat, ["TIFF"]),
    ("5 1x100000 strip", png_bomb(1, 100_000), InvalidImage, ["aspect ratio"]),
]


@pytest.mark.parametrize("kind", ["bytes", "data"])
@pytest.mark.parametrize(("case", "payload", "error", "words"), CASES, ids=[c[0] for c in CASES])
async def test_hostile_image_refused(kind: str, case: str, payload: bytes, error: type[VQAError],
                                     words: list[str]) -> None:
    with pytest.raises(error) as info:
        await via(kind, payload)
    assert 400 <= info.value.status < 500
    assert info.value.param == "image"
    assert_clean(info.value, *words)
    await assert_good_next(kind)


@pytest.mark.parametrize("kind", ["bytes", "data"])
async def test_case5_sane_resizes(kind: str) -> None:
    tiny = await via(kind, image_bytes((1, 1)))
    assert tiny.width * tiny.height >= LO and tiny.width == tiny.height  # 1x1 upscaled into the budget
    animated = await via(kind, gif_frames(5000))
    assert animated.original_size == (4, 4)  # first frame only, never walked all 5000
    strip = await via(kind, image_bytes((150, 1)))  # long but within 200:1
    assert strip.width > strip.height


async def test_case2_lying_header_within_limit_is_sane() -> None:
    """Decoders pad an image whose header claims more rows than its (well-terminated) data: in budget."""
    for data in (jpeg_with_size(encoded("JPEG"), 5000, 5000), png_bomb(5000, 5000, rows=8)):
        out = normalize(data)  # within the pixel limit: decoded (padded) and fitted to the budget
        assert out.width * out.height <= HI


def test_case5_many_frames_are_never_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import GifImagePlugin

    frames: list[int] = []
    original = GifImagePlugin.GifImageFile._seek

    def spy(self: object, frame: int, update_image: bool = True) -> None:
        frames.append(frame)
        original(self, frame, update_image)  # type: ignore[arg-type]

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek", spy)
    out = normalize(gif_frames(20_000))
    assert out.original_size == (4, 4) and max(frames) == 0  # only the first of 20,000 frames


def test_case1_bombs_are_refused_before_decoding_and_small() -> None:
    """In a fresh interpreter: every bomb refused on its header (no pixel decoded), < 50 MB peak growth."""
    script = textwrap.dedent(f"""
        import json, resource, sys
        sys.path.insert(0, {str(SRC.parent / 'tests' / 'safety')!r})
        from hostile_helpers import png_bomb, jpeg_with_size, encoded, pixel_access
        from vqaserve.images import decode as images
        from vqaserve.errors import ImageTooLarge
        bombs = [png_bomb(12000, 12000), png_bomb(30000, 30000, rows=64),
                 jpeg_with_size(encoded("JPEG"), 65000, 65000), png_bomb(11000, 10000, rows=64)]
        images.normalize(encoded("PNG"), 256*1024, 1280*1024, 64_000_000)  # warm the decoders
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        decoded = 0
        for b in bombs:
            with pixel_access() as touched:
                try:
                    images.normalize(b, 256*1024, 1280*1024, 64_000_000)
                except ImageTooLarge:
                    pass
                else:
                    raise SystemExit("bomb accepted")
            decoded += touched.count("load")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew_kb": peak - base, "decoded": decoded}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["grew_kb"] < 50 * 1024
    assert figures["decoded"] == 0


BAD_B64 = [
    ("7 bad characters", "data:image/png;base64,iVBOR*w0K!!!", InvalidImage, ["base64"]),
    ("7 bad padding", "data:image/png;base64,iVBORw0KGgo=A", InvalidImage, ["base64"]),
    ("7 wrong mime", data_uri(b"<html>", "text/html"), UnsupportedFormat,
     ["text/html", "not supported"]),
    ("7 not base64 data uri", "data:image/png,rawbytes", InvalidImage, ["data URI"]),
    ("7 60 MB string", "data:image/png;base64," + "A" * (60 * 1024 * 1024), PayloadTooLarge, ["larger"]),
]


@pytest.mark.parametrize(("case", "value", "error", "words"), BAD_B64, ids=[c[0] for c in BAD_B64])
async def test_case7_bad_base64_refused_before_decode(case: str, value: str, error: type[VQAError],
                                                      words: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(*a: object, **k: object) -> None:
        raise AssertionError("decoder reached")

    monkeypatch.setattr(imgs, "_open_checked", no_decode)  # checked on the string, before any decoding
    with pytest.raises(error) as info:
        await imgs.read_ref(ImageRef("data", value, "image"), Settings())
    assert info.value.status in (400, 413, 415)
    assert_clean(info.value, *words)
    monkeypatch.undo()
    await assert_good_next("data")


async def test_case7_oversize_upload_bytes() -> None:
    settings = Settings(images={"max_body_bytes": 1024 * 1024, "max_pixels": 1280 * 1024})
    with pytest.raises(PayloadTooLarge) as info:
        await imgs.read_ref(ImageRef("bytes", b"\x00" * (2 * 1024 * 1024), "image"), settings)
    assert info.value.status == 413
    assert_clean(info.value, "larger")


def test_camera_mpo_jpeg_is_a_jpeg() -> None:
    """Phone cameras write JPEGs with extra pictures (Pillow: MPO): accepted, first picture used."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (640, 480), "red").save(buf, "MPO", save_all=True,
                                             append_images=[Image.new("RGB", (640, 480), "blue")])
    out = normalize(buf.getvalue())
    assert out.original_size == (640, 480)
    assert out.image.getpixel((10, 10))[0] > 200  # the first (red) picture
