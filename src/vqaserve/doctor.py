"""`vqa doctor`: is this machine able to serve the configured model, and if not, what to do.

The usual set-up pains are a CUDA/PyTorch mismatch, a GPU without bfloat16, and running out of
memory on the first load. The doctor reports versions, devices, the placement the engine would
choose, and whether the model fits (parameters x bytes per parameter + a KV-cache allowance +
overhead vs free memory), counting parameters from the config on the meta device (no weights
read). Every problem comes with a one-line fix.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vqaserve.engines.placement import BYTES_PER_PARAM, choose_placement, flash_attn_available
from vqaserve.errors import ConfigError
from vqaserve.settings import Settings

PACKAGES = ["torch", "torchvision", "transformers", "peft", "tokenizers", "accelerate", "flash-attn"]
GIB = 1024**3
CUDA_CONTEXT_BYTES = 512 * 1024**2  # what the CUDA runtime itself takes on each device
TEXT_TOKENS_ALLOWANCE = 512  # prompt text + chat template around the image, per request


@dataclass
class Finding:
    level: str  # "problem" (will not work as configured) or "warning" (works, but worse)
    message: str
    fix: str


@dataclass
class Fit:
    parameters: int
    dtype: str
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    need_bytes: int
    available_bytes: int
    fits: bool


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
                                  "bf16": False})
    except ImportError:
        pass


def kv_cache_bytes(text_config: dict[str, Any], dtype: str, tokens: int) -> int:
    """K and V for every layer, KV head and head dim, for `tokens` positions in total."""
    layers = int(text_config.get("num_hidden_layers", 0))
    heads = int(text_config.get("num_attention_heads", 1))
    kv_heads = int(text_config.get("num_key_value_heads") or heads)
    head_dim = int(text_config.get("head_dim") or int(text_config.get("hidden_size", 0)) // max(heads, 1))
    return 2 * layers * kv_heads * head_dim * BYTES_PER_PARAM[dtype] * tokens


def estimate_fit(parameters: int, text_config: dict[str, Any], dtype: str, available_bytes: int, *,
                 batch: int, tokens_per_request: int, gpu: bool) -> Fit:
    """Weights + KV cache for a full batch of full-length requests + overhead, vs free memory."""
    weights = parameters * BYTES_PER_PARAM[dtype]
    kv = kv_cache_bytes(text_config, dtype, batch * tokens_per_request)
    # activations, allocator fragmentation, and (on GPU) the CUDA context
    overhead = weights // 10 + (CUDA_CONTEXT_BYTES if gpu else 0)
    need = weights + kv + overhead
    return Fit(parameters=parameters, dtype=dtype, weights_bytes=weights, kv_cache_bytes=kv,
               overhead_bytes=overhead, need_bytes=need, available_bytes=available_bytes,
               fits=need <= available_bytes)


def count_parameters(source: str, trust_remote_code: bool = False) -> tuple[int, dict[str, Any]]:
    """Parameters of the model a config describes, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    text = config.get_text_config().to_dict()
    return int(total), text


