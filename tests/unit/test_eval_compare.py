"""`vqa eval --compare`: the paired difference and its SE, model choices, and the gate's exit code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import image_bytes
from tests.pipelines import wired_pipeline
from vqaserve.engines.scripted import ScriptedEngine
from vqaserve.errors import InvalidRequest
from vqaserve.eval import compare as cmp
from vqaserve.eval.harness import EvalItem, evaluate
from vqaserve.pipeline import Pipeline
from vqaserve.settings import BUNDLED_MODELS, Settings

pytestmark = pytest.mark.unit


def test_the_paired_difference_and_its_standard_error() -> None:
    # d = candidate - base per question: [0, -1, +1, +1] -> mean 0.25, sample sd sqrt(2.75 / 3)
    diff, se = cmp.paired([True, True, False, False], [True, False, True, True])
    assert diff == pytest.approx(25.0)
    assert se == pytest.approx(math.sqrt(2.75 / 3 / 4) * 100)
    assert cmp.paired([True] * 10, [True] * 10) == (0.0, 0.0)  # the same answers: no doubt at all
    assert math.isnan(cmp.paired([True], [False])[1])
    with pytest.raises(ValueError):
        cmp.paired([True], [True, False])


def test_models_are_written_as_for_model_and_adapter() -> None:
    toy, sun = str(BUNDLED_MODELS / "shop-toy"), str(BUNDLED_MODELS / "shop-toy-sunglasses")
    assert cmp.parse_choice("shop-toy") == cmp.ModelChoice("shop-toy", toy)
    alone = cmp.parse_choice("shop-toy-sunglasses")  # an adapter dir names its base model
    assert (alone.model, alone.adapter, alone.adapter_path) == (toy, "shop-toy-sunglasses", sun)
    joined = cmp.parse_choice("shop-toy+shop-toy-sunglasses")
    assert (joined.model, joined.adapter, joined.adapter_path) == (toy, "shop-toy-sunglasses", sun)
    assert cmp.parse_choice("org/hub-model").model == "org/hub-model"
    with pytest.raises(InvalidRequest, match="write MODEL\\+ADAPTER"):
        cmp.parse_choice("shop-toy+")


def scripted_build(model: str, adapters: dict[str, str]) -> Pipeline:
    """The scripted engine: the base echoes "answer to: Q (1 image)", an adapter prefixes "[name] "."""
    return wired_pipeline(ScriptedEngine(model_id=model, adapter_names=list(adapters)),
                          Settings(images={"min_pixels": 1024, "max_pixels": 32 * 32 * 16}, safety_image="off"))


async def scripted_evaluate(pipeline: Any, items: Any, adapter: str | None) -> Any:
    return await evaluate(pipeline, items, model=adapter, concurrency=4, progress=False)


def items(tmp_path: Path, both_right: int, base_only: int) -> tuple[EvalItem, ...]:
    picture = tmp_path / "p.png"
    picture.write_bytes(image_bytes((64, 64)))
    same = [EvalItem(str(picture), f"[[say:red {i}]]", f"red {i}") for i in range(both_right)]
    base = [EvalItem(str(picture), f"Q{i}?", f"answer to: Q{i}? (1 image)") for i in range(base_only)]
    return tuple(same + base)


async def test_compare_answers_each_data_set_with_both_models(tmp_path: Path) -> None:
    data = [cmp.DataSet("same", items(tmp_path, 8, 0)), cmp.DataSet("worse", items(tmp_path, 6, 4))]
    base, candidate = cmp.ModelChoice("m", "m"), cmp.ModelChoice("m+v2", "m", "v2", "/adapters/v2")
    rows, details = await cmp.compare(base, candidate, data, scripted_build, scripted_evaluate)
    assert [(r.data, r.n, r.base, r.candidate) for r in rows] == [("same", 8, 1.0, 1.0), ("worse", 10, 1.0, 0.6)]
    assert rows[1].diff_points == pytest.approx(-40.0) and rows[1].se_points > 0
    assert not rows[0].regressed(0.0) and rows[1].regressed(39.0) and not rows[1].regressed(41.0)
    assert details["worse"]["candidate"]["overall"] == 0.6
    table = cmp.format_rows(rows, base, candidate, 2.0)
    assert "worse" in table and "-40.0 ±" in table and "WORSE" in table and "paired" in table


def test_the_gate_exits_1_naming_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from vqaserve.cli import main

    lines = [{"image": str(it.image), "question": it.question, "answer": it.answer} for it in items(tmp_path, 3, 2)]
    data = tmp_path / "holdout.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setattr(cmp, "_builder", lambda args: scripted_build)
    out = tmp_path / "compare.json"
    code = main(["eval", "--compare", "m", "m+v2", "--data", str(data), "--max-regression", "5", "--quiet",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"worse than the base by more than 5 points on {data}: -40.0 points" in captured.err
    report = json.loads(out.read_text())
    assert report["rows"][0]["diff_points"] == pytest.approx(-40.0) and report["max_regression"] == 5.0
    assert main(["eval", "--compare", "m", "m+v2", "--data", str(data), "--max-regression", "50", "--quiet"]) == 0


@pytest.mark.parametrize(("argv", "needle"), [
    (["--compare", "m", "n"], "--compare needs at least one --data"),
    (["--compare", "m", "n", "--data", "nowhere.jsonl"], "--data 'nowhere.jsonl' is neither a jsonl file nor a split"),
    (["--compare", "m", "n", "--data", "test", "--max-regression", "-1"], "--max-regression must be"),
    (["some.jsonl", "--compare", "m", "n", "--data", "test"], "give the data sets as --data"),
])
def test_compare_input_errors_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vqaserve.cli import main

    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
