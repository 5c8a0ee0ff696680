"""Where a model's weights come from: a bundled name, a local directory or a hub id, and the name
clients see for it."""

from __future__ import annotations

import functools
from pathlib import Path

from vqaserve.errors import ConfigError
from vqaserve.settings import BUNDLED_MODELS, resolve_model_path


@functools.lru_cache(maxsize=256)  # info() is called several times per request: no stat() calls each time
def public_model_id(name: str) -> str:
    """The name clients see: a bundled name as is, a local directory by its basename, a hub id as is."""
    if "/" not in name and (BUNDLED_MODELS / name).is_dir():
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve().name
    return name


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_source(name: str) -> str:
    """A bundled name, model directory or hub id -> what from_pretrained gets; ConfigError if none."""
    path = Path(resolve_model_path(name)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model {name!r} is a directory without config.json; point VQA_MODEL / "
                              "--model at a Hugging Face model directory")
        return str(path)
    if _looks_like_hub_id(name) and not path.exists():
        return name
    raise ConfigError(f"model {name!r} not found: give a model directory, a hub id such as "
                      "Qwen/Qwen3-VL-2B-Instruct, or a bundled name (shop-toy)")
