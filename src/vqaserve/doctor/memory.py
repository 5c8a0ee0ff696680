"""Peak-memory forecasts for serving and for a LoRA training step, term by term, in bytes.

Serving a batch of N requests (each one picture at the pixel budget P and a question, answering T
tokens), the terms that dominate a Qwen3-VL:

    framework     the process before any weight: Python, torch, transformers, the server stack,
                  the tokenizers and the image checker (a measured constant, FRAMEWORK_*)
    weights       parameters x bytes of the dtype; on a CPU serving weights stored in the compute
                  dtype, less an untied input embedding table: the engine maps the safetensors
                  files, and a lookup table's rows are resident only once a token reads them (the
                  8B's 151,936 x 4,096 table is 1.2 GB, of which a few hundred rows are read)
    kv_cache      2 (K, V) x layers x KV heads x head_dim x bytes x N x (prompt + T)
    activations   the larger of the two phases: the vision tower over N*P/256 patches (pixel values
                  in float32, then VISION_WIDTHS hidden-sized tensors per patch), and the LLM's prefill
                  over N x prompt tokens (LLM_WIDTHS x hidden + 3 x MLP width per token); the logits
                  of the last position only
    vision_memo   the vision-tower outputs kept for follow-up questions (capped by VQA_VISION_MEMO_MB)

A LoRA step (frozen base in the compute dtype, or 4-bit: 0.5 byte + one float32 constant per 64
weights of every linear layer) adds the adapter's weights, gradients and AdamW moments in float32
(16 bytes per trainable parameter) and the activations autograd keeps for the backward pass:
TRAIN_WIDTHS per token and layer without gradient checkpointing, one hidden state per token and
layer plus one layer's worth with it.

The constants were measured on this project's stand-ins (below, and docs/deploy.md "Memory"):
peak RSS minus the terms above, on CPU in bfloat16. On CUDA the same activations are allocated by the
caching allocator; the CUDA context (CUDA_CONTEXT_BYTES) is on the device but outside
torch.cuda.max_memory_allocated().
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
# Measured on this project's CPU machine (torch 2.14.1, transformers 5.25, bfloat16; peak RSS by the
# kernel's high-water mark; docs/deploy.md "Memory" has the commands and the load at the time):
# - `vqa ask` (NudeNet on) with a 10 M-parameter stand-in that has Qwen's 151,669-token tokenizer:
#   1.53 GB, all but ~0.1 GB of it the process itself (torch + transformers + vqaserve: 0.66 GB
#   imported; the tokenizer, its counting copy and the grammar compiler's vocabulary; NudeNet).
# - one LoRA step on a 2B-wide stand-in with 6 text layers, with and without gradient checkpointing
#   (1,311 tokens) and at batch 2 (574 tokens): 4.28, 3.37 and 3.45 GB, which these widths and
#   FRAMEWORK_TRAIN_BYTES reproduce within 2%.
FRAMEWORK_SERVE_BYTES = 1_430_000_000
FRAMEWORK_TRAIN_BYTES = 1_440_000_000
CUDA_CONTEXT_BYTES = 512 * 1024**2  # the CUDA runtime on each device
TEXT_TOKENS = 64  # chat template (~20 tokens) + a product question, per request
VISION_WIDTHS = 12.0  # live hidden-sized tensors per patch in a vision block (MLP = 4 widths)
LLM_WIDTHS = 6.0  # live hidden-sized tensors per token in an LLM layer, besides 3 MLP-width ones
TRAIN_WIDTHS = 26.0  # saved per token and LLM layer for backward, besides 3 MLP-width ones (bf16 units):
#                      float32 RMSNorm inputs, LoRA's float32 dropout inputs, q/k/v, attention, MLP
QUANT_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # NF4 + a float32 absmax per 64-weight block
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """What the forecast needs of a Qwen3-VL config (text_config / vision_config)."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    vision_depth: int = 0
    vision_hidden: int = 0
    vision_intermediate: int = 0
    patch: int = 16
    merge: int = 2
    deepstack: int = 0

    @property
    def pixels_per_patch(self) -> int:
        return self.patch * self.patch

    @property
    def patches_per_token(self) -> int:
        return self.merge * self.merge


def shape_from_config(config: dict[str, Any], parameters: int) -> Shape:
    """A Shape from a config.json dict (Qwen3-VL's nested text_config / vision_config, or flat)."""
    text = config.get("text_config") or config
    vision = config.get("vision_config") or {}
    heads = int(text.get("num_attention_heads", 1))
    hidden = int(text.get("hidden_size", 0))
    return Shape(
        parameters=parameters, layers=int(text.get("num_hidden_layers", 0)), hidden=hidden,
        intermediate=int(text.get("intermediate_size", 4 * hidden)), heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // max(heads, 1)),
        vocab=int(text.get("vocab_size", 0)),
        tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        vision_depth=int(vision.get("depth", 0)), vision_hidden=int(vision.get("hidden_size", 0)),
        vision_intermediate=int(vision.get("intermediate_size", 0)),
        patch=int(vision.get("patch_size", 16)), merge=int(vision.get("spatial_merge_size", 2)),
        deepstack=len(vision.get("deepstack_visual_indexes") or []))


@dataclass
class Forecast:
    kind: str  # "serve" or "train"
    dtype: str
    device: str
    workload: dict[str, Any]
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total}


