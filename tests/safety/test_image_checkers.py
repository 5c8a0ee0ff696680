"""Image safety checkers (case 25): NudeNet (default), an HF image classifier on disk, the marker checker."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hostile_helpers import assert_clean
from PIL import Image

from tests.conftest import image_bytes
from vqaserve.errors import BlockedInput, ConfigError
from vqaserve.images.decode import normalize
from vqaserve.safety.image_check import (
    MARKER_COLOR,
    HFImageChecker,
    MarkerChecker,
    NudeNetChecker,
    RememberPassed,
    build_image_checker,
)
from vqaserve.settings import Settings
from vqaserve.types import NormalizedImage


def norm(data: bytes, name: str = "image") -> NormalizedImage:
    return normalize(data, 256 * 1024, 1280 * 1024, 64_000_000, name)


class FakeDetector:
    def __init__(self, detections: list[dict[str, object]]) -> None:
        self.detections = detections

    def detect(self, array: object) -> list[dict[str, object]]:
        return self.detections


@pytest.mark.unit
@pytest.mark.parametrize(("detections", "blocked"), [
    ([], False),
    ([{"class": "FACE_FEMALE", "score": 0.99}, {"class": "FEET_EXPOSED", "score": 0.9}], False),
    ([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.59}], False),  # under the threshold
    ([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.61}], True),
    ([{"class": "BELLY_COVERED", "score": 0.7}, {"class": "MALE_GENITALIA_EXPOSED", "score": 0.9}], True),
])
def test_nudenet_decision_rule(detections: list[dict[str, object]], blocked: bool) -> None:
    checker = NudeNetChecker(threshold=0.6)
    checker._detector = FakeDetector(detections)
    image = norm(image_bytes(), "messages[0].content[0].image_url")
    if blocked:
        with pytest.raises(BlockedInput) as info:
            checker.check(image)
        assert info.value.code == "blocked_input" and info.value.status == 400
        assert_clean(info.value, "messages[0].content[0].image_url", "safety check")
        assert "EXPOSED" not in info.value.message  # no label or score hints
    else:
        checker.check(image)


@pytest.mark.unit
def test_configurable_labels_and_threshold() -> None:
    s = Settings(safety={"unsafe_labels": ["FEET_EXPOSED"], "image_threshold": 0.3})
    built = build_image_checker(s)
    assert isinstance(built, RememberPassed)
    checker = built.inner
    assert isinstance(checker, NudeNetChecker) and checker.unsafe == {"FEET_EXPOSED"}
    checker._detector = FakeDetector([{"class": "FEET_EXPOSED", "score": 0.35}])
    with pytest.raises(BlockedInput):
        built.check(norm(image_bytes()))
    assert build_image_checker(Settings(safety={"image": "off"})) is None
    assert isinstance(build_image_checker(Settings(safety={"image": "marker"})), MarkerChecker)


@pytest.mark.unit
def test_marker_checker_flags_on_demand() -> None:
    checker = MarkerChecker()
    with pytest.raises(BlockedInput):
        checker.check(norm(image_bytes(color=MARKER_COLOR)))
    checker.check(norm(image_bytes(color=(250, 0, 0))))
    plain = norm(image_bytes(color=(1, 2, 3)))
    by_hash = MarkerChecker(hashes={plain.content_hash}, color=None)
    with pytest.raises(BlockedInput):
        by_hash.check(plain)


@pytest.mark.integration
def test_nudenet_real_model_passes_shop_pictures() -> None:
    """The real ONNX detector loads once, lazily, and passes ordinary product-style pictures."""
    checker = NudeNetChecker()
    assert checker._detector is None
    for color in [(200, 30, 30), (20, 20, 20), (240, 240, 240), (30, 90, 200)]:
        img = Image.new("RGB", (480, 640), color)
        for x in range(120, 360):  # a "product": a darker rectangle with a stripe
            for y in range(160, 480, 4):
                img.putpixel((x, y), (color[0] // 2, color[1] // 2, color[2] // 2))
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        checker.check(norm(buf.getvalue()))
    detector = checker._detector
    assert detector is not None
    checker.check(norm(image_bytes()))
    assert checker._detector is detector  # loaded once


def tiny_classifier(path: Path, nsfw_bias: float) -> None:
    """A tiny randomly initialised ViT classifier (labels normal/nsfw), Falconsai layout, saved to `path`."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=2, id2label={0: "normal", 1: "nsfw"},
                       label2id={"normal": 0, "nsfw": 1})
    model = ViTForImageClassification(config)
    with torch.no_grad():  # make the decision deterministic whatever the random features are
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, nsfw_bias]))
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


@pytest.mark.integration
@pytest.mark.slow  # importing torch + transformers dominates (~25 s on a busy 2-core box)
def test_hf_checker_with_a_tiny_classifier(tmp_path: Path) -> None:
    safe_dir, unsafe_dir = tmp_path / "safe", tmp_path / "unsafe"
    tiny_classifier(safe_dir, -5.0)
    tiny_classifier(unsafe_dir, 5.0)
    image = norm(image_bytes(), "image")
    built = build_image_checker(Settings(safety={"image": f"hf:{safe_dir}"}))
    assert isinstance(built, RememberPassed) and isinstance(built.inner, HFImageChecker)
    built.check(image)
    assert built.inner.unsafe_probability(image) < 0.01
    unsafe = build_image_checker(Settings(safety={"image": f"hf:{unsafe_dir}"}))
    assert unsafe is not None
    with pytest.raises(BlockedInput) as info:
        unsafe.check(image)
    assert_clean(info.value, "image", "safety check")
    # a model without any unsafe label is a configuration error, said at load
    odd = HFImageChecker(str(safe_dir), unsafe_labels=["gore"])
    with pytest.raises(ConfigError, match="unsafe labels"):
        odd.check(image)


@pytest.mark.unit
def test_hf_checker_needs_a_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hf:<dir>"):
        build_image_checker(Settings(safety={"image": f"hf:{tmp_path}/missing"}))


class CountingChecker:
    """Refuses pictures whose content hash is listed; counts the model calls it would have made."""

    def __init__(self, refused: set[str]) -> None:
        self.refused = refused
        self.calls = 0

    def check(self, image: object) -> None:
        self.calls += 1
        if image.content_hash in self.refused:  # type: ignore[attr-defined]
            raise BlockedInput("image: refused", param="image")


@pytest.mark.unit
def test_passed_pictures_are_not_checked_again_refused_ones_always_are() -> None:
    safe, bad, other = norm(image_bytes()), norm(image_bytes(color=(200, 10, 10))), norm(image_bytes(color=(1, 2, 3)))
    inner = CountingChecker({bad.content_hash})
    checker = RememberPassed(inner, entries=1)  # type: ignore[arg-type]
    checker.check(safe)
    checker.check(safe)
    assert inner.calls == 1  # the second time is remembered
    for _ in range(2):
        with pytest.raises(BlockedInput):
            checker.check(bad)
    assert inner.calls == 3  # a refusal is never remembered
    checker.check(other)  # entries=1: evicts `safe`
    checker.check(safe)
    assert inner.calls == 5
