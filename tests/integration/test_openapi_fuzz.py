"""Schemathesis against `vqa serve` with the bundled model: /openapi.json is complete and true.

Every answering operation gets the schema's examples, then schema-valid (positive) and schema-breaking
(negative) generated requests. Every response must be a non-5xx, with a status, content type and
body the schema declares; every 4xx must be OpenAI's error JSON with no traceback or path in it; a
schema-breaking JSON body must be refused. Hypothesis is derandomized, so a run is reproducible and
its cost bounded. Below it: the unpaired-surrogate 500s found while building this (now 400s), and a
check that the schema names exactly the fields the parsers know.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.http_support import LEAKS, ServeProcess, assert_openai_error
from vqaserve.server.schemas import IMAGE_URL

# The routes of server/routes_openai.py and routes_vqa.py; /health, /ready, /metrics have tests of their own.
OPERATIONS = (("/v1/chat/completions", "POST"), ("/v1/vqa", "POST"), ("/v1/models", "GET"))
# Per operation and generation mode; about 500 requests in all, most refused (400) before the model runs.
MAX_EXAMPLES = {"POST": 100, "GET": 5}
# Small answers and pictures, so the requests that do reach the model are quick on a loaded CPU.
SERVER_ENV = {"VQA_MODEL": "shop-toy", "VQA_SAFETY_IMAGE": "off", "VQA_MAX_NEW_TOKENS": "4",
              "VQA_GENERATION__MAX_NEW_TOKENS_LIMIT": "8", "VQA_MIN_PIXELS": str(4 * 32 * 32),
              "VQA_MAX_PIXELS": str(16 * 32 * 32), "VQA_FETCH__TIMEOUT_S": "1"}


def offline(document: Any) -> Any:
    """The schema with image URLs narrowed to data: URIs.

    An http(s) image URL makes the server fetch it: from a test that is a DNS query for a made-up
    host, answered 502 (documented: the image host failed) or, with a network, a slow request to a
    stranger. The fetcher has its own tests (tests/safety); here every image stays inline.
    """
    if isinstance(document, dict):
        return {k: "^[dD][aA][tT][aA]:" if k == "pattern" and v == IMAGE_URL else offline(v)
                for k, v in document.items()}
    if isinstance(document, list):
        return [offline(v) for v in document]
    return document


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx is `{"error": {"message", "type", "param", "code"}}`, with nothing internal in it."""
    if not 400 <= response.status_code < 500:
        return None
    assert not LEAKS.search(response.text), f"internal detail in the error reply: {response.text[:300]}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not OpenAI error JSON: {response.text[:300]}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    return None


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          openai_error_shape]
# A JSON request that breaks the schema must be refused: the schema is no stricter than the parser
# (a value the parser takes but the schema forbids fails here). Not for the multipart form: there a
# schema-breaking value (an empty list, a number for a text field) is valid text once serialized.
JSON_CHECKS = [*CHECKS, negative_data_rejection]


def _run(strategy: st.SearchStrategy[Any], max_examples: int, url: str, session: Any, checks: list[Any],
         statuses: Counter[int], failures: list[str]) -> None:
    """Sends every generated case, noting each failure (the run goes on, so one report shows them all)."""

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],  # no shrinking: a live server makes it slow
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def send(case: Any) -> None:
        try:
            response = case.call_and_validate(base_url=url, session=session, checks=checks, timeout=60)
            statuses[response.status_code] += 1
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every failure is reported below
            failures.append(f"{case.operation.label}: {str(exc)[:1500]}\n  reproduce: "
                            f"{case.as_curl_command()[:1500]}")

    send()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path_factory.mktemp("fuzz") / "serve.log", **SERVER_ENV) as live:
        yield live


@pytest.mark.integration
@pytest.mark.slow
def test_openapi_schema_holds_under_fuzzing(server: ServeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    import requests

    schema = schemathesis.openapi.from_dict(offline(requests.get(server.url + "/openapi.json").json()))
    failures: list[str] = []
    answered: dict[str, Counter[int]] = {}
    started = time.monotonic()
    with requests.Session() as session:
        for path, method in OPERATIONS:
            operation = schema[path][method]
            examples = operation.get_strategies_from_examples()
            phases: list[tuple[str, st.SearchStrategy[Any] | None]] = [
                ("examples", st.one_of(examples) if examples else None),
                ("positive", operation.as_strategy(GenerationMode.POSITIVE)),
                ("negative", operation.as_strategy(GenerationMode.NEGATIVE)),
            ]
            for phase, strategy in phases:
                statuses: Counter[int] = Counter()
                before, t0 = len(failures), time.monotonic()
                try:
                    if strategy is not None:
                        checks = CHECKS if path == "/v1/vqa" else JSON_CHECKS
                        _run(strategy, MAX_EXAMPLES[method], server.url, session, checks, statuses, failures)
                except Unsatisfiable:  # e.g. negative cases of an operation that takes no input
                    pass
                answered[f"{method} {path} {phase}"] = statuses
                failed = len(failures) - before
                with capsys.disabled():  # the figures show in every run, passing or not
                    print(("\nschemathesis against vqa serve (shop-toy):" if len(answered) == 1 else "")
                          + f"\n  {method} {path} {phase}: {sum(statuses.values()) + failed} cases, {failed} "
                          f"failures, statuses {dict(sorted(statuses.items()))}, {time.monotonic() - t0:.1f} s",
                          flush=True)
    with capsys.disabled():
        print(f"\n  total {time.monotonic() - started:.1f} s", flush=True)
    # The chat route's examples (plain and streamed) are real requests: the model must have answered both.
    assert answered["POST /v1/chat/completions examples"][200] == 2, answered
    # Schema-valid requests must reach the answer, not only the refusals.
    assert answered["POST /v1/chat/completions positive"][200] > 0, answered
    assert answered["POST /v1/vqa positive"][200] > 0, answered
    assert not failures, f"{len(failures)} failing cases:\n" + "\n".join(failures[:10])


# JSON may escape half a UTF-16 pair ("\\ud800"); json.loads accepts it, UTF-8 cannot hold it. These
# answered 500 (the reply, the tokenizer or the cache key failed to encode it) before protocol.lone_surrogate.
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
def test_the_schemas_name_exactly_the_fields_the_parsers_know() -> None:
    """schemas.py describes protocol.py and routes_vqa.py: a field added to a parser must be added there."""
    from vqaserve.server import protocol, routes_vqa, schemas

    chat = set(schemas.chat_request_schema()["properties"])
    parsed = set(protocol.ChatCompletionRequest.model_fields)
    assert chat == parsed | protocol.IGNORED_FIELDS | set(protocol.DEFAULT_ONLY)
    assert not chat & set(protocol.REFUSED_FIELDS)  # always refused: not in the schema at all
    assert set(schemas.UPLOAD_FORM_SCHEMA["properties"]) == set(routes_vqa.FIELDS)


@pytest.mark.unit
def test_the_document_is_valid_openapi() -> None:
    from tests.http_support import make_app

    document = make_app().openapi()
    schemathesis.openapi.from_dict(document).validate()  # raises on a document the 3.1 meta-schema refuses
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["requestBody"]["content"]) == {"application/json"}
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    vqa = document["paths"]["/v1/vqa"]["post"]
    assert set(vqa["requestBody"]["content"]) == {"multipart/form-data"}
    assert vqa["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/VQAResponse"}
    for operation in (chat, vqa):
        assert all(operation["responses"][code]["content"]["application/json"]["schema"]
                   == {"$ref": "#/components/schemas/ErrorResponse"}
                   for code in operation["responses"] if code.startswith(("4", "5")))
