"""Adapter versions on the model server, through vLLM's runtime LoRA endpoints.

    POST /v1/load_lora_adapter    {"lora_name": "v2@3f2a9c1b0d4e5f67", "lora_path": "/adapters/v2"}
    POST /v1/unload_lora_adapter  {"lora_name": "v2@3f2a9c1b0d4e5f67"}

vLLM offers them only when it runs with LoRA on and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
(`scripts/vllm.sh serve ... --lora` does both). Each version is loaded under its own upstream name,
its key (engines/adapters.py), so a request in flight keeps the weights it started with while the
next ones get the new version; vLLM reading the same version a second time (another gateway replica
loaded it first) counts as loaded. The path is vLLM's to read, not the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from vqaserve.engines.adapters import NAME, AdapterTable, AdapterVersion, fingerprint_of
from vqaserve.engines.upstream_wire import upstream_message
from vqaserve.errors import EngineFailure, InvalidRequest, NotFound
from vqaserve.settings import resolve_model_path

log = logging.getLogger("vqaserve.upstream")

RUNTIME_OFF = ("the model server does not load adapters at run time; start vLLM with --enable-lora and the "
               "environment VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (scripts/vllm.sh serve MODEL --lora does both)")


class UpstreamAdapters:
    """The upstream engine's adapters: its AdapterTable, and which upstream name serves which version."""

    def __init__(self, client: Callable[[], httpx.AsyncClient], timeout_s: float,
                 configured: Mapping[str, str]) -> None:
        self.client, self.timeout_s = client, timeout_s
        self.configured = bool(configured)
        self.table = AdapterTable(attach=self._attach, detach=self._detach)
        # version key -> upstream name: UPSTREAM_NAME of VQA_ADAPTERS' NAME=UPSTREAM_NAME (vLLM
        # --lora-modules), or the key itself for a version loaded at run time.
        self._upstream: dict[str, str] = {}
        # Versions loaded at run time (by this gateway or, adopted, another): the ones to unload from
        # the model server when they go. vLLM's own --lora-modules stay there.
        self._runtime: set[str] = set()
        for name, upstream in configured.items():
            self._serve(AdapterVersion(name), upstream)

    def upstream_name(self, adapter: str) -> str:
        key = self.table.resolve(adapter) or adapter
        if key not in self._upstream:
            raise NotFound(f"adapter {key.split('@')[0]!r} is not served; GET /v1/models lists the served "
                           "models", param="model")
        return self._upstream[key]

    def discovered(self, entries: list[dict[str, Any]], base: str) -> None:
        """The model server's model list: its adapters (with no VQA_ADAPTERS mapping, vLLM's
        --lora-modules under their own names) and the versions gateways loaded at run time."""
        if not self.configured:
            for entry in entries:
                if entry.get("parent") == base and "@" not in entry["id"]:
                    self._serve(AdapterVersion(entry["id"]), entry["id"])
        for version in adopt(entries, base):
            if self.table.current(version.name) is None:
                self._serve(version, version.key)
                self._runtime.add(version.key)

    async def version(self, name: str, path: str) -> AdapterVersion:
        # The model server reads the weights; when the gateway can read them too, they are fingerprinted.
        local = resolve_model_path(path)
        return AdapterVersion(name, await asyncio.to_thread(fingerprint_of, local), local, requested=path)

    def _serve(self, version: AdapterVersion, upstream: str) -> None:
        self._upstream[version.key] = upstream
        self.table.add(version)

    async def _attach(self, version: AdapterVersion) -> None:
        await load(self.client(), version, self.timeout_s)
        self._upstream[version.key] = version.key
        self._runtime.add(version.key)

    async def _detach(self, version: AdapterVersion) -> None:
        try:
            if version.key in self._runtime:
                await unload(self.client(), version, self.timeout_s)
        finally:
            self._upstream.pop(version.key, None)
            self._runtime.discard(version.key)


async def load(client: httpx.AsyncClient, version: AdapterVersion, timeout: float) -> None:
    """Load `version` into the model server under its key; raises a VQAError naming the fix."""
    body = {"lora_name": version.key, "lora_path": version.path}
    resp = await _post(client, "load_lora_adapter", body, timeout)
    if resp.status_code == 200:
        return
    detail = upstream_message(resp.content)
    if resp.status_code == 400 and "already been loaded" in detail:
        return  # this very version (same name, same weights) is there: another replica loaded it
    if resp.status_code == 404 and not _vllm_error(resp.content):
        raise InvalidRequest(RUNTIME_OFF, param="path")
    if resp.status_code == 404:
        raise InvalidRequest(f"the model server cannot read an adapter at {version.requested!r}: the path "
                             "must be a LoRA directory readable by the vLLM server (not only by the gateway)",
                             param="path")
    if resp.status_code >= 500 and not (resp.status_code == 500 and _vllm_error(resp.content)):
        raise EngineFailure(f"the model server failed loading adapter {version.name!r} (HTTP {resp.status_code}: "
                            f"{detail}); retry", retry_after=1.0)
    # vLLM answers 500 with its reason when the weights do not fit its settings (rank, modules)
    raise InvalidRequest(f"the model server refused adapter {version.name!r}: {detail} (check it with "
                         "`vqa adapter check PATH --for vllm`)", param="path")


async def unload(client: httpx.AsyncClient, version: AdapterVersion, timeout: float) -> None:
    resp = await _post(client, "unload_lora_adapter", {"lora_name": version.key}, timeout)
    if resp.status_code not in (200, 404):  # 404: gone already (e.g. vLLM restarted)
        raise EngineFailure(f"the model server did not unload {version.key}: {upstream_message(resp.content)}")


def adopt(entries: list[dict[str, Any]], base: str) -> list[AdapterVersion]:
    """Versions a gateway loaded at run time (upstream name `NAME@FINGERPRINT`, its key), from the model
    server's model list: a gateway starting beside others serves what they loaded. A name with two
    versions there (a reload in progress elsewhere) is not taken; the admin loads it again."""
    found: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        upstream = entry.get("id")
        if not isinstance(upstream, str) or entry.get("parent") != base or upstream.count("@") != 1:
            continue
        name, fingerprint = upstream.split("@")
        if NAME.match(name) and fingerprint:
            found[name].append(fingerprint)
    out = []
    for name, fingerprints in found.items():
        if len(fingerprints) == 1:
            out.append(AdapterVersion(name, fingerprints[0]))
        else:
            log.warning("the model server holds %d versions of adapter %s; load it again to choose one",
                        len(fingerprints), name)
    return out


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, str], timeout: float) -> httpx.Response:
    try:
        return await client.post(path, json=body, timeout=timeout)
    except httpx.TimeoutException:
        raise EngineFailure(f"the model server did not answer {path} within {timeout:.0f} s; retry") from None
    except httpx.HTTPError as exc:
        raise EngineFailure(f"the model server is unreachable ({type(exc).__name__}); retry shortly",
                            retry_after=1.0) from None


def _vllm_error(body: bytes) -> bool:
    """vLLM's own error JSON ({"error": {...}}), not a bare 404 of a route that is not there."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict)

