"""Where a model runs and in which precision: one rule, used by the engine and by `vqa doctor`.

auto: CUDA -> bfloat16 where the GPU supports it, else float16, spread with device_map="auto".
CPU -> bfloat16 for a model of >= 1 B parameters on a CPU that computes bfloat16 natively
(`avx512_bf16` or `amx_bf16` on x86, `bf16` on Arm, in /proc/cpuinfo): half the memory and faster
(Qwen3-VL-2B: 5.3 GB peak and 2.9 s vs 13.4 GB and 4.8 s in float32). Else float32: a CPU without
those instructions emulates bfloat16 slowly, and a small model gains nothing from it while its
float32 figures (shop-toy's accuracy, exact batched == unbatched greedy answers, vLLM equality)
stay as measured. The model's size comes from its safetensors headers (no weights read). Explicit
`device` / `dtype` settings win. Attention: flash-attention-2 when importable on CUDA, else sdpa.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqaserve.errors import ConfigError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16"}
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, x86 AMX, Arm (FEAT_BF16)
BF16_CPU_MIN_PARAMETERS = 1_000_000_000  # below this, memory is no reason to leave float32
SAFETENSORS_ITEM_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                          "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu", "cuda" (spread over all GPUs) or "cuda:N"
    dtype: str  # float32 | bfloat16 | float16
    attn_implementation: str  # flash_attention_2 | sdpa
    reason: str = field(default="", compare=False)  # why this dtype, for logs and `vqa doctor`

    @property
    def device_map(self) -> str | dict[str, str] | None:
        """What from_pretrained gets: "auto" spreads over every GPU; a pinned device takes all."""
        if self.device == "cuda":
            return "auto"
        if self.device.startswith("cuda:"):
            return {"": self.device}
        return None

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def cuda_state() -> tuple[bool, int, bool]:
    """(CUDA usable, device count, bf16 supported on device 0). Never raises."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, 0, False
        return True, torch.cuda.device_count(), bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - a broken driver means "no CUDA" here; doctor explains why
        return False, 0, False


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU's native-bfloat16 feature flags (empty where it has none or /proc is absent)."""
    try:
        words = set(cpuinfo.read_text(errors="replace").split())
    except OSError:
        return []
    return [flag for flag in BF16_CPU_FLAGS if flag in words]


def _safetensors_entries(model_dir: str | Path) -> list[tuple[str, dict[str, Any]]] | None:
    """(tensor name, header entry) of every tensor in a directory's safetensors files, from their
    headers alone (no weights read); None when there are none or one cannot be read."""
    entries: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            return None
        entries += [(name, entry) for name, entry in header.items() if name != "__metadata__"]
    return entries or None


def stored_parameters(model_dir: str | Path) -> int | None:
    """Parameters in a model directory's safetensors files; None when there are none (a hub id,
    another format)."""
    entries = _safetensors_entries(model_dir)
    if entries is None:
        return None
    return sum(math.prod(int(dim) for dim in entry.get("shape", [])) for _, entry in entries)


def stored_dtype(model_dir: str | Path) -> str | None:
    """The torch name of the dtype most of a directory's stored weights have ("bfloat16" for
    BF16), or None when unknown: where it equals the compute dtype, the CPU engine maps the
    safetensors files instead of copying them (doctor's forecast depends on it)."""
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    counts: dict[str, int] = {}
    for _, entry in _safetensors_entries(model_dir) or []:
        dtype = names.get(str(entry.get("dtype")))
        if dtype:
            counts[dtype] = counts.get(dtype, 0) + math.prod(int(dim) for dim in entry.get("shape", []))
    return max(counts, key=lambda k: counts[k]) if counts else None


def _cpu_dtype(parameters: int | None) -> tuple[str, str]:
    flags = cpu_bf16_flags()
    if not flags:
        return "float32", "this CPU has no native bfloat16 (avx512_bf16 / amx_bf16 / bf16): float32"
    if parameters is None:
        return "float32", f"CPU has {'+'.join(flags)}, but the model's size is unknown: float32"
    size = f"{parameters / 1e9:.2f} B parameters"
    if parameters < BF16_CPU_MIN_PARAMETERS:
        return "float32", (f"CPU has {'+'.join(flags)}, but {size} < 1 B: float32 (bfloat16 saves "
                           "little memory there and float32 keeps its measured answers)")
    return "bfloat16", f"CPU computes bfloat16 natively ({'+'.join(flags)}) and {size} >= 1 B: bfloat16"


def choose_placement(device: str = "auto", dtype: str = "auto", parameters: int | None = None) -> Placement:
    """Resolve the settings' device/dtype ("auto" or explicit) into a Placement; clear errors.
    `parameters` (the model's size, when known) decides bfloat16 vs float32 on a bf16-native CPU."""
    has_cuda, count, bf16 = cuda_state()
    device = (device or "auto").strip().lower()
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    elif device.startswith("cuda"):
        if not has_cuda:
            raise ConfigError(f"VQA_DEVICE={device} but CUDA is not available here; use VQA_DEVICE=cpu "
                              "or install a CUDA build of torch (run `vqa doctor`)")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= count):
            raise ConfigError(f"VQA_DEVICE={device}: there are {count} CUDA device(s); use cuda:0..cuda:"
                              f"{max(count - 1, 0)}")
    elif device != "cpu":
        raise ConfigError(f"VQA_DEVICE={device!r} is not a device; use auto, cpu, cuda or cuda:N")
    dtype = (dtype or "auto").strip().lower()
    if dtype == "auto" and device.startswith("cuda"):
        chosen = "bfloat16" if bf16 else "float16"
        reason = "GPU " + ("supports bfloat16" if bf16 else "has no bfloat16: float16")
    elif dtype == "auto":
        chosen, reason = _cpu_dtype(parameters)
    elif dtype in DTYPES:
        chosen, reason = DTYPES[dtype], f"VQA_DTYPE={dtype} (explicit setting wins)"
    else:
        raise ConfigError(f"VQA_DTYPE={dtype!r} is not a dtype; use auto, float32, bfloat16 or float16")
    if chosen == "bfloat16" and device.startswith("cuda") and not bf16:
        raise ConfigError("this GPU does not support bfloat16; use VQA_DTYPE=float16 (or auto)")
    attn = "flash_attention_2" if device.startswith("cuda") and flash_attn_available() else "sdpa"
    if attn == "flash_attention_2" and chosen == "float32":
        attn = "sdpa"  # flash-attention kernels take half precision only
    return Placement(device=device, dtype=chosen, attn_implementation=attn, reason=reason)
