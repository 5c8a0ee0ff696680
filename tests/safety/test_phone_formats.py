"""Hostile HEIC/HEIF and AVIF files over HTTP (issue 22 part 4): by upload (/v1/vqa), data URI and URL.

Each bad file gets a clear 400/413/415 naming the request field, never a 500; nothing reaches the
engine; the next good request answers. A HEIC holding many pictures answers on its primary one, an
AVIF sequence on its first frame.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_hosts import ThreadedHost, response  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from tests import phone_photos  # noqa: E402
from tests.conftest import image_bytes, tiled_image  # noqa: E402
from tests.http_support import RecordingEngine, assert_openai_error, make_app  # noqa: E402
from vqaserve.images.decode import data_uri

pytestmark = pytest.mark.integration
GOOD = image_bytes()
HEIC = phone_photos.heic(tiled_image((128, 96)))
AVIF = phone_photos.avif(tiled_image((128, 96)))
INTERNAL = ("127.0.0.1", "localhost", "/tmp", "/work", "Traceback", "0x7f", "libheif", "libavif")
FIELD = "messages[0].content[0].image_url"
RGB = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]


def _scramble(data: bytes, start: int, end: int) -> bytes:
    out = bytearray(data)
    for i in range(start, min(end, len(out))):
        out[i] ^= 0x5A
    return bytes(out)


def _mdat(data: bytes) -> int:
    return data.find(b"mdat") + 4


CASES = [  # (case, payload, status, code, words)
    ("heic truncated header", HEIC[:60], 400, "invalid_image", ["could not decode", "HEIF"]),
    ("heic truncated half", HEIC[:len(HEIC) // 2], 400, "invalid_image", ["could not decode"]),
    ("heic truncated tail", HEIC[:-10], 400, "invalid_image", ["could not decode"]),
    ("heic corrupt header", _scramble(HEIC, 40, _mdat(HEIC)), 400, "invalid_image", ["could not decode"]),
    ("heic corrupt pixels", _scramble(HEIC, _mdat(HEIC), len(HEIC)), 400, "invalid_image", ["could not decode"]),
    ("heic zero size", phone_photos.with_ispe(HEIC, 0, 0), 400, "invalid_image", ["zero width"]),
    ("heic 20000x20000", phone_photos.with_ispe(HEIC, 20000, 20000), 400, "image_too_large", ["pixel limit"]),
    ("heic 20000x1", phone_photos.with_ispe(HEIC, 20000, 1), 400, "invalid_image", ["aspect ratio"]),
    ("avif truncated", AVIF[:len(AVIF) // 2], 400, "invalid_image", ["could not decode"]),
    ("avif corrupt pixels", _scramble(AVIF, _mdat(AVIF), len(AVIF)), 400, "invalid_image", ["could not decode"]),
    ("avif zero size", phone_photos.with_ispe(AVIF, 0, 0), 400, "invalid_image", ["zero width"]),
    ("avif 20000x20000", phone_photos.with_ispe(AVIF, 20000, 20000), 400, "image_too_large", ["pixel limit"]),
    ("mp4 video", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 200, 415,
     "unsupported_image_format", ["ISO media", "HEIC"]),
]


@pytest.fixture(scope="module")
def engine() -> RecordingEngine:
    return RecordingEngine(model_id="scripted")


@pytest.fixture(scope="module")
def files() -> Iterator[ThreadedHost]:
    routes = {f"/{i}": response("200 OK", case[1], "image/heic") for i, case in enumerate(CASES)}
    with ThreadedHost(routes) as host:
        yield host


@pytest.fixture(scope="module")
def client(engine: RecordingEngine) -> Iterator[TestClient]:
    app = make_app(engine, fetch_allow_hosts=["localhost"], max_body_bytes=4 * 1024 * 1024)
    with TestClient(app) as c:
        yield c


def upload(client: TestClient, data: bytes, question: str = "what is it?") -> Any:
    return client.post("/v1/vqa", files={"image": ("IMG_0001.HEIC", data, "image/heic")},
                       data={"question": question})


def chat(client: TestClient, url: str, question: str = "what is it?") -> Any:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})


def send(client: TestClient, how: str, data: bytes, files: ThreadedHost, path: str) -> tuple[Any, str]:
    """The response and the field an error must name."""
    if how == "upload":
        return upload(client, data), "image"
    if how == "data":
        return chat(client, data_uri(data, "image/heic")), FIELD
    return chat(client, files.url(path, "localhost")), FIELD


@pytest.mark.parametrize("how", ["upload", "data", "url"])
@pytest.mark.parametrize(("case", "data", "status", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_hostile_phone_photos(client: TestClient, engine: RecordingEngine, files: ThreadedHost, how: str,
                              case: str, data: bytes, status: int, code: str, words: list[str]) -> None:
    before = len(engine.requests)
    started = time.perf_counter()
    r, field = send(client, how, data, files, f"/{[c[0] for c in CASES].index(case)}")
    elapsed = time.perf_counter() - started
    err = assert_openai_error(r, status)
    assert err["code"] == code and err["param"] is not None and err["param"].startswith(field), err
    for word in words:
        assert word.lower() in err["message"].lower(), err
    assert not any(bad in err["message"] for bad in INTERNAL), err
    assert elapsed < 5.0  # generous: refusals take milliseconds, the box is shared
    assert len(engine.requests) == before  # refused before the engine
    good = upload(client, HEIC, "is it fine?")  # the process is up and the next HEIC answers
    assert good.status_code == 200 and "is it fine?" in good.json()["answer"], good.text


def _colour_seen(engine: RecordingEngine) -> tuple[int, int, int]:
    pixel = engine.requests[-1].images[0].image.getpixel((4, 4))
    assert isinstance(pixel, tuple)
    red, green, blue = (round(c / 50) * 50 for c in pixel[:3])
    return red, green, blue


def test_heic_with_many_pictures_answers_on_the_primary(client: TestClient, engine: RecordingEngine) -> None:
    frames = [Image.new("RGB", (64, 64), RGB[i % 4]) for i in range(12)]
    data = phone_photos.heic_many(frames, primary_index=2)  # the blue one; the first is red
    r = upload(client, data, "which colour?")
    assert r.status_code == 200, r.text
    assert _colour_seen(engine) == (0, 0, 250)


def test_avif_sequence_answers_on_its_first_frame(client: TestClient, engine: RecordingEngine) -> None:
    frames = [Image.new("RGB", (64, 64), RGB[i % 4]) for i in range(1, 30)]  # starts green
    data = phone_photos.avif_sequence(frames)
    assert data[8:12] == b"avis"
    r = chat(client, data_uri(data, "image/avif"), "which colour?")
    assert r.status_code == 200, r.text
    assert _colour_seen(engine) == (0, 250, 0)
