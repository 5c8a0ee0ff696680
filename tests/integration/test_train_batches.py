"""The training stream: one question count per batch (less padding), same mix, same batch for a number."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from tiny_vlm import TINY_MAX_PIXELS, TINY_MIN_PIXELS


def _maker(model_dir: Path, max_turns: int = 4, curriculum: int = 0):  # type: ignore[no-untyped-def]
    from vqaserve.train.batches import BatchMaker

    return BatchMaker(str(model_dir), (TINY_MIN_PIXELS, TINY_MAX_PIXELS), [], [("train", 1.0)], 1.0,
                      batch_size=8, max_turns=max_turns, seed=0, mask_curriculum_steps=curriculum)


def _turns_per_row(batch, start_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    # Each turn opens a user and an assistant message with <|im_start|>.
    return [int((row == start_id).sum()) // 2 for row in batch["input_ids"]]


def test_every_row_of_a_batch_asks_the_same_number_of_questions(tiny_model_dir: Path) -> None:
    maker = _maker(tiny_model_dir)
    start_id = maker.encoder.tokenizer.convert_tokens_to_ids("<|im_start|>")
    counts: Counter[int] = Counter()
    fills = []
    for number in range(24):
        batch = maker.batch(number)
        turns = _turns_per_row(batch, start_id)
        assert len(set(turns)) == 1, f"batch {number} mixes question counts: {turns}"
        counts[turns[0]] += 1
        fills.append(float(batch["attention_mask"].float().mean()))
    assert set(counts) == {1, 2, 3, 4}  # the run still sees every count, drawn per batch
    assert sum(fills) / len(fills) > 0.8  # padding is what this exists to cut (was ~1/3 of a batch)


def test_a_batch_is_a_pure_function_of_its_number(tiny_model_dir: Path) -> None:
    import torch

    first, again = _maker(tiny_model_dir).batch(5), _maker(tiny_model_dir).batch(5)
    for key in ("input_ids", "labels", "pixel_values", "image_grid_thw"):
        assert torch.equal(first[key], again[key]), key


def test_curriculum_batches_cap_the_count_at_the_shape_questions(tiny_model_dir: Path) -> None:
    maker = _maker(tiny_model_dir, curriculum=100)
    start_id = maker.encoder.tokenizer.convert_tokens_to_ids("<|im_start|>")
    seen = {n for number in range(12) for n in _turns_per_row(maker.batch(number), start_id)}
    assert seen <= {1, 2} and 2 in seen  # only category and count are asked about a silhouette


def test_conversations_composed_from_cached_turns_are_the_templates_own_tokens(tiny_model_dir: Path) -> None:
    from vqaserve.train.data import _compute_segments, synthetic_conversation

    encoder = _maker(tiny_model_dir).encoder
    for index in range(300):  # well past the first conversations of each length, which are checked
        turns = synthetic_conversation("train", 3, index, max_turns=4).turns
        assert encoder.segments(turns) == _compute_segments(encoder, turns), turns
    assert encoder._composable


def test_the_template_is_rendered_per_distinct_turn_not_per_conversation(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from itertools import permutations

    from vqaserve.train import data

    renders = []
    real = data._compute_segments
    monkeypatch.setattr(data, "_compute_segments", lambda enc, turns: renders.append(turns) or real(enc, turns))
    encoder = _maker(tiny_model_dir).encoder
    asked = [("What color is it?", "red"), ("这是什么商品？", "T恤"), ("Is it red?", "yes"),
             ("How many items are there?", "2"), ("What pattern does it have?", "plain"),
             ("适合什么场合？", "休闲")]
    conversations = list(permutations(asked, 3))  # 120 distinct conversations of 6 distinct turns
    for turns in conversations:
        encoder.segments(turns)
    # At most each turn as a first and as a later turn, the fixed opening, and the 16 whole-conversation
    # checks of this length: a cache keyed by conversation would render the template 120 times.
    assert len(renders) <= 2 * len(asked) + 1 + 16


def test_a_template_that_renders_turns_in_context_turns_composition_off(tiny_model_dir: Path) -> None:
    from vqaserve.train.data import _compute_segments

    encoder = _maker(tiny_model_dir).encoder
    template = encoder.processor.apply_chat_template

    def numbered(messages, **kwargs):  # type: ignore[no-untyped-def]
        # Numbers the user turns: still prefix-stable, but a turn's text depends on its place.
        parts = template(messages, **kwargs).split("<|im_start|>user")
        return parts[0] + "".join(f"<|im_start|>user {n}{part}" for n, part in enumerate(parts[1:], 1))

    encoder.processor.apply_chat_template = numbered
    turns = (("What color is it?", "red"), ("这是什么商品？", "T恤"), ("Is it red?", "yes"))
    got = encoder.segments(turns)
    assert not encoder._composable
    assert got == _compute_segments(encoder, turns)


def test_the_batch_worker_leaves_when_the_trainer_is_killed(tiny_model_dir: Path) -> None:
    """`vqa train` killed with SIGKILL cannot shut its pool down: the worker must notice by itself."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.conftest import subprocess_env

    code = ("import sys, time; from vqaserve.train.batches import Prefetcher; "
            f"p = Prefetcher(({str(tiny_model_dir)!r}, ({TINY_MIN_PIXELS}, {TINY_MAX_PIXELS}), [], "
            "[('train', 1.0)], 1.0, 2, 1, 0), workers=1, start=0); p.get(); print('ready', flush=True); "
            "time.sleep(600)")
    trainer = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env(), stdout=subprocess.PIPE,
                               text=True)
    workers: list[psutil.Process] = []
    try:
        assert trainer.stdout is not None and trainer.stdout.readline().strip() == "ready"
        workers = [c for c in psutil.Process(trainer.pid).children(recursive=True)
                   if "spawn_main" in " ".join(c.cmdline())]
        assert workers, "no batch worker started"
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"orphaned batch workers: {[p.pid for p in alive]}"
    finally:
        for process in [psutil.Process(trainer.pid)] if trainer.poll() is None else []:
            process.kill()
        for worker in workers:
            if worker.is_running():
                worker.kill()  # only if the check above failed: leave no orphan behind
