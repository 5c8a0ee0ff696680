"""pyproject's [project] dependencies admit no release that lacks what the code relies on.

Each row names a package, the API the code relies on, the first release that has it (looked up in the
package's own history: tags, release wheels), where the code uses it, and how to see it in the installed
release. The declared floor must be at least that release; the installed release must have the API (so
a row cannot go stale unnoticed); the file must still use it (so the table shrinks with the code).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _installed_file(dist: str, path: str) -> str:
    """A file of an installed distribution, read without importing it (transformers and peft pull torch)."""
    return Path(str(importlib.metadata.distribution(dist).locate_file(path))).read_text(encoding="utf-8")


def _uvicorn_server_private() -> bool:
    import uvicorn

    return all(callable(getattr(uvicorn.Server, name, None)) for name in ("_serve", "capture_signals", "handle_exit"))


def _uvicorn_protocol_cycle() -> bool:
    # Instance attributes set in __init__: visible in the source only.
    needed = ("self.cycle", "self.more_body = ", "self.response_complete = ", "self.loop = ", "self.transport = ")
    return all(all(n in _installed_file("uvicorn", f"uvicorn/protocols/http/{impl}.py") for n in needed)
               for impl in ("httptools_impl", "h11_impl"))


def _uvicorn_graceful_timeout() -> bool:
    import uvicorn

    return "timeout_graceful_shutdown" in inspect.signature(uvicorn.Config).parameters


def _starlette_max_part_size() -> bool:
    from starlette.requests import Request

    return "max_part_size" in inspect.signature(Request.form).parameters


def _numpy_bitwise_count() -> bool:
    import numpy as np

    return callable(getattr(np, "bitwise_count", None))


def _settings_no_decode() -> bool:
    import pydantic_settings

    return hasattr(pydantic_settings, "NoDecode")


def _qwen3_vl_split_deepstack() -> bool:
    source = _installed_file("transformers", "transformers/models/qwen3_vl/modeling_qwen3_vl.py")
    # get_image_features splits each DeepStack layer per image (the memo stores one image's rows).
    return re.search(r"deepstack_features\s*=\s*\[\s*torch\.split\(", source) is not None


def _peft_transformers5() -> bool:
    return Path(str(importlib.metadata.distribution("peft").locate_file(
        "peft/utils/transformers_weight_conversion.py"))).is_file()


def _redis_aclose() -> bool:
    import redis.asyncio

    return callable(getattr(redis.asyncio.Redis, "aclose", None))


@dataclass(frozen=True)
class Uses:
    package: str  # the distribution, as pyproject names it
    api: str
    since: str  # the first release that has it
    used_in: str  # under src/vqaserve
    marker: str  # text in used_in that shows the use
    present: Callable[[], bool]  # is it in the installed release?


USES = [
    Uses("numpy", "np.bitwise_count", "2.0.0", "cache/neardup.py", "np.bitwise_count", _numpy_bitwise_count),
    Uses("starlette", "Request.form(max_part_size=)", "0.44.0", "server/routes_vqa.py", "max_part_size=",
         _starlette_max_part_size),
    Uses("uvicorn", "private Server._serve and Server.capture_signals, overridden", "0.29.0",
         "server/shutdown.py", "self._serve(", _uvicorn_server_private),
    Uses("uvicorn", "private HTTP protocol state: cycle.more_body, cycle.response_complete, loop", "0.2.17",
         "server/limits.py", "cycle.more_body", _uvicorn_protocol_cycle),
    Uses("uvicorn", "Config(timeout_graceful_shutdown=)", "0.22.0", "server/limits.py",
         "timeout_graceful_shutdown", _uvicorn_graceful_timeout),
    Uses("pydantic-settings", "NoDecode", "2.7.0", "settings/groups.py", "NoDecode", _settings_no_decode),
    # 5.0 added return_dict (4.57 refuses it: the memo would crash generation); 5.18 the per-image split.
    Uses("transformers", "Qwen3-VL get_image_features(return_dict=True) with per-image deepstack_features",
         "5.18.0", "engines/vision_memo.py", "deepstack_features", _qwen3_vl_split_deepstack),
    Uses("peft", "trainable tokens and weight conversion on transformers 5 models", "0.19.0",
         "train/adapter_format.py", "trainable_token_indices", _peft_transformers5),
    Uses("redis", "redis.asyncio.Redis.aclose()", "5.0.1", "cache/redis_link.py", "client.aclose()",
         _redis_aclose),
]


def declared() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, project["dependencies"])}


def floor(spec: SpecifierSet) -> Version | None:
    lows = [Version(s.version) for s in spec if s.operator in (">=", ">", "==", "~=", "===")]
    return max(lows, default=None)


def _id(use: Uses) -> str:
    return f"{use.package}-{use.marker}"


@pytest.mark.parametrize("use", USES, ids=_id)
def test_the_floor_admits_no_release_without_it(use: Uses) -> None:
    spec = declared().get(canonicalize_name(use.package))
    assert spec is not None, f"{use.package} is used ({use.used_in}) but not in [project] dependencies"
    low = floor(spec)
    assert low is not None and low >= Version(use.since), (
        f"{use.package}{spec} admits releases before {use.since}, which lack {use.api} ({use.used_in})")


@pytest.mark.parametrize("use", USES, ids=_id)
def test_the_installed_release_has_it(use: Uses) -> None:
    installed = Version(importlib.metadata.version(use.package))
    assert use.present(), f"{use.package} {installed} has no {use.api}: is the row's API right?"
    assert installed >= Version(use.since), f"{use.package} {installed} has {use.api}: is {use.since} right?"
    spec = declared()[canonicalize_name(use.package)]
    assert spec.contains(installed, prereleases=True), f"the tested {use.package} {installed} is outside {spec}"


@pytest.mark.parametrize("use", USES, ids=_id)
def test_the_code_still_uses_it(use: Uses) -> None:
    source = (ROOT / "src" / "vqaserve" / use.used_in).read_text(encoding="utf-8")
    assert use.marker in source, f"{use.used_in} no longer uses {use.api}: drop the row (and maybe the floor)"


def test_uvicorn_private_api_is_bounded_above() -> None:
    """Private API may change in any release: only releases checked to have it are admitted."""
    spec = declared()["uvicorn"]
    assert any(s.operator in ("<", "<=", "==", "~=") for s in spec), f"uvicorn{spec} has no upper bound"


def test_floor_reads_the_lowest_admitted_release() -> None:
    assert floor(SpecifierSet(">=0.30,<0.55")) == Version("0.30")
    assert floor(SpecifierSet("==2.14.1")) == Version("2.14.1")
    assert floor(SpecifierSet("<6")) is None
