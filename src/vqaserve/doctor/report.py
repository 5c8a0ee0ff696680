"""The doctor's report: versions, devices and findings, rendered for people or as JSON.

The usual set-up pains are a CUDA/PyTorch mismatch, a GPU without bfloat16, and running out of
memory on the first load. Every problem comes with a one-line fix. The model checks (placement,
parameters, the memory forecast) are in doctor/model.py, the forecast's arithmetic in memory.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vqaserve.engines.placement import cpu_bf16_flags, flash_attn_available
from vqaserve.settings import Settings

PACKAGES = ["torch", "torchvision", "transformers", "peft", "tokenizers", "accelerate", "flash-attn"]
GIB = 1024**3


@dataclass
class Finding:
    level: str  # "problem" (will not work as configured) or "warning" (works, but worse)
    message: str
    fix: str


@dataclass
class Report:
    python: str
    packages: dict[str, str | None]
    torch_cuda_build: str | None = None
    cuda_available: bool = False
    devices: list[dict[str, Any]] = field(default_factory=list)
    bf16_supported: bool = False
    flash_attention: bool = False
    placement: dict[str, str] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    forecast: dict[str, Any] | None = None  # the memory forecast of the asked workload (memory.Forecast)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "problem" for f in self.findings)

    def problem(self, message: str, fix: str) -> None:
        self.findings.append(Finding("problem", message, fix))

    def warn(self, message: str, fix: str) -> None:
        self.findings.append(Finding("warning", message, fix))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _minor(version: str | None) -> tuple[int, int] | None:
    try:
        major, minor = (version or "").split("+")[0].split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def check_versions(report: Report) -> None:
    v = report.packages
    if v["torch"] is None:
        report.problem("torch is not installed", "pip install torch==2.14.1 torchvision==0.29.1")
        return
    if v["torchvision"] is None:
        report.problem("torchvision is not installed (Qwen's image processor needs it)",
                       "pip install torchvision==0.29.1")
    torch_v, tv_v = _minor(v["torch"]), _minor(v["torchvision"])
    # torchvision 0.N pairs with torch 2.(N-15): 0.29 <-> 2.14. A mismatch fails at import time.
    if torch_v and tv_v and torch_v[0] == 2 and tv_v[1] != torch_v[1] + 15:
        report.problem(f"torchvision {v['torchvision']} does not match torch {v['torch']}",
                       f"pip install torchvision==0.{torch_v[1] + 15}.* (or the pinned torch==2.14.1 "
                       "torchvision==0.29.1)")
    tf = _minor(v["transformers"])
    if tf is None:
        report.problem("transformers is not installed", "pip install 'transformers>=5.18,<6'")
    elif tf < (5, 18):  # Qwen3-VL came in 4.57; the vision memo needs 5.18's image-feature API
        report.problem(f"transformers {v['transformers']} is older than 5.18, which vqaserve needs",
                       "pip install -U 'transformers>=5.18,<6'")
    if v["peft"] is None:
        report.warn("peft is not installed: LoRA adapters cannot be served", "pip install peft")


def check_devices(report: Report) -> None:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is exactly what doctor reports
        report.problem(f"torch does not import ({type(exc).__name__}: {exc})",
                       "reinstall: pip install --force-reinstall torch==2.14.1 torchvision==0.29.1")
        return
    report.torch_cuda_build = torch.version.cuda
    try:
        report.cuda_available = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        report.cuda_available = False
    if report.cuda_available:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            props = torch.cuda.get_device_properties(i)
            report.devices.append({"index": i, "name": props.name, "free_bytes": int(free),
                                   "total_bytes": int(total), "capability": f"{props.major}.{props.minor}",
                                   "bf16": bool(torch.cuda.is_bf16_supported())})
        report.bf16_supported = all(d["bf16"] for d in report.devices)
        if not report.bf16_supported:
            report.warn("this GPU has no bfloat16: the engine uses float16 (rare overflows on big models)",
                        "nothing to do; VQA_DTYPE=float32 trades memory for range")
        report.flash_attention = flash_attn_available()
        if not report.flash_attention:
            report.warn("flash-attention is not installed: sdpa attention is used (slower, more memory)",
                        "pip install flash-attn --no-build-isolation (optional)")
    else:
        report.flash_attention = flash_attn_available()
        if report.torch_cuda_build:
            report.warn(f"torch is a CUDA {report.torch_cuda_build} build but no GPU is usable: "
                        "running on CPU", "check `nvidia-smi`, the driver version and CUDA_VISIBLE_DEVICES")
        elif shutil.which("nvidia-smi"):
            report.warn("an NVIDIA driver is present but torch is a CPU-only build",
                        "pip install torch==2.14.1 --index-url https://download.pytorch.org/whl/cu128")
    try:
        import psutil

        ram = psutil.virtual_memory()
        report.devices.insert(0, {"index": "cpu", "name": platform.processor() or platform.machine(),
                                  "free_bytes": int(ram.available), "total_bytes": int(ram.total),
                                  "bf16": bool(cpu_bf16_flags()), "bf16_flags": cpu_bf16_flags()})
    except ImportError:
        pass


def check_adapters(report: Report, settings: Settings) -> None:
    from vqaserve.settings import resolve_model_path

    for name, path in settings.llm.adapters.items():
        if not (Path(resolve_model_path(path)) / "adapter_config.json").is_file():
            report.problem(f"adapter {name!r} has no adapter_config.json at {path!r}",
                           "VQA_ADAPTERS takes NAME=PATH to a PEFT LoRA directory (with adapter_config.json)")


def size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 1024**2:.0f} MiB"


def render(report: Report) -> str:
    """The human-readable report."""
    lines = [f"python        {report.python}"]
    lines += [f"{name:<13} {version or 'not installed'}" for name, version in report.packages.items()
              if name != "flash-attn"]
    lines.append(f"cuda          {'available' if report.cuda_available else 'not available'}"
                 + (f" (torch built for CUDA {report.torch_cuda_build})" if report.torch_cuda_build else ""))
    for d in report.devices:
        label = "cpu" if d["index"] == "cpu" else f"cuda:{d['index']} {d['name']}"
        if d["index"] == "cpu":
            flags = d.get("bf16_flags") or []
            extra = f", native bf16 {'yes (' + '+'.join(flags) + ')' if flags else 'no'}"
        else:
            extra = f", bf16 {'yes' if d['bf16'] else 'no'}"
        free, total = size(d["free_bytes"]), size(d["total_bytes"])
        lines.append(f"device        {label}: {free} free of {total}{extra}")
    lines.append(f"flash-attn    {'importable' if report.flash_attention else 'not importable'}")
    if report.placement:
        p = report.placement
        lines.append(f"engine would  {p['device']}, {p['dtype']}, attention {p['attn_implementation']}"
                     + (f" ({p['reason']})" if p.get("reason") else ""))
    if report.model.get("parameters"):
        lines.append(f"model         {report.model['name']}: {report.model['parameters'] / 1e9:.2f} B parameters")
    if report.forecast:
        lines += render_forecast(report.forecast)
    for f in report.findings:
        lines.append(f"{f.level:<13} {f.message}\n{'':<13} fix: {f.fix}")
    lines.append("ok" if report.ok else "problems found")
    return "\n".join(lines)


def render_forecast(f: dict[str, Any]) -> list[str]:
    w = f["workload"]
    if f["kind"] == "serve":
        split = (f" ({w['asked_batch']} asked: VQA_BATCH_MAX_VISUAL_TOKENS closes a batch there)"
                 if w.get("asked_batch", w["batch"]) != w["batch"] else "")
        what = (f"serving {w['batch']} request(s) at once{split}, {w['max_pixels']:,} pixels "
                f"({w['prompt_tokens']} prompt tokens) + {w['max_new_tokens']} new tokens each")
    else:
        what = (f"a LoRA step, batch {w['batch']}, {w['max_pixels']:,} pixels, r={w['lora_rank']} on "
                f"{'+'.join(w['lora_targets'])}" + (", gradient checkpointing" if w["gradient_checkpointing"] else "")
                + (", 4-bit base" if w["load_in_4bit"] else ""))
    terms = " + ".join(f"{name.replace('_', ' ')} {size(n)}" for name, n in f["terms"].items())
    verdict = "fits" if f["fits"] else "DOES NOT FIT"
    return [f"memory        {what}, in {f['dtype']} on {f['device']}:",
            f"              peak ~{size(f['total_bytes'])} = {terms}",
            f"              of {size(f['available_bytes'])} free: {verdict}"]


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
