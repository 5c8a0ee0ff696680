"""Build a Qwen3-VL-architecture model directory from a recipe, offline, in seconds.

The directory is what `from_pretrained` expects of real Qwen3-VL weights (config.json, safetensors,
tokenizer, chat template, image/video processor configs, generation_config.json), so the engine,
the trainer and vLLM load it through their normal paths. Weights are random (seeded); the bundled
`shop-toy` model starts from here and is then trained by `vqa train`.

Recipe keys (all optional in a dict recipe; missing keys come from "tiny"):

    text_hidden_size, text_intermediate_size, text_layers, text_heads, text_kv_heads, text_head_dim
    mrope_section        [t, h, w]; must sum to text_head_dim / 2 (Qwen uses [24, 20, 20] for 128)
    rope_theta, max_position_embeddings, tie_word_embeddings
    vision_hidden_size, vision_intermediate_size, vision_depth, vision_heads
                         (vision head_dim = vision_hidden_size / vision_heads; 64 or 128 suits vLLM)
    vision_num_position_embeddings   a square number (learned position grid, interpolated)
    deepstack_visual_indexes         vision layers whose features are added to early LLM layers
    vocab_size           target size of the byte-level BPE vocabulary (special tokens come on top)
    initializer_range    std of the random init (0.02, as Qwen, for models to be trained; "tiny"
                         uses 0.3 so that an untrained model's answers visibly depend on the image
                         and the question, which tests of batching and caching need)
    vision_init          "normal" (initializer_range everywhere, as transformers does) or "xavier":
                         the vision tower's linear layers and patch embedding drawn with Glorot
                         scaling instead. A std of 0.02 suits widths of 1k+; at a width of ~100 it
                         leaves attention logits near zero, and a ViT trained from scratch then
                         learns shapes far more slowly (docs/eval-history.md)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqaserve.modeling.chat_template import QWEN3_VL_CHAT_TEMPLATE
from vqaserve.modeling.corpus import corpus

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
DEFAULT_MIN_PIXELS = 256 * 32 * 32  # Qwen's advice: 256..1280 visual tokens per image
DEFAULT_MAX_PIXELS = 1280 * 32 * 32

# Qwen3-VL's added tokens, in Qwen's order. The first 14 are special (skipped when decoding);
# the tool/fim/think markers are ordinary added tokens in Qwen3 (they stay in decoded text).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
ADDED_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
# Qwen2's pre-tokenizer split (the same regex Qwen2Tokenizer uses), so the tokenizer behaves the
# same whether transformers loads it as Qwen2Tokenizer or as a plain PreTrainedTokenizerFast.
PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                     r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Every recipe key with the value a dict recipe gets when it leaves the key out.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 2048,  # a cap: the in-code corpus yields ~1.1k tokens, every catalogue word whole
    "text_hidden_size": 64, "text_intermediate_size": 128, "text_layers": 2,
    "text_heads": 2, "text_kv_heads": 1, "text_head_dim": 64, "mrope_section": [12, 10, 10],
    "rope_theta": 5_000_000.0, "max_position_embeddings": 4096, "tie_word_embeddings": True,
    "vision_hidden_size": 64, "vision_intermediate_size": 128, "vision_depth": 2,
    "vision_heads": 1, "vision_num_position_embeddings": 256, "deepstack_visual_indexes": [0],
    "initializer_range": 0.02, "vision_init": "normal",
}

RECIPES: dict[str, dict[str, Any]] = {
    # For tests: ~0.5M parameters, builds in seconds, milliseconds per token on CPU.
    "tiny": {**DEFAULTS, "initializer_range": 0.3},
    # A small but capable stand-in (~8M parameters); vLLM-friendly head dims of 64.
    "small": {
        "vocab_size": 4096,
        "text_hidden_size": 256, "text_intermediate_size": 768, "text_layers": 4,
        "text_heads": 4, "text_kv_heads": 2, "text_head_dim": 64, "mrope_section": [12, 10, 10],
        "rope_theta": 5_000_000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "vision_hidden_size": 256, "vision_intermediate_size": 768, "vision_depth": 4,
        "vision_heads": 4, "vision_num_position_embeddings": 1024, "deepstack_visual_indexes": [1, 2],
        "initializer_range": 0.02,
    },
}


def resolve_recipe(recipe: str | dict[str, Any]) -> dict[str, Any]:
    """A recipe name or dict -> a complete, validated dict (missing keys from DEFAULTS)."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or pass a dict")
        recipe = RECIPES[recipe]
    unknown = set(recipe) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)}; valid keys: {sorted(DEFAULTS)}")
    full = {**DEFAULTS, **recipe}
    half = full["text_head_dim"] // 2
    if sum(full["mrope_section"]) != half or full["text_head_dim"] % 2:
        raise ValueError(f"mrope_section {full['mrope_section']} must sum to text_head_dim/2 = {half}")
    if full["vision_init"] not in ("normal", "xavier"):
        raise ValueError("vision_init must be 'normal' or 'xavier'")
    if full["text_heads"] % full["text_kv_heads"]:
        raise ValueError("text_heads must be a multiple of text_kv_heads")
    if full["vision_hidden_size"] % full["vision_heads"]:
        raise ValueError("vision_hidden_size must be a multiple of vision_heads")
    if (full["vision_hidden_size"] // full["vision_heads"]) % 4:
        raise ValueError("vision head_dim (vision_hidden_size / vision_heads) must be a multiple of 4")
    side = math.isqrt(full["vision_num_position_embeddings"])
    if side * side != full["vision_num_position_embeddings"]:
        raise ValueError("vision_num_position_embeddings must be a square number (e.g. 256, 1024, 2304)")
    if any(not 0 <= i < full["vision_depth"] for i in full["deepstack_visual_indexes"]):
        raise ValueError("deepstack_visual_indexes must be vision layer indexes below vision_depth")
    return full


def build_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """The project's byte-level BPE tokenizer with Qwen3-VL's special tokens and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import trainers as tk_trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = tk_trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    return finish_tokenizer(tok, RECIPES["tiny"]["max_position_embeddings"])


def finish_tokenizer(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Qwen3-VL's added tokens on top of a byte-level BPE, wrapped as transformers loads Qwen's."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    # Added after the BPE vocabulary so, as in Qwen, they sit above it (151643.. in Qwen's own).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, model_max_length=model_max_length,
        clean_up_tokenization_spaces=False, padding_side="left")
    fast.chat_template = QWEN3_VL_CHAT_TEMPLATE
    return fast


def build_config(recipe: dict[str, Any], tokenizer: PreTrainedTokenizerFast) -> Any:
    """A transformers Qwen3VLConfig for a resolved recipe and tokenizer."""
    from transformers import Qwen3VLConfig

    ids: dict[str, Any] = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer), "hidden_size": recipe["text_hidden_size"],
        "intermediate_size": recipe["text_intermediate_size"],
        "num_hidden_layers": recipe["text_layers"], "num_attention_heads": recipe["text_heads"],
        "num_key_value_heads": recipe["text_kv_heads"], "head_dim": recipe["text_head_dim"],
        "max_position_embeddings": recipe["max_position_embeddings"],
        "rope_parameters": {"rope_type": "default", "rope_theta": recipe["rope_theta"],
                            "mrope_section": list(recipe["mrope_section"]), "mrope_interleaved": True},
        "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"], "tie_word_embeddings": recipe["tie_word_embeddings"],
        "initializer_range": recipe["initializer_range"],
    }
    vision = {
        "depth": recipe["vision_depth"], "hidden_size": recipe["vision_hidden_size"],
        "intermediate_size": recipe["vision_intermediate_size"], "num_heads": recipe["vision_heads"],
        "patch_size": PATCH_SIZE, "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE, "out_hidden_size": recipe["text_hidden_size"],
        "num_position_embeddings": recipe["vision_num_position_embeddings"],
        "deepstack_visual_indexes": list(recipe["deepstack_visual_indexes"]),
        "initializer_range": recipe["initializer_range"],
    }
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=recipe["tie_word_embeddings"])
    # not a declared field of the top-level config, but the weight init reads it from there too
    config.initializer_range = recipe["initializer_range"]
    return config


def build_processor(tokenizer: PreTrainedTokenizerFast, min_pixels: int, max_pixels: int) -> Any:
    """Qwen3-VL processor: patch 16, merge 2, temporal patch 2, mean = std = 0.5, the given budget."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    if not 32 * 32 <= min_pixels <= max_pixels:
        raise ValueError("need 32*32 <= min_pixels <= max_pixels (one visual token is 32x32 pixels)")
    common: dict[str, Any] = {
        "patch_size": PATCH_SIZE, "merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **common)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels * 16}, **common)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=video_processor, chat_template=QWEN3_VL_CHAT_TEMPLATE)


def _write_compat_files(out: Path) -> None:
    """Files older loaders read (transformers 4.57, vLLM): per-processor configs, legacy rope keys,
    and Qwen's tokenizer class name (the tokenizer.json is the same either way)."""
    proc = json.loads((out / "processor_config.json").read_text())
    for key, filename in (("image_processor", "preprocessor_config.json"),
                          ("video_processor", "video_preprocessor_config.json")):
        if key in proc and not (out / filename).exists():
            sub = {**proc[key], "processor_class": proc.get("processor_class", "Qwen3VLProcessor")}
            (out / filename).write_text(json.dumps(sub, indent=2) + "\n")
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg["tokenizer_class"] = "Qwen2Tokenizer"
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    cfg = json.loads((out / "config.json").read_text())
    text = cfg["text_config"]
    rope = text.get("rope_parameters") or {}
    text.setdefault("rope_theta", rope.get("rope_theta"))
    text.setdefault("rope_scaling", {"rope_type": "default", "mrope_section": rope.get("mrope_section"),
                                     "mrope_interleaved": True})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def glorot_vision_init(visual: Any) -> None:
    """Glorot-uniform weights (zero biases) for every linear layer and the patch embedding of a
    Qwen3-VL vision tower; norms and the learned position grid keep their initial values."""
    import torch

    with torch.no_grad():
        for module in visual.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
        proj = visual.patch_embed.proj  # Conv3d whose kernel equals its stride: a linear map per patch
        torch.nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if proj.bias is not None:
            proj.bias.zero_()


def build_model_dir(out_dir: str | Path, recipe: str | dict[str, Any] = "tiny", seed: int = 0, *,
                    min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """Write a loadable Qwen3-VL model directory (random seeded weights) and return its path."""
    import torch
    import transformers
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    name = recipe if isinstance(recipe, str) else "custom"
    full = resolve_recipe(recipe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(full["vocab_size"])
    config = build_config(full, tokenizer)
    torch.manual_seed(seed)
    model: Any = Qwen3VLForConditionalGeneration(config)
    if full["vision_init"] == "xavier":
        glorot_vision_init(model.model.visual)
    model = model.to(torch.float32).eval()
    ids = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=ids.bos_token_id, pad_token_id=ids.pad_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"),
                      tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    build_processor(tokenizer, min_pixels, max_pixels).save_pretrained(out)
    _write_compat_files(out)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"made_by": "vqaserve.modeling.builder.build_model_dir", "recipe": name, "resolved": full,
            "seed": seed, "min_pixels": min_pixels, "max_pixels": max_pixels, "parameters": n_params,
            "vocab_size": len(tokenizer), "versions": {"torch": torch.__version__,
                                                       "transformers": transformers.__version__}}
    (out / "build_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return out
