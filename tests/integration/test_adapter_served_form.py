"""The adapter `vqa train --lora --lora-new-words` saves is the one vLLM serves, and answers as trained.

What vLLM itself does with it is shown by `vqa bench adapter-vllm` (docs/train.md); here: PEFT
loads the saved form with the same numbers as the model that trained, `vqa adapter check` passes it,
older adapters convert, and targets vLLM cannot serve are refused before training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vqaserve.cli import main
from vqaserve.errors import ConfigError
from vqaserve.train import adapter_format
from vqaserve.train.trainer import TrainConfig, train

pytestmark = pytest.mark.integration


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {"synthetic": "adapter:1", "steps": 4, "batch_size": 4, "lr": 5e-2, "warmup": 1,
                               "max_turns": 1, "workers": 0, "checkpoint_every": 0, "threads": 1,
                               "device": "cpu"}  # the CPU paths, on a GPU machine too
    base.update(kw)
    return TrainConfig(out=str(out), **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tiny-base")
    train(_cfg(out, recipe="tiny", synthetic="train:1", steps=1), log=lambda _m: None)
    return str(out)


def _logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def _load(base: str, adapter: Path) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def test_saved_new_word_adapter_answers_as_the_trained_model(base_model: str, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    result = train(_cfg(out, model=base_model, lora=True, lora_new_words="sunglasses,太阳镜",
                        lora_targets="q_proj,v_proj,qkv"), log=lambda _m: None)
    config = json.loads((out / "adapter_config.json").read_text())
    rows = config["rank_pattern"]["embed_tokens"]
    assert rows == config["rank_pattern"]["lm_head"] and rows > 0
    from safetensors.torch import load_file

    one_hot = load_file(str(out / "adapter_model.safetensors"))[
        "base_model.model.model.language_model.embed_tokens.lora_embedding_A"]
    ids = one_hot.nonzero()[:, 1].tolist()
    prompt = [1, 2, 3, *ids, 4, 5]
    trained = _logits(result.model.eval(), prompt)
    loaded = _load(base_model, out)
    assert (_logits(loaded, prompt) - trained).abs().max() < 1e-4
    with loaded.disable_adapter():
        assert (_logits(loaded, prompt) - trained).abs().max() > 1e-2  # the adapter does change answers
    verdict = adapter_format.check_vllm(out)
    assert verdict.ok and verdict.tower and verdict.max_rank == rows
    info = json.loads((out / "train.json").read_text())
    assert info["vllm"]["ok"] and info["vllm"]["serve_flags"] == verdict.serve_flags()


def test_older_adapter_converts_to_the_served_form(base_model: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old"
    monkeypatch.setattr(adapter_format, "save_for_serving", lambda _model, _out: None)  # the format before
    train(_cfg(old, model=base_model, lora=True, lora_new_words="sunglasses"), log=lambda _m: None)
    monkeypatch.undo()
    assert json.loads((old / "adapter_config.json").read_text())["trainable_token_indices"]
    assert main(["adapter", "check", str(old), "--for", "vllm"]) == 1
    new = tmp_path / "new"
    assert main(["adapter", "convert", str(old), "--model", base_model, "--out", str(new)]) == 0
    assert main(["adapter", "check", str(new), "--for", "vllm"]) == 0
    prompt = list(range(1, 40))
    assert (_logits(_load(base_model, old), prompt) - _logits(_load(base_model, new), prompt)).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="no trainable-token rows to convert"):
        main(["--debug", "adapter", "convert", str(new), "--model", base_model, "--out", str(tmp_path / "again")])


def test_targets_vllm_cannot_serve_are_refused_before_training(base_model: str, tmp_path: Path) -> None:
    # "proj" also names the vision tower's patch embedding, a convolution in vLLM: no LoRA there.
    with pytest.raises(ConfigError, match=r"--lora-targets: .*patch_embed\.proj.*fix: target the tower's qkv"):
        train(_cfg(tmp_path / "conv", model=base_model, lora=True, lora_targets="q_proj,proj"), log=lambda _m: None)
    assert not (tmp_path / "conv" / "adapter_config.json").exists()
