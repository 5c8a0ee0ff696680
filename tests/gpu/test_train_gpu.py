"""`vqa train` on CUDA: bf16 LoRA with checkpointing and accumulation, and QLoRA on a 4-bit base.

Skipped without CUDA. Run on a GPU machine: `pytest tests/gpu -m gpu`. The same flags run on the CPU in
tests/integration/test_train_precision.py; here the model must land on the GPU and stay there.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from cuda_only import BUDGET, require_cuda

pytestmark = pytest.mark.gpu


require_cuda()

from vqaserve.train.trainer import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vqaserve.modeling.builder import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("tiny-train-gpu"), "tiny", seed=0,
                           min_pixels=BUDGET[0], max_pixels=BUDGET[1])


def _run(model_dir: Path, out: Path, **kw: object) -> tuple[object, dict]:  # type: ignore[type-arg]
    cfg = TrainConfig(out=str(out), model=str(model_dir), lora=True, device="cuda", gradient_checkpointing=True,
                      grad_accum=2, batch_size=2, steps=3, lr=1e-2, warmup=1, synthetic="train:1", max_turns=1,
                      workers=0, checkpoint_every=0, **kw)  # type: ignore[arg-type]
    result = train(cfg, log=lambda _m: None)
    return result, json.loads((out / "train.json").read_text())


def test_lora_trains_on_the_gpu_in_half_precision(model_dir: Path, tmp_path: Path) -> None:
    import torch

    result, info = _run(model_dir, tmp_path / "adapter")
    model = result.model  # type: ignore[attr-defined]
    assert all(math.isfinite(v) for v in result.losses)  # type: ignore[attr-defined]
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    trained = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trained} == {torch.float32}
    assert info["placement"]["device"] == "cuda"
    assert info["placement"]["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_qlora_trains_an_adapter_on_a_4bit_base(model_dir: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed here: pip install 'vqaserve[gpu]'")
    result, info = _run(model_dir, tmp_path / "qlora", load_in_4bit=True)
    assert info["placement"]["load_in_4bit"] is True
    assert all(math.isfinite(v) for v in result.losses)  # type: ignore[attr-defined]
    kinds = {type(p).__name__ for p in result.model.parameters()}  # type: ignore[attr-defined]
    assert "Params4bit" in kinds  # the base really is 4-bit
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]  # type: ignore[attr-defined]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
