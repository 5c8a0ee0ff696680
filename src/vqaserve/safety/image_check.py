"""Image safety on the way in: the ImageChecker seam of pipeline.py, and its implementations.

    NudeNetChecker  default; NudeNet's ONNX detector (shipped inside the PyPI wheel), onnxruntime CPU
    HFImageChecker  any Hugging Face image-classification model on disk (`hf:<dir>`), e.g. the
                    Falconsai/nsfw_image_detection layout (labels normal / nsfw)
    MarkerChecker   flags on demand (content hashes, or a solid marker colour): tests and demos, so the
                    refusal path is exercised without explicit pictures in the repository

A refused image raises BlockedInput (400 blocked_input). The pipeline checks before the cache, so a
refused image is never cached; the checkers never log, keep or write the image.
Heavy imports (onnxruntime, nudenet, cv2, torch, transformers) happen on first use only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from vqaserve.bounded_lru import BoundedLRU
from vqaserve.errors import BlockedInput, ConfigError

if TYPE_CHECKING:
    from vqaserve.settings import Settings
    from vqaserve.types import NormalizedImage

# NudeNet's labels for exposed sexual body parts; the covered/face/feet labels are normal shop photos.
NUDENET_UNSAFE = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                  "ANUS_EXPOSED", "BUTTOCKS_EXPOSED")
# Labels of common NSFW classifiers (Falconsai: normal/nsfw; others: porn, hentai, sexy).
HF_UNSAFE = ("nsfw", "porn", "hentai", "sexy", "explicit", "unsafe")
MARKER_COLOR = (255, 0, 255)  # magenta: the test checker's "flag me" colour

REFUSAL = "image refused by the image safety check; send a different image"


def _refuse(image: NormalizedImage) -> BlockedInput:
    # The message names the image field only: no label, no score (they help nobody evade the check).
    return BlockedInput(f"{image.source}: {REFUSAL}", param=image.source)


_DETECTORS: dict[int, Any] = {}  # one ONNX session per process (per thread count), shared by checkers
_DETECTORS_LOCK = threading.Lock()


def _nudenet_detector(threads: int) -> Any:
    """NudeNet's detector over our own onnxruntime session, loaded once per process, lazily."""
    with _DETECTORS_LOCK:
        if threads not in _DETECTORS:
            from pathlib import Path

            import nudenet
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads  # the engine owns the other cores
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(Path(nudenet.__file__).parent / "320n.onnx"), sess_options=options,
                providers=["CPUExecutionProvider"])
            # NudeDetector() builds its own session on all cores; give it ours (same model file).
            detector = nudenet.NudeDetector.__new__(nudenet.NudeDetector)
            detector.onnx_session = session
            detector.input_width = detector.input_height = 320
            detector.input_name = session.get_inputs()[0].name
            _DETECTORS[threads] = detector
        return _DETECTORS[threads]


class NudeNetChecker:
    """NudeNet detector: refuse when any unsafe label is detected with score >= threshold."""

    def __init__(self, unsafe_labels: Iterable[str] = NUDENET_UNSAFE, threshold: float = 0.6,
                 threads: int = 1) -> None:
        self.unsafe = frozenset(unsafe_labels)
        self.threshold = threshold
        self.threads = threads
        self._detector: Any = None

    def _load(self) -> Any:
        if self._detector is None:
            self._detector = _nudenet_detector(self.threads)
        return self._detector

    def detections(self, image: NormalizedImage) -> list[dict[str, Any]]:
        import numpy as np

        # NudeNet converts RGBA->BGR then swaps R/B: RGBA input is what reaches its model as RGB.
        array = np.asarray(image.image.convert("RGBA"))
        return list(self._load().detect(array))

    def check(self, image: NormalizedImage) -> None:
        for det in self.detections(image):
            if det.get("class") in self.unsafe and float(det.get("score", 0.0)) >= self.threshold:
                raise _refuse(image)


