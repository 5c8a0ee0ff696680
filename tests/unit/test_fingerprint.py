"""Weights fingerprint: changes with the weights (so a retrained model misses the cache), not with copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vqaserve.engines.fingerprint import weights_fingerprint

pytestmark = pytest.mark.unit


def model_dir(root: Path, weights: bytes) -> Path:
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "qwen3_vl"}')
    (root / "model.safetensors").write_bytes(weights)
    (root / "train.json").write_text('{"duration": 1}')
    return root


def test_same_weights_same_fingerprint_even_when_copied(tmp_path: Path) -> None:
    a = model_dir(tmp_path / "a", b"\x01" * (3 << 20))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "train.json").write_text('{"duration": 2}')  # how it was made is not what it is
    assert weights_fingerprint([str(a)]) == weights_fingerprint([str(b)])


def test_retrained_weights_or_changed_adapter_change_it(tmp_path: Path) -> None:
    size = 3 << 20
    base = model_dir(tmp_path / "base", b"\x01" * size)
    retrained = model_dir(tmp_path / "retrained", b"\x01" * (size // 2) + b"\x02" * (size - size // 2))
    adapter = model_dir(tmp_path / "adapter", b"\x03" * 1000)
    assert weights_fingerprint([str(base)]) != weights_fingerprint([str(retrained)])
    assert weights_fingerprint([str(base)]) != weights_fingerprint([str(base), str(adapter)])
    assert weights_fingerprint(["Qwen/Qwen3-VL-8B-Instruct"]) != weights_fingerprint(["Qwen/Qwen3-VL-2B-Instruct"])
