"""Supervised fine-tuning of Qwen3-VL-architecture models: full or LoRA (PEFT), on jsonl or synthetic data.

The loop is deliberately plain: AdamW, linear warm-up then cosine decay, gradient clipping, one
background process preparing batches. The schedule follows max(step progress, time progress) when a
time budget is set, so a run on a busy machine still anneals and finishes on time. Steps are optimizer
steps: with --grad-accum N each is N micro-batches (train/loop.py). Accelerate runs the loop, so the
same code trains in one process or, under `accelerate launch`, one per GPU (DDP); device and precision
follow train/precision.py, checkpoints and the output directory train/checkpoint.py.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vqaserve.errors import ConfigError
from vqaserve.train.batches import Prefetcher


@dataclass
class TrainConfig:
    out: str
    model: str | None = None  # model dir to start from (full) or to adapt (LoRA)
    recipe: str | None = None  # build a fresh model from a named recipe instead
    data: list[str] = field(default_factory=list)  # jsonl files
    synthetic: str | None = None  # "SPLIT:WEIGHT,..." on-the-fly catalogue data
    data_weight: float = 1.0  # weight of the jsonl data next to the synthetic splits
    steps: int = 1000  # optimizer steps: the schedule's length
    batch_size: int = 16  # pictures a micro-batch, per process
    grad_accum: int = 1  # micro-batches an optimizer step
    stop_after: int = 0  # stop after this step, keeping the --steps schedule (0: run them all)
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    vision_lr_scale: float = 1.0  # the vision tower's LR relative to --lr
    max_turns: int = 1  # questions per synthetic picture
    time_budget_min: float = 0.0  # 0 = no time limit
    mask_curriculum_steps: int = 0  # synthetic pictures blended from silhouettes to real over N steps
    seed: int = 0
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: str = "q_proj,v_proj"
    # Words a LoRA run must learn to *say* (e.g. a new category): their token embedding rows are
    # trained too, since q/v adapters alone cannot move an output embedding. Saved as LoRA on
    # embed_tokens and lm_head, the form vLLM serves (train/adapter_format.py).
    lora_new_words: str = ""
    device: str = "auto"  # auto | cpu | cuda | mps (train/precision.py)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: the compute dtype
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False  # QLoRA: a frozen nf4 base (CUDA, bitsandbytes)
    checkpoint_every: int = 200
    resume: bool = False
    skip_bad_lines: bool = False
    threads: int = 2
    workers: int = 1  # background batch-preparation processes (0 = prepare in the loop)
    command: str = ""


@dataclass
class TrainResult:
    out: str
    steps: int
    final_loss: float
    duration_s: float
    info: dict[str, Any]
    losses: list[float] = field(default_factory=list, repr=False)  # every step's raw loss
    model: Any = field(default=None, repr=False)  # the trained model (PEFT-wrapped for LoRA)


# --- data sources (built inside the worker process too) ---------------------------------------------
def parse_mix(spec: str | None) -> list[tuple[str, float]]:
    """ "train:0.7,adapter:0.3" -> [("train", 0.7), ("adapter", 0.3)]."""
    from vqaserve.train.synthetic import SPLITS

    mix: list[tuple[str, float]] = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        split, _, weight = item.strip().partition(":")
        if split not in SPLITS:
            raise ConfigError(f"--synthetic: unknown split {split!r}; "
                              f"use {', '.join(SPLITS)} (SPLIT:WEIGHT,...)")
        try:
            w = float(weight or 1.0)
        except ValueError:
            raise ConfigError(f"--synthetic: weight {weight!r} is not a number (SPLIT:WEIGHT,...)") from None
        if w <= 0:
            raise ConfigError("--synthetic: weights must be > 0")
        mix.append((split, w))
    return mix


# --- model ------------------------------------------------------------------------------------------
def serving_budget(processor: Any) -> tuple[int, int]:
    """The pixel budget the service uses for this model with default settings (Pipeline.budget)."""
    from vqaserve.images.budget import pixel_budget, processor_budget
    from vqaserve.settings import ImageSettings

    return pixel_budget(ImageSettings(), processor_budget(processor.image_processor)).as_tuple()


def fast_patch_embed(model: Any) -> None:
    """Qwen3-VL's patch embedding is a Conv3d whose kernel equals its stride: the same maths as one
    matrix product, which is several times faster on CPU (forward and backward). Weights unchanged."""
    import torch

    for module in model.modules():
        if type(module).__name__.endswith("VisionPatchEmbed") and hasattr(module, "proj"):
            proj = module.proj

            def forward(hidden: torch.Tensor, proj: Any = proj) -> torch.Tensor:
                weight = proj.weight.reshape(proj.weight.shape[0], -1)
                return torch.nn.functional.linear(hidden.reshape(-1, weight.shape[1]).to(weight.dtype),
                                                  weight, proj.bias)

            module.forward = forward


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    from vqaserve import __version__
    return {"vqaserve": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _prepare_model_dir(cfg: TrainConfig, log: Callable[[str], None],
                       build: bool = True) -> tuple[str, dict[str, Any] | None]:
    """Where the starting weights come from: a recipe (built fresh into OUT, by the process that may
    `build`) or a model dir."""
    from vqaserve.settings import resolve_model_path

    if cfg.recipe:
        from vqaserve.modeling.builder import build_model_dir
        from vqaserve.train.recipes import get_recipe

        recipe = get_recipe(cfg.recipe)
        if build and not (cfg.resume and (Path(cfg.out) / "checkpoint").is_dir()):
            log(f"building a fresh {cfg.recipe} model in {cfg.out}")
            build_model_dir(cfg.out, recipe["architecture"], cfg.seed,
                            min_pixels=recipe["min_pixels"], max_pixels=recipe["max_pixels"])
        return cfg.out, recipe
    if not cfg.model:
        raise ConfigError("give --model DIR (a model to fine-tune) or --recipe NAME (build a fresh one)")
    path = resolve_model_path(cfg.model)
    if not Path(path).is_dir():
        raise ConfigError(f"--model {cfg.model!r} is not a model directory or bundled model name")
    return path, None


def _base_parameters(cfg: TrainConfig) -> int | None:
    """The size of the model a run starts from, read from its safetensors headers (None: unknown)."""
    from vqaserve.engines.placement import stored_parameters
    from vqaserve.settings import resolve_model_path

    if not cfg.model:
        return None
    path = Path(resolve_model_path(cfg.model))
    return stored_parameters(path) if path.is_dir() else None


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    import torch
    from tqdm import tqdm
    from transformers import AutoProcessor

    from vqaserve.train import loop
    from vqaserve.train.checkpoint import Progress, load_checkpoint, save_checkpoint, save_final
    from vqaserve.train.data import load_jsonl
    from vqaserve.train.precision import (
        choose_train_placement,
        load_model,
        make_accelerator,
        prepare_for_training,
        upcast_trainable,
    )

    _check(cfg)
    placement = choose_train_placement(cfg.device, cfg.dtype, lora=cfg.lora, load_in_4bit=cfg.load_in_4bit,
                                       parameters=_base_parameters(cfg))
    records = [r for path in cfg.data for r in load_jsonl(path, cfg.skip_bad_lines, warn=log)]
    mix = parse_mix(cfg.synthetic)
    if not records and not mix:
        raise ConfigError("no training data: give DATA.jsonl files and/or --synthetic SPLIT:WEIGHT")
    accelerator = make_accelerator(placement, cfg.grad_accum)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    say = log if main else (lambda _msg: None)
    if world > 1:  # every process says it runs, and on which data
        log(f"process {rank} of {world} on {accelerator.device}: data seed {cfg.seed + rank}")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, recipe = _prepare_model_dir(cfg, say, build=main)
    accelerator.wait_for_everyone()  # the main process builds a recipe's model; the others read it
    processor = AutoProcessor.from_pretrained(model_dir)
    model = load_model(model_dir, placement, lora=cfg.lora, device=accelerator.device)
    fast_patch_embed(model)
    model = prepare_for_training(model, gradient_checkpointing=cfg.gradient_checkpointing, lora=cfg.lora,
                                 quantized=placement.load_in_4bit)
    if cfg.lora:
        model = _adapt(model, processor, cfg, records, mix, say)
        upcast_trainable(model)
    core = model.get_base_model() if cfg.lora else model  # LoRA layers are injected in place
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainable)
    say(f"parameters: {n_total:,} total, {n_train:,} trainable ({100 * n_train / n_total:.2f}%)")
    say(f"training on {placement.device} x{world}, computing in {placement.dtype}"
        + (" on a 4-bit base" if placement.load_in_4bit else "")
        + (", gradient checkpointing" if cfg.gradient_checkpointing else "")
        + f"; {cfg.batch_size} x {cfg.grad_accum} x {world} pictures a step")
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.98))
    ckpt_dir = out / "checkpoint"
    progress = load_checkpoint(ckpt_dir, model, opt, cfg.grad_accum, say) if cfg.resume else Progress()
    if world > 1:
        torch.manual_seed(cfg.seed + rank)  # dropout masks differ between processes, as their data does
    # The model is on its device already (load_model); Accelerate wraps it (DDP) and the optimizer.
    module, opt = accelerator.prepare(loop.AnswerLoss(core), opt, device_placement=[False, False])
    budget = serving_budget(processor)
    prefetch = Prefetcher((model_dir, budget, records, mix, cfg.data_weight, cfg.batch_size, cfg.max_turns,
                           cfg.seed + rank, cfg.mask_curriculum_steps, cfg.grad_accum), cfg.workers,
                          progress.batches)
    module.train()
    started = time.perf_counter()
    ema: float | None = None
    losses: list[float] = []
    step, start_step = progress.step, progress.step
    stop_at = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    pictures = cfg.batch_size * cfg.grad_accum * world
    bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc="train", dynamic_ncols=True,
               mininterval=2.0, file=sys.stderr, disable=not main)

    def elapsed() -> float:
        return progress.elapsed + time.perf_counter() - started

    try:
        while step < stop_at:
            fraction = step / cfg.steps
            if cfg.time_budget_min > 0:
                fraction = max(fraction, elapsed() / (cfg.time_budget_min * 60))
                if world > 1:  # the processes' clocks differ a little; they must stop at the same step
                    fraction = float(accelerator.gather(torch.tensor([fraction], device=accelerator.device)).max())
                if fraction >= 1.0:
                    say(f"time budget of {cfg.time_budget_min} min reached at step {step}")
                    break
            lr = _lr(cfg, step, fraction)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            value = loop.optimizer_step(accelerator, module, opt, [prefetch.get() for _ in range(cfg.grad_accum)])
            if world > 1:
                value = float(accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean"))
            step += 1
            losses.append(value)
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            if step % 10 == 0 or step == cfg.steps:
                progress.curve.append([step, round(ema, 4)])
            rate = (step - start_step) * pictures / max(1e-6, time.perf_counter() - started)
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}", samples_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_checkpoint(ckpt_dir, model, opt, _at(progress, step, cfg, elapsed()))
    finally:
        bar.close()
        prefetch.close()
    duration = elapsed()
    stopped = bool(cfg.stop_after) and step == cfg.stop_after < cfg.steps
    if stopped and main:  # --resume finishes the schedule from here
        save_checkpoint(ckpt_dir, model, opt, _at(progress, step, cfg, duration))
    info: dict[str, Any] = {
        "command": cfg.command, "mode": "lora" if cfg.lora else "full", "recipe": cfg.recipe,
        "base_model": None if cfg.recipe else cfg.model, "seed": cfg.seed, "versions": _versions(),
        "steps": step, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "processes": world,
        "samples_seen": step * pictures, "duration_s": round(duration, 1),
        "final_loss": round(ema or float("nan"), 4),
        "placement": {"device": placement.device, "dtype": placement.dtype,
                      "load_in_4bit": placement.load_in_4bit,
                      "gradient_checkpointing": cfg.gradient_checkpointing},
        "pixel_budget": {"min_pixels": budget[0], "max_pixels": budget[1]},
        "params_total": n_total, "params_trainable": n_train, "data": cfg.data,
        "synthetic": cfg.synthetic, "config": asdict(cfg), "loss_curve": progress.curve,
        "machine": {"cpus": os.cpu_count(), "threads": cfg.threads, "platform": platform.platform()},
        "peak_memory": _peak_memory(placement.device),
    }
    if stopped:
        info["stopped_after"] = f"step {step} of {cfg.steps} (--stop-after); --resume continues the schedule"
    if recipe is not None:
        info["architecture"] = recipe["architecture"]
    accelerator.wait_for_everyone()
    if main:
        save_final(model, processor, out, cfg.lora, cfg.model, info)
        if ckpt_dir.is_dir() and not stopped:
            shutil.rmtree(ckpt_dir)
        log(f"trained {step} steps in {duration / 60:.1f} min, final loss {info['final_loss']}; wrote {out}")
        if cfg.lora:
            for line in info["vllm"]["findings"]:
                log(line)
            log(f"to serve it with vLLM: vllm serve MODEL {' '.join(info['vllm']['serve_flags'])} "
                f"--lora-modules NAME={out}  (check: vqa adapter check {out} --for vllm)")
    accelerator.wait_for_everyone()
    return TrainResult(str(out), step, float(info["final_loss"]), duration, info, losses, model)


def _peak_memory(device: str) -> dict[str, int]:
    """The main process's peak so far: resident set (model loading included) and, on CUDA, the
    allocator's peak, so a run's train.json can be held against `vqa doctor --train`."""
    import resource

    import torch

    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = {"cpu_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit}
    if device == "cuda":
        peak["cuda_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak


def _check(cfg: TrainConfig) -> None:
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ConfigError("--steps and --batch-size must be at least 1")
    if cfg.grad_accum < 1:
        raise ConfigError("--grad-accum must be at least 1 (1: no accumulation)")
    if cfg.stop_after < 0:
        raise ConfigError("--stop-after must be >= 0 (0: run all --steps)")
    if cfg.vision_lr_scale <= 0:
        raise ConfigError("--vision-lr-scale must be > 0")
    if cfg.mask_curriculum_steps < 0:
        raise ConfigError("--mask-curriculum-steps must be >= 0 (0 turns the curriculum off)")


def _at(progress: Any, step: int, cfg: TrainConfig, elapsed: float) -> Any:
    """The run's progress at the end of optimizer step `step` (a checkpoint's content)."""
    from vqaserve.train.checkpoint import Progress

    return Progress(step, step * cfg.grad_accum, elapsed, progress.curve)


def _adapt(model: Any, processor: Any, cfg: TrainConfig, records: list[Any], mix: list[tuple[str, float]],
           log: Callable[[str], None]) -> Any:
    from vqaserve.train.lora import token_ids, wrap_lora
    from vqaserve.train.synthetic import answers as synthetic_answers

    answers = ([r.answer for r in records] + [a for split, _ in mix for a in synthetic_answers(split)]
               if cfg.lora_new_words else [])
    new_ids = token_ids(processor.tokenizer, cfg.lora_new_words, answers)
    if new_ids:
        log(f"new words: training the embedding rows of {len(new_ids)} tokens")
    return wrap_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, new_ids)


def _param_groups(model: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay on matrices only; the vision tower at its own LR scale. With Adam, a from-scratch
    ViT (0.02 init) at the LM's LR grows its output features tenfold in a few dozen steps, which
    shrinks the gradient reaching it through the LM's norms and leaves the LM answering blind."""
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((".visual." in f".{name}", p.ndim >= 2), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if matrix else 0.0,
             "lr_scale": cfg.vision_lr_scale if vision else 1.0}
            for (vision, matrix), ps in groups.items()]


def _lr(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


