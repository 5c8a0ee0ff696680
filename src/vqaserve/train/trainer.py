"""Supervised fine-tuning of Qwen3-VL-architecture models: full or LoRA (PEFT), on jsonl or synthetic data.

The loop is deliberately plain: AdamW, linear warm-up then cosine decay, gradient clipping, one
background process preparing batches. The schedule follows max(step progress, time progress) when a
time budget is set, so a run on a busy machine still anneals and finishes on time.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vqaserve.errors import ConfigError
from vqaserve.train import adapter_format
from vqaserve.train.batches import Prefetcher


@dataclass
class TrainConfig:
    out: str
    model: str | None = None  # model dir to start from (full) or to adapt (LoRA)
    recipe: str | None = None  # build a fresh model from a named recipe instead
    data: list[str] = field(default_factory=list)  # jsonl files
    synthetic: str | None = None  # "SPLIT:WEIGHT,..." on-the-fly catalogue data
    data_weight: float = 1.0  # weight of the jsonl data next to the synthetic splits
    steps: int = 1000
    batch_size: int = 16
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


def _prepare_model_dir(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[str, dict[str, Any] | None]:
    """Where the starting weights come from: a recipe (built fresh into OUT) or a model dir."""
    from vqaserve.settings import resolve_model_path

    if cfg.recipe:
        from vqaserve.modeling.builder import build_model_dir
        from vqaserve.train.recipes import get_recipe

        recipe = get_recipe(cfg.recipe)
        if not (cfg.resume and (Path(cfg.out) / "checkpoint").is_dir()):
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


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqaserve.train.data import load_jsonl
    from vqaserve.train.synthetic import answers as synthetic_answers

    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ConfigError("--steps and --batch-size must be at least 1")
    if cfg.vision_lr_scale <= 0:
        raise ConfigError("--vision-lr-scale must be > 0")
    if cfg.mask_curriculum_steps < 0:
        raise ConfigError("--mask-curriculum-steps must be >= 0 (0 turns the curriculum off)")
    records = [r for path in cfg.data for r in load_jsonl(path, cfg.skip_bad_lines, warn=log)]
    mix = parse_mix(cfg.synthetic)
    if not records and not mix:
        raise ConfigError("no training data: give DATA.jsonl files and/or --synthetic SPLIT:WEIGHT")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, recipe = _prepare_model_dir(cfg, log)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    fast_patch_embed(model)
    if cfg.lora:
        answers = ([r.answer for r in records] + [a for split, _ in mix for a in synthetic_answers(split)]
                   if cfg.lora_new_words else [])
        new_ids = _token_ids(processor.tokenizer, cfg.lora_new_words, answers)
        if new_ids:
            log(f"new words: training the embedding rows of {len(new_ids)} tokens")
        model = _wrap_lora(model, cfg, new_ids)
    core = model.get_base_model() if cfg.lora else model  # type: ignore[operator]  # LoRA layers are injected in place
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainable)
    log(f"parameters: {n_total:,} total, {n_train:,} trainable ({100 * n_train / n_total:.2f}%)")
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.98))
    ckpt_dir = out / "checkpoint"
    start_step, elapsed_before = 0, 0.0
    curve: list[Any] = []
    if cfg.resume:
        start_step, elapsed_before, curve = _load_checkpoint(ckpt_dir, model, opt, log)
    budget = serving_budget(processor)
    prefetch = Prefetcher((model_dir, budget, records, mix, cfg.data_weight, cfg.batch_size,
                           cfg.max_turns, cfg.seed, cfg.mask_curriculum_steps), cfg.workers, start_step)
    model.train()
    started = time.perf_counter()
    ema: float | None = None
    losses: list[float] = []
    step = start_step
    bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc="train", dynamic_ncols=True,
               mininterval=2.0, file=sys.stderr)
    try:
        while step < cfg.steps:
            elapsed = elapsed_before + time.perf_counter() - started
            progress = step / cfg.steps
            if cfg.time_budget_min > 0:
                progress = max(progress, elapsed / (cfg.time_budget_min * 60))
                if progress >= 1.0:
                    log(f"time budget of {cfg.time_budget_min} min reached at step {step}")
                    break
            lr = _lr(cfg, step, progress)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            batch = prefetch.get()
            loss = answer_loss(core, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            losses.append(value)
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            if step % 10 == 0 or step == cfg.steps:
                curve.append([step, round(ema, 4)])
            rate = (step - start_step) * cfg.batch_size / max(1e-6, time.perf_counter() - started)
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}", samples_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_checkpoint(ckpt_dir, model, opt, step,
                                 elapsed_before + time.perf_counter() - started, curve)
    finally:
        bar.close()
        prefetch.close()
    duration = elapsed_before + time.perf_counter() - started
    info: dict[str, Any] = {
        "command": cfg.command, "mode": "lora" if cfg.lora else "full", "recipe": cfg.recipe,
        "base_model": None if cfg.recipe else cfg.model, "seed": cfg.seed, "versions": _versions(),
        "steps": step, "batch_size": cfg.batch_size, "samples_seen": step * cfg.batch_size,
        "duration_s": round(duration, 1), "final_loss": round(ema or float("nan"), 4),
        "pixel_budget": {"min_pixels": budget[0], "max_pixels": budget[1]},
        "params_total": n_total, "params_trainable": n_train, "data": cfg.data,
        "synthetic": cfg.synthetic, "config": asdict(cfg), "loss_curve": curve,
        "machine": {"cpus": os.cpu_count(), "threads": cfg.threads, "platform": platform.platform()},
    }
    if recipe is not None:
        info["architecture"] = recipe["architecture"]
    _save_final(model, processor, out, cfg, info)
    if ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
    log(f"trained {step} steps in {duration / 60:.1f} min, final loss {info['final_loss']}; wrote {out}")
    if cfg.lora:
        for line in info["vllm"]["findings"]:
            log(line)
        log(f"to serve it with vLLM: vllm serve MODEL {' '.join(info['vllm']['serve_flags'])} "
            f"--lora-modules NAME={out}  (check: vqa adapter check {out} --for vllm)")
    return TrainResult(str(out), step, float(info["final_loss"]), duration, info, losses, model)


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Next-token cross-entropy on answer positions only; the vocabulary projection runs on those
    few positions instead of the whole sequence (most of a VQA sequence is prompt and image)."""
    import torch

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


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


