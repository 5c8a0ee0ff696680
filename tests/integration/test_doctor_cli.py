"""`vqa doctor` as a user runs it, on this (CPU-only) machine with the tiny model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import subprocess_env, vqa_cmd

pytestmark = pytest.mark.integration


# a fresh interpreter imports torch + transformers: ~20-40 s on a busy 2-core machine
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_doctor_json_counts_the_real_parameters(tiny_model_dir: Path) -> None:
    proc = subprocess.run(vqa_cmd("doctor", "--json", "--model", str(tiny_model_dir)), env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    built = json.loads((tiny_model_dir / "build_info.json").read_text())
    # counted from the safetensors headers alone, equal to the parameters the builder made
    assert report["model"]["parameters"] == built["parameters"]
    assert report["forecast"]["fits"] and report["ok"]
    assert report["forecast"]["terms"]["weights"] == 4 * built["parameters"]  # float32: a tiny model
    assert report["packages"]["torch"] and report["packages"]["transformers"]
    assert report["devices"][0]["index"] == "cpu"
    if not report["cuda_available"]:
        assert report["placement"]["device"] == "cpu" and report["placement"]["dtype"] == "float32"

