"""The model builder: a directory that loads through the normal Auto* path, with Qwen3-VL's pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_vlm import TINY_MAX_PIXELS, TINY_MIN_PIXELS, picture

from vqaserve.modeling.builder import SPECIAL_TOKENS, build_tokenizer

pytestmark = pytest.mark.integration


def test_directory_loads_through_auto_classes(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3VLProcessor"
    ip = processor.image_processor
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (16, 2, 2)
    assert list(ip.image_mean) == list(ip.image_std) == [0.5, 0.5, 0.5]
    assert (ip.size["shortest_edge"], ip.size["longest_edge"]) == (TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    config = model.config
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = config.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.head_dim // 2
    info = json.loads((tiny_model_dir / "build_info.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_chat_template_expands_one_pad_per_visual_token(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    image = picture((320, 192), (1, 2, 3))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "这是什么颜色？"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>这是什么颜色？"
                      "<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor(text=[prompt], images=[image.image], return_tensors="pt", do_resize=False)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == pad).sum()) == image.visual_tokens


def test_tokenizer_is_deterministic_and_knows_the_catalogue() -> None:
    a, b = build_tokenizer(), build_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    for token in SPECIAL_TOKENS:
        assert len(a.encode(token, add_special_tokens=False)) == 1
    # answers as they start an assistant turn: whole learned words, not bytes
    for phrase in ["sunglasses", "太阳镜", "2件", "business", "商务", "checked", "格子", "不是", "T恤",
                   "t-shirt", "purple"]:
        ids = a.encode(phrase, add_special_tokens=False)
        assert a.decode(ids) == phrase
        assert len(ids) <= 2, phrase
    for phrase in ["a red striped t-shirt", "一件红色条纹T恤"]:
        assert len(a.encode(phrase, add_special_tokens=False)) <= 7
    assert a.padding_side == "left" and a.eos_token == "<|im_end|>"
