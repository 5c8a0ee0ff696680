"""Full-size stand-ins (`vqa model random`): the published architectures counted on the meta device,
Qwen's vocabulary and ids, and the very builder run on a shrunken copy of the 2B (seconds)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from tiny_vlm import ok, picture, request

from vqaserve.modeling.standins import ARCHITECTURES, parameter_count, standin_config

pytestmark = pytest.mark.integration

@pytest.fixture
def shrunk_dir(shrunk_standin: Path) -> Path:
    return shrunk_standin


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
    assert info["seed"] == 0 and info["command"] == "pytest shrunk 2B" and info["versions"]["torch"]
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


def test_gpu_check_rehearses_on_the_cpu(shrunk_standin: Path, tmp_path: Path) -> None:
    """scripts/gpu-check.sh's measurements (--dry-run: CPU, the shrunk 2B, small pictures): every part
    of the record is there, and doctor's forecast sits next to each measured peak."""
    from vqaserve.bench import gpu_check

    assert shrunk_standin.name == gpu_check.SHRUNK_2B.name  # so --work finds it and does not rebuild
    out = tmp_path / "record.json"
    assert gpu_check.main(["--dry-run", "--work", str(shrunk_standin.parent), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["dry_run"] and record["device"] == "cpu" and record["load"]["seconds"] > 0
    for part in ("answers_batch_1", "answers_batch_16", "lora_no_checkpointing", "lora_checkpointing"):
        assert record[part]["measured_bytes"] > 0 and record[part]["forecast"]["total_bytes"] > 0, part
    assert record["answers_batch_16"]["batch"] == 2 and record["answers_batch_1"]["new_tokens"] == 32
    assert record["lora_checkpointing"]["gradient_checkpointing"] is True
    # `vqa train` with the flags the GPU run uses (--device cpu here), with and without checkpointing
    assert [run["returncode"] for run in record["vqa_train"]] == [0, 0]


def test_gpu_check_runs_vqa_train_with_the_trainers_cuda_flags() -> None:
    from vqaserve.bench.gpu_check import train_command

    cmd = train_command("d.jsonl", "M", "O", device="cuda", steps=2, batch=2, checkpointing=True, load_in_4bit=True)
    assert cmd[1:] == ["-m", "vqaserve", "train", "d.jsonl", "--model", "M", "--lora", "--device", "cuda",
                       "--dtype", "bfloat16", "--grad-accum", "1", "--steps", "2", "--batch-size", "2",
                       "--out", "O", "--gradient-checkpointing", "--load-in-4bit"]


def test_gpu_check_without_cuda_says_so_and_stops() -> None:
    import subprocess

    from tests.conftest import REPO, subprocess_env

    proc = subprocess.run(["bash", "scripts/gpu-check.sh"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable, OUT=str(REPO / "no-out")))
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr, proc.stderr
    assert not (REPO / "no-out").exists()  # nothing written before the check
