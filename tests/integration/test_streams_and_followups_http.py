"""Through HTTP, on the bundled model in a `vqa serve` process: concurrent streams share batches and
answer as non-streamed requests do; a follow-up question about a photo reuses its vision-tower output."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.http_support import ServeProcess
from tests.vllm_support import catalogue, chat_body, content

pytestmark = pytest.mark.integration


def streamed(url: str, body: dict) -> str:
    text = ""
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
    return text


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+(\S+)", text, re.M))


def test_concurrent_streams_batch_and_follow_ups_reuse_the_picture(tmp_path: Path) -> None:
    samples = catalogue("test", 8, seed=21)
    with ServeProcess(tmp_path / "serve.log", VQA_SAFETY_IMAGE="off", VQA_BATCH_MAX_WAIT_MS="50") as server:
        bodies = [chat_body(png, q, "shop-toy", cache=False) for png, q, _ in samples]
        batches_before = metric(server.url, "vqa_batch_size_count")
        with ThreadPoolExecutor(8) as pool:
            streams = list(pool.map(lambda b: streamed(server.url, b), bodies))
        batches = metric(server.url, "vqa_batch_size_count") - batches_before
        assert batches < len(bodies)  # streams joined batches instead of taking turns
        plain = [content(httpx.post(server.url + "/v1/chat/completions", json=b, timeout=120)) for b in bodies]
        assert streams == plain

        png, _, _ = samples[0]
        hits = 'vqa_vision_tower_images_total{result="hit"}'
        before = metric(server.url, hits)
        body = chat_body(png, "这件外套适合什么场合穿？", "shop-toy", cache=False)
        follow_up = content(httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120))
        assert follow_up and metric(server.url, hits) == before + 1
