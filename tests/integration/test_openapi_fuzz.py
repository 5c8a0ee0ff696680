"""Schemathesis against `vqa serve` with the bundled model: /openapi.json is complete and true.

The run is the issue's: `schemathesis run --checks all --max-examples 120 --seed 20261130` (examples,
coverage and fuzzing phases, every check; the seed makes every run send the same requests), plus
`--continue-on-failure`, so that one finding does not hide the next. It reads the server's own
document, with image URLs narrowed to data: URIs (`offline`). The request models are the parsers,
so what the schema says, the server does; what remains are the rules no JSON Schema can state. Each
finding must be one of those, named below with the reason, or the test fails:

- a schema-valid chat request refused by a cross-field rule (at most VQA_MAX_IMAGES images in all
  messages; min_tokens <= max_tokens; top_logprobs > 0 needs logprobs: true), or by what a picture's bytes
  are (an image that does not decode; a media type outside the allowlist, a 415 clients rely on);
  the schema's descriptions state each of these;
- a schema-breaking multipart value the server accepted because, once encoded as form text, it is
  valid (an empty list sends no part; a number becomes its digits): checked by validating the form
  as sent, part by part, against the form's schema.

Below it: the unpaired-surrogate 500s found while building the first version (now 400s), and checks
that the document is valid OpenAPI, that its request schemas are the models, and that the findings
are sorted as said here.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import pytest

from tests.http_support import LEAKS, ServeProcess, assert_openai_error
from vqaserve.server.chat_request import DATA_URL, IMAGE_URL

ANSWERING = ("POST /v1/chat/completions", "POST /v1/vqa")
# Small answers and pictures, so the requests that do reach the model are quick on a loaded CPU.
SERVER_ENV = {"VQA_MODEL": "shop-toy", "VQA_SAFETY_IMAGE": "off", "VQA_MAX_NEW_TOKENS": "4",
              "VQA_GENERATION__MAX_NEW_TOKENS_LIMIT": "8", "VQA_MIN_PIXELS": str(4 * 32 * 32),
              "VQA_MAX_PIXELS": str(16 * 32 * 32), "VQA_FETCH__TIMEOUT_S": "1"}
RUN = ["--checks", "all", "--max-examples", "120", "--seed", "20261130", "--continue-on-failure"]
# Refusals of schema-valid requests that no JSON Schema can avoid: (name, status, code, param pattern, words).
INEXPRESSIBLE = [
    # JSON Schema cannot compare two fields
    ("min_tokens over max_tokens", 400, "invalid_request", r"min_tokens", "between 0 and max_tokens"),
    # the fuzzer sets fields one at a time: top_logprobs alone (OpenAI's and vLLM's rule: with logprobs)
    ("top_logprobs without logprobs", 400, "invalid_request", r"top_logprobs", "needs logprobs: true"),
    # nor count across items (VQA_MAX_IMAGES is for all messages together)
    ("too many images", 400, "invalid_request", r"messages", "too many images"),
    # whether bytes are a picture is not a matter of syntax
    ("not a picture", 400, "invalid_image", r"image|messages\[\d+\]\.content\[\d+\]\.image_url", ""),
    # the media type allowlist is answered 415 unsupported_image_format, which clients rely on
    ("media type not allowed", 415, "unsupported_image_format",
     r"image|messages\[\d+\]\.content\[\d+\]\.image_url", ""),
]


def offline(document: Any) -> Any:
    """The document with image URLs narrowed to data: URIs.

    An http(s) image URL makes the server fetch it: from a test that is a DNS query for a made-up
    host, answered 502 (documented: the image host failed) or, with a network, a slow request to a
    stranger. The fetcher has its own tests (tests/safety); here every image stays inline.
    """
    if isinstance(document, dict):
        return {k: DATA_URL if k == "pattern" and v == IMAGE_URL else offline(v) for k, v in document.items()}
    if isinstance(document, list):
        return [offline(v) for v in document]
    return document


def _bytes(field: Any) -> bytes:
    if isinstance(field, dict) and "$base64" in field:
        return base64.b64decode(field["$base64"])
    return str(field or "").encode()


def inexpressible(response: dict[str, Any]) -> str | None:
    """Which INEXPRESSIBLE rule refused a schema-valid request, or None when none did."""
    text = _bytes(response.get("content")).decode("utf-8", "replace")
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    for name, status, code, param, words in INEXPRESSIBLE:
        if (response["status_code"] == status and error.get("code") == code
                and re.fullmatch(param, error.get("param") or "") and words in error.get("message", "")):
            return name
    return None


def form_as_sent(request: dict[str, Any]) -> dict[str, Any]:
    """A multipart request's fields as the server receives them: text parts as text, files as bytes."""
    headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in request["headers"].items()}
    raw = f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + _bytes(request.get("body"))
    fields: dict[str, Any] = {}
    for part in BytesParser(policy=HTTP).parsebytes(raw).iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = payload if part.get_filename() else payload.decode("utf-8", "replace")
    return fields


