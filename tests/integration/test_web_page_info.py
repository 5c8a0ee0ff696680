"""`vqa serve --model DIR` (a model of the user's own): the page is told it is not the bundled demo.

The bundled-model side, line and samples on screen, is tests/browser/test_web_page.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.http_support import ServeProcess

pytestmark = pytest.mark.integration


@pytest.mark.slow  # `vqa serve` imports torch and loads the model in a subprocess
def test_a_users_own_model_gets_no_demo_line_and_no_samples(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "serve.log", "--model", str(tiny_model_dir), VQA_SAFETY_IMAGE="off") as server:
        info = httpx.get(server.url + "/static/page.json", timeout=10)
        assert info.status_code == 200
        assert info.headers["cache-control"] == "no-store"
        assert info.json() == {"bundled_demo": False, "samples": [], "capture": False}
        page = httpx.get(server.url + "/", timeout=10).text
        # The line is in the page but hidden; app.js shows it only when page.json says bundled_demo.
        assert 'id="demo-note" class="demo-note" hidden' in page
        assert httpx.get(server.url + "/ready", timeout=10).json()["model"] == tiny_model_dir.name
