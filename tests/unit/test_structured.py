"""Structured output without a model: response_format parsing and limits, the cache key, the wire body,
and the HTTP surfaces (chat completions, /v1/vqa) with the scripted engine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import image_bytes
from tests.http_support import RecordingEngine, assert_openai_error, make_app, user_msg
from vqaserve.cache.keys import CacheKeyBuilder
from vqaserve.engines.structured import (
    JSON_OBJECT_SCHEMA,
    MAX_PROPERTIES,
    parse_response_format,
    response_format_body,
    schema_from_text,
    violation,
)
from vqaserve.engines.upstream_wire import build_body
from vqaserve.errors import InvalidRequest
from vqaserve.types import EngineRequest, GenerationParams, Part, Question, Turn

pytestmark = pytest.mark.unit

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"category": {"enum": ["jacket", "hat"]}, "color": {"type": "string"},
                   "occasions": {"type": "array", "items": {"enum": ["business", "casual"]}}},
    "required": ["category", "color"], "additionalProperties": False}


def fmt(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "attributes", "schema": schema, **extra}}


def test_text_and_none_mean_free_text() -> None:
    assert parse_response_format(None) == ""
    assert parse_response_format({"type": "text"}) == ""


def test_json_object_and_json_schema_become_canonical_json() -> None:
    assert parse_response_format({"type": "json_object"}) == JSON_OBJECT_SCHEMA
    text = parse_response_format(fmt(SCHEMA, strict=True))
    assert json.loads(text) == SCHEMA and " " not in text.replace("\" ", "")
    # key order is kept: property order is the order of the answer's keys
    assert list(json.loads(text)["properties"]) == ["category", "color", "occasions"]
    spaced = json.dumps(SCHEMA, indent=2)
    assert schema_from_text(spaced, "schema") == text  # the same schema, however it was spelled


@pytest.mark.parametrize(("value", "says"), [
    ({"type": "xml"}, "not supported"),
    ({"type": "json_schema"}, "json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "json_schema.schema"),
    (fmt(SCHEMA, strict="yes"), "strict"),
    (fmt({"type": "obj"}), "use one of"),
    (fmt({"type": "object", "properties": {"a": {"enum": []}}}), "enum"),
    (fmt({"type": "object", "properties": {"a": 3}}), "schema object"),
    (fmt({"type": "object", "required": "a"}), "required"),
    (fmt({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(MAX_PROPERTIES + 1)}}),
     "ask for fewer attributes"),
    (fmt({"type": "object", "description": "x" * 17000}), "limit is 16384"),
    ("json", "must be an object"),
])
def test_bad_response_formats_are_refused_naming_the_fix(value: Any, says: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_response_format(value)
    assert err.value.param == "response_format" and says in str(err.value)


def test_schema_text_must_be_json() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON") as err:
        schema_from_text("{type: object}", "schema")
    assert err.value.param == "schema"


def _question(schema: str) -> Question:
    return Question(turns=[Turn(role="user", parts=[Part(text="Describe it as JSON.")])],
                    params=GenerationParams(json_schema=schema))


def test_the_schema_is_in_the_cache_key_and_free_text_keys_are_unchanged() -> None:
    keys = CacheKeyBuilder()
    free, obj = keys(_question(""), "m", "p"), keys(_question(JSON_OBJECT_SCHEMA), "m", "p")
    one = keys(_question(parse_response_format(fmt(SCHEMA))), "m", "p")
    other = keys(_question(parse_response_format(fmt({**SCHEMA, "required": ["category"]}))), "m", "p")
    assert len({free, obj, one, other}) == 4
    assert one == keys(_question(parse_response_format(fmt(json.loads(json.dumps(SCHEMA))))), "m", "p")
    # the key this question had before structured output existed: the cache survives the upgrade
    assert free == "a9653847ac5e0480b9c79e0c1d3c15878a426963"


def test_schema_is_not_part_of_the_batch_key() -> None:
    # the engine masks each row with its own grammar, so mixed rows share one generate()
    assert GenerationParams(json_schema=JSON_OBJECT_SCHEMA).batch_key() == GenerationParams().batch_key()


def test_upstream_body_carries_openais_response_format() -> None:
    schema = parse_response_format(fmt(SCHEMA))
    body = build_body(EngineRequest(turns=[], params=GenerationParams(json_schema=schema)), "m", [], False)
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "response", "schema": SCHEMA, "strict": True}}
    assert response_format_body(JSON_OBJECT_SCHEMA) == {"type": "json_object"}
    assert "response_format" not in build_body(EngineRequest(turns=[], params=GenerationParams()), "m", [], False)


def test_violation_checks_answers_independently() -> None:
    assert violation({"category": "hat", "color": "navy", "occasions": ["casual"]}, SCHEMA) is None
    assert "missing" in (violation({"category": "hat"}, SCHEMA) or "")
    assert "not one of" in (violation({"category": "cap", "color": "x"}, SCHEMA) or "")
    assert "not string" in (violation({"category": "hat", "color": 3}, SCHEMA) or "")
    assert "[0]" in (violation({"category": "hat", "color": "x", "occasions": ["gym"]}, SCHEMA) or "")


def test_chat_completions_pass_the_schema_to_the_engine_and_refuse_bad_ones() -> None:
    engine = RecordingEngine(model_id="scripted")
    with TestClient(make_app(engine)) as client:
        ok = client.post("/v1/chat/completions", json={
            "messages": [user_msg("Describe it as JSON.")], "response_format": fmt(SCHEMA, strict=True)})
        assert ok.status_code == 200
        assert json.loads(engine.requests[-1].params.json_schema) == SCHEMA
        bad = client.post("/v1/chat/completions", json={
            "messages": [user_msg("x")], "response_format": fmt({"type": "obj"})})
        assert "use one of" in assert_openai_error(bad, 400, "response_format")["message"]
        with_min = client.post("/v1/chat/completions", json={
            "messages": [user_msg("x")], "response_format": {"type": "json_object"}, "min_tokens": 5})
        assert "remove min_tokens" in assert_openai_error(with_min, 400, "min_tokens")["message"]
        guided = client.post("/v1/chat/completions", json={"messages": [user_msg("x")], "guided_json": {}})
        assert "response_format" in assert_openai_error(guided, 400, "guided_json")["message"]


def test_vqa_form_takes_a_schema_as_text_or_file() -> None:
    engine = RecordingEngine(model_id="scripted")
    with TestClient(make_app(engine)) as client:
        for schema in ({"schema": (None, json.dumps(SCHEMA))},
                       {"schema": ("s.json", json.dumps(SCHEMA).encode(), "application/json")}):
            resp = client.post("/v1/vqa", files={"image": ("a.png", image_bytes(), "image/png"), **schema},
                               data={"question": "Describe it as JSON."})
            assert resp.status_code == 200, resp.text
            assert json.loads(engine.requests[-1].params.json_schema) == SCHEMA
        bad = client.post("/v1/vqa", files={"image": ("a.png", image_bytes(), "image/png")},
                          data={"question": "q", "schema": "[1]"})
        assert_openai_error(bad, 400, "schema")
        png = ("a.png", image_bytes(), "image/png")
        twice = client.post("/v1/vqa", files=[("image", png), ("image", png)], data={"question": "q"})
        assert "more than once" in assert_openai_error(twice, 400, "image")["message"]


def test_vqa_ask_reads_the_schema_file(tmp_path: Any) -> None:
    from vqaserve.cli.ask import _schema

    path = tmp_path / "attributes.schema.json"
    path.write_text(json.dumps(SCHEMA, indent=2))
    assert json.loads(_schema(str(path))) == SCHEMA and _schema(None) == ""
    with pytest.raises(InvalidRequest, match="cannot read it"):
        _schema(str(tmp_path / "missing.json"))
    path.write_text("[]")
    with pytest.raises(InvalidRequest, match="JSON Schema object"):
        _schema(str(path))