def _wrap_lora(model: Any, cfg: TrainConfig, new_token_ids: list[int]) -> Any:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    if not targets:
        raise ConfigError("--lora-targets must name at least one module, e.g. q_proj,v_proj")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"--lora-targets: no module named {', '.join(missing)} in this model")
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        **adapter_format.training_lora_kwargs(targets, new_token_ids))
    wrapped = get_peft_model(model, config)
    lora_modules = [name.removeprefix("base_model.model.") for name, module in wrapped.named_modules()
                    if isinstance(module, LoraLayer)]
    problems = adapter_format.module_findings(lora_modules)
    if problems:  # refuse before training an adapter that vLLM would refuse or half-ignore
        raise ConfigError(f"--lora-targets: {len(problems)} module(s) vLLM cannot serve LoRA on, e.g. "
                          f"{problems[0].field}: {problems[0].message}; fix: {problems[0].fix}")
    return wrapped


def _token_ids(tokenizer: Any, words: str, answers: Sequence[str] = ()) -> list[int]:
    """Token ids of comma-separated words: alone (with and without a leading space: answers start a
    turn) and as the training answers spell them. A BPE merges a word with its neighbours
    ("一件红色条纹太阳镜" -> "一件" "红" "色条纹太阳镜"), and a merged token the base never produced
    keeps its random embedding unless its row trains too: the first sunglasses adapter, trained on
    the word alone, answered 0% of Chinese "describe" questions."""
    wanted = [w for w in (w.strip() for w in words.split(",")) if w]
    ids: set[int] = set()
    for word in wanted:
        for variant in (word, " " + word):
            ids.update(tokenizer.encode(variant, add_special_tokens=False))
    for answer in set(answers):
        spans = [m.span() for w in wanted for m in re.finditer(re.escape(w), answer)]
        if not spans:
            continue
        enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if any(start < hi and lo < end for lo, hi in spans):
                ids.add(tok)
    return sorted(ids)


def _save_checkpoint(path: Path, model: Any, opt: Any, step: int, elapsed: float, curve: list[Any]) -> None:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    tmp = path / "state.pt.tmp"
    torch.save({"model": state, "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                "curve": curve}, tmp)
    tmp.replace(path / "state.pt")  # atomic: a crash mid-save keeps the previous checkpoint


def _load_checkpoint(path: Path, model: Any, opt: Any,
                     log: Callable[[str], None]) -> tuple[int, float, list[Any]]:
    import torch

    file = path / "state.pt"
    if not file.is_file():
        log("no checkpoint to resume from; starting at step 0")
        return 0, 0.0, []
    state = torch.load(file, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    log(f"resumed from step {state['step']}")
    return int(state["step"]), float(state["elapsed"]), list(state.get("curve", []))


def _save_final(model: Any, processor: Any, out: Path, cfg: TrainConfig, info: dict[str, Any]) -> None:
    model.eval()
    if cfg.lora:
        model.save_pretrained(str(out))
        adapter_format.save_for_serving(model, out)
        _record_adapter_base(out, cfg.model)
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
