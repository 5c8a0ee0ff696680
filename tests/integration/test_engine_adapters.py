"""LoRA adapters on one base model: each answer uses exactly its adapter; the base stays bit-identical."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tiny_vlm import COLOURS, QUESTIONS, SIZES, ok, picture, request

from vqaserve.engines.transformers import TransformersEngine
from vqaserve.errors import ConfigError
from vqaserve.settings import load_settings
from vqaserve.types import EngineResult

pytestmark = pytest.mark.integration
Pair = tuple[TransformersEngine, TransformersEngine]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) B matrices, so it really changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(1)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora") / "shop"
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, adapter_dir: Path) -> tuple[TransformersEngine, TransformersEngine]:
    plain = TransformersEngine(load_settings(model=str(tiny_model_dir)))
    with_lora = TransformersEngine(load_settings(model=str(tiny_model_dir),
                                                 adapters={"shop": str(adapter_dir)}))
    for eng in (plain, with_lora):
        asyncio.run(eng.start())
    yield plain, with_lora
    for eng in (plain, with_lora):
        asyncio.run(eng.close())


async def test_adapter_changes_answers_and_base_stays_identical(
        engines: Pair) -> None:
    plain, with_lora = engines
    assert with_lora.adapters() == ["shop"] and with_lora.info().adapters == ["shop"]
    pics = [picture(s, c) for s, c in zip(SIZES, COLOURS, strict=True)]
    asked = list(zip(QUESTIONS, pics, strict=True))
    base_ref = [ok(r) for r in await plain.generate([request(q, p) for q, p in asked])]
    base_now = [ok(r) for r in await with_lora.generate([request(q, p) for q, p in asked])]
    assert [(r.text, r.usage) for r in base_now] == [(r.text, r.usage) for r in base_ref]
    tuned = [ok(r) for r in await with_lora.generate(
        [request(q, p, adapter="shop") for q, p in asked])]
    assert [r.text for r in tuned] != [r.text for r in base_ref]


async def test_mixed_batch_never_mixes_adapters(engines: Pair) -> None:
    _, with_lora = engines
    pics = [picture(s, c) for s, c in zip(SIZES[:2], COLOURS[:2], strict=True)]
    mixed = [request(QUESTIONS[i], pics[i], rid=f"{kind}{i}", adapter=adapter)
             for i in (0, 1) for kind, adapter in (("base", None), ("shop", "shop"))]
    together = await with_lora.generate(mixed)
    alone = [(await with_lora.generate([r]))[0] for r in mixed]
    assert all(isinstance(r, EngineResult) for r in together)
    assert [ok(r).text for r in together] == [ok(r).text for r in alone]


def test_bad_adapter_path_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    eng = TransformersEngine(load_settings(model=str(tiny_model_dir), adapters={"x": str(tmp_path)}))
    with pytest.raises(ConfigError, match="adapter 'x'"):
        asyncio.run(eng.start())
    asyncio.run(eng.close())
