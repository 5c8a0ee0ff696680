"""docs/api.md's curl and openai-client examples, run as written against a live server.

Only the address changes (the docs say 127.0.0.1:8000; the test server has a free port).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, image_bytes, subprocess_env
from tests.http_support import LiveServer, RecordingEngine, make_app, sse_payloads

pytestmark = pytest.mark.integration
DOC = REPO / "docs" / "api.md"
DOC_URL = "http://127.0.0.1:8000"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    engine = RecordingEngine(model_id="scripted", adapter_names=["sunglasses"],
                             rules={"What color": "red", "这是什么颜色": "红色"})
    with LiveServer(make_app(engine)) as server:
        yield server


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "jacket.png").write_bytes(image_bytes(size=(240, 160)))
    return tmp_path


def run(cmd: list[str], live: LiveServer, cwd: Path) -> str:
    done = subprocess.run([c.replace(DOC_URL, live.url) for c in cmd], cwd=cwd, capture_output=True,
                          timeout=240, env=subprocess_env(), text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_docs_have_the_examples() -> None:
    assert len(blocks("bash")) == 4 and len(blocks("python")) == 2  # the 4th bash: test_capture_docs.py


def test_curl_upload_example(live: LiveServer, workdir: Path) -> None:
    body = json.loads(run(["bash", "-euo", "pipefail", "-c", blocks("bash")[0]], live, workdir))
    assert body["answer"] == "red" and {"model", "cached", "usage", "timings"} <= set(body)


def test_curl_chat_example(live: LiveServer, workdir: Path) -> None:
    body = json.loads(run(["bash", "-euo", "pipefail", "-c", blocks("bash")[1]], live, workdir))
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]


def test_curl_stream_example(live: LiveServer, workdir: Path) -> None:
    events = sse_payloads(run(["bash", "-euo", "pipefail", "-c", blocks("bash")[2]], live, workdir))
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]) == "红色"


def test_openai_client_example(live: LiveServer, workdir: Path) -> None:
    out = run([sys.executable, "-c", blocks("python")[0]], live, workdir).splitlines()
    assert out[0] == "['scripted', 'sunglasses']"
    assert out[1].startswith("answer to: What occasion is it suitable for?")
    assert out[2] == out[1].rsplit(" ", 1)[0]  # the streamed text equals the plain answer


def test_logprobs_example(live: LiveServer, workdir: Path) -> None:
    """The logprobs snippet, run after the client example that defines `client` and `messages`."""
    out = run([sys.executable, "-c", blocks("python")[0] + blocks("python")[1]], live, workdir).splitlines()
    tokens = out[3:-1]
    assert tokens[0] == "'answer' 0.0 ['answer']" and tokens[1] == "' to:' 0.0 [' to:']"
    assert out[-1] == "1.0 False"  # confidence, review


def test_latency_command(live: LiveServer, tmp_path: Path) -> None:
    """The stage split the Metrics section promises, from the command it names."""
    (command,) = re.findall(r"`(vqa bench latency [^`]*)`", DOC.read_text())
    out = run([sys.executable, "-m", "vqaserve", *command.split()[1:], "--requests", "3", "--no-progress",
               "--out", str(tmp_path)], live, REPO)
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("bench-latency-*.json")]
    figures = record["figures"]
    assert record["details"]["http"]["ok"] == 3 and figures["http_p50_ms"] > 0
    assert {"server_decode_ms", "server_generate_ms", "http_and_client_ms"} <= set(figures)
    assert "server_generate_ms" in out  # printed, not only written
