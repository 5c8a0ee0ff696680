"""Images: read (bytes, data: URI / base64, local path, URL via fetch.py), decode safely, normalize, hash.

Every image becomes RGB, EXIF-upright, fitted to the pixel budget with Qwen's smart-resize rules
(both sides multiples of 32 px, so the processor never resizes again) and hashed over its normalized
pixels *and* their width, height and mode, so the same photo in another container hashes alike while
the same bytes in another shape do not.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import math
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from vqaserve.errors import FetchRefused, ImageTooLarge, InvalidImage, PayloadTooLarge, UnsupportedFormat
from vqaserve.types import ImageRef, NormalizedImage

if TYPE_CHECKING:
    from vqaserve.components import ImageLoader
    from vqaserve.settings import Settings

FACTOR = 32  # one visual token per 32x32 pixels (patch 16, merge 2)
MAX_ASPECT = 200  # Qwen's limit; beyond it the resize would be meaningless
# MPO is what Pillow calls a JPEG carrying extra pictures (many phone cameras write one): we use the first.
# HEIF (iPhone HEIC) is read by pillow-heif (libheif + libde265), AVIF by Pillow's own plugin (libavif +
# dav1d); both are ISO media files, told apart by their `ftyp` brands before any decoder sees them.
ALLOWED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "HEIF", "AVIF"}
JPEG_LIKE = ("JPEG", "MPO")
OPEN_FORMATS = ["BMP", "GIF", "JPEG", "PNG", "WEBP"]  # Pillow's decoders we let see client bytes
ALLOWED_MIME = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/gif",
                "image/heic", "image/heif", "image/avif"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2"}
_MAX_BOXES = 10_000  # per container level; real files have dozens, a hostile one could have millions
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)"
                       r"(?P<b64>;base64)?,", re.IGNORECASE)

# Formats refused by name (415) before Pillow sees them: Pillow is only ever asked to open ALLOWED_FORMATS,
# so its PDF/EPS (Ghostscript)/FITS/JPEG 2000/FPX/TIFF parsers are never reached with client bytes.
_REFUSED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF", "PDF"), (0, b"%!PS", "PostScript/EPS"), (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"SIMPLE  =", "FITS"), (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (0, b"\xffO\xffQ", "JPEG 2000"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "FlashPix (OLE)"), (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"), (0, b"II+\x00", "BigTIFF"), (0, b"MM\x00+", "BigTIFF"), (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"), (0, b"<?xml", "SVG/XML"), (0, b"<svg", "SVG"),
    (0, b"DDS ", "DDS"), (0, b"qoif", "QOI"), (0, b"\x8aMNG", "MNG"),
)
SUPPORTED = "send JPEG, PNG, WEBP, BMP, GIF, HEIC/HEIF or AVIF"

_WHITESPACE = re.compile(r"\s+")

# Pillow must never try to "repair" a truncated file into a half-grey picture: refuse it instead.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = FACTOR, name: str = "image") -> tuple[int, int]:
    """Qwen2/3-VL smart resize: keep aspect ratio, sides multiples of `factor`, area within budget."""
    if height <= 0 or width <= 0:
        raise InvalidImage(f"{name}: image has zero width or height", param=name)
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise InvalidImage(f"{name}: image is {width}x{height}, an aspect ratio over {MAX_ASPECT}:1; "
                           "crop it to something less extreme", param=name)
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
        if h_bar * w_bar > max_pixels:  # rounding up overshot a tight budget: max_pixels wins
            h_bar = max(factor, math.floor(height * beta / factor) * factor)
            w_bar = max(factor, math.floor(width * beta / factor) * factor)
    return h_bar, w_bar


def content_hash(image: Image.Image) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.width}x{image.height}:{image.mode}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """Picture bytes as a `data:<mime>;base64,` URI: what clients send and decode_data_uri reads back."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def decode_data_uri(value: str, name: str, max_bytes: int) -> bytes:
    """A `data:image/...;base64,` URI (or bare base64) -> bytes, checked before decoding."""
    if len(value) > max_bytes * 4 // 3 + 64:
        raise PayloadTooLarge(f"{name}: base64 image is larger than {max_bytes} bytes; send a smaller image",
                              param=name)
    payload = value
    m = _DATA_URI.match(value)
    if value[:5].lower() == "data:":
        if not m or not m.group("b64"):
            raise InvalidImage(f"{name}: data URI must look like data:image/png;base64,<data>", param=name)
        mime = (m.group("mime") or "").lower()
        if mime not in ALLOWED_MIME:
            raise UnsupportedFormat(f"{name}: data URI type {mime or 'missing'!r} is not supported; use "
                                    "image/jpeg, image/png, image/webp, image/bmp, image/gif, image/heic, "
                                    "image/heif or image/avif", param=name)
        payload = value[m.end():]
    # Strict decoding first: a regex scan of a megabyte of base64 costs more than the decode itself
    # and holds the GIL. Only when that fails, try again without the line breaks of MIME-wrapped base64.
    with contextlib.suppress(binascii.Error, ValueError):
        return base64.b64decode(payload, validate=True)
    unwrapped = _WHITESPACE.sub("", payload)
    if len(unwrapped) != len(payload):
        with contextlib.suppress(binascii.Error, ValueError):
            return base64.b64decode(unwrapped, validate=True)
    raise InvalidImage(f"{name}: invalid base64 data; encode the image bytes with standard base64", param=name)