def valid_once_encoded(request: dict[str, Any], form_schema: dict[str, Any]) -> bool:
    """Whether the form, as sent, fits its schema with each part read as the server reads it."""
    import jsonschema_rs  # schemathesis's own validator

    fields = form_as_sent(request)
    for name, value in list(fields.items()):
        kind = form_schema["properties"].get(name, {}).get("type")
        try:
            if kind == "integer":
                fields[name] = int(value)
            elif kind == "number":
                fields[name] = float(value)
            elif kind == "object":
                fields[name] = json.loads(value)
            elif isinstance(value, bytes):
                fields[name] = value.decode("latin-1")  # a file: any bytes are a binary string
        except ValueError:
            return False
    return bool(jsonschema_rs.validator_for(form_schema).is_valid(fields))


def openai_error_problem(response: dict[str, Any]) -> str | None:
    """A 4xx must be `{"error": {"message", "type", "param", "code"}}` with nothing internal in it."""
    text = _bytes(response.get("content")).decode("utf-8", "replace")
    if LEAKS.search(text):
        return f"internal detail in the reply: {text[:300]}"
    try:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"not OpenAI error JSON: {text[:300]}"
    return None


def read_report(report: Path, form_schema: dict[str, Any]) -> tuple[dict[str, Counter[int]], Counter[str], list[str]]:
    """Statuses per operation, phase and mode; explained findings; the rest, each with its request."""
    statuses: dict[str, Counter[int]] = {}
    explained: Counter[str] = Counter()
    unexplained: list[str] = []
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        label = recorder["label"]
        for case_id, interaction in recorder.get("interactions", {}).items():
            mode = recorder["cases"].get(case_id, {}).get("value", {}).get("meta", {}).get("generation", {}).get("mode")
            key = f"{label} {finished['phase']} {mode}"
            response = interaction.get("response") or {}
            statuses.setdefault(key, Counter())[response.get("status_code", 0)] += 1
            problems = []
            if label in ANSWERING and 400 <= response.get("status_code", 0) < 500:
                problems.append(("error shape", openai_error_problem(response)))
            for check in recorder.get("checks", {}).get(case_id, []):
                if check["status"] == "success":
                    continue
                why = (inexpressible(response) if check["name"] == "positive_data_acceptance" else
                       "valid once encoded as form text" if check["name"] == "negative_data_rejection"
                       and label == "POST /v1/vqa" and valid_once_encoded(interaction["request"], form_schema)
                       else None)
                if why is not None:
                    explained[f"{label} {check['name']}: {why}"] += 1
                else:
                    text = _bytes(response.get("content")).decode("utf-8", "replace")[:300]
                    problems.append((check["name"], f"{response.get('status_code')} {text}"))
            for name, problem in problems:
                if problem is not None:
                    sent = json.dumps(interaction["request"])[:600]
                    unexplained.append(f"{key} {name}: {problem}\n  request: {sent}")
    return statuses, explained, unexplained


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("fuzz")
    # Capture on, so the capture routes answer from a real database (not only 409 capture_off).
    with ServeProcess(folder / "serve.log", **SERVER_ENV, VQA_CAPTURE_URL=f"sqlite:///{folder / 'capture.db'}") as live:
        yield live


