"""The transformers engine behind the one request path: wiring.build_pipeline with the tiny model."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from tiny_vlm import TINY_MAX_PIXELS, TINY_MIN_PIXELS, ok, picture_bytes, request

from tests.conftest import subprocess_env, vqa_cmd
from vqaserve.pipeline import Pipeline
from vqaserve.settings import load_settings
from vqaserve.types import GenerationParams, ImageRef, Part, Question, Turn
from vqaserve.wiring import build_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir: Path) -> Pipeline:
    pipe = build_pipeline(load_settings(model=str(tiny_model_dir), min_pixels=TINY_MIN_PIXELS))
    asyncio.run(pipe.engine.start())
    yield pipe
    asyncio.run(pipe.engine.close())


def question(data: bytes, text: str, **params: object) -> Question:
    return Question(turns=[Turn(role="user", parts=[Part(image_ref=ImageRef(kind="bytes", payload=data)),
                                                    Part(text=text)])],
                    params=GenerationParams(max_new_tokens=8, **params))  # type: ignore[arg-type]


async def test_pipeline_answers_with_the_model_budget(pipeline: Pipeline) -> None:
    # the settings allow up to 1280 visual tokens; the tiny model's processor declares at most 64
    assert pipeline.settings.images.max_pixels > TINY_MAX_PIXELS
    assert pipeline.budget().as_tuple() == (TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    data = picture_bytes((900, 600), (10, 120, 200))
    q = question(data, "What color is it?")
    answer = await pipeline.answer(q)
    (image,) = q.images
    assert image.width * image.height <= TINY_MAX_PIXELS and image.width % 32 == image.height % 32 == 0
    direct = ok((await pipeline.engine.generate([request("What color is it?", image, max_new_tokens=8)]))[0])
    assert (answer.text, answer.usage) == (direct.text, direct.usage)
    assert answer.model == pipeline.model_id
    assert answer.usage.prompt_tokens > image.visual_tokens  # the image's pads are in the prompt
    assert {"decode", "generate"} <= set(answer.timings)


async def test_pipeline_stream_equals_answer(pipeline: Pipeline) -> None:
    data = picture_bytes((200, 300), (200, 200, 0))
    answer = await pipeline.answer(question(data, "这是什么颜色？"))
    status, deltas = await pipeline.open_stream(question(data, "这是什么颜色？"))
    pieces = [d async for d in deltas]
    assert "".join(d.text for d in pieces) == answer.text
    assert pieces[-1].finish_reason == answer.finish_reason


# a fresh interpreter imports torch + transformers: ~20-40 s on a busy 2-core machine
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vqa_ask_with_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "product.png"
    image.write_bytes(picture_bytes((160, 120), (220, 30, 30)))
    proc = subprocess.run(vqa_cmd("ask", str(image), "What color is it?", "--model", str(tiny_model_dir),
                                  "--max-new-tokens", "5", "--json"),
                          env=subprocess_env(VQA_SAFETY_IMAGE="off"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == tiny_model_dir.name
    assert out["usage"]["completion_tokens"] <= 5 and out["finish_reason"] in ("stop", "length")
    assert 0.0 <= out["confidence"] <= 1.0 and out["review"] is (out["confidence"] < 0.5)  # VQA_REVIEW_BELOW


def test_vqa_ask_missing_model_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "product.png"
    image.write_bytes(picture_bytes((64, 64), (0, 0, 0)))
    proc = subprocess.run(vqa_cmd("ask", str(image), "What?", "--model", str(tmp_path / "no-such-model")),
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "not found" in proc.stderr
