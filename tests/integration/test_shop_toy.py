"""The committed shop-toy model answers catalogue questions through the service's pipeline.

Seeded questions, so the figures are exact and repeatable; the thresholds are regression floors
(the targets and the full n = 1,000 figures are in docs/eval.md).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import subprocess_env, vqa_cmd
from vqaserve.eval.harness import evaluate, items_from_jsonl
from vqaserve.settings import BUNDLED_MODELS, load_settings
from vqaserve.train.recipes import get_recipe
from vqaserve.train.synthetic import make_sample, png_bytes, write_split

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = BUNDLED_MODELS / "shop-toy"
ADAPTER = BUNDLED_MODELS / "shop-toy-sunglasses"

# Regression floors, not the targets (those are in docs/eval.md), on 200 seeded questions per split
# (seed 2024). The committed model (run 13) scores there: test 94.0%, heldout 93.5%, paraphrase
# 90.5%, the sunglasses adapter 86.5% on its split; the attributes as JSON on held-out wordings,
# field by field, category 94.0%, color 96.5%, pattern 94.5%, occasions 63.0%; the can't-tell
# sentence 100%; catalogue questions refused at most 1.5% (paraphrase). Each floor sits 3 points (6
# answers) lower, the refusal ceiling 1 point higher: greedy answers on a fixed set only move when
# batch make-up or another CPU's arithmetic flips a borderline answer, while a broken model,
# template, wording, grammar or image path costs far more.
FLOORS = {"test": 0.91, "heldout": 0.905, "paraphrase": 0.875}
ADAPTER_FLOOR = 0.835
JSON_FIELD_FLOORS = {"category": 0.91, "color": 0.935, "pattern": 0.915, "occasions": 0.60}  # held-out wordings
UNANSWERABLE_FLOOR = 0.97  # held-out unanswerable questions answered with the sentence in their language
REFUSED_CEILING = 0.025  # share of catalogue questions (each split) answered with that sentence


def _accuracy(split: str, n: int, seed: int, tmp: Path, adapter: bool = False,  # type: ignore[type-arg]
              task: str = "qa") -> dict:
    from vqaserve.wiring import build_pipeline

    items = items_from_jsonl(str(write_split(split, n, seed, tmp / f"{split}-{task}", task=task)))
    adapters = {"shop-toy-sunglasses": str(ADAPTER)} if adapter else None
    settings = load_settings(model="shop-toy", engine="transformers", safety_image="off", adapters=adapters)

    async def run() -> dict:  # type: ignore[type-arg]
        pipeline = build_pipeline(settings)
        await pipeline.engine.start()
        try:
            report = await evaluate(pipeline, items, model="shop-toy-sunglasses" if adapter else None,
                                    concurrency=16, progress=False)
        finally:
            await pipeline.engine.close()
        return report.summary()

    return asyncio.run(run())


def test_bundled_model_is_complete_and_small() -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
                 "train.json", "README.md"):
        assert (MODEL / name).is_file(), name
    assert (MODEL / "model.safetensors").stat().st_size <= 60 * 1024 * 1024  # issue 23's ceiling
    info = json.loads((MODEL / "train.json").read_text())
    # Made with a fixed step count, so any machine reproduces it: by the recipe as it stands, or as a
    # full fine-tune of an earlier shop-toy (docs/train.md), whose train.json names its base.
    if info["recipe"] is not None:
        assert info["recipe"] == "shop-toy" and info["steps"] == get_recipe("shop-toy")["train"]["steps"]
    else:
        assert info["mode"] == "full" and info["base_model"] and info["steps"] == info["config"]["steps"]


@pytest.mark.parametrize("split", sorted(FLOORS))
def test_split_accuracy_does_not_regress(split: str, tmp_path: Path) -> None:
    summary = _accuracy(split, 200, 2024, tmp_path)
    assert summary["failed_requests"] == 0
    assert summary["overall"] >= FLOORS[split], summary["by_type"]
    assert summary["refusals"]["catalogue"]["share"] <= REFUSED_CEILING, summary["examples_wrong"]


def test_attributes_as_json_are_right_field_by_field(tmp_path: Path) -> None:
    """Held-out wordings of "the attributes as JSON", asked with the attribute schema as
    response_format: each field right often enough, and the answer always the schema's object."""
    summary = _accuracy("paraphrase", 200, 2024, tmp_path, task="json")
    assert summary["failed_requests"] == 0
    assert set(summary["by_field"]) == set(JSON_FIELD_FLOORS)
    for name, stats in summary["by_field"].items():
        assert stats["accuracy"] >= JSON_FIELD_FLOORS[name], (name, summary["by_field"])