def read_path(path_str: str, name: str, root: str | None) -> bytes:
    path = Path(path_str).expanduser()
    if root is not None:
        base = Path(root).resolve()
        try:
            path.resolve().relative_to(base)
        except ValueError:
            raise FetchRefused(f"{name}: local files are only served from the configured image folder",
                               param=name) from None
    if not path.exists():
        raise InvalidImage(f"image file not found: {name}", param=name)
    if not path.is_file():
        raise InvalidImage(f"{name} is not a file; give the path of an image file", param=name)
    return path.read_bytes()


async def read_ref(ref: ImageRef, settings: Settings, fetcher: ImageLoader | None = None) -> bytes:
    """The raw bytes behind an image reference (no decoding yet)."""
    if ref.kind != "url":
        return read_inline_ref(ref, settings)
    if fetcher is None:
        raise FetchRefused(f"{ref.name}: image URLs are not enabled here; send the image inline",
                           param=ref.name)
    return _within_body_limit(await fetcher.load(ref), ref, settings)


def read_inline_ref(ref: ImageRef, settings: Settings) -> bytes:
    """Bytes of an upload, data URI or local path: blocking work (base64 of up to megabytes, file
    reads) that the pipeline runs in its image thread pool, not on the event loop."""
    if ref.kind == "bytes":
        data = ref.payload if isinstance(ref.payload, bytes) else ref.payload.encode()
    elif ref.kind == "data":
        data = decode_data_uri(str(ref.payload), ref.name, settings.images.max_body_bytes)
    elif ref.kind == "path":
        data = read_path(str(ref.payload), ref.name, settings.images.local_image_dir)
    else:
        raise InvalidImage(f"{ref.name}: unknown image reference")
    return _within_body_limit(data, ref, settings)


def _within_body_limit(data: bytes, ref: ImageRef, settings: Settings) -> bytes:
    max_bytes = settings.images.max_body_bytes
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{ref.name}: image is larger than {max_bytes} bytes", param=ref.name)
    return data


# Formats every model server decodes the same way we do (lossless PNG; baseline JPEG via libjpeg).
FORWARDABLE = {"PNG": "image/png", "JPEG": "image/jpeg"}


_heif_lock = threading.Lock()
_heif_registered = False


def _register_heif(name: str) -> None:
    """pillow-heif's Pillow opener, registered on the first HEIC (not at import: `vqa --help` stays fast).
    Thumbnails, depth maps and auxiliary images are never read: only the primary picture is used."""
    global _heif_registered
    with _heif_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError:
            raise UnsupportedFormat(f"{name}: HEIC/HEIF images need pillow-heif on the server; send JPEG or "
                                    "PNG, or install pillow-heif", param=name) from None
        pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
        _heif_registered = True


