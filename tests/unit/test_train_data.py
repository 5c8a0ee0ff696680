"""Dataset lines are checked before training: each bad line names its file and line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqaserve.errors import ConfigError
from vqaserve.eval.harness import EvalItem, Outcome, Report, format_table, is_correct, normalize_answer
from vqaserve.train.data import DatasetError, load_jsonl
from vqaserve.train.trainer import parse_mix

pytestmark = pytest.mark.unit


def _dataset(tmp_path: Path, lines: list[bytes]) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not decoded here")
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"image": "images/a.png", "question": "What color is it?", "answer": "red"}).encode()


@pytest.mark.parametrize(("bad", "words"), [
    (json.dumps({"image": "images/missing.png", "question": "q", "answer": "a"}).encode(), "not found"),
    (json.dumps({"image": "images/a.png", "question": "q"}).encode(), "'answer' is missing"),
    (json.dumps({"image": "images/a.png", "question": "", "answer": "a"}).encode(), "'question' is missing"),
    ('{"image": "images/a.png", "question": "颜色", "answer": "红"}'.encode("gbk"), "not UTF-8"),
    (b'{"image": "images/a.png", "question": ', "not valid JSON"),
    (b'["images/a.png", "q", "a"]', "JSON object"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, bad: bytes, words: str) -> None:
    path = _dataset(tmp_path, [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DatasetError) as info:
        load_jsonl(path)
    assert f"{path}:3" in info.value.message
    assert words in info.value.message
    assert "--skip-bad-lines" in info.value.message


def test_skip_bad_lines_keeps_the_good_ones(tmp_path: Path) -> None:
    bad = json.dumps({"image": "images/missing.png", "question": "q", "answer": "a"}).encode()
    path = _dataset(tmp_path, [GOOD, bad, b"", GOOD])
    warnings: list[str] = []
    records = load_jsonl(path, skip_bad_lines=True, warn=warnings.append)
    assert [r.where for r in records] == [f"{path}:1", f"{path}:4"]
    assert any(f"{path}:2" in w for w in warnings)


def test_paths_relative_to_the_file_absolute_and_urls(tmp_path: Path) -> None:
    absolute = json.dumps({"image": str(tmp_path / "images" / "a.png"), "question": "q", "answer": " a "})
    url = json.dumps({"image": "https://shop.example/p.png", "question": "q", "answer": "a", "type": "color",
                      "lang": "en"})
    records = load_jsonl(_dataset(tmp_path, [GOOD, absolute.encode(), url.encode()]))
    assert records[0].image == str((tmp_path / "images" / "a.png").resolve())
    assert records[1].image == records[0].image and records[1].answer == "a"
    assert records[2].image.startswith("https://") and records[2].type == "color"


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no usable lines"):
        load_jsonl(tmp_path / "empty.jsonl")


def test_synthetic_mix_parsing() -> None:
    assert parse_mix("adapter:0.7,train:0.3") == [("adapter", 0.7), ("train", 0.3)]
    assert parse_mix("train") == [("train", 1.0)]
    with pytest.raises(ConfigError, match="unknown split"):
        parse_mix("validation:1")
    with pytest.raises(ConfigError, match="not a number"):
        parse_mix("train:lots")


@pytest.mark.parametrize(("flag", "value"), [("steps", 0), ("batch_size", 0), ("vision_lr_scale", 0.0),
                                             ("mask_curriculum_steps", -1)])
def test_bad_training_flags_stop_before_anything_is_built(tmp_path: Path, flag: str, value: float) -> None:
    from vqaserve.train.trainer import TrainConfig, train

    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out), recipe="tiny", synthetic="train:1.0", **{flag: value})
    with pytest.raises(ConfigError, match="--" + flag.replace("_", "-")):
        train(cfg)
    assert not out.exists()  # no half-made output directory is left behind


@pytest.mark.parametrize(("got", "gold", "ok"), [
    ("Red", "red", True), (" red. ", "red", True), ("红色。", "红色", True), ("2件", "2件", True),
    ("a red striped t-shirt.", "a red striped t-shirt", True), ("red shirt", "red", False),
    ("2", "2件", False), ("", "red", False),
])
def test_scoring_is_exact_match_after_normalization(got: str, gold: str, ok: bool) -> None:
    assert is_correct(got, gold) is ok
    assert normalize_answer("  Yes. ") == "yes"


def test_report_table_by_type_and_language() -> None:
    items = [EvalItem("x.png", "q", "red", "color", "en"), EvalItem("x.png", "q", "红色", "color", "zh"),
             EvalItem("x.png", "q", "2", "count", "en")]
    report = Report([Outcome(items[0], "red", True), Outcome(items[1], "蓝色", False),
                     Outcome(items[2], "2", True)], duration_s=1.0)
    summary = report.summary()
    assert summary["overall"] == round(2 / 3, 4)
    assert summary["by_type"]["color"] == {"n": 2, "accuracy": 0.5}
    assert summary["by_lang"]["zh"] == {"n": 1, "accuracy": 0.0}
    assert summary["examples_wrong"][0]["got"] == "蓝色"
    table = format_table(summary, "title")
    assert "color" in table and "50.0%" in table and "66.7%" in table


def test_vision_tower_gets_its_own_lr_scale_and_no_decay_on_vectors() -> None:
    import torch

    from vqaserve.train.trainer import TrainConfig, _param_groups

    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = torch.nn.Linear(4, 4)  # named like Qwen3-VL's model.visual
            self.lm = torch.nn.Linear(4, 4)

    model = Toy()
    groups = _param_groups(model, TrainConfig(out="x", vision_lr_scale=0.25, weight_decay=0.1))
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == 4  # every trainable tensor exactly once
    assert by_param[id(model.visual.weight)]["lr_scale"] == 0.25
    assert by_param[id(model.visual.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.lm.weight)]["lr_scale"] == 1.0
    assert by_param[id(model.lm.weight)]["weight_decay"] == 0.1