def kv_cache_bytes(shape: Shape, dtype: str, tokens: int) -> int:
    """K and V for every layer, KV head and head dim, for `tokens` positions in total."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * BYTES[dtype] * tokens


def _tokens(shape: Shape, max_pixels: int) -> tuple[int, int]:
    """(patches, prompt tokens) of one request with one picture at the full pixel budget."""
    patches = max_pixels // shape.pixels_per_patch
    return patches, patches // shape.patches_per_token + TEXT_TOKENS


def _vision_bytes(shape: Shape, dtype: str, batch: int, patches: int) -> int:
    b = BYTES[dtype]
    pixel_values = batch * patches * 3 * 2 * shape.pixels_per_patch * (4 + b)  # float32, then cast
    blocks = batch * patches * shape.vision_hidden * VISION_WIDTHS * b
    return int(pixel_values + blocks)


def _unread_embedding_bytes(shape: Shape, dtype: str) -> int:
    """A mapped, untied input embedding table: read a row per token, so never resident as a whole
    (measured: the 8B stand-in's `vqa ask` peaked at 17.04 GB with 17.53 GB of weights). A tied one
    is the lm_head too, which reads every row at every step."""
    return 0 if shape.tied else shape.vocab * shape.hidden * BYTES[dtype]


def _visual_embeds_bytes(shape: Shape, dtype: str, batch: int, patches: int) -> int:
    """The merged visual tokens and their DeepStack features, alive through the prefill."""
    return batch * patches // shape.patches_per_token * shape.hidden * (1 + shape.deepstack) * BYTES[dtype]


def serve_forecast(shape: Shape, dtype: str, *, batch: int, max_pixels: int, max_new_tokens: int,
                   vision_memo_bytes: int = 256 * 1024**2, device: str = "cpu",
                   mapped: bool = False) -> Forecast:
    """Peak memory of answering `batch` requests at once, each a picture at the full budget.
    `mapped`: the weights are stored in `dtype`, so a CPU engine maps them rather than copying."""
    b = BYTES[dtype]
    patches, prompt = _tokens(shape, max_pixels)
    gpu = device.startswith("cuda")
    embeds = _visual_embeds_bytes(shape, dtype, batch, patches)
    prefill = batch * prompt * (LLM_WIDTHS * shape.hidden + 3 * shape.intermediate) * b + embeds
    vision = _vision_bytes(shape, dtype, batch, patches)
    logits = batch * shape.vocab * 4 * 2  # last position, float32, and the sampler's copy
    terms = {
        "framework": CUDA_CONTEXT_BYTES if gpu else FRAMEWORK_SERVE_BYTES,
        "weights": shape.parameters * b - (_unread_embedding_bytes(shape, dtype) if mapped and not gpu else 0),
        "kv_cache": kv_cache_bytes(shape, dtype, batch * (prompt + max_new_tokens)),
        "activations": int(max(vision, prefill) + logits),
        "vision_memo": min(vision_memo_bytes, embeds),
    }
    return Forecast("serve", dtype, device, {"batch": batch, "max_pixels": max_pixels, "patches": patches,
                                             "prompt_tokens": prompt, "max_new_tokens": max_new_tokens},
                    terms)


def lora_parameters(shape: Shape, rank: int, targets: list[str]) -> int:
    """Trainable parameters of a LoRA on the LLM's `targets` (q_proj, k_proj, v_proj, o_proj, gate_proj,
    up_proj, down_proj): rank x (in + out) per module and layer."""
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    unknown = [t for t in targets if t not in dims]
    if unknown:
        raise ValueError(f"no LoRA size rule for {unknown}; known: {sorted(dims)}")
    return shape.layers * sum(rank * sum(dims[t]) for t in targets)


def _quantized_weights_bytes(shape: Shape, dtype: str) -> int:
    """4-bit linear layers; embeddings (and an untied lm_head) stay in the compute dtype."""
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    return int((shape.parameters - embeddings) * QUANT_BYTES_PER_WEIGHT + embeddings * BYTES[dtype])


def train_forecast(shape: Shape, dtype: str, *, batch: int, max_pixels: int, lora_rank: int = 8,
                   lora_targets: tuple[str, ...] = ("q_proj", "v_proj"), answer_tokens: int = 32,
                   gradient_checkpointing: bool = False, load_in_4bit: bool = False,
                   device: str = "cpu") -> Forecast:
    """Peak memory of one LoRA step on `batch` examples, each a picture at the full budget."""
    b = BYTES[dtype]
    patches, prompt = _tokens(shape, max_pixels)
    tokens = batch * (prompt + answer_tokens)
    per_layer = (TRAIN_WIDTHS * shape.hidden + 3 * shape.intermediate) * b
    if gradient_checkpointing:
        kept = tokens * (shape.layers * shape.hidden * b + per_layer)
    else:
        kept = tokens * shape.layers * per_layer
    transient = max(_vision_bytes(shape, dtype, batch, patches),
                    tokens * (LLM_WIDTHS * shape.hidden + 3 * shape.intermediate) * b)
    logits = batch * answer_tokens * shape.vocab * (b + 4 + 4)  # projection, float32 copy, its grad
    lora = lora_parameters(shape, lora_rank, list(lora_targets))
    gpu = device.startswith("cuda")
    terms = {
        "framework": CUDA_CONTEXT_BYTES if gpu else FRAMEWORK_TRAIN_BYTES,
        "weights": _quantized_weights_bytes(shape, dtype) if load_in_4bit else shape.parameters * b,
        "lora_and_adamw": lora * 16,  # float32 weights, gradients and two AdamW moments
        "activations": int(kept + _visual_embeds_bytes(shape, dtype, batch, patches) + transient + logits),
    }
    return Forecast("train", dtype, device, {
        "batch": batch, "max_pixels": max_pixels, "lora_rank": lora_rank, "lora_targets": list(lora_targets),
        "lora_parameters": lora, "gradient_checkpointing": gradient_checkpointing,
        "load_in_4bit": load_in_4bit, "tokens": tokens}, terms)