def _boxes(data: bytes, start: int, end: int, name: str) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of the ISO-BMFF boxes in data[start:end]; stops at a box that overruns."""
    pos, count = start, 0
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        count += 1
        if count > _MAX_BOXES:
            raise InvalidImage(f"{name}: could not decode image: the header has too many boxes", param=name)
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes, name: str) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(data, start, end, name) if k == kind), None)


def _iso_declared_sizes(data: bytes, name: str) -> list[tuple[int, int]]:
    """Every `ispe` (image spatial extent) in meta/iprp/ipco: the sizes of the coded pictures (tiles, the
    grid, a cropped or rotated primary) as the header declares them, read before libheif/libavif run.
    The clean-aperture crop can make the reported size far smaller than the one decoded, so all count."""
    meta = _child(data, 0, len(data), b"meta", name)
    iprp = meta and _child(data, meta[0] + 4, meta[1], b"iprp", name)  # meta is a FullBox
    ipco = iprp and _child(data, iprp[0], iprp[1], b"ipco", name)
    if not ipco:
        return []
    return [struct.unpack_from(">II", data, s + 4) for k, s, e in _boxes(data, ipco[0], ipco[1], name)
            if k == b"ispe" and e - s >= 12]


def _iso_format(data: bytes, max_image_pixels: int, name: str) -> str:
    """HEIF or AVIF by the `ftyp` brands, with every declared picture size checked; other ISO media
    (MP4, MOV, CR3 ...) is refused."""
    size = int.from_bytes(data[:4], "big")
    brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(size, len(data), 4096) - 3, 4)}
    if brands & _AVIF_BRANDS:
        fmt = "AVIF"
        if not features.check("avif"):
            raise UnsupportedFormat(f"{name}: AVIF images are not enabled on this server (Pillow without "
                                    "AVIF); send JPEG or PNG", param=name)
    elif brands & _HEIF_BRANDS:
        fmt = "HEIF"
    else:
        label = data[8:12].decode("ascii", "replace").strip() or "unknown"
        raise UnsupportedFormat(f"{name}: ISO media files ({label!r}: video, camera raw ...) are not "
                                f"supported; {SUPPORTED}", param=name)
    for w, h in _iso_declared_sizes(data, name):
        if w <= 0 or h <= 0:
            raise InvalidImage(f"{name}: image has zero width or height", param=name)
        if w * h > max_image_pixels:
            raise ImageTooLarge(f"{name}: image is {w}x{h} = {w * h:,} pixels, over the "
                                f"{max_image_pixels:,} pixel limit; send a smaller image", param=name)
    if fmt == "HEIF":
        _register_heif(name)
    return fmt


def _open_checked(data: bytes, max_image_pixels: int, name: str) -> Image.Image:
    """Open lazily and check format and declared size *before* any pixel is decoded."""
    if not data:
        raise InvalidImage(f"{name}: could not decode image: the file is empty", param=name)
    for offset, magic, label in _REFUSED_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            raise UnsupportedFormat(f"{name}: {label} files are not supported; {SUPPORTED}", param=name)
    formats = [_iso_format(data, max_image_pixels, name)] if data[4:8] == b"ftyp" else OPEN_FORMATS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{name}: image has more than the {max_image_pixels:,} pixel limit; "
                            "send a smaller image", param=name) from None
    except UnidentifiedImageError:
        if formats is not OPEN_FORMATS:  # HEIF/AVIF by its brands, yet its decoder cannot read the header
            raise InvalidImage(f"{name}: could not decode image: the {formats[0]} header is damaged or "
                               "truncated", param=name) from None
        raise InvalidImage(f"{name}: could not decode image: not a supported image file ({SUPPORTED})",
                           param=name) from None
    except Exception:
        raise InvalidImage(f"{name}: could not decode image: the header is damaged", param=name) from None
    if image.format not in ALLOWED_FORMATS:
        fmt = image.format or "unknown"
        image.close()
        raise UnsupportedFormat(f"{name}: {fmt} images are not supported; {SUPPORTED}", param=name)
    w, h = image.size
    if w <= 0 or h <= 0:
        raise InvalidImage(f"{name}: image has zero width or height", param=name)
    if w * h > max_image_pixels:
        raise ImageTooLarge(f"{name}: image is {w}x{h} = {w * h:,} pixels, over the {max_image_pixels:,} "
                            "pixel limit; send a smaller image", param=name)
    if max(w, h) / min(w, h) > MAX_ASPECT:  # refuse 1x100000 strips before decoding them
        image.close()
        raise InvalidImage(f"{name}: image is {w}x{h}, an aspect ratio over {MAX_ASPECT}:1; "
                           "crop it to something less extreme", param=name)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Transparent images go on white (what a shop page shows); everything else to RGB."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def normalize(data: bytes, min_pixels: int, max_pixels: int, max_image_pixels: int,
              name: str = "image") -> NormalizedImage:
    """Decode bytes into a NormalizedImage within the budget, or raise a clear InvalidImage."""
    image = _open_checked(data, max_image_pixels, name)
    original = image.size
    try:
        if image.format in ("GIF", "AVIF"):
            image.seek(0)  # first frame only; never walk thousands of frames
        # pillow-heif applies HEIF's irot/imir itself (and resets the EXIF tag); Pillow reports AVIF's as
        # an EXIF orientation, applied below like a JPEG's.
        orientation = (image.getexif().get(0x0112, 1) if image.format in (*JPEG_LIKE, "WEBP", "AVIF")
                       else 1)
        drafted = False
        if image.format in JPEG_LIKE:
            # Reduced-size DCT decoding: a 12 MP photo decodes at 1/2..1/8 scale, still >= the target.
            sw, sh = image.size
            th, tw = smart_resize(sh, sw, min_pixels, max_pixels, name=name)
            image.draft("RGB", (tw, th))
            drafted = image.size != (sw, sh)
        image.load()
    except (InvalidImage, ImageTooLarge):
        raise
    except Exception:
        raise InvalidImage(f"{name}: could not decode image: the data is truncated or corrupt",
                           param=name) from None
    decoded, fmt = image, image.format
    if orientation != 1:
        image = ImageOps.exif_transpose(image) or image
    image = fit_budget(image, min_pixels, max_pixels, name, drafted=drafted)
    # Untouched by DCT scaling, rotation, conversion and resizing: the file carries exactly these pixels.
    encoded = (FORWARDABLE[fmt], data) if image is decoded and not drafted and fmt in FORWARDABLE else None
    return NormalizedImage(image=image, content_hash=content_hash(image), width=image.width,
                           height=image.height, original_size=original, source=name, encoded=encoded)


def fit_budget(image: Image.Image, min_pixels: int, max_pixels: int, name: str = "image",
               drafted: bool = False) -> Image.Image:
    """A decoded picture as RGB at its smart-resize size: what `normalize` does after decoding (the
    trainer calls it directly on pictures it has drawn, skipping an encode/decode round trip)."""
    image = _to_rgb(image)
    th, tw = smart_resize(image.height, image.width, min_pixels, max_pixels, name=name)
    if (tw, th) != image.size:
        # After DCT scaling the picture is already low-passed and < 2x the target: bilinear is as
        # close to the processor's bicubic-from-full-size result (measured, `vqa bench photo`) at
        # well under half the cost of bicubic. Otherwise bicubic, as Qwen's processor does.
        resample = Image.Resampling.BILINEAR if drafted else Image.Resampling.BICUBIC
        image = image.resize((tw, th), resample, reducing_gap=3.0)
    return image


def load_image_file(path: str, min_pixels: int, max_pixels: int,
                    max_image_pixels: int = 64_000_000) -> NormalizedImage:
    """Convenience for scripts and training: a local file -> NormalizedImage."""
    return normalize(read_path(path, path, None), min_pixels, max_pixels, max_image_pixels, path)
