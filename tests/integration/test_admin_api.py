"""The admin API on the scripted engine: the door (admin keys only), loads and routes as a client sees
them (model field, x-vqa-model, metrics, the answer cache), and errors that name the fix."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import image_bytes
from tests.http_support import RecordingEngine, assert_openai_error, make_app
from vqaserve.images.decode import data_uri

pytestmark = pytest.mark.integration
ADMIN, API = "admin-key-0123456789", "api-key-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def weights(tmp_path: Path, name: str, content: bytes) -> str:
    """An adapter directory whose weights file holds `content` (the scripted engine fingerprints it)."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(content)
    return str(folder)


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine(model_id="shop-toy", adapter_names=["sunglasses"])


@pytest.fixture
def client(engine: RecordingEngine) -> Iterator[TestClient]:
    with TestClient(make_app(engine, admin_keys=ADMIN, api_keys=API)) as c:
        c.headers["Authorization"] = f"Bearer {API}"
        yield c


def ask(client: TestClient, model: str = "shop-toy", colour: tuple[int, int, int] = (200, 30, 30),
        text: str = "what is it?", **body: Any) -> httpx.Response:
    uri = data_uri(image_bytes(color=colour))
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": text}]
    return client.post("/v1/chat/completions", json={"model": model, **body,
                                                     "messages": [{"role": "user", "content": content}]})


def admin(client: TestClient, method: str, path: str, **kw: Any) -> httpx.Response:
    return client.request(method, path, headers=AS_ADMIN, **kw)


ROUTES = [("GET", "/admin/adapters", None), ("POST", "/admin/adapters", {"name": "v2", "path": "/x"}),
          ("DELETE", "/admin/adapters/sunglasses", None), ("PUT", "/admin/routes/shop-toy", {"to": {"v2": 10}}),
          ("DELETE", "/admin/routes/shop-toy", None)]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_without_admin_keys_the_admin_api_is_off(engine: RecordingEngine, method: str, path: str,
                                                 body: Any) -> None:
    with TestClient(make_app(engine)) as c:  # no keys at all: the API is open, the admin API is not
        missing = assert_openai_error(c.request(method, path, json=body), 401)  # no credential: 401 first
        assert missing["code"] == "invalid_admin_key" and "is off" in missing["message"]
        error = assert_openai_error(c.request(method, path, json=body, headers={"Authorization": "Bearer x"}), 403)
        assert error["code"] == "admin_api_off" and "VQA_ADMIN_KEYS" in error["message"]
    assert engine.adapters() == ["sunglasses"]


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "invalid_admin_key"), ({"Authorization": "Bearer wrong"}, 401, "invalid_admin_key"),
    ({"Authorization": f"Bearer {API}"}, 403, "not_an_admin_key"),
    ({"Authorization": f"Basic {ADMIN}"}, 401, "invalid_admin_key"),
])
def test_only_an_admin_key_opens_it(client: TestClient, headers: dict[str, str], status: int, code: str) -> None:
    for method, path, body in ROUTES:
        r = client.request(method, path, json=body, headers=headers or {"Authorization": ""})
        assert assert_openai_error(r, status, "Authorization")["code"] == code
    assert admin(client, "GET", "/admin/adapters").status_code == 200  # past the API-key layer too


def test_an_admin_key_is_not_an_api_key_and_several_workers_turn_it_off(engine: RecordingEngine) -> None:
    with TestClient(make_app(engine, admin_keys=ADMIN, api_keys=API)) as c:
        assert c.get("/v1/models", headers=AS_ADMIN).status_code == 401
    with TestClient(make_app(engine, admin_keys=ADMIN, workers=2)) as c:
        error = assert_openai_error(c.get("/admin/adapters", headers=AS_ADMIN), 403)
        assert "VQA_WORKERS" in error["message"]


