"""`vqa capture list|rate|delete|purge` and `vqa data export` as a user runs them, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.capture_helpers import ago, picture, record
from tests.conftest import free_port, subprocess_env, vqa_cmd
from vqaserve.capture import Feedback, open_store
from vqaserve.capture.writer import encode_png

pytestmark = pytest.mark.integration


def vqa(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vqa_cmd(*args), capture_output=True, text=True, env=subprocess_env(**env), timeout=120)


def one_error_line(done: subprocess.CompletedProcess[str], needle: str, code: int = 2) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqa: error: ") and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def fill(url: str) -> None:
    red = picture((200, 0, 0))
    rows = [record("chatcmpl-old", created=ago(days=40), confidence=0.9, pictures=(red,)),
            record("chatcmpl-low", created=ago(hours=3), confidence=0.2, question="这是什么？", answer="帽子"),
            record("chatcmpl-sure", created=ago(hours=2), confidence=0.95, adapter="v2"),
            record("chatcmpl-rated", created=ago(hours=1), confidence=0.7,
                   feedback=Feedback("down", "sunglasses", at=ago(minutes=5)))]

    async def write() -> None:
        store = open_store(url)
        await store.write(rows, {red.content_hash: encode_png(red.image)})
        await store.close()

    asyncio.run(write())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    found = f"sqlite:///{tmp_path / 'capture.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    fill(found)
    return str(found)


def listed(url: str, *flags: str, **env: str) -> list[str]:
    done = vqa("capture", "list", "--capture", url, "--json", *flags, **env)
    assert done.returncode == 0, done.stderr
    return [r["id"] for r in json.loads(done.stdout)]


def test_list_filters_and_prints_a_table(url: str) -> None:
    assert listed(url) == ["chatcmpl-rated", "chatcmpl-sure", "chatcmpl-low", "chatcmpl-old"]
    assert listed(url, "--flagged") == ["chatcmpl-low"]  # VQA_REVIEW_BELOW's default, 0.5
    assert listed(url, "--flagged", VQA_REVIEW_BELOW="0.8") == ["chatcmpl-rated", "chatcmpl-low"]
    assert listed(url, "--low-confidence", "0.75") == ["chatcmpl-rated", "chatcmpl-low"]
    assert listed(url, "--down") == ["chatcmpl-rated"]
    assert listed(url, "--review") == ["chatcmpl-rated", "chatcmpl-low"]
    assert listed(url, "--adapter", "v2") == ["chatcmpl-sure"]
    assert listed(url, "--since", ago(days=1).strftime("%Y-%m-%d %H:%M"), "--limit", "2") == \
        ["chatcmpl-rated", "chatcmpl-sure"]
    assert listed(url, "--until", ago(days=39).date().isoformat()) == ["chatcmpl-old"]
    done = vqa("capture", "list", "--capture", url, "--limit", "3")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["captured", "(UTC)", "id"] and len(rows) == 3
    assert "chatcmpl-rated" in rows[0] and "down" in rows[0] and "sunglasses" in rows[0]
    assert "3 of 4 shown" in done.stderr


def test_rate_delete_and_purge(url: str) -> None:
    assert vqa("capture", "rate", "--capture", url, "chatcmpl-low", "down", "--correction", "太阳镜").returncode == 0
    item = json.loads(vqa("capture", "list", "--capture", url, "--json", "--down").stdout)
    assert [(r["id"], r["feedback"]["correction"]) for r in item] == [("chatcmpl-rated", "sunglasses"),
                                                                    ("chatcmpl-low", "太阳镜")]
    one_error_line(vqa("capture", "rate", "--capture", url, "chatcmpl-nope", "up"),
                   "no captured answer 'chatcmpl-nope'")
    done = vqa("capture", "delete", "--capture", url, "chatcmpl-sure")
    assert done.returncode == 0 and "deleted chatcmpl-sure" in done.stdout
    one_error_line(vqa("capture", "delete", "--capture", url, "chatcmpl-sure"), "no captured answer")
    done = vqa("capture", "purge", "--capture", url, "--older-than", "30")
    assert done.returncode == 0 and "deleted 1 captured answer(s)" in done.stdout, done.stderr
    assert listed(url) == ["chatcmpl-rated", "chatcmpl-low"]


def test_the_url_comes_from_vqa_capture_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capture.db'}"
    fill(url)
    done = vqa("capture", "list", "--json", VQA_CAPTURE_URL=url)
    assert done.returncode == 0 and [r["id"] for r in json.loads(done.stdout)] == listed(url)


@pytest.mark.parametrize(("args", "env", "needle", "code"), [
    (["capture", "list"], {}, "no capture database: pass --capture URL", 2),
    (["capture", "list", "--capture", "mysql://db/x"], {}, "--capture: 'mysql://db/x' is not a capture database", 2),
    (["capture", "list"], {"VQA_CAPTURE_URL": "redis://x"}, "VQA_CAPTURE_URL: 'redis://x' is not a capture", 2),
    (["capture", "purge", "--capture", "sqlite:///x.db", "--older-than", "-1"], {}, "--older-than must be", 2),
    (["data", "export", "--out", "x"], {}, "no capture database", 2),
])
def test_bad_input_is_one_line(args: list[str], env: dict[str, str], needle: str, code: int) -> None:
    one_error_line(vqa(*args, **env), needle, code)


def test_an_unreachable_database_is_one_line_and_exit_1() -> None:
    done = vqa("capture", "list", "--capture", f"postgresql://vqa:hunter2@127.0.0.1:{free_port()}/x")
    one_error_line(done, "check that PostgreSQL is up", code=1)
    assert "hunter2" not in done.stderr


def test_a_bad_date_is_refused_by_the_parser(tmp_path: Path) -> None:
    done = vqa("capture", "list", "--capture", f"sqlite:///{tmp_path / 'c.db'}", "--since", "yesterday")
    assert done.returncode == 2 and "'yesterday' is not a date; write e.g. 2026-12-01" in done.stderr
