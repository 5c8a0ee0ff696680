"""Adapters served by name, loaded, replaced and removed while the service runs.

A public adapter name ("v2") points at one *version*: the weights loaded under it, named by their
content (`v2@3f2a9c1b0d4e5f67`, `AdapterVersion.key`). The answer cache and the metrics see the
version, never the bare name, so a reloaded adapter never inherits its predecessor's answers.

Requests in flight finish on the weights they started with: the pipeline pins the version that is
current when it admits a request (`pin`) and unpins it when the answer is done. A reload attaches
the new version beside the old one and switches the name at once; a version no longer current is
detached only when no pinned request still uses it. How weights are attached and detached is the
engine's (PEFT in process, vLLM's runtime LoRA endpoints upstream); the bookkeeping is this table's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vqaserve.engines.fingerprint import weights_fingerprint
from vqaserve.errors import InvalidRequest, NotFound

log = logging.getLogger(__name__)

# Public names: what clients send as `model`. "@" is the version separator, so it is never in one.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class AdapterVersion:
    name: str  # the public name clients ask for
    fingerprint: str = ""  # digest of the weights ("" for an upstream adapter the gateway cannot read)
    path: str = ""  # where the engine loads the weights from (never shown to API clients)
    requested: str = ""  # the path as the admin API received it ("" for start-up adapters)

    @property
    def key(self) -> str:
        """The version's identity: `NAME@FINGERPRINT`, or the bare name when the weights are unknown."""
        return f"{self.name}@{self.fingerprint}" if self.fingerprint else self.name


@dataclass(frozen=True)
class Loaded:
    """What a load did: the version now current, and the one it replaced (None: a new name)."""

    version: AdapterVersion
    replaced: AdapterVersion | None

    @property
    def status(self) -> Literal["loaded", "reloaded", "unchanged"]:
        if self.replaced is None:
            return "loaded"
        return "unchanged" if self.replaced.key == self.version.key else "reloaded"


def check_name(name: str, base_model: str) -> None:
    """A public adapter name an admin may load under; InvalidRequest naming the fix otherwise."""
    if not NAME.match(name):
        raise InvalidRequest(f"name {name[:70]!r} is not a valid adapter name: use 1-64 letters, digits, '.', "
                             "'_' or '-', starting with a letter or digit (e.g. v2)", param="name")
    if name == base_model:
        raise InvalidRequest(f"name {name!r} is the base model's; give the adapter a name of its own (e.g. "
                             f"{name}-v2)", param="name")


def fingerprint_of(path: str) -> str:
    """The weights' digest when `path` is a directory readable here, else a one-off token: weights
    nobody can read are never taken for another load's (at worst a reload misses the cache)."""
    if Path(path).is_dir():
        return weights_fingerprint([path])
    return "u" + uuid.uuid4().hex[:15]


Hook = Callable[[AdapterVersion], Awaitable[None]]


async def _nothing(version: AdapterVersion) -> None:
    return None


class AdapterTable:
    """Public name -> current version, plus the versions still pinned by requests in flight.

    Used on the event loop only. `attach` puts a version's weights in the engine (it may raise: the
    load fails and nothing changes); `detach` takes them out (its failure is logged, not raised).
    """

    def __init__(self, attach: Hook = _nothing, detach: Hook = _nothing) -> None:
        self._attach, self._detach = attach, detach
        self._current: dict[str, AdapterVersion] = {}
        self._live: dict[str, AdapterVersion] = {}  # key -> every attached version, current or retiring
        self._pins: dict[str, int] = {}
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._drops: set[asyncio.Task[None]] = set()

    @classmethod
    def fixed(cls, names: Iterable[str]) -> AdapterTable:
        """A table of adapters known by name only (an engine that cannot change them while running)."""
        table = cls()
        for name in names:
            table.add(AdapterVersion(name))
        return table

    # --- reading -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._current)

    def current(self, name: str) -> AdapterVersion | None:
        return self._current.get(name)

    def live(self, key: str) -> AdapterVersion | None:
        """An attached version (current or retiring) by its key."""
        return self._live.get(key)

    def resolve(self, adapter: str | None) -> str | None:
        """A version key as it is, a public name as its current version's key (callers of an engine
        other than the pipeline may name adapters; they get no pin, and no reload is in their way)."""
        if adapter is None or adapter in self._live:
            return adapter
        current = self._current.get(adapter)
        return adapter if current is None else current.key

    def retiring(self) -> list[AdapterVersion]:
        """Versions replaced or unloaded that requests in flight still use."""
        current = {v.key for v in self._current.values()}
        return [v for k, v in self._live.items() if k not in current]

    def in_flight(self, key: str) -> int:
        return self._pins.get(key, 0)

    # --- changing ----------------------------------------------------------------------------------
    def add(self, version: AdapterVersion) -> None:
        """A version the engine has attached already (start-up)."""
        self._live[version.key] = version
        self._current[version.name] = version

    async def load(self, version: AdapterVersion) -> Loaded:
        """Attach `version` (unless it is attached already) and make it current for its name."""
        async with self._locked():
            previous = self._current.get(version.name)
            if previous is not None and previous.key == version.key:
                return Loaded(previous, previous)
            if version.key not in self._live:  # a version still retiring is simply current again
                await self._attach(version)
            self._live.setdefault(version.key, version)
            self._current[version.name] = self._live[version.key]
        if previous is not None:
            self._drop_when_idle(previous.key)
        return Loaded(self._live[version.key], previous)

    async def unload(self, name: str) -> AdapterVersion:
        """New requests for `name` get 404 from now on; its weights go when the last one in flight ends."""
        async with self._locked():
            version = self._current.pop(name, None)
        if version is None:
            raise NotFound(f"adapter {name!r} is not loaded; GET /admin/adapters lists the loaded ones",
                           param="name")
        self._drop_when_idle(version.key)
        return version

    def pin(self, name: str) -> AdapterVersion:
        """The current version of `name`, kept attached until `unpin`; NotFound when none."""
        version = self._current.get(name)
        if version is None:
            raise NotFound(f"model {name!r} does not exist; GET /v1/models lists the served models",
                           param="model")
        self._pins[version.key] = self._pins.get(version.key, 0) + 1
        return version

    def unpin(self, key: str) -> None:
        left = self._pins.get(key, 0) - 1
        if left > 0:
            self._pins[key] = left
            return
        self._pins.pop(key, None)
        self._drop_when_idle(key)

    async def settle(self) -> None:
        """Wait until every version due to go has been detached."""
        while self._drops:
            await asyncio.gather(*list(self._drops))

    def _locked(self) -> asyncio.Lock:
        """One load, unload or detach at a time (a lock per event loop: tests run several)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    # --- retiring ----------------------------------------------------------------------------------
    def _idle(self, key: str) -> bool:
        version = self._live.get(key)
        if version is None or self._pins.get(key):
            return False
        current = self._current.get(version.name)
        return current is None or current.key != key

    def _drop_when_idle(self, key: str) -> None:
        if self._idle(key):
            task = asyncio.get_running_loop().create_task(self._drop(key), name=f"detach-{key}")
            self._drops.add(task)
            task.add_done_callback(self._drops.discard)

    async def _drop(self, key: str) -> None:
        async with self._locked():
            if not self._idle(key):  # pinned again, or current again after a rollback
                return
            version = self._live.pop(key)
            try:
                await self._detach(version)
            except Exception:  # noqa: BLE001 - the name is gone either way; the weights may linger
                log.exception("detaching adapter version %s failed", key)
            else:
                log.info("adapter version %s detached (no request uses it any more)", key)
