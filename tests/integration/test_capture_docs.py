"""docs/api.md's rating example (`POST /v1/feedback`, `GET /v1/captures`), run as written against a
live server that captures; only the address changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.capture_http_support import stored
from tests.conftest import image_bytes
from tests.http_support import LiveServer, RecordingEngine, make_app
from tests.integration.test_api_docs import blocks, run

pytestmark = pytest.mark.integration


def test_the_rating_example(tmp_path: Path) -> None:
    (tmp_path / "jacket.png").write_bytes(image_bytes(size=(240, 160)))
    url = f"sqlite:///{tmp_path / 'capture.db'}"
    engine = RecordingEngine(model_id="shop-toy", rules={"What is this product": "hat"})
    with LiveServer(make_app(engine, capture_url=url)) as live:
        out = run(["bash", "-euo", "pipefail", "-c", blocks("bash")[3]], live, tmp_path)
    saved, listed = out.strip().split("\n")
    assert '"status":"saved"' in saved.replace(" ", "")
    (record,) = stored(url)
    assert listed.split("\t") == [record.id, "What is this product?", "hat", "sunglasses"]
    fb = record.feedback
    assert fb is not None and (fb.rating, fb.correction) == ("down", "sunglasses")
