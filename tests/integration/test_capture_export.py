"""`vqa data export`: rated captures become the jsonl `vqa train` and `vqa eval` read; then the loop's
offline half on the tiny model: export -> LoRA -> `vqa eval --compare` with the gate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.capture_helpers import BACKENDS, ago, make_store, picture, record, store_url
from tests.conftest import subprocess_env, vqa_cmd
from vqaserve.capture import CapturedPicture, Feedback
from vqaserve.capture.export import export
from vqaserve.capture.writer import encode_png
from vqaserve.errors import InvalidRequest
from vqaserve.train.data import load_jsonl

pytestmark = pytest.mark.integration

TURNS_FOLLOW_UP = ({"role": "user", "text": "What is it?", "images": 1}, {"role": "assistant", "text": "a hat"},
                   {"role": "user", "text": "What color?", "images": 0})


async def fill(store: Any) -> dict[str, CapturedPicture]:
    pics = {name: picture(color) for name, color in
            {"p1": (200, 0, 0), "p2": (0, 200, 0), "p3": (0, 0, 200), "p4": (9, 9, 9), "p5": (90, 90, 90),
             "p6": (250, 250, 0), "p7": (0, 250, 250)}.items()}
    rows = [
        record("corrected", pictures=(pics["p1"],), answer="hat", created=ago(hours=9),
               feedback=Feedback("down", "sunglasses", at=ago(hours=1))),
        record("older-rating", pictures=(pics["p1"],), answer="hat", created=ago(hours=10),
               feedback=Feedback("up", at=ago(hours=8))),  # same picture and question, rated earlier: loses
        record("confirmed", pictures=(pics["p2"],), question="这是什么颜色？", answer="绿色", created=ago(hours=8),
               feedback=Feedback("up", at=ago(hours=2))),
        record("down-only", pictures=(pics["p3"],), created=ago(hours=7), feedback=Feedback("down", at=ago(hours=2))),
        record("unrated", pictures=(pics["p4"],), created=ago(hours=6)),
        record("two-pictures", pictures=(pics["p1"], pics["p2"]), created=ago(hours=5),
               feedback=Feedback("up", at=ago(hours=2))),
        record("follow-up", pictures=(pics["p3"],), created=ago(hours=4), feedback=Feedback("up", at=ago(hours=2)),
               turns=TURNS_FOLLOW_UP),
        record("hash-only", pictures=(pics["p5"],), created=ago(hours=3), feedback=Feedback("up", at=ago(hours=2))),
        record("p6-a", pictures=(pics["p6"],), question="What is it?", answer="a cap", created=ago(hours=2),
               feedback=Feedback("up", at=ago(hours=1))),
        record("p6-b", pictures=(pics["p6"],), question="What color is it?", answer="yellow", created=ago(hours=2),
               feedback=Feedback("up", at=ago(hours=1))),
        record("p7", pictures=(pics["p7"],), answer="a bag", created=ago(hours=1),
               feedback=Feedback("down", "a backpack", at=ago(minutes=30))),
        record("too-old", pictures=(pics["p2"],), created=ago(days=20), feedback=Feedback("up", at=ago(days=19))),
    ]
    stored = {h: encode_png(p.image) for h, p in ((p.content_hash, p) for n, p in pics.items() if n != "p5")}
    await store.write(rows, stored)
    return pics


@pytest.mark.parametrize("kind", BACKENDS)
async def test_export_keeps_corrections_and_thumbs_up_and_counts_the_rest(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = make_store(kind, tmp_path, request)
    pics = await fill(store)
    out = tmp_path / "export"
    result = await export(store, out, since=ago(days=2), holdout=0.0, command="vqa data export ...")
    await store.close()
    lines = [json.loads(x) for x in (out / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    got = {(x["id"], x["question"], x["answer"], x["type"], x["lang"]) for x in lines}
    assert got == {("corrected", "What is it?", "sunglasses", "corrected", "en"),
                   ("confirmed", "这是什么颜色？", "绿色", "confirmed", "zh"),
                   ("p6-a", "What is it?", "a cap", "confirmed", "en"),
                   ("p6-b", "What color is it?", "yellow", "confirmed", "en"),
                   ("p7", "What is it?", "a backpack", "corrected", "en")}
    assert not (out / "holdout.jsonl").exists() and result.holdout == 0
    records = load_jsonl(out / "data.jsonl")  # exactly what vqa train and vqa eval read
    assert {Path(r.image).name for r in records if r.answer == "sunglasses"} == {f"{pics['p1'].content_hash}.png"}
    info = json.loads((out / "export.json").read_text())
    assert info["counts"] == {
        "captured_in_range": 11, "rated": 10, "unrated_left_out": 1,
        "kept": {"corrected": 2, "confirmed": 3},
        "dropped": {"down_without_correction": 1, "duplicate_picture_and_question": 1,
                    "follow_up_or_several_questions": 1, "picture_not_stored": 1, "several_pictures": 1}}
    assert info["command"] == "vqa data export ..." and info["holdout"] == 0.0
    assert "secret" not in info["source"] and info["time_range"]["first"] < info["time_range"]["last"]


async def test_the_holdout_is_split_by_picture(tmp_path: Path) -> None:
    store = make_store("sqlite", tmp_path)
    pics = [picture((i * 20, 255 - i * 20, 7)) for i in range(10)]
    rows = [record(f"r{i}-{q}", pictures=(p,), question=f"question {q}?", answer="x",
                   feedback=Feedback("up")) for i, p in enumerate(pics) for q in range(3)]
    await store.write(rows, {p.content_hash: encode_png(p.image) for p in pics})
    splits = []
    for seed in (1, 1, 2):
        out = tmp_path / f"out-{len(splits)}"
        result = await export(store, out, holdout=0.3, seed=seed)
        assert (result.train, result.holdout) == (21, 9)  # 3 of 10 pictures, 3 questions each
        train = {Path(r.image).name for r in load_jsonl(out / "data.jsonl")}
        held = {Path(r.image).name for r in load_jsonl(out / "holdout.jsonl")}
        assert len(train) == 7 and len(held) == 3 and not train & held
        splits.append(held)
    assert splits[0] == splits[1] and splits[0] != splits[2]  # the seed decides, and only the seed
    await store.close()


async def test_nothing_usable_and_an_existing_export_are_clear_errors(tmp_path: Path) -> None:
    store = make_store("sqlite", tmp_path)
    red = picture((200, 0, 0))
    await store.write([record("unrated", pictures=(red,)), record("down", pictures=(red,), feedback=Feedback("down"))],
                      {red.content_hash: encode_png(red.image)})
    with pytest.raises(InvalidRequest, match=r"nothing to export: 1 rated and 1 unrated .*1 down without correction"):
        await export(store, tmp_path / "out")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "data.jsonl").write_text("")
    with pytest.raises(InvalidRequest, match="already holds an export"):
        await export(store, tmp_path / "done")
    with pytest.raises(InvalidRequest, match="--holdout must be a fraction"):
        await export(store, tmp_path / "x", holdout=1.0)
    await store.close()


def vqa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vqa_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=timeout)


@pytest.mark.slow
async def test_export_train_and_compare_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    """Captured sunglasses questions with corrections -> export -> a LoRA adapter -> the gate."""
    from vqaserve.train.synthetic import iter_samples
    from vqaserve.train.trainer import TrainConfig, train

    url = store_url("postgresql", tmp_path, request)
    store = make_store("postgresql", tmp_path, request)
    samples = list(iter_samples("adapter", 12, seed=5))
    rows, pngs = [], {}
    for i, s in enumerate(samples):
        pic = CapturedPicture(f"sun{i:02d}", s.image)
        pngs[pic.content_hash] = encode_png(s.image)
        rows.append(record(f"chatcmpl-{i}", pictures=(pic,), question=s.question, answer="a hat", confidence=0.1,
                           feedback=Feedback("down", s.answer)))
    await store.write(rows, pngs)
    await store.close()

    out = tmp_path / "export"
    done = vqa("data", "export", "--capture", url, "--out", str(out), "--holdout", "0.25", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "data.jsonl")
    assert "exported 9 training and 3 held-out question(s)" in done.stderr and "0 unrated" in done.stderr

    adapter = tmp_path / "adapter"
    train(TrainConfig(out=str(adapter), model=str(tiny_model_dir), data=[str(out / "data.jsonl")], lora=True,
                      steps=2, batch_size=4, warmup=1, workers=0, checkpoint_every=0, threads=1),
          log=lambda _m: None)

    report = tmp_path / "compare.json"
    done = vqa("eval", "--compare", str(tiny_model_dir), f"{tiny_model_dir}+{adapter}", "--data",
               str(out / "holdout.jsonl"), "--data", "test", "--n", "4", "--max-regression", "100", "--quiet",
               "--out", str(report), "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    assert "holdout.jsonl" in done.stdout and "test n=4 seed=1" in done.stdout and "paired" in done.stdout
    rows_out = json.loads(report.read_text())["rows"]
    assert [(r["n"], r["base_failed"], r["candidate_failed"]) for r in rows_out] == [(3, 0, 0), (4, 0, 0)]
