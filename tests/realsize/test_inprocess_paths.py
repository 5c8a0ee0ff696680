"""Every in-process path at the real size: the 2B stand-in behind `vqa serve` answers chat, a stream,
/v1/vqa, structured output, a cache hit and a follow-up that reuses the vision tower's output.

    .venv/bin/python -m pytest -m realsize tests/realsize/test_inprocess_paths.py -v
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.http_support import ServeProcess
from tests.realsize.support import SLOW_ENV, picture_png, record, standin
from vqaserve.images.decode import data_uri

pytestmark = [pytest.mark.realsize, pytest.mark.timeout(3 * 3600)]
SIZE = (512, 512)  # 256 visual tokens: Qwen's advised floor, minutes less per answer than 1280 on CPU


def _chat(url: str, png: bytes, question: str, **extra: object) -> httpx.Response:
    uri = data_uri(png)
    body = {"model": "qwen3-vl-2b", "temperature": 0, "max_tokens": 16, **extra,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": question}]}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=3600)


def test_2b_standin_serves_every_path(tmp_path: Path) -> None:
    model = standin("qwen3-vl-2b")
    started = time.monotonic()
    with ServeProcess(tmp_path / "serve.log", "--model", str(model), ready_timeout=1800, **SLOW_ENV) as server:
        load_s = time.monotonic() - started
        png = picture_png(SIZE, seed=7)
        seconds: dict[str, float] = {}

        t = time.monotonic()
        first = _chat(server.url, png, "What is this product?")
        seconds["chat"] = time.monotonic() - t
        assert first.status_code == 200 and first.headers["x-vqa-cache"] == "miss", first.text
        assert first.json()["usage"]["prompt_tokens"] >= 256

        t = time.monotonic()
        again = _chat(server.url, png, "What is this product?")
        seconds["cache_hit"] = time.monotonic() - t
        assert again.headers["x-vqa-cache"] == "hit"
        assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]

        t = time.monotonic()
        follow = _chat(server.url, png, "What colour is it?")  # same picture: the vision memo answers
        seconds["follow_up"] = time.monotonic() - t
        assert follow.status_code == 200
        metrics = httpx.get(server.url + "/metrics", timeout=30).text
        hits = [line for line in metrics.splitlines()
                if line.startswith("vqa_vision_tower_images_total") and 'result="hit"' in line]
        assert hits and float(hits[0].split()[-1]) >= 1, "the follow-up did not reuse the vision-tower output"

        t = time.monotonic()
        events = []
        uri = data_uri(picture_png(SIZE, seed=8))
        body = {"model": "qwen3-vl-2b", "temperature": 0, "max_tokens": 16, "stream": True,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                          {"type": "text", "text": "Describe it."}]}]}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=3600) as resp:
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line.startswith("data: ")]
        seconds["stream"] = time.monotonic() - t
        assert events[-1] == "data: [DONE]" and len(events) >= 3

        t = time.monotonic()
        # An enum, not a free string: random weights would fill a string until max_tokens cut the JSON.
        schema = {"type": "object", "properties": {"colour": {"enum": ["red", "blue", "green"]}},
                  "required": ["colour"], "additionalProperties": False}
        structured = _chat(server.url, picture_png(SIZE, seed=9), "Its colour?", max_tokens=48,
                           response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
        seconds["structured"] = time.monotonic() - t
        assert structured.status_code == 200, structured.text
        parsed = json.loads(structured.json()["choices"][0]["message"]["content"])
        assert isinstance(parsed, dict) and parsed["colour"] in ("red", "blue", "green")

        t = time.monotonic()
        vqa = httpx.post(server.url + "/v1/vqa", timeout=3600, data={"question": "What is it?", "max_tokens": "16"},
                         files={"image": ("p.png", picture_png(SIZE, seed=10), "image/png")})
        seconds["vqa"] = time.monotonic() - t
        assert vqa.status_code == 200 and vqa.json()["answer"] is not None
    record("qwen3-vl-2b-paths", {"command": "vqa serve --model qwen3-vl-2b (stand-in), pictures 512x512, "
                                            "16 new tokens", "load_seconds": round(load_s, 1),
                                 "seconds": {k: round(v, 2) for k, v in seconds.items()}})
