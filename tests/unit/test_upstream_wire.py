"""What travels to and from an OpenAI-compatible model server: encoding, fields, errors, SSE lines."""

from __future__ import annotations

import email.utils
import time

import pytest
from PIL import Image

from tests.conftest import image_bytes
from vqaserve.engines.upstream import api_base
from vqaserve.engines.upstream_wire import (
    ImageEncoder,
    build_body,
    build_messages,
    finish_reason,
    parse_sse_line,
    retry_after,
    scrub,
)
from vqaserve.errors import EngineFailure
from vqaserve.images import decode as imgs
from vqaserve.types import EngineRequest, GenerationParams, NormalizedImage, Part, Turn

pytestmark = pytest.mark.unit


def normalized(size: tuple[int, int] = (200, 120)) -> NormalizedImage:
    return imgs.normalize(image_bytes(size), 32 * 32, 64 * 32 * 32, 10**8)


def test_text_only_turns_are_plain_strings_and_images_carry_their_hash() -> None:
    image = normalized()
    request = EngineRequest(turns=[Turn("system", [Part(text="Be brief.")]),
                                   Turn("user", [Part(image=image), Part(text="What is it?")])],
                            params=GenerationParams())
    messages = build_messages(request, ImageEncoder(), send_uuid=True)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    part, text = messages[1]["content"]
    assert part["type"] == "image_url" and part["uuid"] == image.content_hash
    assert part["image_url"]["url"].startswith("data:image/png;base64,")  # few colours: PNG
    assert text == {"type": "text", "text": "What is it?"}


def test_encoder_reuses_the_encoding_of_a_photo_it_has_seen() -> None:
    encoder = ImageEncoder(capacity=2)
    image = normalized()
    first = encoder.data_uri(image)
    assert encoder.data_uri(image) is first
    for size in ((70, 64), (100, 70), (130, 70)):  # not multiples of 32: resized, so encoded here
        encoder.data_uri(normalized(size))
    assert len(encoder._cache) == 2  # bounded


def test_a_file_that_already_fits_is_forwarded_as_sent_and_decodes_to_the_same_pixels() -> None:
    import base64
    import io

    budget = (32 * 32, 64 * 32 * 32, 10**8)
    for fmt, save in (("PNG", {}), ("JPEG", {"quality": 90})):
        sent = image_bytes((128, 96), fmt=fmt, **save)  # multiples of 32, inside the budget
        image = imgs.normalize(sent, *budget)
        uri = ImageEncoder().data_uri(image)
        assert uri == f"data:image/{fmt.lower()};base64," + base64.b64encode(sent).decode()
        received = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
        assert imgs.content_hash(received) == image.content_hash  # what vLLM decodes is what we hashed
    assert imgs.normalize(image_bytes((130, 96)), *budget).encoded is None  # resized
    rgba = Image.new("RGBA", (128, 96), (10, 20, 30, 128))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert imgs.normalize(buf.getvalue(), *budget).encoded is None  # composited on white
    assert imgs.normalize(image_bytes((128, 96), fmt="WEBP"), *budget).encoded is None  # not forwarded
    big_jpeg = image_bytes((1024, 768), fmt="JPEG", quality=90)  # DCT-scaled while decoding
    assert imgs.normalize(big_jpeg, *budget).encoded is None
    png = imgs.normalize(image_bytes((128, 96)), *budget)
    assert ImageEncoder("jpeg").data_uri(png).startswith("data:image/jpeg;")  # a forced format wins


def test_encoder_says_when_it_has_nothing_to_encode() -> None:
    budget = (32 * 32, 64 * 32 * 32, 10**8)
    encoder = ImageEncoder()
    assert encoder.ready(imgs.normalize(image_bytes((128, 96)), *budget))  # forwarded as sent
    resized = imgs.normalize(image_bytes((130, 96)), *budget)
    assert not encoder.ready(resized)
    encoder.data_uri(resized)
    assert encoder.ready(resized)  # encoded once, remembered
    assert not ImageEncoder("jpeg").ready(imgs.normalize(image_bytes((128, 96)), *budget))


def test_forced_jpeg_and_photo_detection() -> None:
    noisy = Image.merge("RGB", [Image.effect_noise((256, 256), 50) for _ in range(3)])
    photo = NormalizedImage(image=noisy, content_hash="h", width=256, height=256,
                                 original_size=(256, 256))
    assert ImageEncoder().choose_format(photo) == "jpeg"
    assert ImageEncoder("png").choose_format(photo) == "png"
    assert ImageEncoder("jpeg").data_uri(normalized()).startswith("data:image/jpeg;base64,")


def test_body_streams_ask_for_usage_and_greedy_sends_no_top_k() -> None:
    request = EngineRequest(turns=[], params=GenerationParams(max_new_tokens=5))
    body = build_body(request, "m", [], stream=True)
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 5
    assert "top_k" not in body and "seed" not in body and "stop" not in body


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after({"retry-after": "12"}) == 12.0
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after({"retry-after": soon}) or 0) <= 31
    assert retry_after({"retry-after": "soon-ish"}, 2.0) == 2.0
    assert retry_after({}, None) is None


def test_scrub_removes_what_would_reveal_the_server() -> None:
    text = scrub("failed at /srv/models/qwen/config.json via http://10.0.0.7:8000/x in llm.py 0xdeadbeef00 "
                 + "x" * 500)
    assert "/srv" not in text and "10.0.0.7" not in text and "llm.py" not in text and "0xdeadbeef" not in text
    assert len(text) <= 303


def test_sse_lines_and_finish_reasons() -> None:
    assert parse_sse_line(": keep-alive") is None and parse_sse_line("") is None
    assert parse_sse_line("data: [DONE]") == "[DONE]"
    assert parse_sse_line('data: {"choices": []}') == {"choices": []}
    with pytest.raises(EngineFailure):
        parse_sse_line("data: {not json")
    assert [finish_reason(x) for x in ("stop", "length", "content_filter", "tool_calls", None)] == \
        ["stop", "length", "content_filter", "stop", "stop"]


def test_api_base_accepts_the_usual_spellings() -> None:
    assert api_base("http://h:8000") == api_base("http://h:8000/v1/") == "http://h:8000/v1/"
    assert api_base("https://gw.example/openai/v1") == "https://gw.example/openai/v1/"
