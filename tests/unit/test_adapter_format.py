"""`vqa adapter check --for vllm` on small synthetic adapter dirs (one per verdict), and the rewrite of
trainable-token rows as LoRA pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from vqaserve.cli import main
from vqaserve.errors import ConfigError
from vqaserve.train import adapter_format as af

pytestmark = pytest.mark.unit

DECODER = "base_model.model.model.language_model.layers.0.self_attn"
TOWER = "base_model.model.model.visual.blocks.0.attn.qkv"
EMBED = "base_model.model.model.language_model.embed_tokens"


def lora(module: str) -> list[str]:
    return [f"{module}.lora_A.weight", f"{module}.lora_B.weight"]


def adapter(tmp_path: Path, keys: list[str], name: str = "ad", **config: Any) -> Path:
    """An adapter dir whose safetensors holds these weight names (1x1 zeros: the checker reads names)."""
    directory = tmp_path / name
    directory.mkdir()
    base = {"peft_type": "LORA", "r": 8, "lora_alpha": 32, "bias": "none", "target_modules": ["q_proj"],
            "init_lora_weights": True, "modules_to_save": None, "use_dora": False}
    (directory / "adapter_config.json").write_text(json.dumps({**base, **config}))
    save_file({k: np.zeros((1, 1), dtype=np.float32) for k in keys}, str(directory / "adapter_model.safetensors"))
    return directory


def problems(verdict: af.Verdict) -> list[str]:
    return [f.field for f in verdict.findings if f.level == "problem"]


def test_decoder_lora_loads_with_the_plain_flags(tmp_path: Path) -> None:
    verdict = af.check_vllm(adapter(tmp_path, lora(f"{DECODER}.q_proj") + lora(f"{DECODER}.v_proj")))
    assert verdict.ok and verdict.findings == [] and not verdict.tower
    assert verdict.serve_flags() == ["--enable-lora", "--max-lora-rank", "8"]


def test_new_word_rows_as_lora_pairs_load(tmp_path: Path) -> None:
    keys = lora(f"{DECODER}.q_proj") + [f"{EMBED}.lora_embedding_A", f"{EMBED}.lora_embedding_B"]
    keys += lora("base_model.model.lm_head")
    verdict = af.check_vllm(adapter(tmp_path, keys, rank_pattern={"embed_tokens": 10, "lm_head": 10}))
    assert verdict.ok and verdict.max_rank == 10
    assert verdict.serve_flags()[:3] == ["--enable-lora", "--max-lora-rank", "16"]  # 10 rounds up to a vLLM choice


def test_trainable_tokens_are_refused_once(tmp_path: Path) -> None:
    keys = lora(f"{DECODER}.q_proj") + [f"{EMBED}.token_adapter.trainable_tokens_delta"]
    verdict = af.check_vllm(adapter(tmp_path, keys, trainable_token_indices={"embed_tokens": [5, 6]}))
    assert not verdict.ok and problems(verdict) == ["trainable_token_indices"]
    assert "vqa adapter convert" in verdict.findings[0].fix
    # the weight alone (a config edited by hand) is caught too
    verdict = af.check_vllm(adapter(tmp_path, keys, name="weights-only"))
    assert problems(verdict) == [f"{EMBED}.token_adapter.trainable_tokens_delta"]


def test_saved_whole_modules_and_unsupported_features_are_refused(tmp_path: Path) -> None:
    keys = lora(f"{DECODER}.q_proj") + ["base_model.model.lm_head.weight"]
    verdict = af.check_vllm(adapter(tmp_path, keys, modules_to_save=["lm_head"], use_dora=True, bias="all"))
    assert set(problems(verdict)) == {"modules_to_save", "use_dora", "bias", "base_model.model.lm_head.weight"}
    assert all("fix" not in f.message and f.fix for f in verdict.findings)


def test_vision_tower_lora_needs_the_tower_flags(tmp_path: Path) -> None:
    path = adapter(tmp_path, lora(f"{DECODER}.q_proj") + lora(TOWER))
    verdict = af.check_vllm(path)
    assert verdict.ok and verdict.tower
    assert [f.level for f in verdict.findings] == ["needs"]
    assert "--enable-tower-connector-lora" in verdict.findings[0].fix
    assert verdict.serve_flags()[-3:] == ["--enable-tower-connector-lora", "--mm-processor-cache-gb", "0"]
    without = af.check_vllm(path, ["--enable-lora", "--max-lora-rank", "16"])
    assert problems(without) == ["--enable-tower-connector-lora"]
    assert "ignores" in without.findings[0].message
    cache_on = af.check_vllm(path, "--enable-lora --enable-tower-connector-lora")
    assert problems(cache_on) == ["--enable-tower-connector-lora"]  # the processor cache must be off too
    served = af.check_vllm(path, "--enable-lora --max-lora-rank=16 --enable-tower-connector-lora "
                                 "--mm-processor-cache-gb 0")
    assert served.ok and served.findings == []


def test_lora_on_the_patch_convolution_would_be_ignored(tmp_path: Path) -> None:
    conv = "base_model.model.model.visual.patch_embed.proj"
    verdict = af.check_vllm(adapter(tmp_path, lora(f"{DECODER}.q_proj") + lora(conv)))
    assert problems(verdict) == ["model.visual.patch_embed.proj"]
    assert af.module_findings(["model.language_model.layers.0.self_attn.q_norm"])[0].level == "problem"


def test_rank_above_the_default_needs_max_lora_rank(tmp_path: Path) -> None:
    path = adapter(tmp_path, lora(f"{DECODER}.q_proj"), r=48)
    verdict = af.check_vllm(path)
    assert verdict.ok and verdict.serve_flags()[2] == "64"
    assert [f.field for f in verdict.findings] == ["rank"]
    refused = af.check_vllm(path, ["--enable-lora"])  # vLLM's default --max-lora-rank is 16
    assert problems(refused) == ["--max-lora-rank"] and refused.findings[0].fix == "--max-lora-rank 64"
    assert problems(af.check_vllm(path, ["--max-lora-rank", "64"])) == ["--enable-lora"]


def test_missing_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no adapter_config.json; give a PEFT adapter directory"):
        af.read_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no adapter_model.safetensors; save the adapter with safetensors"):
        af.read_adapter(tmp_path)


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = adapter(tmp_path, lora(f"{DECODER}.q_proj") + lora(TOWER), name="good")
    assert main(["adapter", "check", str(good), "--for", "vllm"]) == 0
    out = capsys.readouterr().out
    assert "loads it and applies every part" in out and "--enable-tower-connector-lora" in out
    bad = adapter(tmp_path, lora(f"{DECODER}.q_proj") + [f"{EMBED}.token_adapter.trainable_tokens_delta"],
                  name="bad", trainable_token_indices={"embed_tokens": [5]})
    assert main(["adapter", "check", str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["findings"][0]["level"] == "problem"
    assert main(["adapter", "check", str(good), "--vllm-args=--enable-lora --max-lora-rank 16", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["findings"][0]["field"] == "--enable-tower-connector-lora"


def test_bundled_adapter_is_served_whole_by_vllm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adapter", "check", "shop-toy-sunglasses", "--for", "vllm", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["vision_tower"] and report["max_rank"] <= 16
    assert [f["level"] for f in report["findings"]] == ["needs"]


def test_token_rows_become_lora_pairs_with_the_same_numbers() -> None:
    import torch

    torch.manual_seed(0)
    vocab, hidden, ids = 12, 4, [3, 7, 8]
    base = torch.randn(vocab, hidden)
    trained = base[ids] + torch.randn(len(ids), hidden)  # PEFT stores the trained rows, not a delta
    tensors = {f"{EMBED}.token_adapter.trainable_tokens_delta": trained, f"{DECODER}.q_proj.lora_A.weight": base[:2]}
    config = {"r": 8, "lora_alpha": 32, "target_modules": ["q_proj"],
              "trainable_token_indices": {"embed_tokens": ids}}
    out, new = af.token_rows_as_lora(tensors, config, base, tied=True)
    assert new["trainable_token_indices"] is None and new["target_modules"] == ["embed_tokens", "lm_head", "q_proj"]
    assert new["rank_pattern"] == new["alpha_pattern"] == {"embed_tokens": 3, "lm_head": 3}  # scaling 1
    assert torch.equal(out[f"{DECODER}.q_proj.lora_A.weight"], base[:2])
    want = base.clone()
    want[ids] = trained
    a, b = out[f"{EMBED}.lora_embedding_A"], out[f"{EMBED}.lora_embedding_B"]
    embedded = base + (a.T @ b.T)  # PEFT: embedding(x, A.T) @ B.T for every token x
    assert torch.allclose(embedded, want, atol=1e-6)
    h = torch.randn(5, hidden)
    head_a, head_b = out["base_model.model.lm_head.lora_A.weight"], out["base_model.model.lm_head.lora_B.weight"]
    logits = h @ base.T + (h @ head_a.T) @ head_b.T
    assert torch.allclose(logits, h @ want.T, atol=1e-5)  # tied: the output embedding moves with it
    untied, _ = af.token_rows_as_lora(tensors, config, base, tied=False)
    assert not any("lm_head" in k for k in untied)
