"""`vqa doctor`: the fit arithmetic on fake configs, and the report's JSON shape, without a model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from vqaserve import doctor
from vqaserve.doctor import memory
from vqaserve.doctor import model as doctor_model
from vqaserve.doctor import report as doctor_report
from vqaserve.settings import load_settings

pytestmark = pytest.mark.unit

# Qwen3-VL-8B-Instruct's text tower (as published): 36 layers, 32 query heads, 8 KV heads, head_dim 128.
QWEN3_VL_8B_TEXT = {"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "head_dim": 128, "hidden_size": 4096, "intermediate_size": 12288, "vocab_size": 151936}
QWEN3_VL_8B = {"text_config": QWEN3_VL_8B_TEXT, "tie_word_embeddings": False,
               "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "patch_size": 16,
                                 "spatial_merge_size": 2, "deepstack_visual_indexes": [8, 16, 24]}}
GIB = 1024**3


def test_kv_cache_bytes_counts_k_and_v_per_layer_and_kv_head() -> None:
    shape = memory.shape_from_config({"text_config": QWEN3_VL_8B_TEXT}, 8_767_123_696)
    per_token = memory.kv_cache_bytes(shape, "bfloat16", 1)
    assert per_token == 2 * 36 * 8 * 128 * 2  # 144 KiB per token
    assert memory.kv_cache_bytes(shape, "float32", 1000) == 2 * per_token * 1000
    # no head_dim and no KV heads in the config: hidden / heads, and every head has its own KV
    legacy = memory.shape_from_config({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256}, 1)
    assert memory.kv_cache_bytes(legacy, "float16", 1) == 2 * 2 * 4 * 64 * 2


def test_serve_forecast_grows_with_the_asked_workload() -> None:
    shape = memory.shape_from_config(QWEN3_VL_8B, 8_767_123_696)

    def total(**kw: Any) -> int:
        args: dict[str, Any] = {"batch": 1, "max_pixels": 1280 * 32 * 32, "max_new_tokens": 64, **kw}
        return memory.serve_forecast(shape, args.pop("dtype", "bfloat16"), **args).total

    one = memory.serve_forecast(shape, "bfloat16", batch=1, max_pixels=1280 * 32 * 32, max_new_tokens=64)
    assert one.terms["weights"] == 8_767_123_696 * 2  # ~17.5 GB in bf16, as DESIGN.md says
    assert one.workload["prompt_tokens"] == 1280 + memory.TEXT_TOKENS and one.workload["patches"] == 5120
    assert one.terms["kv_cache"] == memory.kv_cache_bytes(shape, "bfloat16", 1280 + memory.TEXT_TOKENS + 64)
    assert total(batch=16) > total() and total(max_pixels=256 * 32 * 32) < total()
    assert total(max_new_tokens=512) > total()
    assert total(dtype="float32") - total() > one.terms["weights"]  # float32 doubles the weights and more
    # batch 16 at the full budget costs KV cache and activations in proportion, weights once
    sixteen = memory.serve_forecast(shape, "bfloat16", batch=16, max_pixels=1280 * 32 * 32, max_new_tokens=64)
    assert sixteen.terms["kv_cache"] == 16 * one.terms["kv_cache"]
    assert sixteen.terms["weights"] == one.terms["weights"]


def test_train_forecast_terms_follow_the_flags() -> None:
    shape = memory.shape_from_config(QWEN3_VL_8B, 8_767_123_696)

    def step(**kw: Any) -> memory.Forecast:
        return memory.train_forecast(shape, "bfloat16", batch=2, max_pixels=1280 * 32 * 32, **kw)

    plain = step()
    # q_proj (4096 -> 4096) and v_proj (4096 -> 1024) at rank 8 in 36 layers, 16 bytes each with AdamW
    assert plain.workload["lora_parameters"] == 36 * 8 * ((4096 + 4096) + (4096 + 1024))
    assert plain.terms["lora_and_adamw"] == 16 * plain.workload["lora_parameters"]
    assert step(gradient_checkpointing=True).terms["activations"] < plain.terms["activations"] / 4
    four_bit = step(load_in_4bit=True).terms["weights"]
    assert 0.25 * plain.terms["weights"] < four_bit < 0.45 * plain.terms["weights"]
    assert step(lora_rank=64).terms["lora_and_adamw"] == 8 * plain.terms["lora_and_adamw"]
    with pytest.raises(ValueError, match="qkv"):
        step(lora_targets=("qkv",))


@pytest.fixture(autouse=True)
def cpu_only_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU machine with 16 GiB free; keeps torch (seconds to import) out of unit tests."""
    from vqaserve.engines import placement

    def devices(report: doctor.Report) -> None:
        report.devices.append({"index": "cpu", "name": "test cpu", "free_bytes": 16 * GIB,
                               "total_bytes": 32 * GIB, "bf16": False})

    monkeypatch.setattr(placement, "cuda_state", lambda: (False, 0, False))
    monkeypatch.setattr(placement, "cpu_bf16_flags", lambda: [])
    monkeypatch.setattr(doctor_report, "check_devices", devices)


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model directory whose parameter count the test decides (no transformers, no weights)."""
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl"}')
    monkeypatch.setattr(doctor_model, "count_parameters", lambda source, trust=False: (2_000_000, QWEN3_VL_8B))
    return tmp_path


def test_json_report_has_every_field(fake_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = doctor.diagnose(load_settings(model=str(fake_model), device="cpu"))
    data: dict[str, Any] = json.loads(doctor.to_json(report))
    for key in ("python", "packages", "torch_cuda_build", "cuda_available", "devices", "bf16_supported",
                "flash_attention", "placement", "model", "forecast", "findings", "ok"):
        assert key in data
    assert set(doctor.PACKAGES) <= set(data["packages"])
    placed = data["placement"]
    assert (placed["device"], placed["dtype"], placed["attn_implementation"]) == ("cpu", "float32", "sdpa")
    assert "no native bfloat16" in placed["reason"]
    assert data["devices"][0]["index"] == "cpu" and data["devices"][0]["free_bytes"] > 0
    forecast = data["forecast"]
    assert data["model"]["parameters"] == 2_000_000 and forecast["terms"]["weights"] == 8_000_000
    assert forecast["total_bytes"] == sum(forecast["terms"].values()) and forecast["fits"]
    # without --batch-size: VQA_BATCH_MAX_SIZE (16), closed at 16384 visual tokens = 12 full-budget pictures
    assert (forecast["workload"]["asked_batch"], forecast["workload"]["batch"]) == (16, 12)
    assert data["ok"] is True
    assert "fits" in doctor.render(report)


def test_the_asked_workload_is_the_one_forecast(fake_model: Path) -> None:
    settings = load_settings(model=str(fake_model), device="cpu")
    one = doctor.diagnose(settings, doctor.Workload(batch_size=1, max_pixels=256 * 32 * 32, max_new_tokens=8))
    assert one.forecast is not None
    assert one.forecast["workload"] == {"batch": 1, "asked_batch": 1, "max_pixels": 256 * 32 * 32, "patches": 1024,
                                        "prompt_tokens": 256 + memory.TEXT_TOKENS, "max_new_tokens": 8}
    # 16 pictures of 1280 visual tokens: the batcher closes the batch at 16384 visual tokens, after 12
    full = doctor.diagnose(settings, doctor.Workload(batch_size=16, max_pixels=1280 * 32 * 32))
    assert full.forecast is not None
    assert (full.forecast["workload"]["batch"], full.forecast["workload"]["asked_batch"]) == (12, 16)
    assert "16 asked" in doctor.render(full)
    train = doctor.diagnose(settings, doctor.Workload(train=True, batch_size=2, gradient_checkpointing=True))
    assert train.forecast is not None and train.forecast["kind"] == "train"
    assert train.forecast["workload"]["gradient_checkpointing"] and train.forecast["workload"]["batch"] == 2
    assert "a LoRA step, batch 2" in doctor.render(train)


def test_a_model_too_big_is_a_problem_with_a_fix(fake_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_model, "count_parameters", lambda source, trust=False: (10**13, QWEN3_VL_8B))
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


def test_a_workload_flag_below_one_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    from vqaserve.cli import main

    assert main(["doctor", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "vqa: error: --batch-size must be at least 1"


def test_a_mapped_untied_embedding_table_is_not_counted_resident_on_cpu() -> None:
    """Weights stored in the compute dtype are mapped on a CPU: an untied input embedding is read a
    row per token (the 8B stand-in peaked below its weights' size); a tied one is the lm_head too."""
    untied = memory.Shape(parameters=10**9, layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2,
                          head_dim=16, vocab=1000, tied=False, vision_depth=1, vision_hidden=32,
                          vision_intermediate=64, patch=16, merge=2, deepstack=0)

    def weights(shape: memory.Shape, **kw: object) -> int:
        return memory.serve_forecast(shape, "bfloat16", batch=1, max_pixels=1024 * 32, max_new_tokens=8,
                                     **kw).terms["weights"]  # type: ignore[arg-type]

    assert weights(untied) == 2 * 10**9
    assert weights(untied, mapped=True) == 2 * 10**9 - 1000 * 64 * 2
    assert weights(untied, mapped=True, device="cuda") == 2 * 10**9  # copied to the GPU whole
    tied = dataclasses.replace(untied, tied=True)
    assert weights(tied, mapped=True) == 2 * 10**9
