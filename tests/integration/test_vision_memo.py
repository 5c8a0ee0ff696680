"""Follow-up questions reuse the vision tower's output: same answers, fewer tower runs, bounded memory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_vlm import COLOURS, QUESTIONS, SIZES, ok, picture, request

from vqaserve.engines.transformers import TransformersEngine
from vqaserve.engines.vision_memo import VisionMemo, serving, totals
from vqaserve.metrics import Metrics
from vqaserve.settings import load_settings
from vqaserve.types import NormalizedImage

pytestmark = pytest.mark.integration


async def started(model: str, **overrides: Any) -> TransformersEngine:
    engine = TransformersEngine(load_settings(model=model, **overrides))
    await engine.start()
    return engine


def memo_of(engine: TransformersEngine) -> VisionMemo:
    assert engine.vision_memo is not None
    return engine.vision_memo


def scopes(engine: TransformersEngine, *names: str) -> set[str]:
    """The memo scopes (PEFT adapter names) of the current versions of adapters `names`."""
    out = set()
    for name in names:
        version = engine.adapter_table.current(name)
        assert version is not None
        out.add(str(engine._peft.peft_name(version.key)))
    return out


class TowerCalls:
    """Counts vision-tower forwards and the images in each."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.images: list[int] = []
        self._handle = memo_of(engine)._module.visual.register_forward_hook(self._seen, with_kwargs=True)

    def _seen(self, module: Any, args: Any, kwargs: Any, out: Any) -> None:
        self.images.append(int(kwargs["grid_thw"].shape[0]))

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path) -> Iterator[tuple[TransformersEngine, TransformersEngine]]:
    reuse = asyncio.run(started(str(tiny_model_dir)))
    plain = asyncio.run(started(str(tiny_model_dir), vision_memo_mb=0))
    assert plain.vision_memo is None
    yield reuse, plain
    for engine in (reuse, plain):
        asyncio.run(engine.close())


@pytest.fixture
def tower(pair: tuple[TransformersEngine, TransformersEngine]) -> Iterator[TowerCalls]:
    calls = TowerCalls(pair[0])
    yield calls
    calls.close()


def pics(shade: int) -> list[NormalizedImage]:
    """Four pictures no other test uses (the memo is shared by the module's tests)."""
    return [picture(s, (c[0], c[1], (c[2] + shade) % 256)) for s, c in zip(SIZES, COLOURS, strict=True)]


async def answers(engine: TransformersEngine, asked: list[tuple[str, NormalizedImage]],
                  adapter: str | None = None) -> list[tuple[str, Any]]:
    results = await engine.generate([request(q, p, rid=f"{i}", adapter=adapter)
                                     for i, (q, p) in enumerate(asked)])
    return [(ok(r).text, ok(r).usage) for r in results]


async def test_follow_ups_answer_exactly_as_without_reuse(pair: tuple[TransformersEngine, TransformersEngine],
                                                          tower: TowerCalls) -> None:
    reuse, plain = pair
    p = pics(1)
    first = list(zip(QUESTIONS, p, strict=True))
    second = list(zip(QUESTIONS[1:] + QUESTIONS[:1], reversed(p), strict=True))
    assert await answers(reuse, first) == await answers(plain, first)
    assert tower.images == [4]
    assert await answers(reuse, second) == await answers(plain, second)
    assert tower.images == [4]  # the follow-ups never reached the tower


async def test_second_question_skips_the_tower(pair: tuple[TransformersEngine, TransformersEngine],
                                               tower: TowerCalls) -> None:
    reuse, _ = pair
    memo, pic = memo_of(reuse), pics(2)[0]
    hits, misses, before = memo.hits, memo.misses, totals()
    await answers(reuse, [(QUESTIONS[0], pic)])
    await answers(reuse, [(QUESTIONS[2], pic)])
    assert tower.images == [1]
    assert (memo.hits - hits, memo.misses - misses) == (1, 1)
    now = totals()
    assert now["hit"] - before["hit"] >= 1 and now["miss"] - before["miss"] >= 1
    assert b'vqa_vision_tower_images_total{result="hit"}' in Metrics().render()


async def test_a_batch_mixing_seen_and_unseen_pictures(pair: tuple[TransformersEngine, TransformersEngine],
                                                       tower: TowerCalls) -> None:
    reuse, plain = pair
    p = pics(3)
    await answers(reuse, [(QUESTIONS[0], p[1]), (QUESTIONS[0], p[3])])
    assert tower.images == [2]
    mixed = [(QUESTIONS[1], p[0]), (QUESTIONS[1], p[1]), (QUESTIONS[2], p[2]), (QUESTIONS[3], p[3])]
    assert await answers(reuse, mixed) == await answers(plain, mixed)
    assert tower.images == [2, 2]  # only the two unseen pictures, in one tower call


async def test_no_reuse_outside_serving(pair: tuple[TransformersEngine, TransformersEngine],
                                        tower: TowerCalls) -> None:
    """Training and direct model calls (gradients on, or outside the engine) always run the tower."""
    import torch

    reuse, _ = pair
    pic = pics(4)[0]
    await answers(reuse, [(QUESTIONS[0], pic)])
    inputs = reuse._prepare([request(QUESTIONS[0], pic)])
    module = memo_of(reuse)._module
    with torch.inference_mode():
        module.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    with torch.enable_grad():
        module.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert tower.images == [1, 1, 1]