def test_load_route_reload_unload_as_clients_see_it(client: TestClient, tmp_path: Path) -> None:
    one = weights(tmp_path, "one", b"weights one")
    r = admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": one})
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["status"], first["replaced"]) == ("loaded", None) and first["version"].startswith("v2@")
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["shop-toy", "sunglasses", "v2"]
    r = ask(client, "v2")
    assert r.json()["model"] == "v2" and r.headers["x-vqa-model"] == first["version"]
    assert r.json()["choices"][0]["message"]["content"].startswith(f"[{first['version']}]")

    r = admin(client, "PUT", "/admin/routes/shop-toy", json={"to": {"v2": 100}})
    assert r.json() == {"model": "shop-toy", "to": {"v2": 100.0}}
    r = ask(client, colour=(1, 2, 3))  # asked for shop-toy, answered by v2: the response says so
    assert r.json()["model"] == "v2" and r.headers["x-vqa-model"] == first["version"]

    again = admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": weights(tmp_path, "two", b"2")})
    assert (again.json()["status"], again.json()["replaced"]) == ("reloaded", first["version"])
    assert ask(client, colour=(1, 2, 3)).headers["x-vqa-model"] == again.json()["version"]
    same = admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": weights(tmp_path, "copy", b"2")})
    assert same.json()["status"] == "unchanged"

    listed = admin(client, "GET", "/admin/adapters").json()
    assert listed["model"] == "shop-toy" and listed["routes"] == [{"model": "shop-toy", "to": {"v2": 100.0}}]
    assert [(a["name"], a["state"], a["path"]) for a in listed["adapters"]] == [
        ("sunglasses", "serving", None), ("v2", "serving", str(tmp_path / "two"))]

    error = assert_openai_error(admin(client, "DELETE", "/admin/adapters/v2"), 400, "name")
    assert "vqa adapter route shop-toy --off" in error["message"]  # routed to: the route goes first
    assert admin(client, "DELETE", "/admin/routes/shop-toy").json()["status"] == "removed"
    assert ask(client, colour=(1, 2, 3)).json()["model"] == "shop-toy"
    assert admin(client, "DELETE", "/admin/adapters/v2").json()["status"] == "unloaded"
    assert assert_openai_error(ask(client, "v2"), 404, "model")["code"] == "model_not_found"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["shop-toy", "sunglasses"]


def test_a_reloaded_adapter_never_answers_from_its_predecessors_cache(client: TestClient, tmp_path: Path) -> None:
    old, new = weights(tmp_path, "old", b"old weights"), weights(tmp_path, "new", b"new weights")
    admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": old})
    first = ask(client, "v2")
    assert first.headers["x-vqa-cache"] == "miss" and ask(client, "v2").headers["x-vqa-cache"] == "hit"
    admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": new})
    fresh = ask(client, "v2")
    assert fresh.headers["x-vqa-cache"] == "miss"
    assert fresh.json()["choices"][0]["message"]["content"] != first.json()["choices"][0]["message"]["content"]
    again = weights(tmp_path, "old-again", b"old weights")
    admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": again})
    back = ask(client, "v2")  # the same weights as the first time: their answers are theirs again
    assert back.headers["x-vqa-cache"] == "hit" and back.json()["choices"] == first.json()["choices"]


