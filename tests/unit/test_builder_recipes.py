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
