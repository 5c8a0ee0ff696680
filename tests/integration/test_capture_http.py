"""Capture on the running service, over HTTP (scripted engine, a real SQLite capture database):
each answer is kept under the id its client received, nothing refused is, and the feedback and
review routes do what docs/api.md says. PostgreSQL, and a database that dies, are in
test_capture_dead_database.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.capture_helpers import ago, picture, record
from tests.capture_http_support import png_of, seed, stored, stored_one, wait_stored
from tests.conftest import image_bytes
from tests.http_support import RecordingEngine, assert_openai_error, make_app, sse_payloads
from vqaserve.capture import Feedback
from vqaserve.images.decode import data_uri
from vqaserve.server.access import key_id
from vqaserve.server.state import app_state

pytestmark = pytest.mark.integration
KEY, ADMIN = "sk-capture-test-0123", "admin-capture-test-0123"
AS_USER = {"Authorization": f"Bearer {KEY}"}


def photo(colour: tuple[int, int, int] = (200, 30, 30)) -> str:
    return data_uri(image_bytes(color=colour))


def chat(client: TestClient, text: str = "what is it?", colour: tuple[int, int, int] = (200, 30, 30),
         **body: Any) -> httpx.Response:
    content = [{"type": "image_url", "image_url": {"url": photo(colour)}}, {"type": "text", "text": text}]
    return client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": content}]})


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'capture.db'}"


@pytest.fixture
def client(url: str, tmp_path: Path) -> Iterator[TestClient]:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("forbiddenword\n")
    engine = RecordingEngine(model_id="shop-toy", adapter_names=["sunglasses"],
                             rules={"naughty": "this has a forbiddenword in it"})
    with TestClient(make_app(engine, capture_url=url, api_keys=KEY, admin_keys=ADMIN,
                             safety_blocklist=str(blocklist))) as c:
        c.headers.update(AS_USER)
        yield c


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    wanted = "".join(f'(?=[^}}]*{k}="{re.escape(v)}")' for k, v in labels.items())
    found = re.search(rf"^{name}(?:{{{wanted}[^}}]*}})? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# --- what is captured --------------------------------------------------------------------------------
def test_each_answer_is_kept_under_the_id_its_client_received(client: TestClient, url: str) -> None:
    plain = chat(client, "what colour is it?")
    streamed = chat(client, "what is this product?", colour=(10, 90, 200), stream=True,
                    stream_options={"include_usage": True})
    form = client.post("/v1/vqa", files={"image": ("p.png", image_bytes(color=(30, 160, 60)), "image/png")},
                       data={"question": "is it striped?"})
    assert plain.status_code == streamed.status_code == form.status_code == 200
    chunks = [c for c in sse_payloads(streamed.text) if c != "[DONE]"]
    stream_ids = {c["id"] for c in chunks}
    assert len(stream_ids) == 1  # every chunk carries the one id
    ids = {"plain": plain.json()["id"], "stream": stream_ids.pop(), "vqa": form.json()["request_id"]}
    assert ids["vqa"] == form.headers["x-request-id"]

    kept = wait_stored(url, list(ids.values()))
    for how, text in (("plain", plain.json()["choices"][0]["message"]["content"]),
                      ("stream", "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])),
                      ("vqa", form.json()["answer"])):
        r = kept[ids[how]]
        assert r.answer == text and r.finish_reason == "stop", how
        assert (r.model, r.adapter, r.key_name) == ("shop-toy", None, key_id(KEY)), how
        assert r.cache == "miss" and r.latency_ms > 0 and len(r.image_hashes) == 1, how
    assert kept[ids["plain"]].question == "what colour is it?"
    assert kept[ids["stream"]].turns == ({"role": "user", "text": "what is this product?", "images": 1},)
    # the key's name (a digest) is kept, never the key
    assert KEY not in repr(stored(url))
    # the picture is the one the model saw, stored once by its hash
    r = client.get(f"/v1/captures/{ids['vqa']}/pictures/{kept[ids['vqa']].image_hashes[0]}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
    assert r.headers["cache-control"] == "no-store"
    # the hook's own time on the request path is a stage of its own
    assert metric(client, "vqa_stage_seconds_count", stage="capture") == 3
    assert metric(client, "vqa_capture_written_total") == 3


def test_a_cache_hit_is_captured_as_one(client: TestClient, url: str) -> None:
    first, again = chat(client, "what colour is it?"), chat(client, "what colour is it?")
    assert again.headers["x-vqa-cache"] == "hit"
    kept = wait_stored(url, [first.json()["id"], again.json()["id"]])
    assert [kept[r.json()["id"]].cache for r in (first, again)] == ["miss", "hit"]


def test_an_adapter_is_kept_by_name_with_its_weights_digest(client: TestClient, url: str, tmp_path: Path) -> None:
    folder = tmp_path / "v2"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"v2 weights")
    loaded = client.post("/admin/adapters", json={"name": "v2", "path": str(folder)},
                         headers={"Authorization": f"Bearer {ADMIN}"})
    assert loaded.status_code == 200, loaded.text
    version = loaded.json()["version"]
    r = chat(client, model="v2")
    assert r.headers["x-vqa-model"] == version
    kept = wait_stored(url, [r.json()["id"]])[r.json()["id"]]
    assert (kept.model, kept.adapter, f"{kept.adapter}@{kept.adapter_fingerprint}") == ("shop-toy", "v2", version)
    # the thumbs are counted under the model label /metrics and x-vqa-model use for that version
    assert client.post("/v1/feedback", json={"id": r.json()["id"], "rating": "down"}).status_code == 200
    assert metric(client, "vqa_feedback_total", model=version, rating="down") == 1
    listed = client.get("/v1/captures", params={"view": "all", "adapter": "v2"}).json()
    assert [a["id"] for a in listed["data"]] == [r.json()["id"]]


def test_nothing_refused_is_captured(client: TestClient, url: str) -> None:
    bad = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(b"no")}},
        {"type": "text", "text": "what is it?"}]}]})
    assert_openai_error(bad, 400)
    filtered = chat(client, "naughty question")
    assert filtered.json()["choices"][0]["finish_reason"] == "content_filter"
    streamed = chat(client, "naughty question", colour=(1, 2, 3), stream=True)
    assert '"finish_reason": "content_filter"' in streamed.text
    ok = chat(client, "a fine question")
    wait_stored(url, [ok.json()["id"]])  # written after the others were submitted
    assert [r.id for r in stored(url)] == [ok.json()["id"]]
    writer = app_state(client.app).capture  # type: ignore[arg-type]
    assert writer is not None and writer.stats().refused == 2


def test_without_images_only_the_hashes_are_kept(tmp_path: Path, url: str) -> None:
    with TestClient(make_app(capture_url=url, capture_images=False)) as client:
        r = chat(client)
        kept = wait_stored(url, [r.json()["id"]])[r.json()["id"]]
        (content_hash,) = kept.image_hashes
        picture_reply = client.get(f"/v1/captures/{kept.id}/pictures/{content_hash}")
        error = assert_openai_error(picture_reply, 404, "content_hash")
        assert "VQA_CAPTURE_IMAGES=false" in error["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", content_hash)
    db = Path(url.removeprefix("sqlite:///"))
    files = list(db.parent.glob(db.name + "*"))  # the database and its write-ahead log, if left
    assert files and all(b"\x89PNG" not in f.read_bytes() for f in files)  # no picture bytes anywhere


# --- feedback ----------------------------------------------------------------------------------------
def test_feedback_rates_an_answer_and_a_second_rating_replaces_the_first(client: TestClient, url: str) -> None:
    answer_id = chat(client).json()["id"]  # rated at once: the route waits for the queued record
    r = client.post("/v1/feedback", json={"id": answer_id, "rating": "down", "correction": " sunglasses ",
                                          "comment": "a customer said so"})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": answer_id, "rating": "down", "correction": "sunglasses",
                        "comment": "a customer said so", "status": "saved"}
    fb = stored_one(url, answer_id).feedback  # type: ignore[union-attr]
    assert fb is not None and (fb.rating, fb.correction, fb.comment) == ("down", "sunglasses", "a customer said so")
    again = client.post("/v1/feedback", json={"id": answer_id, "rating": "up"})
    assert again.status_code == 200
    fb = stored_one(url, answer_id).feedback  # type: ignore[union-attr]
    assert fb is not None and (fb.rating, fb.correction, fb.comment) == ("up", None, None)  # replaced whole
    assert metric(client, "vqa_feedback_total", model="shop-toy", rating="down") == 1
    assert metric(client, "vqa_feedback_total", model="shop-toy", rating="up") == 1


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"id": "x", "rating": "meh"}, "rating", "'up' or 'down'"),
    ({"id": "x"}, "rating", "missing"),
    ({"rating": "up"}, "id", "missing"),
    ({"id": "", "rating": "up"}, "id", "1 to 256 characters"),
    ({"id": "x", "rating": "up", "stars": 5}, "stars", "unknown field"),
    ({"id": "x", "rating": "down", "correction": "y" * 2001}, "correction", "at most 2000"),
    ({"id": "x", "rating": "down", "comment": 7}, "comment", "at most 2000"),
    ({"id": "x", "rating": "down", "correction": "sun\u0000glasses"}, "correction", "without NUL"),
])
def test_bad_feedback_is_a_400_naming_the_field(client: TestClient, body: dict[str, Any], param: str,
                                                words: str) -> None:
    error = assert_openai_error(client.post("/v1/feedback", json=body), 400, param)
    assert words in error["message"], error


def test_feedback_for_an_unknown_id_is_a_404(client: TestClient) -> None:
    error = assert_openai_error(client.post("/v1/feedback", json={"id": "chatcmpl-never", "rating": "up"}), 404, "id")
    assert error["code"] == "capture_not_found" and "GET /v1/captures" in error["message"]
    assert_openai_error(client.post("/v1/feedback", content=b"{", headers={"content-type": "application/json"}),
                        400, "body")


# --- deletion ----------------------------------------------------------------------------------------
def test_delete_removes_the_answer_its_rating_and_its_picture(client: TestClient, url: str) -> None:
    gone, kept = chat(client, colour=(5, 5, 5)).json()["id"], chat(client, colour=(9, 9, 9)).json()["id"]
    records = wait_stored(url, [gone, kept])
    client.post("/v1/feedback", json={"id": gone, "rating": "down", "correction": "a hat"})
    r = client.delete(f"/v1/captures/{gone}")
    assert r.status_code == 200 and r.json() == {"id": gone, "deleted": True}
    assert stored_one(url, gone) is None and stored_one(url, kept) is not None
    assert_openai_error(client.get(f"/v1/captures/{gone}/pictures/{records[gone].image_hashes[0]}"), 404,
                        "capture_id")
    assert client.get(f"/v1/captures/{kept}/pictures/{records[kept].image_hashes[0]}").status_code == 200
    assert_openai_error(client.delete(f"/v1/captures/{gone}"), 404, "capture_id")
    assert_openai_error(client.post("/v1/feedback", json={"id": gone, "rating": "up"}), 404, "id")


def test_an_answer_deleted_before_its_write_is_not_written_later(client: TestClient, url: str) -> None:
    answer_id = chat(client).json()["id"]
    assert client.delete(f"/v1/captures/{answer_id}").status_code == 200  # probably still queued
    chat(client, colour=(1, 1, 1))
    later = chat(client, colour=(2, 2, 2)).json()["id"]
    wait_stored(url, [later])
    assert stored_one(url, answer_id) is None


# --- keys, and capture off ---------------------------------------------------------------------------
ROUTES = [("POST", "/v1/feedback", {"id": "x", "rating": "up"}), ("GET", "/v1/captures", None),
          ("DELETE", "/v1/captures/x", None), ("GET", "/v1/captures/x/pictures/" + "0" * 32, None)]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_capture_route_needs_an_api_key(client: TestClient, method: str, path: str,
                                              body: dict[str, Any] | None) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {ADMIN}"}):
        r = client.request(method, path, json=body, headers=headers)
        assert_openai_error(r, 401, "Authorization")
    assert client.request(method, path, json=body).status_code in (200, 404)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_with_capture_off_each_route_says_how_to_turn_it_on(method: str, path: str,
                                                            body: dict[str, Any] | None) -> None:
    with TestClient(make_app()) as client:
        r = client.request(method, path, json=body)
        error = assert_openai_error(r, 409)
        assert error["code"] == "capture_off" and "VQA_CAPTURE_URL" in error["message"]
        info = client.get("/static/page.json").json()
        assert info["capture"] is False
        assert "vqa_capture_written_total" not in client.get("/metrics").text


# --- the review list ---------------------------------------------------------------------------------
def test_the_review_views_filters_and_pages(client: TestClient, url: str) -> None:
    red, blue = picture((200, 30, 30)), picture((10, 60, 200))
    seed(url, [
        record("flagged-old", created=ago(days=3), confidence=0.2, pictures=(red,)),
        record("down-sure", created=ago(days=2), confidence=0.9, adapter="v2", adapter_fingerprint="ab12",
               feedback=Feedback(rating="down", correction="sunglasses"), pictures=(blue,)),
        record("fine", created=ago(days=1), confidence=0.95),
        record("up-low", created=ago(hours=5), confidence=0.3, feedback=Feedback(rating="up"), model="other"),
        record("unknown", created=ago(hours=1), confidence=None),
    ], {red.content_hash: png_of(red), blue.content_hash: png_of(blue)})

    def ids(**params: Any) -> list[str]:
        r = client.get("/v1/captures", params=params)
        assert r.status_code == 200, r.text
        return [a["id"] for a in r.json()["data"]]

    assert ids() == ["up-low", "down-sure", "flagged-old"]  # view=review: flagged or thumbs-down, newest first
    assert ids(view="flagged") == ["up-low", "flagged-old"]
    assert ids(view="down") == ["down-sure"]
    assert ids(view="low", below=0.25) == ["flagged-old"]
    assert ids(view="rated") == ["up-low", "down-sure"]
    assert ids(view="all") == ["unknown", "up-low", "fine", "down-sure", "flagged-old"]
    assert ids(view="all", model="other") == ["up-low"]
    assert ids(view="all", adapter="v2") == ["down-sure"]
    day = (ago(days=2)).date().isoformat()
    assert ids(view="all", since=day, until=day) == ["down-sure"]  # a bare `until` date: that whole day
    assert ids(view="all", until=ago(days=1, hours=1).isoformat()) == ["down-sure", "flagged-old"]
    page = client.get("/v1/captures", params={"view": "all", "limit": 2, "offset": 2}).json()
    assert ([a["id"] for a in page["data"]], page["total"], page["limit"], page["offset"]) == (
        ["fine", "down-sure"], 5, 2, 2)
    item = page["data"][1]
    assert item["feedback"]["rating"] == "down" and item["feedback"]["correction"] == "sunglasses"
    assert (item["flagged"], item["images"], item["adapter_fingerprint"]) == (False, [blue.content_hash], "ab12")
    assert page["review_below"] == 0.5
    flagged = client.get("/v1/captures", params={"view": "flagged"}).json()["data"]
    assert all(a["flagged"] for a in flagged)
    # a picture of one answer is not reachable through another's id
    assert_openai_error(client.get(f"/v1/captures/fine/pictures/{red.content_hash}"), 404, "content_hash")
    r = client.get(f"/v1/captures/flagged-old/pictures/{red.content_hash}")
    assert r.status_code == 200 and r.content == png_of(red)


@pytest.mark.parametrize(("params", "param"), [
    ({"view": "worst"}, "view"), ({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"offset": -1}, "offset"),
    ({"below": 2}, "below"), ({"since": "yesterday"}, "since"), ({"until": "2026-13-01"}, "until"),
    ({"until": "0.5"}, "until"), ({"since": "1764547200"}, "since"),  # numbers are not dates here
])
def test_bad_listing_parameters_are_a_400_naming_them(client: TestClient, params: dict[str, Any], param: str) -> None:
    assert_openai_error(client.get("/v1/captures", params=params), 400, param)
    assert_openai_error(client.get("/v1/captures/x/pictures/not-a-hash"), 400, "content_hash")


def test_the_review_page_is_served_with_the_page_csp(client: TestClient) -> None:
    page = client.get("/review", headers={"Authorization": ""})  # public like /: its data needs the key
    assert page.status_code == 200 and "review.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # no inline script
    assert client.get("/static/page.json").json()["capture"] is True
