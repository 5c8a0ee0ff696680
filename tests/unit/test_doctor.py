"""`vqa doctor`: the fit arithmetic on fake configs, and the report's JSON shape, without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vqaserve import doctor
from vqaserve.settings import load_settings

pytestmark = pytest.mark.unit

# Qwen3-VL-8B-Instruct's text tower (as published): 36 layers, 32 query heads, 8 KV heads, head_dim 128.
QWEN3_VL_8B_TEXT = {"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "head_dim": 128, "hidden_size": 4096}
GIB = 1024**3


def test_kv_cache_bytes_counts_k_and_v_per_layer_and_kv_head() -> None:
    per_token = doctor.kv_cache_bytes(QWEN3_VL_8B_TEXT, "bfloat16", 1)
    assert per_token == 2 * 36 * 8 * 128 * 2  # 144 KiB per token
    assert doctor.kv_cache_bytes(QWEN3_VL_8B_TEXT, "float32", 1000) == 2 * per_token * 1000
    # no head_dim and no KV heads in the config: hidden / heads, and every head has its own KV
    legacy = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256}
    assert doctor.kv_cache_bytes(legacy, "float16", 1) == 2 * 2 * 4 * 64 * 2


def test_an_8b_model_fits_a_big_gpu_and_not_a_small_one() -> None:
    def fit(free_gib: float, batch: int = 16, dtype: str = "bfloat16") -> doctor.Fit:
        return doctor.estimate_fit(8_770_000_000, QWEN3_VL_8B_TEXT, dtype, int(free_gib * GIB), batch=batch,
                                   tokens_per_request=1856, gpu=True)

    big, small = fit(80), fit(16)
    assert big.weights_bytes == 8_770_000_000 * 2  # ~17.5 GB in bf16, as DESIGN.md says
    assert big.need_bytes == big.weights_bytes + big.kv_cache_bytes + big.overhead_bytes
    assert big.kv_cache_bytes == doctor.kv_cache_bytes(QWEN3_VL_8B_TEXT, "bfloat16", 16 * 1856)
    assert big.fits and not small.fits
    # more concurrent requests need more KV cache; float32 doubles the weights
    assert fit(80, batch=32).need_bytes > big.need_bytes
    assert fit(80, dtype="float32").weights_bytes == 2 * big.weights_bytes


def test_cpu_fit_has_no_cuda_context() -> None:
    cpu = doctor.estimate_fit(1000, QWEN3_VL_8B_TEXT, "float32", GIB, batch=1, tokens_per_request=1,
                              gpu=False)
    gpu = doctor.estimate_fit(1000, QWEN3_VL_8B_TEXT, "float32", GIB, batch=1, tokens_per_request=1,
                              gpu=True)
    assert gpu.overhead_bytes - cpu.overhead_bytes == doctor.CUDA_CONTEXT_BYTES


@pytest.fixture(autouse=True)
def cpu_only_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU machine with 16 GiB free; keeps torch (seconds to import) out of unit tests."""
    from vqaserve.engines import placement

    def devices(report: doctor.Report) -> None:
        report.devices.append({"index": "cpu", "name": "test cpu", "free_bytes": 16 * GIB,
                               "total_bytes": 32 * GIB, "bf16": False})

    monkeypatch.setattr(placement, "cuda_state", lambda: (False, 0, False))
    monkeypatch.setattr(doctor, "check_devices", devices)


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model directory whose parameter count the test decides (no transformers, no weights)."""
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl"}')
    monkeypatch.setattr(doctor, "count_parameters", lambda source, trust=False: (2_000_000, QWEN3_VL_8B_TEXT))
    return tmp_path


def test_json_report_has_every_field(fake_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = doctor.diagnose(load_settings(model=str(fake_model), device="cpu"))
    data: dict[str, Any] = json.loads(doctor.to_json(report))
    for key in ("python", "packages", "torch_cuda_build", "cuda_available", "devices", "bf16_supported",
                "flash_attention", "placement", "model", "findings", "ok"):
        assert key in data
    assert set(doctor.PACKAGES) <= set(data["packages"])
    assert data["placement"] == {"device": "cpu", "dtype": "float32", "attn_implementation": "sdpa"}
    assert data["devices"][0]["index"] == "cpu" and data["devices"][0]["free_bytes"] > 0
    fit = data["model"]["fit"]
    assert fit["parameters"] == 2_000_000 and fit["weights_bytes"] == 8_000_000 and fit["fits"]
    assert data["ok"] is True
    assert "fits" in doctor.render(report)


def test_a_model_too_big_is_a_problem_with_a_fix(fake_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "count_parameters", lambda source, trust=False: (10**13, QWEN3_VL_8B_TEXT))
    report = doctor.diagnose(load_settings(model=str(fake_model), device="cpu"))
    assert not report.ok
    (problem,) = [f for f in report.findings if f.level == "problem"]
    assert "GiB" in problem.message and problem.fix
    text = doctor.render(report)
    assert "DOES NOT FIT" in text and f"fix: {problem.fix}" in text and text.endswith("problems found")


def test_missing_model_and_bad_device_are_problems(tmp_path: Path) -> None:
    report = doctor.diagnose(load_settings(model=str(tmp_path / "nope"), device="cpu"))
    assert not report.ok and any("not found" in f.message and f.fix for f in report.findings)
    assert report.placement is not None  # the rest of the report is still there
    report = doctor.diagnose(load_settings(model=str(tmp_path / "nope"), dtype="int3"))
    assert any("VQA_DTYPE" in f.message for f in report.findings)


def test_a_missing_adapter_is_a_problem(fake_model: Path, tmp_path: Path) -> None:
    report = doctor.diagnose(load_settings(model=str(fake_model), device="cpu",
                                           adapters={"shop": str(tmp_path / "no-adapter")}))
    assert any("adapter 'shop'" in f.message and f.level == "problem" for f in report.findings)
