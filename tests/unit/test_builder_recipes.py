"""Recipe validation of the model builder (no torch: resolve_recipe is plain Python)."""

from __future__ import annotations

import pytest

from vqaserve.modeling.builder import DEFAULTS, RECIPES, resolve_recipe
from vqaserve.modeling.corpus import CATEGORIES_ZH, COLOURS_EN, corpus

pytestmark = pytest.mark.unit


def test_named_recipes_are_valid_and_vllm_friendly() -> None:
    for name in RECIPES:
        full = resolve_recipe(name)
        assert full["text_head_dim"] in (64, 128)
        assert full["vision_hidden_size"] // full["vision_heads"] in (64, 128)
        assert sum(full["mrope_section"]) == full["text_head_dim"] // 2


def test_a_dict_recipe_fills_missing_keys_from_defaults() -> None:
    full = resolve_recipe({"text_layers": 3})
    assert full["text_layers"] == 3
    assert full["initializer_range"] == DEFAULTS["initializer_range"] == 0.02  # trainable init


@pytest.mark.parametrize(("recipe", "needle"), [
    ("huge", "unknown recipe"),
    ({"text_layerz": 2}, "unknown recipe keys"),
    ({"text_head_dim": 128}, "mrope_section"),
    ({"text_heads": 3, "text_kv_heads": 2}, "multiple of text_kv_heads"),
    ({"vision_num_position_embeddings": 300}, "square"),
    ({"deepstack_visual_indexes": [5]}, "below vision_depth"),
    ({"vision_init": "kaiming"}, "vision_init"),
])
def test_bad_recipes_say_what_to_fix(recipe: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        resolve_recipe(recipe)  # type: ignore[arg-type]


def test_corpus_covers_the_catalogue() -> None:
    text = "\n".join(corpus())
    for word in [*COLOURS_EN, *CATEGORIES_ZH, "sunglasses", "太阳镜", "2件", "不是", "适合什么场合？",
                 "a red striped t-shirt", "一件红色条纹T恤", "a red t-shirt", "一件红色T恤",
                 "How many items are there?"]:
        assert word in text
    assert corpus() == corpus()  # deterministic order


def test_glorot_vision_init_scales_the_vision_tower_only() -> None:
    """shop-toy's vision tower is ~100 wide: std 0.02 would leave its attention logits near zero."""
    import math

    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from vqaserve.modeling.builder import build_config, build_tokenizer, glorot_vision_init

    full = resolve_recipe({"vision_hidden_size": 64, "vision_intermediate_size": 128, "vision_init": "xavier"})
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(build_config(full, build_tokenizer(full["vocab_size"])))
    text_before = model.model.language_model.layers[0].self_attn.q_proj.weight.clone()
    glorot_vision_init(model.model.visual)
    qkv = model.model.visual.blocks[0].attn.qkv.weight  # (3 * 64, 64): Glorot std = sqrt(2 / (64 + 192))
    assert abs(qkv.std().item() - math.sqrt(2 / (64 + 192))) < 0.01
    assert torch.equal(model.model.language_model.layers[0].self_attn.q_proj.weight, text_before)
