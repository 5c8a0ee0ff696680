"""`vqa train` on the tiny recipe: loss falls, LoRA leaves base weights untouched, resume, bad data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import subprocess_env, vqa_cmd
from vqaserve.train import loop
from vqaserve.train import trainer as tr
from vqaserve.train.lora import token_ids
from vqaserve.train.trainer import TrainConfig, train

pytestmark = pytest.mark.integration


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {"synthetic": "train:1", "steps": 30, "batch_size": 8, "lr": 3e-3, "warmup": 3,
                               "max_turns": 2, "workers": 0, "checkpoint_every": 0, "threads": 1,
                               "device": "cpu"}  # the CPU paths, on a GPU machine too
    base.update(kw)
    return TrainConfig(out=str(out), **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tr.TrainResult:
    out = tmp_path_factory.mktemp("tiny-trained")
    return train(_cfg(out, recipe="tiny"), log=lambda _m: None)


def test_full_training_loss_falls_and_writes_a_model_dir(trained: tr.TrainResult) -> None:
    losses = trained.losses
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    out = Path(trained.out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "train.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists()
    info = json.loads((out / "train.json").read_text())
    assert info["mode"] == "full" and info["recipe"] == "tiny" and info["steps"] == 30
    assert info["versions"]["transformers"] and info["seed"] == 0 and info["duration_s"] > 0
    assert info["final_loss"] == trained.final_loss
    assert info["params_trainable"] == info["params_total"]


def test_lora_trains_only_adapter_weights(trained: tr.TrainResult, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(trained.out, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = train(_cfg(tmp_path / "adapter", model=trained.out, lora=True, steps=6, lr=1e-2,
                        lora_targets="q_proj,v_proj"), log=lambda _m: None)
    peft_model = result.model
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    changed = False
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" in name:
            changed = changed or bool(value.abs().sum() > 0)
            continue
        original = before[name.replace(".base_layer", "")]
        assert torch.equal(value, original), f"base weight {name} changed"
    assert changed
    adapter = tmp_path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == trained.out and config["r"] == 8
    assert config["lora_alpha"] == 32 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    from safetensors.torch import load_file

    assert all("lora_" in k for k in load_file(str(adapter / "adapter_model.safetensors")))
    info = json.loads((adapter / "train.json").read_text())
    assert info["mode"] == "lora" and info["params_trainable"] < info["params_total"]


def test_lora_new_words_train_their_embedding_rows_only(trained: tr.TrainResult, tmp_path: Path) -> None:
    """A new answer word (the adapter's new category) gets trainable embedding rows; nothing else does."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from vqaserve.train.synthetic import answers

    tokenizer = AutoTokenizer.from_pretrained(trained.out)
    ids = token_ids(tokenizer, "sunglasses,太阳镜", answers("adapter"))
    assert ids and set(tokenizer.encode("太阳镜", add_special_tokens=False)) <= set(ids)
    # As the answers spell it: BPE merges the word with its neighbours in Chinese descriptions.
    description = tokenizer.encode("一件红色条纹太阳镜", add_special_tokens=False)
    assert description[-1] in ids and tokenizer.decode(description[-1:]).endswith("太阳镜")
    assert description[0] not in ids  # "一件" is no part of the new word
    base = AutoModelForImageTextToText.from_pretrained(trained.out, dtype=torch.float32)
    embed_before = base.get_input_embeddings().weight.clone()
    result = train(_cfg(tmp_path / "adapter", model=trained.out, lora=True, steps=4, lr=1e-2,
                        synthetic="adapter:1", lora_new_words="sunglasses,太阳镜"), log=lambda _m: None)
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable)
    assert all("lora_" in n or "trainable_tokens" in n for n in trainable)
    delta = next(p for n, p in result.model.named_parameters() if "trainable_tokens_delta" in n)
    assert delta.shape[0] == len(ids) and delta.abs().sum() > 0  # only those rows, and they moved
    result.model.disable_adapter_layers()
    assert torch.equal(result.model.get_input_embeddings().weight, embed_before)  # the base is untouched
    # Saved as LoRA pairs of rank len(ids) on embed_tokens and (tied) lm_head: the form vLLM serves.
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] is None
    assert config["rank_pattern"] == {"embed_tokens": len(ids), "lm_head": len(ids)}
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    one_hot = next(v for k, v in saved.items() if k.endswith("embed_tokens.lora_embedding_A"))
    assert one_hot.nonzero()[:, 1].tolist() == ids  # row i picks token ids[i]


def test_resume_continues_from_the_checkpoint(trained: tr.TrainResult, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop.answer_loss
    calls = {"n": 0}

    def dies_after_four(model: object, batch: dict) -> object:  # type: ignore[type-arg]
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(loop, "answer_loss", dies_after_four)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, model=trained.out, steps=6, checkpoint_every=3), log=lambda _m: None)
    assert (out / "checkpoint" / "state.pt").is_file()
    monkeypatch.setattr(loop, "answer_loss", real)
    result = train(_cfg(out, model=trained.out, steps=6, checkpoint_every=3, resume=True), log=lambda _m: None)
    assert result.steps == 6 and len(result.losses) == 3  # steps 4..6 only
    assert not (out / "checkpoint").exists()


def test_bad_dataset_line_stops_before_training(trained: tr.TrainResult, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    good = {"image": "images/ok.png", "question": "What color is it?", "answer": "red"}
    from vqaserve.train.synthetic import make_sample, png_bytes

    (tmp_path / "images" / "ok.png").write_bytes(png_bytes(make_sample("train", 0, 1).image))
    lines = [json.dumps(good), json.dumps({**good, "image": "images/gone.png"}), json.dumps(good)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "never"
    proc = subprocess.run(vqa_cmd("train", str(data), "--model", trained.out, "--out", str(out), "--steps", "2"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"{data}:2" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "model.safetensors").exists()
