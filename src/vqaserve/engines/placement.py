"""Where a model runs and in which precision: one rule, used by the engine and by `vqa doctor`.

auto: CUDA -> bfloat16 where the GPU supports it, else float16, spread with device_map="auto";
CPU -> float32 (half precision on CPU is slow and, for small models, less accurate). Explicit
`device` / `dtype` settings win. Attention: flash-attention-2 when importable on CUDA, else sdpa.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from vqaserve.errors import ConfigError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16"}
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu", "cuda" (spread over all GPUs) or "cuda:N"
    dtype: str  # float32 | bfloat16 | float16
    attn_implementation: str  # flash_attention_2 | sdpa

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


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """Resolve the settings' device/dtype ("auto" or explicit) into a Placement; clear errors."""
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
    if dtype == "auto":
        chosen = ("bfloat16" if bf16 else "float16") if device.startswith("cuda") else "float32"
    elif dtype in DTYPES:
        chosen = DTYPES[dtype]
    else:
        raise ConfigError(f"VQA_DTYPE={dtype!r} is not a dtype; use auto, float32, bfloat16 or float16")
    if chosen == "bfloat16" and device.startswith("cuda") and not bf16:
        raise ConfigError("this GPU does not support bfloat16; use VQA_DTYPE=float16 (or auto)")
    attn = "flash_attention_2" if device.startswith("cuda") and flash_attn_available() else "sdpa"
    if attn == "flash_attention_2" and chosen == "float32":
        attn = "sdpa"  # flash-attention kernels take half precision only
    return Placement(device=device, dtype=chosen, attn_implementation=attn)