def test_a_canary_share_is_binomial_and_sticky_per_picture(client: TestClient, tmp_path: Path) -> None:
    admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": weights(tmp_path, "v2", b"v2")})
    assert admin(client, "PUT", "/admin/routes/shop-toy", json={"to": {"v2": 10}}).status_code == 200
    colours = [(i % 256, i // 256, 77) for i in range(300)]  # 300 distinct pictures
    first = [ask(client, colour=c, text="what is it?").json()["model"] for c in colours]
    n, p = len(colours), 0.10
    assert abs(first.count("v2") - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), first.count("v2")
    follow = [ask(client, colour=c, text="what colour is it?").json()["model"] for c in colours[:60]]
    assert follow == first[:60]  # a follow-up about the same picture: the same model
    metrics = client.get("/metrics").text
    version = admin(client, "GET", "/admin/adapters").json()["adapters"][1]["version"]
    assert f'vqa_answers_total{{cache="miss",model="{version}"}} {float(first.count("v2") + follow.count("v2"))}' \
        in metrics  # every answer counted once, under the weights that gave it
    assert f'vqa_answer_seconds_count{{model="{version}"}}' in metrics
    assert 'vqa_answer_seconds_count{model="shop-toy"}' in metrics


def test_a_stream_says_who_answers(client: TestClient, tmp_path: Path) -> None:
    loaded = admin(client, "POST", "/admin/adapters", json={"name": "v2", "path": weights(tmp_path, "v2", b"x")})
    admin(client, "PUT", "/admin/routes/shop-toy", json={"to": {"v2": 100}})
    r = ask(client, stream=True)
    assert r.status_code == 200 and r.headers["x-vqa-model"] == loaded.json()["version"]
    assert '"model": "v2"' in r.text and '"model": "shop-toy"' not in r.text
    vqa = client.post("/v1/vqa", files={"image": ("p.png", image_bytes(), "image/png")},
                      data={"question": "what is it?"})
    assert vqa.json()["model"] == "v2" and vqa.headers["x-vqa-model"] == loaded.json()["version"]


@pytest.mark.parametrize(("method", "path", "body", "status", "param", "fix"), [
    ("POST", "/admin/adapters", {"name": "v2"}, 400, "path", "adapter directory"),
    ("POST", "/admin/adapters", {"name": 3, "path": "/x"}, 400, "name", 'e.g. "v2"'),
    ("POST", "/admin/adapters", {"name": "v2", "path": "/x", "rank": 8}, 400, "rank", "takes name, path"),
    ("POST", "/admin/adapters", ["v2"], 400, "body", "JSON object"),
    ("POST", "/admin/adapters", {"name": "a b", "path": "/x"}, 400, "name", "letters, digits"),
    ("POST", "/admin/adapters", {"name": "shop-toy", "path": "/x"}, 400, "name", "base model"),
    ("PUT", "/admin/routes/shop-toy", {"to": {"ghost": 10}}, 404, "to.ghost", "vqa adapter load"),
    ("PUT", "/admin/routes/ghost", {"to": {"sunglasses": 10}}, 404, "model", "not served"),
    ("PUT", "/admin/routes/shop-toy", {"to": {"sunglasses": 120}}, 400, "to", "at most 100"),
    ("PUT", "/admin/routes/shop-toy", {"to": "sunglasses:10"}, 400, "to", 'e.g. {"v2": 10}'),
    ("DELETE", "/admin/routes/shop-toy", None, 404, "model", "GET /admin/adapters"),
    ("DELETE", "/admin/adapters/ghost", None, 404, "name", "GET /admin/adapters"),
])
def test_bad_admin_requests_name_the_field_and_the_fix(client: TestClient, method: str, path: str, body: Any,
                                                       status: int, param: str, fix: str) -> None:
    error = assert_openai_error(admin(client, method, path, json=body), status, param)
    assert fix in error["message"], error["message"]


def test_the_admin_routes_are_documented_as_admin(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    admin_ops = [(path, method, op) for path, ops in document["paths"].items() if path.startswith("/admin/")
                 for method, op in ops.items()]
    assert {(p, m.upper()) for p, m, _ in admin_ops} == {(p, m) for m, p, _ in ROUTES[:2]} | {
        ("/admin/adapters/{name}", "DELETE"), ("/admin/routes/{model}", "PUT"), ("/admin/routes/{model}", "DELETE")}
    for _, _, op in admin_ops:
        assert op["tags"] == ["admin"] and op["security"] == [{"AdminKey": []}] and "(admin)" in op["summary"]
    assert document["components"]["securitySchemes"]["AdminKey"]["scheme"] == "bearer"
    post = document["paths"]["/admin/adapters"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(post["required"]) == {"name", "path"}


def test_an_adapter_named_outside_ascii_is_percent_encoded_in_the_header() -> None:
    with TestClient(make_app(RecordingEngine(model_id="shop-toy", adapter_names=["太阳镜"]))) as c:
        r = ask(c, "太阳镜")
        assert r.status_code == 200 and r.json()["model"] == "太阳镜"
        assert r.headers["x-vqa-model"] == "%E5%A4%AA%E9%98%B3%E9%95%9C"
