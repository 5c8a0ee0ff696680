"""A run's checkpoint (`OUT/checkpoint/state.pt`, for --resume) and its final output directory.

A checkpoint is written between optimizer steps only, so a resumed run never starts halfway through an
accumulation: it holds the weights that train (all of a full fine-tune, the adapter of a LoRA run: a
frozen 8B base is never copied), AdamW's state, the step, the data stream's position and the loss curve.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqaserve.errors import ConfigError
from vqaserve.train import adapter_format


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    batches: int = 0  # micro-batches drawn from the data stream (its position: batch b is a function of b)
    elapsed: float = 0.0  # seconds of training before this session
    curve: list[Any] = field(default_factory=list)  # [[step, ema_loss], ...]


def save_checkpoint(path: Path, model: Any, opt: Any, progress: Progress) -> None:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    trained = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    tmp = path / "state.pt.tmp"
    torch.save({"model": trained, "optimizer": opt.state_dict(), "step": progress.step,
                "batches": progress.batches, "elapsed": progress.elapsed, "curve": progress.curve}, tmp)
    tmp.replace(path / "state.pt")  # atomic: a crash mid-save keeps the previous checkpoint


def load_checkpoint(path: Path, model: Any, opt: Any, batches_per_step: int,
                    log: Callable[[str], None]) -> Progress:
    """Restore into the model and its (not yet prepared) optimizer; Progress() when there is none."""
    import torch

    file = path / "state.pt"
    if not file.is_file():
        log("no checkpoint to resume from; starting at step 0")
        return Progress()
    state = torch.load(file, map_location="cpu", weights_only=False)
    result = model.load_state_dict(state["model"], strict=False)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    lost = sorted(trained & set(result.missing_keys))
    if result.unexpected_keys or lost:
        raise ConfigError(f"--resume: {file} was written for another model or --lora setting (e.g. "
                          f"{(result.unexpected_keys or lost)[0]}); use another --out or drop --resume")
    opt.load_state_dict(state["optimizer"])
    step = int(state["step"])
    log(f"resumed from step {step}")
    # Checkpoints from before --grad-accum count batches as steps.
    return Progress(step, int(state.get("batches", step * batches_per_step)), float(state["elapsed"]),
                    list(state.get("curve", [])))


def save_final(model: Any, processor: Any, out: Path, lora: bool, base_model: str | None,
               info: dict[str, Any]) -> None:
    """The HF model dir (full) or PEFT adapter dir (LoRA), with train.json saying how it was made."""
    model.eval()
    if lora:
        model.save_pretrained(str(out))
        adapter_format.save_for_serving(model, out)
        _record_adapter_base(out, base_model)
        verdict = adapter_format.check_vllm(out)
        info["vllm"] = {"ok": verdict.ok, "serve_flags": verdict.serve_flags(),
                        "findings": [f.line() for f in verdict.findings if f.level == "problem"]}
    else:
        model.save_pretrained(str(out), safe_serialization=True)
        processor.save_pretrained(str(out))
    (out / "train.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _record_adapter_base(out: Path, base: str | None) -> None:
    """Name the base model as the user gave it (e.g. "shop-toy"), never this machine's absolute path."""
    config_path = out / "adapter_config.json"
    if base and config_path.is_file():
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(config, indent=2) + "\n")