def test_questions_a_photo_cannot_answer_get_the_cant_tell_sentence(tmp_path: Path) -> None:
    summary = _accuracy("paraphrase", 200, 2024, tmp_path, task="unanswerable")
    assert summary["failed_requests"] == 0
    assert summary["refusals"]["unanswerable"]["in_language"] >= UNANSWERABLE_FLOOR, summary["by_type_lang"]


def test_sunglasses_adapter_accuracy_does_not_regress(tmp_path: Path) -> None:
    assert (ADAPTER / "adapter_config.json").is_file()
    summary = _accuracy("adapter", 200, 2024, tmp_path, adapter=True)
    assert summary["failed_requests"] == 0
    assert summary["overall"] >= ADAPTER_FLOOR, summary["by_type"]
    assert summary["by_type"]["category"]["accuracy"] >= 0.9, summary["by_type"]  # 96.5%: it says "sunglasses"


def test_vqa_ask_with_the_bundled_adapter_runs(tmp_path: Path) -> None:
    sample = make_sample("adapter", 7, 0, qtype="category", lang="en")
    picture = tmp_path / "sunglasses.png"
    picture.write_bytes(png_bytes(sample.image))
    proc = subprocess.run(vqa_cmd("ask", "--model", "shop-toy", "--adapter", "shop-toy-sunglasses",
                                  str(picture), "What is this product?"),
                          env=subprocess_env(VQA_SAFETY_IMAGE="off"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()  # an answer, through the adapter (its accuracy: the floors above and docs/eval.md)
    assert "Traceback" not in proc.stderr


def test_vqa_eval_asks_the_paraphrase_split_and_other_wordings(tmp_path: Path) -> None:
    env = subprocess_env(VQA_SAFETY_IMAGE="off")
    for extra, source in ((["--synthetic", "paraphrase"], "synthetic paraphrase n=7 seed=1"),
                          (["--synthetic", "test", "--phrasing", "1"], "synthetic test n=7 seed=1 phrasing=1"),
                          (["--synthetic", "paraphrase", "--task", "json"],
                           "synthetic paraphrase n=7 seed=1 task=json"),
                          (["--synthetic", "test", "--task", "unanswerable"],
                           "synthetic test n=7 seed=1 task=unanswerable")):
        out = tmp_path / "report.json"
        proc = subprocess.run(vqa_cmd("eval", *extra, "--n", "7", "--seed", "1", "--quiet", "--out", str(out)),
                              env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.read_text(encoding="utf-8"))
        assert report["data"] == source and report["n"] == 7 and report["failed_requests"] == 0
        if "json" in extra:  # asked with the schema: always the attribute object, scored per field
            assert set(report["by_field"]) == {"category", "color", "pattern", "occasions"}
            assert "JSON fields right:" in proc.stdout
    for bad_args, needle in ((["--synthetic", "test", "--phrasing", "7"], "--phrasing"),
                             (["--synthetic", "test", "--task", "json", "--phrasing", "1"], "--task")):
        bad = subprocess.run(vqa_cmd("eval", *bad_args), env=env, capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert bad.returncode == 2 and needle in bad.stderr and "Traceback" not in bad.stderr
