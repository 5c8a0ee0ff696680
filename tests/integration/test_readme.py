"""The README's command-line and API examples, run as written (only the address changes)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env
from tests.http_support import LiveServer, RecordingEngine, make_app

pytestmark = pytest.mark.integration
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_the_two_commands_are_documented_and_exist() -> None:
    (two,) = blocks(section("The two commands"), "bash")
    assert "make run" in two and "make test" in two
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_cli_examples_run_as_written(tmp_path: Path) -> None:
    (cli,) = blocks(section("Asking from the command line"), "bash")
    outputs = []
    for line in cli.strip().splitlines():
        command = shlex.split(line.split("  #")[0])
        command = [str(REPO / c) if c.startswith("src/") else c for c in command]  # runs in tmp_path
        assert command[0] == ".venv/bin/vqa"
        done = subprocess.run([sys.executable, "-m", "vqaserve", *command[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600,
                              env=subprocess_env(VQA_SAFETY_IMAGE="off"))
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    assert (tmp_path / "demo" / "data.jsonl").is_file()
    answers = outputs[1:]
    assert all(answers) and "\n" not in answers[0]
    record = json.loads(answers[-1])
    assert record["model"] == "shop-toy" and {"answer", "usage", "timings"} <= set(record)


def test_api_examples_run_as_written(tmp_path: Path) -> None:
    api = section("The HTTP API")
    (curl,) = blocks(api, "bash")
    (client,) = blocks(api, "python")
    engine = RecordingEngine(model_id="shop-toy", rules={"What color": "black", "occasion": "business"})
    with LiveServer(make_app(engine)) as server:
        def run(cmd: list[str]) -> str:
            cmd = [c.replace("http://127.0.0.1:8000", server.url) for c in cmd]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,  # sample paths
                                  env=subprocess_env())
            assert done.returncode == 0, done.stderr
            return done.stdout

        body = json.loads(run(["bash", "-euo", "pipefail", "-c", curl]))
        assert body["answer"] == "black" and body["cached"] is False
        assert run([sys.executable, "-c", client]).strip() == "business"