@pytest.mark.integration
@pytest.mark.slow
def test_openapi_schema_holds_under_fuzzing(server: ServeProcess, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    document = offline(httpx.get(server.url + "/openapi.json", timeout=30).json())
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    report = tmp_path / "events.ndjson"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", str(tmp_path / "openapi.json"),
                           "--url", server.url, *RUN, "--report", "ndjson", "--report-ndjson-path", str(report)],
                          capture_output=True, text=True, timeout=1500, check=False,
                          cwd=tmp_path)  # its findings cache (.schemathesis/) is replayed by the next run: fresh
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    form_schema = document["paths"]["/v1/vqa"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    statuses, explained, unexplained = read_report(report, form_schema)
    with capsys.disabled():  # the figures show in every run, passing or not
        print(f"\nschemathesis {' '.join(RUN)} against vqa serve (shop-toy), {time.monotonic() - started:.0f} s:")
        for key, counts in sorted(statuses.items()):
            print(f"  {key}: {sum(counts.values())} cases, statuses {dict(sorted(counts.items()))}")
        for where, n in sorted(explained.items()):
            print(f"  explained: {where}: {n}")
        print(f"  unexplained: {len(unexplained)}", flush=True)
    assert not unexplained, f"{len(unexplained)} findings:\n" + "\n".join(unexplained[:10])
    # The chat route's examples (plain and streamed) are real requests: the model must have answered both.
    assert statuses["POST /v1/chat/completions examples positive"][200] == 2, statuses
    # Schema-valid requests must reach the answer, not only the refusals.
    assert statuses["POST /v1/chat/completions fuzzing positive"][200] > 0, statuses
    assert statuses["POST /v1/vqa fuzzing positive"][200] > 0, statuses


# JSON may escape half a UTF-16 pair ("\\ud800"); json.loads accepts it, UTF-8 cannot hold it. These
# answered 500 (the reply, the tokenizer or the cache key failed to encode it) before they were refused.
SURROGATES = [
    ('{"\\ud800": 1, "messages": []}', "\\ud800"),
    ('{"messages": [{"role": "user", "content": "what is \\udc00 this?"}]}', "messages[0].content"),
    ('{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:\\ud800"}}]}]}',
     "messages[0].content[0].image_url.url"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": ["ok", "\\ud83d"]}', "stop[1]"),
]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("body", "param"), SURROGATES)
def test_unpaired_surrogates_are_a_400_naming_the_field(server: ServeProcess, body: str, param: str) -> None:
    import httpx

    reply = httpx.post(server.url + "/v1/chat/completions", content=body.encode(),
                       headers={"content-type": "application/json"}, timeout=30)
    error = assert_openai_error(reply, 400, param)
    assert "surrogate" in error["message"]


@pytest.mark.integration
@pytest.mark.slow
def test_paired_surrogates_are_text(server: ServeProcess) -> None:
    """An escaped emoji (a valid pair) is ordinary text, not refused."""
    import httpx

    body = '{"max_tokens": 2, "messages": [{"role": "user", "content": "what is \\ud83d\\ude00?"}]}'
    reply = httpx.post(server.url + "/v1/chat/completions", content=body.encode(),
                       headers={"content-type": "application/json"}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.unit
def test_the_request_schemas_are_the_models() -> None:
    """/openapi.json's request bodies come from the models that parse them, nothing added or left out."""
    from tests.http_support import make_app
    from vqaserve.server.chat_request import REFUSED_FIELDS, ChatCompletionRequest
    from vqaserve.server.vqa_form import VQAForm

    document = make_app().openapi()
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert set(chat["properties"]) == {f.alias or name for name, f in ChatCompletionRequest.model_fields.items()}
    assert chat["additionalProperties"] is False and not set(chat["properties"]) & set(REFUSED_FIELDS)
    form = document["paths"]["/v1/vqa"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {f.alias or name for name, f in VQAForm.model_fields.items()}
    assert form["additionalProperties"] is False
    # the server's own max_tokens limit, which the models cannot know
    assert form["properties"]["max_tokens"]["maximum"] == 2048
    chat_max = chat["properties"]["max_tokens"]["anyOf"][0]
    assert (chat_max["type"], chat_max["minimum"], chat_max["maximum"]) == ("integer", 1, 2048)


@pytest.mark.unit
def test_the_document_is_valid_openapi() -> None:
    import schemathesis

    from tests.http_support import make_app

    document = make_app().openapi()
    schemathesis.openapi.from_dict(document).validate()  # raises on a document the 3.1 meta-schema refuses
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["requestBody"]["content"]) == {"application/json"}
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    vqa = document["paths"]["/v1/vqa"]["post"]
    assert set(vqa["requestBody"]["content"]) == {"multipart/form-data"}
    assert vqa["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/VQAResponse"}
    for operation in (chat, vqa):
        assert "422" not in operation["responses"]  # a refused body is a 400, as the others
        assert all(operation["responses"][code]["content"]["application/json"]["schema"]
                   == {"$ref": "#/components/schemas/ErrorResponse"}
                   for code in operation["responses"] if code.startswith(("4", "5")))


def sent(fields: dict[str, str | bytes]) -> dict[str, Any]:
    """A multipart request as the report records it (headers, base64 body)."""
    import httpx

    files = {k: (("f.png", v, "image/png") if isinstance(v, bytes) else (None, v)) for k, v in fields.items()}
    request = httpx.Request("POST", "http://t/v1/vqa", files=files)
    return {"headers": {"Content-Type": [request.headers["content-type"]]},
            "body": {"$base64": base64.b64encode(request.read()).decode()}}


@pytest.mark.unit
def test_the_fuzz_findings_are_sorted_as_the_docstring_says() -> None:
    from tests.http_support import make_app

    document = make_app().openapi()
    form = document["paths"]["/v1/vqa"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    # the JSON value broke the schema (model: 5, seed: []), the form as sent does not
    assert valid_once_encoded(sent({"image": b"\x89PNG", "question": "q", "model": "5"}), form)
    assert valid_once_encoded(sent({"image": b"\x89PNG", "question": "q"}), form)
    assert not valid_once_encoded(sent({"image": b"\x89PNG", "question": "q", "seed": "x"}), form)
    assert not valid_once_encoded(sent({"image": b"\x89PNG", "question": "q", "max_tokens": "0"}), form)
    assert not valid_once_encoded(sent({"question": "q"}), form)

    def refused(status: int, code: str, param: str, message: str) -> dict[str, Any]:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        return {"status_code": status, "content": {"$base64": base64.b64encode(json.dumps(body).encode()).decode()}}

    over = refused(400, "invalid_request", "min_tokens", "min_tokens must be between 0 and max_tokens (1), got 5")
    assert inexpressible(over) == "min_tokens over max_tokens"
    alone = refused(400, "invalid_request", "top_logprobs", "top_logprobs needs logprobs: true; add ...")
    assert inexpressible(alone) == "top_logprobs without logprobs"
    assert inexpressible(refused(415, "unsupported_image_format", "image", "image: PDF files ...")) is not None
    assert inexpressible(refused(400, "invalid_request", "temperature", "temperature must be ...")) is None
    assert inexpressible({"status_code": 400, "content": "oops"}) is None
