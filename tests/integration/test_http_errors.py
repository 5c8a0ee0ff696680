"""Bad requests: each gets the documented status and an OpenAI error naming the field; no leaks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import image_bytes
from tests.http_support import RecordingEngine, assert_openai_error, make_app, user_msg
from vqaserve.errors import (
    BlockedInput,
    DeadlineExceeded,
    EngineFailure,
    Overloaded,
    Unauthorized,
    VQAError,
)
from vqaserve.server.state import app_state
from vqaserve.types import StreamDelta

pytestmark = pytest.mark.integration
LIMIT = 300_000  # body limit for these tests (bytes)
JSON = {"content-type": "application/json"}


def image_part(url: object) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url} if url is not None else {}}


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine(model_id="scripted", adapter_names=["sunglasses"])


@pytest.fixture
def client(engine: RecordingEngine) -> Iterator[TestClient]:
    with TestClient(make_app(engine, max_images=2, max_body_bytes=LIMIT)) as c:
        yield c


def post_chat(client: TestClient, **body: Any) -> Any:
    body.setdefault("messages", [user_msg("hi")])
    return client.post("/v1/chat/completions", json=body)


def test_malformed_json(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b'{"messages": [', headers=JSON)
    err = assert_openai_error(r, 400, "body")
    assert "malformed JSON" in err["message"]


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_for_chat(client: TestClient, ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/v1/chat/completions", content=json.dumps({"messages": []}).encode(), headers=headers)
    err = assert_openai_error(r, 415, "Content-Type")
    assert "application/json" in err["message"]


def test_wrong_content_type_for_vqa(client: TestClient) -> None:
    r = client.post("/v1/vqa", json={"question": "hi"})
    assert "multipart" in assert_openai_error(r, 415, "Content-Type")["message"]


@pytest.mark.parametrize(("field", "value", "status"), [
    ("n", 5, 400), ("max_tokens", -1, 400), ("max_tokens", 0, 400), ("max_tokens", 10**12, 400),
    ("max_completion_tokens", -5, 400), ("temperature", -0.1, 400), ("temperature", 9, 400),
    ("top_p", 0, 400), ("stop", ["a", "b", "c", "d", "e"], 400), ("top_logprobs", 3, 400),
    ("chat_template", "{{ evil }}", 400), ("chat_template_kwargs", {"x": 1}, 400),
    ("mm_processor_kwargs", {"max_pixels": 10**9}, 400), ("tools", [{"type": "function"}], 400),
    ("made_up_field", 1, 400), ("stream", "yes", 400), ("temperature", "0.5", 400), ("messages", [], 400),
])
def test_bad_parameters_name_the_field(client: TestClient, engine: RecordingEngine, field: str,
                                       value: Any, status: int) -> None:
    err = assert_openai_error(post_chat(client, **{field: value}), status, field)
    assert field in err["message"]
    assert engine.requests == []  # refused before anything reached the engine


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_temperature_is_refused(client: TestClient, raw: bytes) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + raw + b"}"
    r = client.post("/v1/chat/completions", content=body, headers=JSON)
    assert_openai_error(r, 400, "temperature")


def test_a_conversation_may_end_with_any_role_as_with_openai(client: TestClient) -> None:
    r = post_chat(client, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert r.status_code == 200, r.text


def test_known_openai_fields_that_change_nothing_are_accepted(client: TestClient) -> None:
    r = post_chat(client, user="u1", frequency_penalty=0, presence_penalty=0, metadata={"a": "b"}, n=1,
                  response_format={"type": "text"}, store=False)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": []}], "messages[0].content"),
    ([{"role": "user", "content": 42}], "messages[0].content"),
    ([{"role": "user", "content": [5]}], "messages[0].content[0]"),
    ([{"role": 7, "content": "hi"}], "messages[0].role"),
    ([{"role": "user", "content": [{"type": "input_audio"}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": [image_part("file:///etc/passwd")]}], "messages[0].content[0].image_url"),
    ([{"role": "user", "content": [image_part(None)]}], "messages[0].content[0].image_url"),
    ([{"role": "assistant", "content": [image_part("data:image/png;base64,AA")]},
      {"role": "user", "content": "hi"}], "messages[0].content[0]"),
])
def test_bad_messages_name_the_message(client: TestClient, messages: list[Any], param: str) -> None:
    assert_openai_error(post_chat(client, messages=messages), 400, param)


def test_bad_images_name_the_image(client: TestClient) -> None:
    bad = [{"role": "user", "content": [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]
    err = assert_openai_error(post_chat(client, messages=bad), 400, "messages[0].content[1].image_url")
    assert err["code"] == "invalid_image"
    pdf = [{"role": "user", "content": [image_part("data:application/pdf;base64,AAAA")]}]
    assert_openai_error(post_chat(client, messages=pdf), 415, "messages[0].content[0].image_url")


def test_image_url_without_fetcher_is_refused_cleanly(client: TestClient) -> None:
    msg = [{"role": "user", "content": [image_part("http://169.254.169.254/x.png")]}]
    err = assert_openai_error(post_chat(client, messages=msg), 400, "messages[0].content[0].image_url")
    assert "169.254" not in err["message"]


def test_too_many_images(client: TestClient, engine: RecordingEngine) -> None:
    err = assert_openai_error(post_chat(client, messages=[user_msg("many", images=3)]), 400, "messages")
    assert "limit 2" in err["message"]
    assert engine.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404(client: TestClient, stream: bool) -> None:
    # streaming requests are validated before the first byte, so they get real statuses too
    err = assert_openai_error(post_chat(client, model="gpt-17", stream=stream), 404, "model")
    assert "/v1/models" in err["message"]


def test_body_over_the_limit_by_content_length(client: TestClient) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (LIMIT + 10)}]}
    err = assert_openai_error(client.post("/v1/chat/completions", json=big), 413, "body")
    assert str(LIMIT) in err["message"] and "VQA_MAX_BODY_BYTES" in err["message"]


def test_body_over_the_limit_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # a chunked upload declares no length: counted while reading
        for _ in range(LIMIT // 10_000 + 2):
            yield b" " * 10_000

    r = client.post("/v1/chat/completions", content=chunks(), headers=JSON)
    assert_openai_error(r, 413, "body")


def test_vqa_missing_image_question_and_bad_fields(client: TestClient) -> None:
    png = ("a.png", image_bytes(), "image/png")
    assert_openai_error(client.post("/v1/vqa", data={"question": "hi"}, files={"other": png}), 400, "other")
    assert_openai_error(client.post("/v1/vqa", files={"question": (None, "hi"), "model": (None, "scripted")}),
                        400, "image")
    assert_openai_error(client.post("/v1/vqa", data={"question": "hi", "image": "not a file"},
                                    files={"model": (None, "scripted")}), 400, "image")
    assert_openai_error(client.post("/v1/vqa", files={"image": png}), 400, "question")
    for field, bad in (("max_tokens", "-3"), ("max_tokens", "ten"), ("temperature", "nan")):
        r = client.post("/v1/vqa", files={"image": png}, data={"question": "hi", field: bad})
        assert_openai_error(r, 400, field)
    assert_openai_error(client.post("/v1/vqa", files={"image": ("a.png", b"garbage", "image/png")},
                                    data={"question": "hi"}), 400, "image")
    r = client.post("/v1/vqa", files={"image": png}, data={"question": "hi", "model": "nope"})
    assert_openai_error(r, 404, "model")


def test_vqa_with_thousands_of_fields_is_refused_fast(client: TestClient) -> None:
    fields = {f"f{i}": "x" for i in range(2000)}
    r = client.post("/v1/vqa", data=fields, files={"image": ("a.png", image_bytes(), "image/png")})
    assert_openai_error(r, 400)


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert_openai_error(client.get("/v1/nothing"), 404)
    wrong = client.get("/v1/chat/completions")
    assert_openai_error(wrong, 405)
    assert wrong.headers["allow"] == "POST"
    # a path served by two routes (GET and POST): the Allow header names both, not the first route's
    assert client.request("OPTIONS", "/admin/adapters").headers["allow"] == "GET, POST"


def test_unexpected_exception_is_a_generic_500_and_the_server_stays_up(client: TestClient) -> None:
    # Engine faults become 503s further down (engine/batcher); this is the last line of defence for a
    # bug anywhere else, so the fault is planted in the pipeline itself.
    pipeline = app_state(client.app).pipeline
    secret = "secret detail /work/model/x.py at 0x7f00deadbeef"

    async def answer(question: Any) -> Any:
        raise RuntimeError(secret)

    async def broken_stream() -> Any:
        yield StreamDelta(text="partial")
        raise RuntimeError(secret)

    async def open_stream(question: Any) -> Any:
        return "bypass", broken_stream()

    pipeline.answer, pipeline.open_stream = answer, open_stream
    r = client.post("/v1/chat/completions", json={"messages": [user_msg("boom")]})
    err = assert_openai_error(r, 500)
    assert "secret" not in r.text and r.headers["x-request-id"] in err["message"]
    stream = client.post("/v1/chat/completions", json={"messages": [user_msg("boom")], "stream": True})
    assert "secret" not in stream.text and stream.text.rstrip().endswith("data: [DONE]")
    assert '"code": "internal_error"' in stream.text
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(("error", "status", "retry_after"), [
    (Overloaded("the queue is full; retry shortly", retry_after=2), 429, "2"),
    (DeadlineExceeded("the answer took longer than the request deadline"), 504, None),
    (EngineFailure("the engine failed on this request; retry", retry_after=1), 503, "1"),
    (BlockedInput("the image was refused by the safety check", param="messages[0].content[0]"), 400, None),
    (Unauthorized("missing API key; send Authorization: Bearer <key>"), 401, None),
])
@pytest.mark.parametrize("stream", [False, True])
def test_pipeline_errors_keep_their_status_in_both_modes(client: TestClient, error: VQAError, status: int,
                                                        retry_after: str | None, stream: bool) -> None:
    pipeline = app_state(client.app).pipeline

    async def refuse(question: Any) -> Any:
        raise error

    pipeline.answer = pipeline.open_stream = refuse
    r = post_chat(client, stream=stream)
    err = assert_openai_error(r, status, error.param)
    assert err["code"] == error.code and r.headers.get("retry-after") == retry_after
    metrics = client.get("/metrics").text
    if isinstance(error, BlockedInput):
        assert 'vqa_safety_blocks_total{stage="input"} 1.0' in metrics
    if status >= 500:
        assert f'vqa_engine_errors_total{{code="{error.code}"}} 1.0' in metrics
