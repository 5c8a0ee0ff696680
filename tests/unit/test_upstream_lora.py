"""The gateway's side of vLLM's runtime LoRA endpoints (engines/upstream_lora.py): what each of vLLM's
answers becomes. The happy path runs against a real vLLM in test_vllm_live_adapters.py; these are the
refusals (a vLLM started without runtime loading, a path only the gateway can read, a second replica)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from vqaserve.engines.adapters import AdapterVersion
from vqaserve.engines.upstream_lora import UpstreamAdapters, adopt
from vqaserve.errors import EngineFailure, InvalidRequest, NotFound

pytestmark = pytest.mark.unit
VERSION = AdapterVersion("v2", "3f2a9c1b0d4e5f67", "/srv/adapters/v2", requested="/srv/adapters/v2")


def adapters(reply: Callable[[httpx.Request], httpx.Response], seen: list[dict[str, str]],
             configured: dict[str, str] | None = None) -> UpstreamAdapters:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"path": request.url.path, **json.loads(request.content)})
        return reply(request)

    client = httpx.AsyncClient(base_url="http://vllm:8000/v1/", transport=httpx.MockTransport(handler))
    mapping = {"sunglasses": "shop-toy-sunglasses"} if configured is None else configured
    return UpstreamAdapters(lambda: client, 5.0, mapping)


def vllm_error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "x", "code": status}})


async def test_a_version_is_loaded_and_unloaded_under_its_key_and_requests_find_it() -> None:
    seen: list[dict[str, str]] = []
    lora = adapters(lambda r: httpx.Response(200, text="Success"), seen)
    assert lora.upstream_name("sunglasses") == "shop-toy-sunglasses"  # VQA_ADAPTERS' mapping
    await lora.table.load(VERSION)
    assert seen == [{"path": "/v1/load_lora_adapter", "lora_name": VERSION.key, "lora_path": "/srv/adapters/v2"}]
    assert lora.upstream_name(VERSION.key) == VERSION.key == lora.upstream_name("v2")
    await lora.table.unload("v2")
    await lora.table.settle()
    assert seen[-1] == {"path": "/v1/unload_lora_adapter", "lora_name": VERSION.key}
    with pytest.raises(NotFound, match="'v2' is not served"):
        lora.upstream_name(VERSION.key)


@pytest.mark.parametrize(("reply", "error", "says"), [
    (httpx.Response(404, json={"detail": "Not Found"}), InvalidRequest, "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"),
    (vllm_error(404, "Loading lora v2 failed: No adapter found for /srv/adapters/v2"), InvalidRequest,
     "readable by the vLLM server"),
    (vllm_error(500, "LoRA rank 128 is greater than max_lora_rank 64."), InvalidRequest,
     "max_lora_rank 64. (check it with `vqa adapter check PATH --for vllm`)"),
    (httpx.Response(503, text="overloaded"), EngineFailure, "HTTP 503: overloaded); retry"),
])
async def test_refusals_name_the_fix_and_change_nothing(reply: httpx.Response, error: type[Exception],
                                                       says: str) -> None:
    lora = adapters(lambda r: reply, [])
    with pytest.raises(error) as err:
        await lora.table.load(VERSION)
    assert says in str(err.value) and lora.table.names() == ["sunglasses"]


async def test_a_version_another_replica_loaded_counts_as_loaded() -> None:
    lora = adapters(lambda r: vllm_error(400, f"The lora adapter '{VERSION.key}' has already been loaded. "
                                              "If you want to load the adapter in place, set 'load_inplace'"), [])
    assert (await lora.table.load(VERSION)).status == "loaded"


async def test_an_unreachable_model_server_is_a_503_to_retry() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(EngineFailure, match="unreachable"):
        await adapters(down, []).table.load(VERSION)


def test_a_starting_gateway_adopts_the_versions_others_loaded() -> None:
    entries = [{"id": "shop-toy"}, {"id": "shop-toy-sunglasses", "parent": "shop-toy"},
               {"id": "v2@aaaa", "parent": "shop-toy"}, {"id": "v3@bbbb", "parent": "shop-toy"},
               {"id": "v3@cccc", "parent": "shop-toy"}, {"id": "v4@dddd", "parent": "other"}, {"id": "a@b@c"}]
    assert adopt(entries, "shop-toy") == [AdapterVersion("v2", "aaaa")]  # v3: two versions, a reload elsewhere
    seen: list[dict[str, str]] = []
    lora = adapters(lambda r: httpx.Response(200), seen, configured={})
    lora.discovered(entries, "shop-toy")
    assert lora.table.names() == ["shop-toy-sunglasses", "v2"]
    assert lora.upstream_name("v2") == "v2@aaaa" and seen == []


async def test_replacing_a_start_up_adapter_leaves_vllms_own_copy_in_place() -> None:
    seen: list[dict[str, str]] = []
    lora = adapters(lambda r: httpx.Response(200), seen)
    await lora.table.load(AdapterVersion("sunglasses", "eeee", "/srv/sg2"))  # VQA_ADAPTERS' sunglasses reloaded
    await lora.table.settle()
    assert [s["path"] for s in seen] == ["/v1/load_lora_adapter"]  # shop-toy-sunglasses stays in vLLM
    assert lora.upstream_name("sunglasses") == "sunglasses@eeee"
