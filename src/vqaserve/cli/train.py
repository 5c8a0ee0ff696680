"""`vqa train`: full or LoRA fine-tuning of a Qwen3-VL-architecture model on jsonl or synthetic data."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from vqaserve.errors import ConfigError

# Flags that a recipe's "train" block may fill when the user leaves them out.
_RECIPE_KEYS = ("synthetic", "steps", "batch_size", "lr", "warmup", "weight_decay", "max_turns",
                "time_budget_min", "seed", "vision_lr_scale", "mask_curriculum_steps")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune a model (full or LoRA) on jsonl or synthetic data",
        description="Supervised fine-tuning, loss on answer tokens only. Examples:\n"
                    "  vqa train --recipe shop-toy --out models/shop-toy\n"
                    "  vqa train data.jsonl --model shop-toy --lora --out my-adapter\n"
                    "  vqa train --model shop-toy --lora --synthetic adapter:0.7,train:0.3 --out sunglasses\n"
                    "  vqa train data.jsonl --model ./Qwen3-VL-8B-Instruct --lora --dtype bfloat16 \\\n"
                    "      --gradient-checkpointing --grad-accum 8 --batch-size 2 --out my-adapter   # one 24 GB GPU\n"
                    "  accelerate launch -m vqaserve train ...   # one process per GPU (docs/train.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="*", help="jsonl files: {image, question, answer[, type, lang]} per line")
    p.add_argument("--out", required=True, help="output directory (HF model dir, or PEFT adapter dir)")
    p.add_argument("--model", help="model dir or bundled name to start from / adapt")
    p.add_argument("--recipe", help="build a fresh model from a named recipe (e.g. shop-toy, tiny)")
    p.add_argument("--synthetic", help="on-the-fly catalogue data, SPLIT:WEIGHT[,SPLIT:WEIGHT]")
    p.add_argument("--data-weight", type=float, default=1.0, help="weight of the jsonl data in the mix")
    p.add_argument("--steps", type=int, help="optimizer steps (the LR schedule's length)")
    p.add_argument("--batch-size", type=int, help="pictures a micro-batch (per process)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches an optimizer step: the effective batch is batch-size x this")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this step but keep the --steps schedule; --resume continues it")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="warm-up steps")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--vision-lr-scale", type=float,
                   help="vision tower LR = --lr x this (a from-scratch ViT needs a smaller step)")
    p.add_argument("--max-turns", type=int, help="questions per synthetic picture (shared vision work)")
    p.add_argument("--time-budget-min", type=float, help="anneal and stop within this many minutes")
    p.add_argument("--mask-curriculum-steps", type=int,
                   help="blend synthetic pictures from white-on-black silhouettes to real over this many "
                        "steps, asking only category/count on them (default 0: off; the shop-toy recipe: 450)")
    p.add_argument("--seed", type=int)
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of all weights")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names")
    p.add_argument("--lora-new-words", default="",
                   help="comma-separated words the adapter must learn to answer with (their embedding "
                        "rows are trained too), e.g. sunglasses,太阳镜")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="where to train (auto: where the engine would run the model)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="compute dtype; trained weights and optimizer state stay float32 (auto: bf16 on a "
                        "GPU, float32 for a full fine-tune on CPU)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="keep only each layer's input and recompute the rest in backward: far less "
                        "activation memory for about one more forward pass of time")
    p.add_argument("--load-in-4bit", action="store_true",
                   help="QLoRA: a frozen 4-bit (nf4) base under --lora; CUDA and bitsandbytes only")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip bad dataset lines (reported) instead of stopping before training")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--workers", type=int, default=1, help="background batch-preparation processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.workers > 0:
        # Set before torch loads OpenMP. Its threads otherwise spin while they wait, taking the
        # cores from the batch-making process: on 2 cores a shop-toy step took 0.84 s spinning and
        # 0.65-0.70 s sleeping (docs/train.md). A user's own setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vqaserve.train.recipes import get_recipe
    from vqaserve.train.trainer import TrainConfig, train

    if args.recipe and args.model:
        raise ConfigError("give either --recipe (a fresh model) or --model (start from weights), not both")
    values = {k: getattr(args, k) for k in _RECIPE_KEYS}
    defaults = get_recipe(args.recipe)["train"] if args.recipe else {}
    if args.recipe and args.data and not args.synthetic:
        defaults = {**defaults, "synthetic": None}  # the user's data replaces the recipe's synthetic mix
    filled = {k: (v if v is not None else defaults.get(k)) for k, v in values.items()}
    cfg = TrainConfig(
        out=args.out, model=args.model, recipe=args.recipe, data=list(args.data),
        data_weight=args.data_weight, lora=args.lora, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=args.lora_targets, lora_new_words=args.lora_new_words,
        checkpoint_every=args.checkpoint_every, resume=args.resume, skip_bad_lines=args.skip_bad_lines,
        threads=args.threads, workers=args.workers, grad_accum=args.grad_accum, stop_after=args.stop_after,
        device=args.device, dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing,
        load_in_4bit=args.load_in_4bit,
        command="vqa " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        **{k: v for k, v in filled.items() if v is not None})
    if cfg.lora and cfg.recipe:
        raise ConfigError("--lora adapts an existing model: use --model, not --recipe")
    train(cfg, log=lambda msg: print(msg, file=sys.stderr))
    return 0
