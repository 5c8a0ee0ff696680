"""The GPU check: the Qwen3-VL-8B stand-in on one CUDA device, measured, as one JSON record.

    python -m vqaserve.bench.gpu_check --out gpu-check.json          (scripts/gpu-check.sh runs it)

Builds the stand-in (`vqa model random qwen3-vl-8b`), then measures: load time and memory; answer
latency at batch 1 and answers/s at batch 16 with 1,280-visual-token pictures (the engine's batched
call: processor with left padding, greedy generate); one LoRA step's time and peak memory with and
without gradient checkpointing (r=8 on q_proj/v_proj, float32 adapter and AdamW, the trainer's
answer-only loss); `vqa train` itself with the trainer's CUDA flags; and `vqa doctor`'s forecast of
each workload next to the measured CUDA peak (torch.cuda.max_memory_allocated: the CUDA context is
outside it, so it is compared with the forecast less its framework term).

It needs torch, transformers and peft only (the stand-in builder and the forecast are plain modules);
`vqa train` needs the service's own dependencies too. --dry-run does the same on the CPU with a
shrunk 2B stand-in and small pictures in seconds, for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vqaserve.doctor import memory
from vqaserve.modeling.standins import ARCHITECTURES, SHRUNK_2B, build_standin

FULL = (1024, 1280)  # 1,310,720 pixels: 1280 visual tokens



def train_command(data: str, model: str, out: str, *, device: str, steps: int, batch: int,
                  checkpointing: bool, load_in_4bit: bool = False) -> list[str]:
    """`vqa train` with the trainer's flags for a GPU run (the same on CPU for --dry-run)."""
    cmd = [sys.executable, "-m", "vqaserve", "train", data, "--model", model, "--lora", "--device", device,
           "--dtype", "bfloat16", "--grad-accum", "1", "--steps", str(steps), "--batch-size", str(batch),
           "--out", out]
    return cmd + (["--gradient-checkpointing"] if checkpointing else []) + (["--load-in-4bit"] if load_in_4bit else [])


def _pictures(n: int, size: tuple[int, int], seed: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")) for _ in range(n)]


class Device:
    """Timing and peak memory on CUDA (or, for --dry-run, the CPU's RSS high-water mark)."""

    def __init__(self, name: str) -> None:
        import torch

        self.name, self.torch = name, torch
        self.cuda = name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated())
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
        return 0


def _forecast_vs(forecast: memory.Forecast, measured: int, cuda: bool) -> dict[str, Any]:
    # CUDA: max_memory_allocated excludes the CUDA context, the forecast's framework term there
    comparable = forecast.total - (forecast.terms["framework"] if cuda else 0)
    return {"forecast": forecast.to_dict(), "forecast_comparable_bytes": comparable, "measured_bytes": measured,
            "error": round((comparable - measured) / measured, 3) if measured else None}


def measure_answers(model: Any, processor: Any, dev: Device, shape: memory.Shape, size: tuple[int, int],
                    batch: int, new_tokens: int, runs: int) -> dict[str, Any]:
    """Greedy answers to `batch` pictures at once, as the engine batches them; seconds per run."""
    torch = dev.torch
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this product?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    processor.tokenizer.padding_side = "left"
    times, tokens = [], 0
    dev.reset()
    for run in range(runs + 1):  # run 0 warms up kernels and allocator
        inputs = processor(text=[prompt] * batch, images=_pictures(batch, size, seed=run), return_tensors="pt",
                           padding=True).to(dev.name)
        dev.sync()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        dev.sync()
        if run:
            times.append(time.perf_counter() - started)
            tokens = int(out.shape[1] - inputs["input_ids"].shape[1])
    peak = dev.peak()
    prompt_tokens = int(inputs["input_ids"].shape[1])
    forecast = memory.serve_forecast(shape, "bfloat16", batch=batch, max_pixels=size[0] * size[1],
                                     max_new_tokens=new_tokens, device=dev.name, vision_memo_bytes=0)
    seconds = sorted(times)[len(times) // 2]
    return {"batch": batch, "picture": list(size), "prompt_tokens": prompt_tokens, "new_tokens": tokens,
            "seconds_per_batch": [round(t, 3) for t in times], "median_seconds": round(seconds, 3),
            "answers_per_second": round(batch / seconds, 3), **_forecast_vs(forecast, peak, dev.cuda)}


def measure_lora(model: Any, processor: Any, dev: Device, shape: memory.Shape, size: tuple[int, int],
                 batch: int, steps: int, checkpointing: bool) -> dict[str, Any]:
    """`steps` LoRA steps (r=8, q_proj/v_proj) on a peft-wrapped model; seconds per step, peak memory."""
    from vqaserve.train.loop import answer_loss

    torch = dev.torch
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    else:
        model.gradient_checkpointing_disable()
    answer = " A cotton jacket with two pockets, for casual wear in spring.<|im_end|>"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this product?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True) + answer
    enc = processor(text=[text] * batch, images=_pictures(batch, size, seed=9), return_tensors="pt",
                    padding=True).to(dev.name)
    labels = enc["input_ids"].clone()
    labels[:, :-len(processor.tokenizer(answer)["input_ids"])] = -100
    enc["labels"] = labels
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    model.train()
    dev.reset()
    times = []
    for _ in range(steps):
        dev.sync()
        started = time.perf_counter()
        loss = answer_loss(model.base_model.model, dict(enc))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dev.sync()
        times.append(time.perf_counter() - started)
    peak = dev.peak()
    model.eval()
    forecast = memory.train_forecast(shape, "bfloat16", batch=batch, max_pixels=size[0] * size[1],
                                     gradient_checkpointing=checkpointing, device=dev.name)
    return {"batch": batch, "tokens": int(enc["input_ids"].numel()), "gradient_checkpointing": checkpointing,
            "seconds_per_step": [round(t, 3) for t in times], "loss": round(float(loss.item()), 4),
            **_forecast_vs(forecast, peak, dev.cuda)}