class HFImageChecker:
    """A Hugging Face image-classification model dir: refuse when P(unsafe labels) >= threshold."""

    def __init__(self, path: str, unsafe_labels: Iterable[str] = HF_UNSAFE, threshold: float = 0.6) -> None:
        from pathlib import Path

        if not (Path(path) / "config.json").is_file():
            raise ConfigError("VQA_SAFETY_IMAGE=hf:<dir> must name a local model directory with a "
                              "config.json (e.g. a download of Falconsai/nsfw_image_detection)")
        self.path = path
        self.unsafe = frozenset(label.lower() for label in unsafe_labels)
        self.threshold = threshold
        self._model: Any = None
        self._processor: Any = None
        self._unsafe_ids: list[int] = []
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                from transformers import AutoImageProcessor, AutoModelForImageClassification

                # Local files only, never remote code: the dir is operator-supplied, not a hub id.
                processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
                model = AutoModelForImageClassification.from_pretrained(self.path, local_files_only=True)
                model.eval()
                labels = {int(i): str(name).lower() for i, name in model.config.id2label.items()}
                self._unsafe_ids = sorted(i for i, name in labels.items() if name in self.unsafe)
                if not self._unsafe_ids:
                    raise ConfigError("the hf: safety model has none of the unsafe labels "
                                      f"{sorted(self.unsafe)}; its labels are {sorted(labels.values())}")
                self._processor, self._model = processor, model
            return self._processor, self._model

    def unsafe_probability(self, image: NormalizedImage) -> float:
        import torch

        processor, model = self._load()
        inputs = processor(images=image.image, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits[0]
        probs = torch.softmax(logits.float(), dim=-1)
        return float(probs[self._unsafe_ids].sum())

    def check(self, image: NormalizedImage) -> None:
        if self.unsafe_probability(image) >= self.threshold:
            raise _refuse(image)


class MarkerChecker:
    """Flags on demand: images whose content hash is in `hashes`, or mostly the marker colour."""

    def __init__(self, hashes: Iterable[str] = (), color: tuple[int, int, int] | None = MARKER_COLOR,
                 share: float = 0.5) -> None:
        self.hashes = set(hashes)
        self.color = color
        self.share = share
        self.checked = 0  # how many images it saw (tests assert the check ran)

    def check(self, image: NormalizedImage) -> None:
        self.checked += 1
        if image.content_hash in self.hashes:
            raise _refuse(image)
        if self.color is not None:
            raw = image.image.convert("RGB").resize((16, 16)).tobytes()
            pixels = [raw[i:i + 3] for i in range(0, len(raw), 3)]
            close = sum(1 for p in pixels if all(abs(a - b) <= 8 for a, b in zip(p, self.color, strict=True)))
            if close >= self.share * len(pixels):
                raise _refuse(image)


class RememberPassed:
    """A costly checker (a model call of ~100-300 ms on CPU) asked once per picture: pictures that
    passed are remembered by content hash (pixels + size), so a re-sent photo, the usual cache hit,
    is not checked again. Refused pictures are not remembered: they are checked, and refused, every
    time. The checker's labels and threshold are fixed for the process, so a verdict stays valid."""

    def __init__(self, inner: NudeNetChecker | HFImageChecker, entries: int = 4096) -> None:
        self.inner = inner
        self._passed: BoundedLRU[str, bool] = BoundedLRU(entries)

    def check(self, image: NormalizedImage) -> None:
        if self._passed.get(image.content_hash):
            return
        self.inner.check(image)  # raises BlockedInput for a refused picture
        self._passed.put(image.content_hash, True)


def build_image_checker(settings: Settings) -> RememberPassed | MarkerChecker | None:
    """`VQA_SAFETY_IMAGE`: off -> None; nudenet (default); hf:<dir>; marker (tests and demos)."""
    s = settings.safety
    kind = s.image
    if kind == "off":
        return None
    if kind == "nudenet":
        return RememberPassed(NudeNetChecker(s.unsafe_labels or NUDENET_UNSAFE, s.image_threshold,
                                             s.image_threads))
    if kind == "marker":
        return MarkerChecker()
    if kind.startswith("hf:"):
        return RememberPassed(HFImageChecker(kind[3:], s.unsafe_labels or HF_UNSAFE, s.image_threshold))
    raise ConfigError("VQA_SAFETY_IMAGE must be 'nudenet', 'off', 'marker' or 'hf:<model dir>'")
