"""Confidence, the review flag and logprobs as a client of the HTTP API sees them (scripted engine:
`[[confidence:C]]` in a question scripts the answer's confidence)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import image_bytes
from tests.http_support import assert_openai_error, make_app, sse_payloads, user_msg

pytestmark = pytest.mark.integration


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app(review_below=0.5)) as c:
        yield c


def chat(client: TestClient, text: str, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": [user_msg(text)], **body})


def test_a_sure_answer_has_its_confidence_and_no_review(client: TestClient) -> None:
    r = chat(client, "[[say:blue]] [[confidence:0.875]]")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["confidence"], body["review"]) == (0.875, False)
    assert r.headers["x-vqa-confidence"] == "0.8750" and "x-vqa-review" not in r.headers
    assert body["choices"][0]["logprobs"] is None  # not asked


def test_an_unsure_answer_is_flagged_for_review(client: TestClient) -> None:
    r = chat(client, "[[say:purple]] [[confidence:0.2]]")
    assert (r.json()["confidence"], r.json()["review"]) == (0.2, True)
    assert r.headers["x-vqa-review"] == "true" and r.headers["x-vqa-confidence"] == "0.2000"
    again = chat(client, "[[say:purple]] [[confidence:0.2]]")  # from the cache: the same verdict
    assert again.headers["x-vqa-cache"] == "hit" and again.json()["review"] is True
    assert again.headers["x-vqa-confidence"] == "0.2000"


def test_logprobs_in_openais_shape(client: TestClient) -> None:
    r = chat(client, "[[say:a red dress]] [[confidence:0.5]]", logprobs=True, top_logprobs=1)
    assert r.status_code == 200 and r.headers["x-vqa-cache"] == "bypass"
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["a", " red", " dress"]
    first = content[0]
    assert set(first) == {"token", "logprob", "bytes", "top_logprobs"} and first["bytes"] == [97]
    assert first["top_logprobs"] == [{"token": "a", "logprob": first["logprob"], "bytes": [97]}]
    assert r.json()["choices"][0]["logprobs"]["refusal"] is None


def test_top_logprobs_without_logprobs_is_refused_by_name(client: TestClient) -> None:
    err = assert_openai_error(chat(client, "hi", top_logprobs=2), 400, "top_logprobs")
    assert "logprobs: true" in err["message"]
    assert chat(client, "hi", top_logprobs=0).status_code == 200  # 0 changes nothing, as in vLLM


def test_the_final_chunk_carries_confidence_review_and_logprobs(client: TestClient) -> None:
    r = chat(client, "[[say:a red dress]] [[confidence:0.25]]", stream=True, logprobs=True)
    events = [e for e in sse_payloads(r.text) if e != "[DONE]"]
    *pieces, final = events
    assert final["choices"][0]["finish_reason"] == "stop"
    assert (final["confidence"], final["review"]) == (0.25, True)
    assert [t["token"] for t in final["choices"][0]["logprobs"]["content"]] == ["a", " red", " dress"]
    for event in pieces:  # the extensions are the final chunk's; logprobs come all at once with it
        assert "confidence" not in event and "review" not in event
        assert event["choices"][0]["logprobs"] is None
    assert "x-vqa-confidence" not in r.headers  # a stream's headers leave before its answer


def test_the_upload_form_answers_with_confidence_and_review(client: TestClient) -> None:
    r = client.post("/v1/vqa", files={"image": ("a.png", image_bytes(), "image/png")},
                    data={"question": "[[say:blue]] [[confidence:0.1]]"})
    assert r.status_code == 200, r.text
    assert r.json()["confidence"] == pytest.approx(0.1) and r.json()["review"] is True
    assert (r.headers["x-vqa-confidence"], r.headers["x-vqa-review"]) == ("0.1000", "true")


def test_metrics_show_the_confidence_by_model(client: TestClient) -> None:
    chat(client, "[[confidence:0.3]]")
    chat(client, "[[confidence:0.95]] once more", stream=True)
    page = client.get("/metrics").text
    assert 'vqa_answer_confidence_count{model="scripted"} 2.0' in page
    assert 'vqa_answers_flagged_total{model="scripted"} 1.0' in page
