"""The web page's sample pictures (static/samples/) and the one decision that shows them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, subprocess_env
from vqaserve.server.static_files import page_info, serves_bundled_demo
from vqaserve.settings import BUNDLED_MODELS, load_settings

pytestmark = pytest.mark.unit
STATIC = REPO / "src" / "vqaserve" / "server" / "static"
SAMPLES = STATIC / "samples"


def manifest(folder: Path) -> list[dict[str, str]]:
    return json.loads((folder / "samples.json").read_text())  # type: ignore[no-any-return]


def test_every_sample_is_a_small_catalogue_png_named_in_its_alt_text() -> None:
    entries = manifest(SAMPLES)
    assert {e["file"] for e in entries} == {p.name for p in SAMPLES.glob("*.png")}
    assert len({e["category"] for e in entries}) == len(entries) == 6  # one picture per category shown
    for e in entries:
        data = (SAMPLES / e["file"]).read_bytes()
        assert len(data) <= 40 * 1024, e["file"]  # sent to every newcomer's page
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            image.load()  # decodes every pixel: a truncated file fails here
            assert min(image.size) >= 160
        for word in (e["category"], e["colour"], e["pattern"]):
            assert word in e["alt"], e


def test_the_script_regenerates_exactly_the_committed_samples(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_page_samples.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert manifest(tmp_path) == manifest(SAMPLES)
    for e in manifest(SAMPLES):
        with Image.open(SAMPLES / e["file"]) as committed, Image.open(tmp_path / e["file"]) as made:
            # Pixels, not bytes: another zlib may compress the same picture differently.
            assert committed.size == made.size and committed.tobytes() == made.tobytes(), e["file"]


@pytest.mark.parametrize(("overrides", "bundled"), [
    ({}, True),  # `vqa serve` with no --model
    ({"model": "shop-toy"}, True),
    ({"model": str(BUNDLED_MODELS / "shop-toy")}, True),  # the same directory, spelled as a path
    ({"model": str(BUNDLED_MODELS / "shop-toy-sunglasses")}, False),  # bundled, but not the demo model
    ({"model": "Qwen/Qwen3-VL-2B-Instruct"}, False),
    ({"engine": "upstream", "upstream_url": "http://127.0.0.1:9", "upstream_model": "shop-toy"}, False),
    ({"engine": "scripted"}, False),
])
def test_only_the_bundled_demo_model_gets_the_samples(overrides: dict[str, str], bundled: bool) -> None:
    settings = load_settings(**overrides)
    assert serves_bundled_demo(settings) is bundled
    info = page_info(settings, str(STATIC))
    assert info["bundled_demo"] is bundled
    expected = [f"/static/samples/{e['file']}" for e in manifest(SAMPLES)] if bundled else []
    assert [s["url"] for s in info["samples"]] == expected