def run_trainer_cli(model_dir: Path, work: Path, dev: Device, size: tuple[int, int], batch: int, steps: int,
                    checkpointing: bool, load_in_4bit: bool = False) -> dict[str, Any]:
    """`vqa train` as a user runs it; its wall time and exit status (its own record is its train.json)."""
    data = work / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    with (data / "data.jsonl").open("w") as f:
        for i, picture in enumerate(_pictures(max(4, batch), size, seed=20)):
            picture.save(data / "images" / f"{i}.png")
            f.write(json.dumps({"image": f"images/{i}.png", "question": "What is this product?",
                                "answer": "A cotton jacket with two pockets."}) + "\n")
    out = work / f"adapter-{'gc' if checkpointing else 'nogc'}{'-4bit' if load_in_4bit else ''}"
    cmd = train_command(str(data / "data.jsonl"), str(model_dir), str(out), device=dev.name, steps=steps,
                        batch=batch, checkpointing=checkpointing, load_in_4bit=load_in_4bit)
    started = time.perf_counter()
    # the vqaserve this check runs from, whatever the interpreter's own install points at
    here = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    result: dict[str, Any] = {"command": " ".join(["vqa", *cmd[3:]]), "returncode": proc.returncode,
                              "seconds": round(time.perf_counter() - started, 1)}
    if proc.returncode:
        result["stderr_tail"] = proc.stderr[-1500:]
    elif (out / "train.json").is_file():
        result["train_json"] = json.loads((out / "train.json").read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqaserve.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the JSON record to write")
    p.add_argument("--work", default="/tmp/gpu-check", help="where the stand-in and scratch files go")
    p.add_argument("--arch", default="qwen3-vl-8b", choices=list(ARCHITECTURES))
    p.add_argument("--dry-run", action="store_true", help="CPU, shrunk 2B, small pictures: for the tests")
    p.add_argument("--no-trainer-cli", action="store_true", help="skip the `vqa train` runs")
    args = p.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: CUDA is not available (torch.cuda.is_available() is False): this check needs an "
              "NVIDIA GPU; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    work = Path(args.work)
    arch = SHRUNK_2B if args.dry_run else ARCHITECTURES[args.arch]
    dev = Device("cpu" if args.dry_run else "cuda")
    size, big = ((64, 64), 2) if args.dry_run else (FULL, 16)
    record: dict[str, Any] = {"check": "gpu-check", "arch": arch.name, "dry_run": args.dry_run,
                              "started": time.strftime("%F %T"), "python": platform.python_version(),
                              "torch": torch.__version__,
                              "device": torch.cuda.get_device_name(0) if dev.cuda else "cpu"}
    model_dir = work / arch.name
    check_started = started = time.perf_counter()
    if not (model_dir / "standin.json").is_file():
        build_standin(model_dir, arch, command=f"gpu-check: build_standin({arch.name})")
    record["build_seconds"] = round(time.perf_counter() - started, 1)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dev.reset()
    started = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model_dir)
    model: Any = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=dev.name)
    dev.sync()
    record["load"] = {"seconds": round(time.perf_counter() - started, 1), "peak_bytes": dev.peak()}
    processor.image_processor.size = {"shortest_edge": 256 * 32 * 32 if not args.dry_run else 32 * 32,
                                      "longest_edge": size[0] * size[1]}
    shape = memory.shape_from_config(json.loads((model_dir / "config.json").read_text()),
                                     sum(p.numel() for p in model.parameters()))
    runs = 1 if args.dry_run else 3
    record["answers_batch_1"] = measure_answers(model, processor, dev, shape, size, 1, 32, runs=runs)
    record["answers_batch_16"] = measure_answers(model, processor, dev, shape, size, big, 32, runs=1)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "v_proj"]))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    steps = 1 if args.dry_run else 3
    record["lora_no_checkpointing"] = measure_lora(model, processor, dev, shape, size, 2, steps, checkpointing=False)
    record["lora_checkpointing"] = measure_lora(model, processor, dev, shape, size, 2, steps, checkpointing=True)
    del model
    if dev.cuda:
        torch.cuda.empty_cache()
    if not args.no_trainer_cli:
        record["vqa_train"] = [run_trainer_cli(model_dir, work, dev, size, 2, 2, checkpointing=gc)
                               for gc in (False, True)]
        if not args.dry_run:  # QLoRA needs bitsandbytes there: a failure is recorded, not fatal
            record["vqa_train_4bit"] = run_trainer_cli(model_dir, work, dev, size, 2, 2, True, load_in_4bit=True)
    record["seconds_total"] = round(time.perf_counter() - check_started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("arch", "device", "load", "seconds_total")}))
    failed = [r["command"] for r in record.get("vqa_train", []) if r["returncode"]]
    if failed:
        print(f"gpu-check: `vqa train` failed: {failed[0]} (see {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
