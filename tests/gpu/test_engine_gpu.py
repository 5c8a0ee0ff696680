"""The transformers engine on CUDA: automatic bf16/fp16 placement, batched and streamed answers.

Skipped without CUDA. Run on a GPU machine: `pytest tests/gpu -m gpu`.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from cuda_only import BUDGET, require_cuda
from PIL import Image

pytestmark = pytest.mark.gpu


require_cuda()

from vqaserve.engines.transformers import TransformersEngine  # noqa: E402
from vqaserve.images import decode as imgs  # noqa: E402
from vqaserve.settings import load_settings  # noqa: E402
from vqaserve.types import EngineRequest, EngineResult, GenerationParams, Part, Turn  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    from vqaserve.modeling.builder import build_model_dir

    model_dir: Path = build_model_dir(tmp_path_factory.mktemp("tiny-gpu"), "tiny", seed=0,
                                      min_pixels=BUDGET[0], max_pixels=BUDGET[1])
    eng = TransformersEngine(load_settings(model=str(model_dir)))
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


def ask(question: str, size: tuple[int, int], rid: str) -> EngineRequest:
    buf = io.BytesIO()
    Image.new("RGB", size, (size[0] % 256, 90, 200)).save(buf, "PNG")
    image = imgs.normalize(buf.getvalue(), *BUDGET, 10**8, "image")
    return EngineRequest(turns=[Turn(role="user", parts=[Part(image=image), Part(text=question)])],
                         params=GenerationParams(max_new_tokens=12), request_id=rid)


def test_auto_placement_is_cuda_half_precision(engine: TransformersEngine) -> None:
    import torch

    info = engine.info()
    assert info.device == "cuda"
    assert info.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")


async def test_batched_and_streamed_generation_on_gpu(engine: TransformersEngine) -> None:
    asked = [("What color is it?", (64, 96)), ("这是什么颜色？", (320, 192)),
             ("Describe this product.", (128, 128))]
    batch = [ask(q, s, f"r{i}") for i, (q, s) in enumerate(asked)]
    results = await engine.generate(batch)
    assert all(isinstance(r, EngineResult) and r.usage.completion_tokens > 0 for r in results)
    (again,) = await engine.generate([ask("What color is it?", (64, 96), "again")])
    (once,) = await engine.generate([ask("What color is it?", (64, 96), "once")])
    assert isinstance(again, EngineResult) and isinstance(once, EngineResult)
    assert again.text == once.text  # greedy on GPU is repeatable
    deltas = [d async for d in engine.stream(ask("What color is it?", (64, 96), "streamed"))]
    assert "".join(d.text for d in deltas) == once.text
    assert deltas[-1].usage == once.usage
