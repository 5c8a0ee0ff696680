"""Full-size stand-ins (`vqa model random`): the published architectures counted on the meta device,
Qwen's vocabulary and ids, and the very builder run on a shrunken copy of the 2B (seconds)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tiny_vlm import SHRUNK_2B, ok, picture, request

from vqaserve.modeling.standins import ARCHITECTURES, build_standin, parameter_count, standin_config

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def shrunk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # small shards, so the multi-shard index path (the 8B's 9 shards) is what gets loaded
    return build_standin(tmp_path_factory.mktemp("standin"), SHRUNK_2B, seed=3, shard_bytes=8_000_000,
                         command="pytest shrunk 2B")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_published_architectures_have_the_published_parameter_counts(name: str) -> None:
    arch = ARCHITECTURES[name]
    config = standin_config(arch)
    assert config.model_type == "qwen3_vl" and config.text_config.vocab_size == 151936
    # the Hugging Face model pages: 2.13 B, 4.44 B, 8.77 B (counted on the meta device: no memory)
    assert round(parameter_count(config) / 1e9, 2) == arch.published_billions
    assert config.tie_word_embeddings is (name != "qwen3-vl-8b")  # the 8B has its own lm_head


def test_the_tokenizer_is_qwens_vocabulary_with_qwens_ids(shrunk_dir: Path) -> None:
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(shrunk_dir).tokenizer
    assert len(tok) == 151669  # 151,643 BPE + 26 added tokens, below config's padded 151,936
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "</think>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                   "<|vision_start|>": 151652, "<|image_pad|>": 151655, "</think>": 151668}
    # ids the published tokenizer gives (Qwen2/Qwen3 prompts quoted in public tests)
    assert tok("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")["input_ids"] == [
        151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]
    assert tok("You are a helpful assistant.")["input_ids"] == [2610, 525, 264, 10950, 17847, 13]
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"


def test_the_shrunk_standin_loads_in_bf16_and_says_it_is_random(shrunk_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from vqaserve.engines.placement import stored_parameters

    info = json.loads((shrunk_dir / "standin.json").read_text())
    assert info["random_weights"] is True and "RANDOM WEIGHTS" in info["warning"]
    assert info["seed"] == 3 and info["command"] == "pytest shrunk 2B" and info["versions"]["torch"]
    assert info["sources"]["architecture"].startswith("pytorch/torchtitan")
    assert "RANDOM WEIGHTS" in (shrunk_dir / "README.md").read_text().splitlines()[0]
    index = json.loads((shrunk_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model, loading = AutoModelForImageTextToText.from_pretrained(shrunk_dir, dtype="auto", output_loading_info=True)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert not any(loading.values())  # no missing, unexpected or mismatched weight
    assert {p.dtype for p in model.parameters()} == {__import__("torch").bfloat16}
    assert stored_parameters(shrunk_dir) == info["parameters"] == sum(p.numel() for p in model.parameters())
    pre = json.loads((shrunk_dir / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 65536, "longest_edge": 16777216} and pre["patch_size"] == 16


async def test_the_engine_answers_with_it_and_warns(shrunk_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from vqaserve.engines.transformers import TransformersEngine
    from vqaserve.settings import load_settings

    engine = TransformersEngine(load_settings(model=str(shrunk_dir), device="cpu"))
    with caplog.at_level(logging.INFO, logger="vqaserve.engines.transformers"):
        await engine.start()
    try:
        assert any("RANDOM WEIGHTS" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        # 10 M parameters: float32 even on a bf16-native CPU (the placement rule's size floor)
        assert engine.info().dtype == "float32"
        (result,) = await engine.generate([request("What is it?", picture((64, 96), (200, 20, 20)),
                                                   max_new_tokens=3)])
        assert ok(result).usage.completion_tokens == 3
    finally:
        await engine.close()


def test_vqa_model_random_refuses_a_used_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vqaserve.cli import main

    (tmp_path / "keep.txt").write_text("mine")
    assert main(["model", "random", "qwen3-vl-8b", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqa: error: --out") and "not empty" in err and "\n" not in err
    assert (tmp_path / "keep.txt").read_text() == "mine"
