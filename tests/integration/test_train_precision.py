"""The trainer's GPU-sized options on the tiny model, on CPU: the code paths a CUDA run takes with the same flags.

bfloat16 compute over a frozen bf16 base with float32 LoRA weights, gradient checkpointing, gradient
accumulation (N micro-batches of B give the gradient of one batch of N x B), resume at optimizer-step
boundaries, --stop-after, and the one-line refusal of --load-in-4bit without CUDA.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tiny_vlm import TINY_MAX_PIXELS, TINY_MIN_PIXELS, ok, picture, request

from tests.conftest import subprocess_env, vqa_cmd
from vqaserve.train import loop
from vqaserve.train.trainer import TrainConfig, train

pytestmark = pytest.mark.integration


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {"synthetic": "train:1", "steps": 3, "batch_size": 4, "lr": 1e-2, "warmup": 1,
                               "max_turns": 1, "workers": 0, "checkpoint_every": 0, "threads": 1,
                               "device": "cpu"}  # the CPU paths, on a GPU machine too
    base.update(kw)
    return TrainConfig(out=str(out), **base)  # type: ignore[arg-type]


def test_bf16_checkpointing_accumulation_lora_trains_and_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from vqaserve.engines.transformers import TransformersEngine
    from vqaserve.settings import load_settings

    out = tmp_path / "adapter"
    result = train(_cfg(out, model=str(tiny_model_dir), lora=True, dtype="bfloat16", gradient_checkpointing=True,
                        grad_accum=2, batch_size=2, synthetic="adapter:1", lora_new_words="sunglasses"),
                   log=lambda _m: None)
    assert len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)
    model = result.model
    assert model.get_base_model().is_gradient_checkpointing
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}  # weights, grads and Adam state
    assert {p.dtype for n, p in model.named_parameters() if n not in trained} == {torch.bfloat16}
    assert all(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)  # B starts at zero: it moved
    info = json.loads((out / "train.json").read_text())
    assert info["placement"] == {"device": "cpu", "dtype": "bfloat16", "load_in_4bit": False,
                                 "gradient_checkpointing": True}
    assert info["grad_accum"] == 2 and info["samples_seen"] == 3 * 2 * 2
    assert info["peak_memory"]["cpu_rss_bytes"] > 100 * 2**20  # this process's peak: torch alone is more
    engine = TransformersEngine(load_settings(model=str(tiny_model_dir), adapters={"shop": str(out)}))
    asyncio.run(engine.start())
    try:
        (answer,) = asyncio.run(engine.generate([request("What is this?", picture((96, 64), (200, 20, 20)),
                                                         adapter="shop")]))
        assert engine.adapters() == ["shop"] and ok(answer).usage.completion_tokens > 0
    finally:
        asyncio.run(engine.close())


def _first_step(model_dir: Path, micro: list[dict[str, Any]], *, checkpointing: bool = False) -> tuple[float, Any]:
    """The loss of one optimizer step over `micro` and the gradient it applies (float32, no clipping)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vqaserve.train.precision import TrainPlacement, make_accelerator, prepare_for_training

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    prepare_for_training(model, gradient_checkpointing=checkpointing, lora=False, quantized=False)
    seen: list[Any] = []

    class Recording(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:
            seen.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
            return None

    accelerator = make_accelerator(TrainPlacement("cpu", "float32"), len(micro))
    module, opt = accelerator.prepare(loop.AnswerLoss(model), Recording(model.parameters(), lr=0.0))
    module.train()
    loss = loop.optimizer_step(accelerator, module, opt, micro, clip=1e9)
    assert len(seen) == 1  # one optimizer step for all the micro-batches
    return loss, seen[0]


def _maker(model_dir: Path, batch_size: int):  # type: ignore[no-untyped-def]
    from vqaserve.train.batches import BatchMaker

    return BatchMaker(str(model_dir), (TINY_MIN_PIXELS, TINY_MAX_PIXELS), [], [("train", 1.0)], 1.0,
                      batch_size=batch_size, max_turns=1, seed=3)


def test_accumulation_gives_the_gradient_of_the_whole_batch(tiny_model_dir: Path) -> None:
    """Three micro-batches of 2 == one batch of the same 6 pictures, though their answers differ in length."""
    import torch

    micro = [_maker(tiny_model_dir, 2).batch(k) for k in range(3)]
    (whole,) = [_maker(tiny_model_dir, 6).batch(0)]
    assert len({loop.answer_tokens(b) for b in micro}) > 1  # unequal shares: a plain mean of means would differ
    loss_n, grad_n = _first_step(tiny_model_dir, micro)
    loss_1, grad_1 = _first_step(tiny_model_dir, [whole])
    assert loss_n == pytest.approx(loss_1, rel=1e-5)
    assert float(torch.linalg.norm(grad_n - grad_1) / torch.linalg.norm(grad_1)) < 1e-5


def test_gradient_checkpointing_changes_memory_not_maths(tiny_model_dir: Path) -> None:
    import torch

    batch = _maker(tiny_model_dir, 4).batch(0)
    loss_plain, grad_plain = _first_step(tiny_model_dir, [batch])
    loss_ckpt, grad_ckpt = _first_step(tiny_model_dir, [batch], checkpointing=True)
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    assert float(torch.linalg.norm(grad_ckpt - grad_plain) / torch.linalg.norm(grad_plain)) < 1e-6


def test_an_accumulated_run_follows_the_big_batch_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    big = train(_cfg(tmp_path / "big", model=str(tiny_model_dir), steps=3, batch_size=6), log=lambda _m: None)
    small = train(_cfg(tmp_path / "acc", model=str(tiny_model_dir), steps=3, batch_size=2, grad_accum=3),
                  log=lambda _m: None)
    assert small.losses == pytest.approx(big.losses, rel=1e-4)  # the same updates, step after step


def test_resume_and_stop_after_keep_the_schedule_at_step_boundaries(tiny_model_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = {"model": str(tiny_model_dir), "steps": 6, "grad_accum": 2, "batch_size": 2}
    whole = train(_cfg(tmp_path / "whole", **run), log=lambda _m: None).losses
    # Interrupted in the middle of step 5's accumulation: the checkpoint holds step 4, never half of 5.
    real, calls = loop.answer_loss, {"n": 0}

    def dies_in_step_five(model: Any, batch: dict[str, Any]) -> Any:
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(loop, "answer_loss", dies_in_step_five)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(crashed, checkpoint_every=2, **run), log=lambda _m: None)
    monkeypatch.setattr(loop, "answer_loss", real)
    resumed = train(_cfg(crashed, checkpoint_every=2, resume=True, **run), log=lambda _m: None)
    assert resumed.losses == pytest.approx(whole[4:], rel=1e-5)
    # --stop-after: the first half of the same schedule, a checkpoint, and --resume finishes it.
    halves = tmp_path / "halves"
    first = train(_cfg(halves, stop_after=3, **run), log=lambda _m: None)
    assert first.steps == 3 and first.losses == pytest.approx(whole[:3], rel=1e-5)
    assert (halves / "checkpoint" / "state.pt").is_file() and (halves / "model.safetensors").is_file()
    assert "--resume" in json.loads((halves / "train.json").read_text())["stopped_after"]
    second = train(_cfg(halves, resume=True, **run), log=lambda _m: None)
    assert second.steps == 6 and second.losses == pytest.approx(whole[3:], rel=1e-5)
    assert not (halves / "checkpoint").exists()


def test_load_in_4bit_without_cuda_is_one_line_naming_the_fix(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/gpu/test_train_gpu.py trains with --load-in-4bit")
    proc = subprocess.run(vqa_cmd("train", "--model", str(tiny_model_dir), "--lora", "--load-in-4bit",
                                  "--synthetic", "train:1", "--steps", "1", "--out", str(tmp_path / "never")),
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # ConfigError: the machine, not the request, is wrong
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["vqa: error: --load-in-4bit needs CUDA and bitsandbytes (pip install 'vqaserve[gpu]'); this "
                     "machine has no CUDA device: train in bfloat16 instead (--dtype bfloat16 "
                     "--gradient-checkpointing)"], proc.stderr
