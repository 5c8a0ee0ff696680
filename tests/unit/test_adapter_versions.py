"""Adapter versions (engines/adapters.py) and canary routes (routing.py), without a model."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from vqaserve.engines.adapters import AdapterTable, AdapterVersion, check_name, fingerprint_of
from vqaserve.errors import InvalidRequest, NotFound
from vqaserve.routing import RoutingTable

pytestmark = pytest.mark.unit


class Weights:
    """Records what the table asked the engine to attach and detach."""

    def __init__(self) -> None:
        self.attached: list[str] = []
        self.detached: list[str] = []
        self.refuse: set[str] = set()

    async def attach(self, version: AdapterVersion) -> None:
        if version.key in self.refuse:
            raise InvalidRequest("does not fit", param="path")
        self.attached.append(version.key)

    async def detach(self, version: AdapterVersion) -> None:
        self.detached.append(version.key)


def table() -> tuple[AdapterTable, Weights]:
    weights = Weights()
    return AdapterTable(attach=weights.attach, detach=weights.detach), weights


V1, V2 = AdapterVersion("v2", "aaaa", "/a"), AdapterVersion("v2", "bbbb", "/b")


async def test_a_reload_keeps_the_old_weights_until_the_last_request_on_them_ends() -> None:
    t, w = table()
    assert (await t.load(V1)).status == "loaded"
    first, second = t.pin("v2"), t.pin("v2")  # two requests admitted on v2@aaaa
    loaded = await t.load(V2)
    assert (loaded.status, loaded.replaced) == ("reloaded", V1)
    assert t.pin("v2") == V2 and first == second == V1  # new requests get the new weights
    await t.settle()
    assert w.detached == [] and t.retiring() == [V1] and t.in_flight(V1.key) == 2
    t.unpin(V1.key)
    await t.settle()
    assert w.detached == []  # one request still runs on v2@aaaa
    t.unpin(V1.key)
    await t.settle()
    assert w.detached == [V1.key] and t.retiring() == [] and t.live(V1.key) is None
    t.unpin(V2.key)
    await t.settle()
    assert w.detached == [V1.key]  # the current version stays, pinned or not


async def test_unload_refuses_new_requests_and_waits_for_the_ones_in_flight() -> None:
    t, w = table()
    await t.load(V1)
    pinned = t.pin("v2")
    assert await t.unload("v2") == V1
    with pytest.raises(NotFound) as err:
        t.pin("v2")
    assert err.value.param == "model" and t.names() == []
    await t.settle()
    assert w.detached == []
    t.unpin(pinned.key)
    await t.settle()
    assert w.detached == [V1.key]
    with pytest.raises(NotFound):
        await t.unload("v2")


async def test_same_weights_again_change_nothing_and_a_rollback_reuses_the_retiring_version() -> None:
    t, w = table()
    await t.load(V1)
    assert (await t.load(AdapterVersion("v2", "aaaa", "/elsewhere"))).status == "unchanged"
    pinned = t.pin("v2")
    await t.load(V2)
    back = await t.load(V1)  # rolled back while a request still ran on v2@aaaa
    assert back.status == "reloaded" and t.current("v2") == V1
    assert w.attached == [V1.key, V2.key]  # v2@aaaa was still attached: not loaded again
    t.unpin(pinned.key)
    await t.settle()
    assert w.detached == [V2.key]


async def test_a_load_that_fails_changes_nothing() -> None:
    t, w = table()
    await t.load(V1)
    w.refuse.add(V2.key)
    with pytest.raises(InvalidRequest):
        await t.load(V2)
    assert t.current("v2") == V1 and t.retiring() == []


async def test_concurrent_loads_of_one_name_end_with_one_current_version() -> None:
    t, w = table()
    versions = [AdapterVersion("v2", f"{i:04x}") for i in range(6)]
    await asyncio.gather(*(t.load(v) for v in versions))
    await t.settle()
    current = t.current("v2")
    assert current is not None and sorted(w.attached) == sorted(v.key for v in versions)
    assert sorted(w.detached) == sorted(v.key for v in versions if v != current)


def test_public_names_and_fingerprints(tmp_path: Path) -> None:
    check_name("shop-v2.1_b", "shop-toy")
    for bad, fix in [("v2@x", "letters, digits"), ("", "letters, digits"), ("shop-toy", "its own")]:
        with pytest.raises(InvalidRequest, match=fix):
            check_name(bad, "shop-toy")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"one")
    same = fingerprint_of(str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_model.safetensors").write_bytes(b"one")
    assert fingerprint_of(str(tmp_path / "b")) == same  # content, not place
    (tmp_path / "b" / "adapter_model.safetensors").write_bytes(b"two")
    assert fingerprint_of(str(tmp_path / "b")) != same
    unreadable = "/not/on/this/machine"
    assert fingerprint_of(unreadable) != fingerprint_of(unreadable)  # never taken for another load's


# --- routes ------------------------------------------------------------------------------------------
def test_a_share_holds_within_binomial_tolerance_and_is_sticky_per_picture() -> None:
    routes = RoutingTable()
    routes.set("shop-toy", {"v2": 10})
    pictures = [f"picture-{i}" for i in range(2000)]
    picked = [routes.pick("shop-toy", p) for p in pictures]
    n, share = len(pictures), 0.10
    spread = 4.5 * math.sqrt(n * share * (1 - share))
    assert abs(picked.count("v2") - n * share) < spread
    assert set(picked) == {"v2", "shop-toy"}
    assert [routes.pick("shop-toy", p) for p in pictures] == picked  # a follow-up lands where the first did
    routes.set("shop-toy", {"v2": 50})
    wider = [routes.pick("shop-toy", p) for p in pictures]
    assert all(w == "v2" for w, p in zip(wider, picked, strict=True) if p == "v2")  # 10 % -> 50 %: nobody leaves
    routes.set("shop-toy", {"v2": 100})
    assert {routes.pick("shop-toy", p) for p in pictures} == {"v2"}
    assert routes.remove("shop-toy") is not None
    assert {routes.pick("shop-toy", p) for p in pictures} == {"shop-toy"}


def test_two_targets_split_in_order() -> None:
    routes = RoutingTable()
    routes.set("shop-toy", {"v2": 20, "v3": 30})
    picked = [routes.pick("shop-toy", f"p{i}") for i in range(4000)]
    for name, share in (("v2", 0.2), ("v3", 0.3), ("shop-toy", 0.5)):
        assert abs(picked.count(name) - 4000 * share) < 4.5 * math.sqrt(4000 * share * (1 - share))
    assert routes.targets() == {"v2": "shop-toy", "v3": "shop-toy"}
    assert routes.pick("other", "p1") == "other"


@pytest.mark.parametrize(("shares", "fix"), [
    ({}, "at least one target"), ({"v2": 0}, "above 0"), ({"v2": 101}, "at most 100"),
    ({"v2": 60, "v3": 50}, "add up to 110"), ({"shop-toy": 10}, "the routed model itself"),
    ({"v2": float("nan")}, "above 0"),
])
def test_bad_routes_are_refused_naming_the_fix(shares: dict[str, float], fix: str) -> None:
    routes = RoutingTable()
    with pytest.raises(InvalidRequest, match=fix) as err:
        routes.set("shop-toy", shares)
    assert err.value.param == "to" and routes.routes() == []
