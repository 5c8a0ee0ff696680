"""Where a training run computes and in which precision: the engine's placement rule plus what training adds.

- Device: `--device auto` goes where the engine would (engines/placement.py: CUDA when present, else the
  CPU; never MPS unasked). Under `accelerate launch` Accelerate gives each process its own GPU.
- Precision: weights that train, their gradients and AdamW's state stay float32; the maths runs in the
  compute dtype under autocast (Accelerate's `mixed_precision`). Frozen weights (a LoRA run's base) are
  stored in the compute dtype, which is where the memory goes: 2 bytes a parameter instead of 4.
  `--dtype auto` is the engine's rule, except that a full fine-tune on CPU stays float32: its float32
  weights and Adam state are most of its memory anyway, and the shop-toy recipe's numbers depend on it.
- 4-bit base (QLoRA): bitsandbytes nf4 with double quantisation, computing in the compute dtype (bf16
  where the GPU has it); CUDA only, with a one-line error elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from vqaserve.engines.placement import DTYPES, choose_placement, cuda_state, flash_attn_available
from vqaserve.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
_MIXED = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # Accelerate's names
_NO_CUDA_4BIT = ("--load-in-4bit needs CUDA and bitsandbytes (pip install 'vqaserve[gpu]'); this machine has "
                 "no CUDA device: train in bfloat16 instead (--dtype bfloat16 --gradient-checkpointing)")


@dataclass(frozen=True)
class TrainPlacement:
    device: str  # cpu | cuda | mps (each process's own GPU under `accelerate launch`)
    dtype: str  # the compute dtype: float32 | bfloat16 | float16
    load_in_4bit: bool = False

    @property
    def mixed_precision(self) -> str:
        return _MIXED[self.dtype]

    def weights_dtype(self, lora: bool) -> str:
        """Frozen weights (LoRA's base) are stored in the compute dtype; trained ones stay float32."""
        return self.dtype if lora else "float32"


def choose_train_placement(device: str = "auto", dtype: str = "auto", *, lora: bool = False,
                           load_in_4bit: bool = False, parameters: int | None = None) -> TrainPlacement:
    """Resolve --device/--dtype/--load-in-4bit into a TrainPlacement; a ConfigError names the fix.
    `parameters` (the base model's size, when known) lets a LoRA run on a bf16-native CPU take the
    engine's rule: bfloat16 for models of a billion parameters and more."""
    device, dtype = (device or "auto").lower(), (dtype or "auto").lower()
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or mps")
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not a dtype; use auto, float32, bfloat16 or float16")
    _refuse_sharding_launch()
    has_cuda, _, cuda_bf16 = cuda_state()
    if device == "auto" and _launcher_wants_cpu():
        device = "cpu"  # `accelerate launch --cpu` on a machine that has a GPU
    if device == "mps":
        placement = _mps(dtype)
    else:
        if device == "cuda" and not has_cuda:
            raise ConfigError("--device cuda but CUDA is not available here; use --device cpu (or auto), or "
                              "install a CUDA build of torch (`vqa doctor` says what it sees)")
        where = "cuda" if choose_placement(device, "auto").device.startswith("cuda") else "cpu"
        placement = TrainPlacement(where, _dtype(where, dtype, lora or load_in_4bit, cuda_bf16, parameters))
    if load_in_4bit:
        _check_4bit(placement, lora, has_cuda)
        placement = TrainPlacement(placement.device, placement.dtype, load_in_4bit=True)
    return placement


def _dtype(device: str, asked: str, frozen_base: bool, cuda_bf16: bool, parameters: int | None) -> str:
    if asked == "auto":
        if device == "cpu" and not frozen_base:
            return "float32"
        return choose_placement(device, "auto", parameters).dtype  # the engine's rule
    chosen = DTYPES[asked]
    if chosen == "float16" and device != "cuda":
        raise ConfigError("--dtype float16 trains on CUDA only (it needs a loss scaler); use --dtype bfloat16 "
                          "or float32")
    if chosen == "bfloat16" and device == "cuda" and not cuda_bf16:
        raise ConfigError("--dtype bfloat16: this GPU does not compute it; use --dtype float16 (or auto)")
    return chosen


def _mps(asked: str) -> TrainPlacement:
    import torch

    if not torch.backends.mps.is_available():
        raise ConfigError("--device mps: there is no Apple GPU (MPS) here; use --device auto or cpu")
    chosen = "float32" if asked == "auto" else DTYPES[asked]
    if chosen == "float16":
        raise ConfigError("--dtype float16 trains on CUDA only (it needs a loss scaler); use --dtype bfloat16 "
                          "or float32")
    return TrainPlacement("mps", chosen)


def _check_4bit(placement: TrainPlacement, lora: bool, has_cuda: bool) -> None:
    if not lora:
        raise ConfigError("--load-in-4bit trains a LoRA adapter on a frozen 4-bit base: add --lora")
    if not has_cuda:
        raise ConfigError(_NO_CUDA_4BIT)
    if placement.device != "cuda":
        raise ConfigError("--load-in-4bit needs CUDA: use --device cuda (or auto)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("--load-in-4bit needs bitsandbytes: pip install 'vqaserve[gpu]' (or pip install "
                          "bitsandbytes)")


def _refuse_sharding_launch() -> None:
    """FSDP and DeepSpeed shard weights and optimizer state across processes; the checkpoint and the
    saved output here are whole tensors read on one process, so such a run would save a shard."""
    for env, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(env, "").lower() in ("1", "true", "yes"):
            raise ConfigError(f"accelerate launch with {name}: vqa train saves whole weights, which {name} "
                              "shards; launch with DDP instead (--multi_gpu, or --config_file "
                              "deploy/accelerate/ddp.yaml): a LoRA run's base fits on each GPU")


def _launcher_wants_cpu() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def make_accelerator(placement: TrainPlacement, grad_accum: int) -> Any:
    """Accelerate runs the loop: one process, or one per GPU under `accelerate launch` (DDP)."""
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if not (dist.is_available() and dist.is_initialized()):
        # Accelerate keeps its settings in process-wide singletons that refuse a second, different
        # setting; a process may train more than once (tests, notebooks), so each run starts clean.
        # Not once a process group exists: a launched run's state belongs to its launcher.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    accelerator = Accelerator(cpu=placement.device == "cpu", mixed_precision=placement.mixed_precision,
                              gradient_accumulation_steps=grad_accum)
    if accelerator.device.type != placement.device:
        raise ConfigError(f"--device {placement.device}: the launcher placed this process on "
                          f"{accelerator.device.type}; give the same device to both (e.g. --device auto)")
    return accelerator


def load_model(model_dir: str, placement: TrainPlacement, *, lora: bool, device: Any) -> Any:
    """The model in its training precision, straight onto its device (an 8B base never sits in host RAM)."""
    import torch
    from transformers import AutoModelForImageTextToText

    weights = placement.weights_dtype(lora)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, weights)}
    if placement.device == "cuda":
        kwargs["device_map"] = {"": str(device)}
        if weights != "float32" and flash_attn_available():
            kwargs["attn_implementation"] = "flash_attention_2"
    if placement.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, placement.dtype))
    return AutoModelForImageTextToText.from_pretrained(model_dir, **kwargs)


def prepare_for_training(model: Any, *, gradient_checkpointing: bool, lora: bool, quantized: bool) -> Any:
    """Gradient checkpointing (recompute each layer's activations in backward) and the 4-bit preparation;
    call before wrapping the model in LoRA."""
    # Non-reentrant, as PyTorch recommends: the re-entrant variant gives a layer's weights no gradient
    # when none of its inputs needs one (a frozen base under LoRA).
    kwargs = {"use_reentrant": False}
    if quantized:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs=kwargs)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if lora:  # the frozen embeddings' output must carry a gradient into the first checkpointed layer
            model.enable_input_require_grads()
    return model


def upcast_trainable(model: Any) -> None:
    """Weights that train stay float32 (so do their gradients and Adam state) on a half-precision base."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
