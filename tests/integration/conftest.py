"""Integration fixtures: a tiny random Qwen3-VL built once per session, loaded like real weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_vlm import TINY_MAX_PIXELS, TINY_MIN_PIXELS

from vqaserve.modeling.standins import SHRUNK_2B


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vqaserve.modeling.builder import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("tiny-qwen3vl"), "tiny", seed=0,
                           min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)


@pytest.fixture(scope="session")
def shrunk_standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vqa model random qwen3-vl-2b`'s code path with every width shrunk (standins.SHRUNK_2B): Qwen's real
    vocabulary, processor and file layout, in small shards so the multi-shard index is what loads."""
    from vqaserve.modeling.standins import build_standin

    return build_standin(tmp_path_factory.mktemp("standins") / SHRUNK_2B.name, SHRUNK_2B, seed=0,
                         shard_bytes=8_000_000, command="pytest shrunk 2B")