def check_model(report: Report, settings: Settings) -> None:
    from vqaserve.engines.transformers import resolve_model_source

    name = settings.llm.model
    report.model = {"name": name}
    if settings.llm.trust_remote_code:
        report.warn("trust_remote_code is on: the model repository's own code will run",
                    "unset VQA_TRUST_REMOTE_CODE unless you audited that code (Qwen3-VL does not need it)")
    try:
        placement = choose_placement(settings.llm.device, settings.llm.dtype)
    except ConfigError as exc:
        report.problem(exc.message, "set VQA_DEVICE / VQA_DTYPE to auto, or to what this machine has")
        return
    report.placement = {"device": placement.device, "dtype": placement.dtype,
                        "attn_implementation": placement.attn_implementation}
    try:
        source = resolve_model_source(name)
    except ConfigError as exc:
        report.problem(exc.message, "pass --model DIR_OR_HUB_ID (or set VQA_MODEL)")
        return
    report.model["source"] = "local directory" if Path(source).is_dir() else "hub id"
    try:
        parameters, text = count_parameters(source, settings.llm.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure here is a finding, not a crash
        report.problem(f"cannot read the config of model {name!r} ({type(exc).__name__})",
                       "check the directory has config.json, or that the hub is reachable "
                       "(a local directory needs no network)")
        return
    gpu = placement.device.startswith("cuda")
    if gpu:
        pool = report.devices[1:] if placement.device == "cuda" else [
            d for d in report.devices if str(d["index"]) == placement.device.partition(":")[2]]
        available = sum(int(d["free_bytes"]) for d in pool)
    else:
        available = int(report.devices[0]["free_bytes"]) if report.devices else 0
    tokens = (settings.images.max_pixels // (32 * 32) + settings.generation.max_new_tokens
              + TEXT_TOKENS_ALLOWANCE)
    fit = estimate_fit(parameters, text, placement.dtype, available, batch=settings.batching.max_size,
                       tokens_per_request=tokens, gpu=gpu)
    report.model.update({"fit": asdict(fit), "batch": settings.batching.max_size,
                         "tokens_per_request": tokens})
    if not fit.fits:
        report.problem(
            f"model needs ~{fit.need_bytes / GIB:.1f} GiB on {placement.device} but "
            f"{fit.available_bytes / GIB:.1f} GiB are free",
            "lower VQA_BATCH_MAX_SIZE or VQA_MAX_PIXELS, use a smaller model, or a GPU with more memory"
            if gpu else "use a smaller model, lower VQA_BATCH_MAX_SIZE, or run on a GPU")
    if not gpu and parameters > 3_000_000_000:
        report.warn(f"a {parameters / 1e9:.1f}B-parameter model on CPU answers slowly (seconds per token)",
                    "run on a GPU, or use the upstream engine (VQA_ENGINE=upstream) against vLLM")


def check_adapters(report: Report, settings: Settings) -> None:
    from vqaserve.settings import resolve_model_path

    for name, path in settings.llm.adapters.items():
        if not (Path(resolve_model_path(path)) / "adapter_config.json").is_file():
            report.problem(f"adapter {name!r} has no adapter_config.json at {path!r}",
                           "VQA_ADAPTERS takes NAME=PATH to a PEFT LoRA directory (with adapter_config.json)")


def diagnose(settings: Settings) -> Report:
    report = Report(python=platform.python_version(), packages=package_versions())
    check_versions(report)
    check_devices(report)
    check_model(report, settings)
    check_adapters(report, settings)
    return report


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
        extra = "" if d["index"] == "cpu" else f", bf16 {'yes' if d['bf16'] else 'no'}"
        free, total = size(d["free_bytes"]), size(d["total_bytes"])
        lines.append(f"device        {label}: {free} free of {total}{extra}")
    lines.append(f"flash-attn    {'importable' if report.flash_attention else 'not importable'}")
    if report.placement:
        p = report.placement
        lines.append(f"engine would  {p['device']}, {p['dtype']}, attention {p['attn_implementation']}")
    fit = report.model.get("fit")
    if fit:
        verdict = "fits" if fit["fits"] else "DOES NOT FIT"
        lines.append(f"model         {report.model['name']}: {fit['parameters'] / 1e6:.1f}M parameters "
                     f"in {fit['dtype']} needs ~{size(fit['need_bytes'])} "
                     f"(weights {size(fit['weights_bytes'])} + KV cache {size(fit['kv_cache_bytes'])} "
                     f"+ overhead {size(fit['overhead_bytes'])}) "
                     f"of {size(fit['available_bytes'])} free: {verdict}")
    for f in report.findings:
        lines.append(f"{f.level:<13} {f.message}\n{'':<13} fix: {f.fix}")
    lines.append("ok" if report.ok else "problems found")
    return "\n".join(lines)


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
