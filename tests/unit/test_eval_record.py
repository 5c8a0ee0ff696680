"""`vqa eval --record DIR`: the figures go into DIR/train.json, keyed by data source (and adapter);
DIR may be a bundled model's name, as with --model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqaserve import settings
from vqaserve.cli.eval import record
from vqaserve.errors import ConfigError

pytestmark = pytest.mark.unit
REPORT = {"command": "vqa eval ...", "n": 7, "overall": 0.5, "by_type": {}, "by_lang": {}, "created": "now",
          "adapter": None, "duration_s": 1.0}


def test_figures_are_kept_by_source_in_train_json(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text(json.dumps({"steps": 3}), encoding="utf-8")
    record(str(tmp_path), "synthetic test n=7 seed=1", REPORT)
    record(str(tmp_path), "synthetic test n=7 seed=1", {**REPORT, "adapter": "sun", "overall": 0.25})
    info = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    assert info["steps"] == 3
    assert info["eval"]["synthetic test n=7 seed=1"]["overall"] == 0.5
    assert info["eval"]["synthetic test n=7 seed=1 + sun"]["overall"] == 0.25
    assert "duration_s" not in info["eval"]["synthetic test n=7 seed=1"]


def test_a_bundled_name_is_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "train.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(settings, "BUNDLED_MODELS", tmp_path)
    record("toy", "synthetic heldout n=7 seed=1", REPORT)
    assert "synthetic heldout n=7 seed=1" in json.loads((tmp_path / "toy" / "train.json").read_text())["eval"]


def test_a_dir_without_train_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--record: .* not found"):
        record(str(tmp_path), "synthetic test n=7 seed=1", REPORT)
