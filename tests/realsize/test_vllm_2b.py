"""The 2B stand-in through a real vLLM (CPU build) started with docs/deploy.md's single-GPU flags, a
gateway in front and the in-process engine beside: 1, 4 and 12 MP pictures cost the same prompt tokens
on all three paths (the pixel budget agrees everywhere), and the gateway's answers are vLLM's.

    VLLM_CPU_KVCACHE_SPACE=2 .venv/bin/python -m pytest -m realsize tests/realsize/test_vllm_2b.py -v

Memory: vLLM ~4.3 GB of bf16 weights + 2 GiB KV cache, the in-process 2B ~6 GB, the gateway ~0.7 GB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_support import ServeProcess
from tests.integration.test_vllm_deploy_doc import PICTURES, _body, _jpeg, _post, single_gpu_flags
from tests.realsize.support import SLOW_ENV, record, standin
from tests.vllm_support import serving
from vqaserve.bench.vllm_server import VllmServer

pytestmark = [pytest.mark.realsize, pytest.mark.vllm, pytest.mark.timeout(4 * 3600)]


def _adapter(model: Path, out: Path) -> str:
    """A random rank-8 q_proj/v_proj LoRA for the 2B (bf16 load: the weights are memory-mapped)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    if not (out / "adapter_config.json").is_file():
        base = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.bfloat16)
        config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def vllm_2b() -> Iterator[VllmServer]:
    model = standin("qwen3-vl-2b")
    adapter = _adapter(model, model.parent / "qwen3-vl-2b-lora")
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    yield from serving(VllmServer(model, extra_args=tuple(single_gpu_flags(adapter)), env=env,
                                  ready_timeout_s=3600))


def test_2b_prompt_tokens_agree_in_process_through_the_gateway_and_direct(vllm_2b: VllmServer,
                                                                           tmp_path: Path) -> None:
    model = standin("qwen3-vl-2b")
    common = {**SLOW_ENV, "VQA_SAFETY_IMAGE": "off", "VQA_LLM__UPSTREAM_IMAGE_FORMAT": "png"}
    figures = {}
    with ServeProcess(tmp_path / "inproc.log", "--model", str(model), ready_timeout=1800, **common) as inproc, \
            ServeProcess(tmp_path / "gw.log", **common, VQA_ENGINE="upstream",
                         VQA_UPSTREAM_URL=vllm_2b.url + "/v1") as gateway:
        for seed, (label, size) in enumerate(PICTURES.items()):
            body = _body(model.name, _jpeg(size, seed), "What is this product?", cache=False)
            direct = _post(vllm_2b.url, {k: v for k, v in body.items() if k != "cache"})
            through, local = _post(gateway.url, body), _post(inproc.url, body)
            tokens = [r["usage"]["prompt_tokens"] for r in (local, through, direct)]
            figures[label] = tokens
            assert tokens == [tokens[0]] * 3, f"{label}: in process / gateway / vLLM = {tokens}"
            assert through["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    record("qwen3-vl-2b-vllm", {"command": "scripts/vllm.sh serve 2B -- <docs/deploy.md single-GPU flags>",
                                "prompt_tokens_inprocess_gateway_vllm": figures})