async def test_without_picture_ids_the_key_is_the_pixel_values(pair: tuple[TransformersEngine, TransformersEngine],
                                                                tower: TowerCalls) -> None:
    import torch

    reuse, _ = pair
    p = pics(7)
    inputs = reuse._prepare([request(QUESTIONS[0], p[0]), request(QUESTIONS[1], p[1])])
    pv, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    module = memo_of(reuse)._module
    with torch.inference_mode():
        direct = module.get_image_features(pv, grid)
        with serving(memo_of(reuse), None):
            first = module.get_image_features(pv, grid)
            again = module.get_image_features(pv, grid)
            one = module.get_image_features(pv[:int(grid[0].prod())], grid[:1])
    assert tower.images == [2, 2]  # the direct call, then the first served one; the rest reused
    for out in (first, again):
        assert all(torch.equal(a, b) for a, b in zip(out.pooler_output, direct.pooler_output, strict=True))
        for layer, ref in zip(out.deepstack_features, direct.deepstack_features, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(layer, ref, strict=True))
    assert torch.equal(one.pooler_output[0], direct.pooler_output[0])


async def test_memory_is_bounded_by_entries_bytes_and_age(tiny_model_dir: Path) -> None:
    engine = await started(str(tiny_model_dir))
    memo, calls, p = memo_of(engine), TowerCalls(engine), pics(5)
    try:
        memo.store.max_entries = 2
        for pic in p[:3]:
            await answers(engine, [(QUESTIONS[0], pic)])
        assert len(memo) == 2 and memo.store.evictions == 1
        await answers(engine, [(QUESTIONS[0], p[0])])  # the oldest was evicted: the tower runs again
        assert calls.images == [1, 1, 1, 1]

        memo.clear()
        memo.store.max_entries = 100
        await answers(engine, [(QUESTIONS[0], p[0])])
        memo.store.max_bytes = memo.store.nbytes  # room for exactly this one picture
        await answers(engine, [(QUESTIONS[0], p[1])])
        assert len(memo) == 1 and memo.store.nbytes <= memo.store.max_bytes

        now = [1000.0]
        memo.store.clock = lambda: now[0]
        memo.clear()
        memo.store.max_bytes = 1 << 30
        await answers(engine, [(QUESTIONS[0], p[2])])
        now[0] += memo.store.ttl_s + 1
        await answers(engine, [(QUESTIONS[1], p[2])])  # too old: computed again
        assert calls.images[-2:] == [1, 1]
    finally:
        calls.close()
        await engine.close()


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`eye` changes the vision tower (its `qkv`), `talk` only the language model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    out = {}
    for seed, (name, targets) in enumerate([("eye", ["qkv"]), ("talk", ["q_proj", "v_proj"])]):
        torch.manual_seed(seed + 1)
        base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
        config = LoraConfig(r=8, lora_alpha=64, target_modules=targets, init_lora_weights=False)
        out[name] = str(tmp_path_factory.mktemp("lora") / name)
        get_peft_model(base, config).save_pretrained(out[name])
    return out


async def test_adapters_that_change_the_tower_get_their_own_entries(tiny_model_dir: Path,
                                                                    lora_dirs: dict[str, str]) -> None:
    reuse = await started(str(tiny_model_dir), adapters=lora_dirs)
    plain = await started(str(tiny_model_dir), adapters=lora_dirs, vision_memo_mb=0)
    calls = TowerCalls(reuse)
    try:
        assert memo_of(reuse).vision_adapters == scopes(reuse, "eye")
        p = pics(6)
        asked = [(QUESTIONS[0], p[0]), (QUESTIONS[1], p[1])]
        follow = [(QUESTIONS[2], p[1]), (QUESTIONS[3], p[0])]
        for adapter in (None, "eye", "talk", "eye", None):
            assert await answers(reuse, asked, adapter) == await answers(plain, asked, adapter)
            assert await answers(reuse, follow, adapter) == await answers(plain, follow, adapter)
        assert calls.images == [2, 2]  # base (shared with `talk`), then `eye`: each once
        assert await answers(reuse, asked, "eye") != await answers(reuse, asked)  # `eye` really differs
    finally:
        calls.close()
        for engine in (reuse, plain):
            await engine.close()


async def test_the_bundled_sunglasses_adapter_counts_as_a_vision_adapter() -> None:
    engine = await started("shop-toy", adapters={"sunglasses": "shop-toy-sunglasses"})
    try:
        assert memo_of(engine).vision_adapters == scopes(engine, "sunglasses")
    finally:
        await engine.close()


async def test_a_reloaded_vision_adapter_never_gets_its_predecessors_features(
        tiny_model_dir: Path, lora_dirs: dict[str, str], tmp_path: Path) -> None:
    """`eye` reloaded with other weights: the same picture goes through the tower again, and the
    answers are the new weights' own (as an engine that never saw the old ones gives them)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(7)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["qkv"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "eye2")
    reuse = await started(str(tiny_model_dir), adapters={"eye": lora_dirs["eye"]})
    fresh = await started(str(tiny_model_dir), adapters={"eye": str(tmp_path / "eye2")}, vision_memo_mb=0)
    calls = TowerCalls(reuse)
    try:
        asked = [(QUESTIONS[0], pics(9)[0])]
        before = await answers(reuse, asked, "eye")
        old_scope = scopes(reuse, "eye")
        loaded = await reuse.load_adapter("eye", str(tmp_path / "eye2"))
        assert loaded.status == "reloaded" and scopes(reuse, "eye") != old_scope
        await reuse.adapter_table.settle()  # nothing pins the old version: its weights are gone
        assert memo_of(reuse).vision_adapters == scopes(reuse, "eye")
        after = await answers(reuse, asked, "eye")
        assert after == await answers(fresh, asked, "eye") and after != before
        assert calls.images == [1, 1]  # the picture went through the tower again, for the new weights
    finally:
        calls.close()
        for engine in (reuse, fresh):
            await engine.close()
