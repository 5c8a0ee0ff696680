"""Follow-up questions about one photo, through the gateway: vLLM's multimodal cache recognises the
picture by the `uuid` the gateway sends (its content hash) and skips processing it again.

Its own vLLM: the session's one serves an adapter with vision-tower LoRA, for which scripts/vllm.sh
turns the processor cache off. (The prefix cache cannot show reuse on shop-toy: CPU vLLM's KV blocks
are >= 32 tokens, and shop-toy's whole template + picture prefix is shorter.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_support import ServeProcess
from tests.vllm_support import ask, catalogue, chat_body, content, gateway_env, serving
from vqaserve.bench.vllm_server import BUNDLED, VllmServer

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
QUESTIONS = ["What is this product?", "What color is it?", "What pattern does it have?", "这件外套适合什么场合穿？"]


@pytest.fixture(scope="module")
def plain_vllm() -> Iterator[VllmServer]:
    yield from serving(VllmServer(BUNDLED / "shop-toy"))


def test_follow_up_questions_hit_vllms_multimodal_cache(plain_vllm: VllmServer, tmp_path: Path) -> None:
    png, _, _ = catalogue("test", 1, seed=11)[0]
    direct = [content(ask(plain_vllm.url, chat_body(png, q, "shop-toy"))) for q in QUESTIONS]
    with ServeProcess(tmp_path / "gw.log", **gateway_env(plain_vllm.url)) as gateway:
        before = plain_vllm.metrics()
        through = [content(ask(gateway.url, chat_body(png, q, "shop-toy", cache=False))) for q in QUESTIONS]
        after = plain_vllm.metrics()
    queries = after["vllm:mm_cache_queries_total"] - before["vllm:mm_cache_queries_total"]
    hits = after["vllm:mm_cache_hits_total"] - before["vllm:mm_cache_hits_total"]
    # The first question misses (the gateway names the picture by its own content hash, not vLLM's);
    # every follow-up about the same photo is a hit.
    assert (queries, hits) == (4, 3)
    assert through == direct  # reuse changes nothing in the answers
