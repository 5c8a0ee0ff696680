"""A real vLLM (scripts/vllm.sh: the CPU build from PyPI) for the tests, shared by the session.

`make test` creates .venv-vllm first (scripts/vllm.sh install). Nothing here skips: a vLLM that will not
install or start is a failing test, with the tail of vLLM's log in the message.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.servers import PORT_TRIES, port_taken
from vqaserve.bench.vllm_server import BUNDLED, VllmServer
from vqaserve.images.decode import data_uri

ADAPTER = "shop-toy-sunglasses"


def serving(server: VllmServer) -> Iterator[VllmServer]:
    """Start a vLLM for a fixture (failing with vLLM's own words if it cannot), stop it after. Its port
    is chosen long before vLLM binds it (imports take a while): if another process took it meanwhile,
    vLLM starts again on another."""
    for attempt in range(1, PORT_TRIES + 1):
        try:
            server.start()
            break
        except Exception as exc:  # noqa: BLE001 - fail with vLLM's own words
            server.stop()
            log = server.log_tail(200)
            if not port_taken(log) or attempt == PORT_TRIES:
                pytest.fail(f"vLLM did not start: {exc}\n{server.log_tail()}")
            Path(server.log_path).write_bytes(b"")
            server.port = free_port()
            server.url = f"http://127.0.0.1:{server.port}"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm() -> Iterator[VllmServer]:
    """shop-toy and its bundled sunglasses adapter in a real vLLM (about a minute to start here)."""
    yield from serving(VllmServer(BUNDLED / "shop-toy", adapters={ADAPTER: str(BUNDLED / ADAPTER)}))


def fitted_png(image: Any, budget: tuple[int, int] = (16384, 25600)) -> bytes:
    """A picture resized to shop-toy's pixel budget first, so neither the gateway nor vLLM resizes it:
    both then see the very same pixels (PNG is lossless)."""
    from vqaserve.images.decode import fit_budget

    fitted = fit_budget(image.convert("RGB"), *budget)
    buf = io.BytesIO()
    fitted.save(buf, format="PNG")
    return buf.getvalue()


def catalogue(split: str, n: int, seed: int = 1) -> list[tuple[bytes, str, str]]:
    """(fitted png, question, gold answer) for n catalogue pictures."""
    from vqaserve.train import synthetic

    out = []
    for sample in synthetic.iter_samples(split, n, seed):
        out.append((fitted_png(sample.image), sample.question, sample.answer))
    return out


def chat_body(png: bytes, question: str, model: str, **extra: Any) -> dict[str, Any]:
    uri = data_uri(png)
    return {"model": model, "temperature": 0, "max_tokens": 24, **extra,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": question}]}]}


def ask(base: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(base.rstrip("/") + "/v1/chat/completions", json=body, timeout=timeout)


def content(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def gateway_env(upstream: str, **extra: str) -> dict[str, str]:
    """A gateway as docs/deploy.md runs one, with bit-exact image transport for comparisons."""
    # The pixel budget is shop-toy's own (its preprocessor_config.json), as docs/deploy.md says to set it.
    return {"VQA_ENGINE": "upstream", "VQA_UPSTREAM_URL": upstream + "/v1", "VQA_SAFETY_IMAGE": "off",
            "VQA_MIN_PIXELS": "16384", "VQA_MAX_PIXELS": "25600",
            "VQA_LLM__UPSTREAM_IMAGE_FORMAT": "png", **extra}


def log_of(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""
