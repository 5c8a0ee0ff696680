"""`vqa ask` with bad input: one line on stderr, exit code 2, no traceback; the bomb refused fast."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import image_bytes, subprocess_env, vqa_cmd
from tests.safety.hostile_helpers import png_bomb

pytestmark = pytest.mark.unit


def ask(image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vqa_cmd("ask", image, "What color is it?", "--engine", "scripted"),
                          capture_output=True, text=True, env=subprocess_env(), timeout=60)


def bad_inputs(tmp: Path) -> dict[str, str]:
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "garbage.jpg").write_bytes(b"\x00garbage" * 50)
    png = image_bytes((200, 200))
    (tmp / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp / "doc.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    (tmp / "bomb.png").write_bytes(png_bomb(20000, 20000))
    (tmp / "adir").mkdir()
    return {
        "missing": str(tmp / "missing.png"),
        "directory": str(tmp / "adir"),
        "empty": str(tmp / "empty.png"),
        "garbage": str(tmp / "garbage.jpg"),
        "truncated": str(tmp / "truncated.png"),
        "pdf": str(tmp / "doc.pdf"),
        "bomb": str(tmp / "bomb.png"),
    }


EXPECTED = {
    "missing": "not found",
    "directory": "not a file",
    "empty": "could not decode",
    "garbage": "could not decode",
    "truncated": "could not decode",
    "pdf": "PDF files are not supported",
    "bomb": "pixel limit",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_image_is_one_clear_line(tmp_path: Path, case: str) -> None:
    path = bad_inputs(tmp_path)[case]
    started = time.perf_counter()
    result = ask(path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqa: error:"), result.stderr
    assert EXPECTED[case] in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    if case == "bomb":
        assert time.perf_counter() - started < 15  # includes interpreter start-up


def test_good_image_answers(tmp_path: Path) -> None:
    good = tmp_path / "ok.png"
    good.write_bytes(image_bytes((200, 150)))
    result = ask(str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "answer to: What color is it? (1 image)"


def test_unsupported_location_and_help() -> None:
    result = ask("ftp://example.invalid/x.png")
    assert result.returncode == 2 and "file path or an http(s) URL" in result.stderr
    helped = subprocess.run(vqa_cmd("--help"), capture_output=True, text=True, env=subprocess_env())
    assert helped.returncode == 0 and "ask" in helped.stdout
