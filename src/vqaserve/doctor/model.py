"""The doctor's model checks: where the engine would put the model, its size, and whether the asked
workload (serving, or a LoRA training step) fits in the memory that is free."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqaserve.doctor import memory
from vqaserve.doctor import report as checks
from vqaserve.doctor.report import Report, size
from vqaserve.engines.placement import choose_placement, stored_dtype, stored_parameters
from vqaserve.errors import ConfigError
from vqaserve.settings import Settings


@dataclass(frozen=True)
class Workload:
    """What to forecast: None fields take the settings' values (VQA_BATCH_MAX_SIZE, the pixel budget
    intersected with the model's, VQA_MAX_NEW_TOKENS); `train` asks for a LoRA step instead."""

    batch_size: int | None = None
    max_pixels: int | None = None
    max_new_tokens: int | None = None
    train: bool = False
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False
    train_batch_size: int = 16  # the trainer's default --batch-size


def count_parameters(source: str, trust_remote_code: bool = False) -> tuple[int, dict[str, Any]]:
    """Parameters and config of a model: from a local directory's safetensors headers when it has
    them, else built on the meta device from its config (no memory, no weights)."""
    config_path = Path(source) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        stored = stored_parameters(source)
        if stored:
            return stored, config
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    auto = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(auto, trust_remote_code=trust_remote_code)
    return int(sum(p.numel() for p in model.parameters())), auto.to_dict()


def _available(report: Report, device: str) -> int:
    if device.startswith("cuda"):
        pool = report.devices[1:] if device == "cuda" else [
            d for d in report.devices if str(d["index"]) == device.partition(":")[2]]
        return sum(int(d["free_bytes"]) for d in pool)
    return int(report.devices[0]["free_bytes"]) if report.devices else 0


def _model_budget(source: str) -> int | None:
    """The model's own largest pixel budget (preprocessor_config.json size.longest_edge), if declared."""
    path = Path(source) / "preprocessor_config.json"
    try:
        return int(json.loads(path.read_text())["size"]["longest_edge"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forecast(shape: memory.Shape, dtype: str, device: str, settings: Settings, work: Workload,
             model_max_pixels: int | None, stored: str | None = None) -> memory.Forecast:
    pixels = work.max_pixels or min(settings.images.max_pixels, model_max_pixels or settings.images.max_pixels)
    if work.train:
        return memory.train_forecast(
            shape, dtype, batch=work.batch_size or work.train_batch_size, max_pixels=pixels,
            lora_rank=work.lora_r, lora_targets=work.lora_targets, device=device,
            gradient_checkpointing=work.gradient_checkpointing, load_in_4bit=work.load_in_4bit)
    asked = work.batch_size or settings.batching.max_size
    # the batcher closes a batch at VQA_BATCH_MAX_VISUAL_TOKENS (16384: 12 pictures of 1280 tokens)
    per_request = max(1, pixels // (shape.pixels_per_patch * shape.patches_per_token))
    batch = min(asked, max(1, settings.batching.max_visual_tokens // per_request))
    result = memory.serve_forecast(
        shape, dtype, batch=batch, max_pixels=pixels,
        max_new_tokens=work.max_new_tokens or settings.generation.max_new_tokens,
        vision_memo_bytes=settings.llm.vision_memo_mb * 2**20, device=device, mapped=stored == dtype)
    result.workload["asked_batch"] = asked
    return result


def check_model(report: Report, settings: Settings, work: Workload) -> None:
    from vqaserve.engines.model_source import resolve_model_source
    from vqaserve.modeling.standins import standin_notice

    name = settings.llm.model
    report.model = {"name": name}
    if settings.llm.trust_remote_code:
        report.warn("trust_remote_code is on: the model repository's own code will run",
                    "unset VQA_TRUST_REMOTE_CODE unless you audited that code (Qwen3-VL does not need it)")
    try:
        source = resolve_model_source(name)
    except ConfigError as exc:
        report.problem(exc.message, "pass --model DIR_OR_HUB_ID (or set VQA_MODEL)")
        source = None
    parameters: int | None = None
    config: dict[str, Any] = {}
    if source is not None:
        report.model["source"] = "local directory" if Path(source).is_dir() else "hub id"
        try:
            parameters, config = count_parameters(source, settings.llm.trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - any failure here is a finding, not a crash
            report.problem(f"cannot read the config of model {name!r} ({type(exc).__name__})",
                           "check the directory has config.json, or that the hub is reachable "
                           "(a local directory needs no network)")
    try:
        placement = choose_placement(settings.llm.device, settings.llm.dtype, parameters)
    except ConfigError as exc:
        report.problem(exc.message, "set VQA_DEVICE / VQA_DTYPE to auto, or to what this machine has")
        return
    report.placement = {"device": placement.device, "dtype": placement.dtype,
                        "attn_implementation": placement.attn_implementation, "reason": placement.reason}
    if source is None or parameters is None:
        return
    report.model["parameters"] = parameters
    notice = standin_notice(source) if Path(source).is_dir() else None
    report.model["standin"] = notice is not None
    if notice:
        report.warn(notice, "measure memory and speed with it; answer users with real weights")
    shape = memory.shape_from_config(config, parameters)
    local = Path(source).is_dir()
    result = forecast(shape, placement.dtype, placement.device, settings, work,
                      _model_budget(source) if local else None, stored_dtype(source) if local else None)
    available = _available(report, placement.device)
    report.forecast = {**result.to_dict(), "available_bytes": available, "fits": result.total <= available}
    gpu = placement.device.startswith("cuda")
    if result.total > available:
        what = "this training step" if work.train else "this workload"
        fix = ("lower --batch-size or --max-pixels, add --gradient-checkpointing or --load-in-4bit (CUDA)"
               if work.train else "lower VQA_BATCH_MAX_SIZE or VQA_MAX_PIXELS, use a smaller model")
        report.problem(f"{what} needs ~{size(result.total)} on {placement.device} but "
                       f"{size(available)} are free", fix + ("" if gpu else ", or run on a GPU"))
    if not gpu and parameters > 3_000_000_000:
        report.warn(f"a {parameters / 1e9:.1f}B-parameter model on CPU answers slowly (seconds per token)",
                    "run on a GPU, or use the upstream engine (VQA_ENGINE=upstream) against vLLM")
    if not gpu:
        report.model["note"] = ("weights are memory-mapped from safetensors: under memory pressure the OS "
                                "evicts and re-reads them, so RSS stays below the forecast and answers slow "
                                "down many times")


def diagnose(settings: Settings, work: Workload | None = None) -> Report:
    report = Report(python=platform.python_version(), packages=checks.package_versions())
    checks.check_versions(report)
    checks.check_devices(report)
    check_model(report, settings, work or Workload())
    checks.check_adapters(report, settings)
    return report
