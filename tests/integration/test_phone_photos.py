"""Phone photos of catalogue pictures (issue 22 part 4): HEIC and AVIF answer like the PNG they hold.

A lossless HEIC carries the PNG's exact pixels, so it hits the PNG's cache entry and gets its answer.
Pillow's AVIF encoder has no lossless mode (4:4:4 at quality 100 still differs by a level or two), so
an AVIF is keyed and answered on its decoded pixels: exactly what a PNG of those pixels gets.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import phone_photos
from tests.conftest import REPO, subprocess_env
from tests.http_support import LiveServer, RecordingEngine, make_app
from vqaserve.train.synthetic import make_sample

pytestmark = pytest.mark.integration


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def upload(client: TestClient, data: bytes, filename: str, question: str) -> Any:
    r = client.post("/v1/vqa", files={"image": (filename, data, "application/octet-stream")},
                    data={"question": question})
    assert r.status_code == 200, r.text
    return r


def test_heic_and_avif_share_the_png_cache_entry_over_http() -> None:
    engine = RecordingEngine(model_id="scripted")
    with TestClient(make_app(engine)) as client:
        for i in range(3):
            sample = make_sample("test", 0, i)
            png = upload(client, _png(sample.image), "p.png", sample.question)
            assert png.headers["x-vqa-cache"] == "miss"
            heic = upload(client, phone_photos.heic(sample.image, lossless=True), "IMG.HEIC", sample.question)
            assert heic.headers["x-vqa-cache"] == "hit" and heic.json()["answer"] == png.json()["answer"]

            avif = phone_photos.avif(sample.image, quality=85)
            first = upload(client, avif, "IMG.AVIF", sample.question)
            assert first.headers["x-vqa-cache"] == "miss"  # lossy: other pixels than the PNG's
            seen = engine.requests[-1].images[0].content_hash
            decoded = upload(client, phone_photos.decoded_png(avif), "d.png", sample.question)
            assert decoded.headers["x-vqa-cache"] == "hit" and decoded.json()["answer"] == first.json()["answer"]
            lossy_heic = phone_photos.heic(sample.image, quality=80)
            upload(client, lossy_heic, "IMG2.HEIC", sample.question)
            assert engine.requests[-1].images[0].content_hash != seen  # another encoding, its own pixels


def test_the_api_docs_heic_curl_example_runs(tmp_path: Path) -> None:
    """docs/api.md's HEIC upload, as written but for the address (a `sh` block: test_api_docs runs the
    `bash` ones with a PNG only)."""
    doc = (REPO / "docs" / "api.md").read_text()
    (example,) = [b for b in re.findall(r"```sh\n(.*?)```", doc, flags=re.DOTALL) if ".HEIC" in b]
    (tmp_path / "IMG_0001.HEIC").write_bytes(phone_photos.heic(make_sample("test", 0, 1).image))
    engine = RecordingEngine(model_id="scripted", rules={"What color": "yellow"})
    with LiveServer(make_app(engine)) as server:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c",
                               example.replace("http://127.0.0.1:8000", server.url)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == "yellow"
    assert engine.requests[-1].images[0].original_size == make_sample("test", 0, 1).image.size


@pytest.mark.slow
def test_bundled_model_answers_phone_photos_like_their_png() -> None:
    """shop-toy, in process, 10 catalogue pictures, the answer cache off: every answer is generated."""
    from vqaserve.settings import load_settings
    from vqaserve.types import ImageRef, Part, Question, Turn
    from vqaserve.wiring import build_pipeline

    settings = load_settings(model="shop-toy", engine="transformers", safety_image="off")

    async def ask(pipeline: Any, data: bytes, question: str) -> str:
        parts = [Part(image_ref=ImageRef("bytes", data)), Part(text=question)]
        answer = await pipeline.answer(Question(turns=[Turn(role="user", parts=parts)], cache=False))
        return str(answer.text)

    async def run() -> list[tuple[str, str, str, str]]:
        pipeline = build_pipeline(settings)
        await pipeline.engine.start()
        try:
            rows = []
            for i in range(10):
                sample = make_sample("test", 0, i)
                avif = phone_photos.avif(sample.image, quality=85)
                rows.append((await ask(pipeline, _png(sample.image), sample.question),
                             await ask(pipeline, phone_photos.heic(sample.image, lossless=True), sample.question),
                             await ask(pipeline, avif, sample.question),
                             await ask(pipeline, phone_photos.decoded_png(avif), sample.question)))
            return rows
        finally:
            await pipeline.engine.close()

    rows = asyncio.run(run())
    assert all(png == heic for png, heic, _, _ in rows), rows  # lossless: the same pixels, the same answer
    assert all(avif == decoded for _, _, avif, decoded in rows), rows  # lossy: its decoded pixels' answer
