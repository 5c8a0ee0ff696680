"""Integration fixtures: a tiny random Qwen3-VL built once per session, loaded like real weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_vlm import TINY_MAX_PIXELS, TINY_MIN_PIXELS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vqaserve.modeling.builder import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("tiny-qwen3vl"), "tiny", seed=0,
                           min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
