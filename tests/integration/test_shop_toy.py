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


def _accuracy(split: str, n: int, seed: int, tmp: Path, adapter: bool = False) -> dict:  # type: ignore[type-arg]
    from vqaserve.wiring import build_pipeline

    items = items_from_jsonl(str(write_split(split, n, seed, tmp / split)))
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
    # Made by the recipe as it stands: a fixed step count, so any machine reproduces it.
    assert info["recipe"] == "shop-toy" and info["steps"] == get_recipe("shop-toy")["train"]["steps"]


# Regression floors, not the targets (those are in docs/eval.md). On these exact 200 seeded questions
# per split the committed model (run 12) scores 85.5% (test), 84.0% (heldout), 65.0% (paraphrase)
# and, with the sunglasses adapter, 85.0% (adapter split); each floor sits 3 points (6 answers) lower:
# greedy answers on a fixed set only move when batch make-up or another CPU's arithmetic flips a
# borderline answer, while a broken model, template, wording or image path costs far more.
# Raise them when a better model is committed.
FLOORS = {"test": 0.82, "heldout": 0.81, "paraphrase": 0.62}
ADAPTER_FLOOR = 0.82


@pytest.mark.parametrize("split", sorted(FLOORS))
def test_split_accuracy_does_not_regress(split: str, tmp_path: Path) -> None:
    summary = _accuracy(split, 200, 2024, tmp_path)
    assert summary["failed_requests"] == 0
    assert summary["overall"] >= FLOORS[split], summary["by_type"]


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
                          (["--synthetic", "test", "--phrasing", "1"], "synthetic test n=7 seed=1 phrasing=1")):
        out = tmp_path / "report.json"
        proc = subprocess.run(vqa_cmd("eval", *extra, "--n", "7", "--seed", "1", "--quiet", "--out", str(out)),
                              env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.read_text(encoding="utf-8"))
        assert report["data"] == source and report["n"] == 7 and report["failed_requests"] == 0
    bad = subprocess.run(vqa_cmd("eval", "--synthetic", "test", "--phrasing", "7"), env=env,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "--phrasing" in bad.stderr and "Traceback" not in bad.stderr
