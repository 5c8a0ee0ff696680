"""Follow-up questions about one photo skip the vision tower: its output is remembered per picture.

Qwen3-VL's `get_image_features` (on the inner `Qwen3VLModel`, called once per generate, at prefill)
turns `pixel_values` (every image's patches, concatenated) and `image_grid_thw` (one row per image)
into per-image merged embeddings plus, per DeepStack layer, per-image features. `VisionMemo.install`
wraps that method on the model instance: each image is keyed by its pixel content, its grid and the
vision adapter in use; only the misses go through the tower (in one call), and the result is
reassembled in input order - the very tensors the tower gave the first time. The pixel content is
the picture's `content_hash` (of its normalized pixels, already computed by the pipeline) plus how
the processor ran, given by the engine (`picture_ids`); without them, a hash of the image's own
`pixel_values` rows (exact too, but hashing a large float tensor costs about as much as the tower).
Bounded by entries, bytes and age. It acts only inside `serving(memo, adapter)` with gradients off
and the model in eval mode; anything else (training, a gradient pass) calls the tower as is.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vqaserve.bounded_lru import BoundedLRU

MAX_ENTRIES = 256  # pictures remembered at most (the byte budget is VQA_VISION_MEMO_MB)
TTL_S = 600.0  # a picture's features are forgotten this long after the tower made them
MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")  # models whose get_image_features has this shape

_totals = {"hit": 0, "miss": 0}  # process-wide, read by the Prometheus collector (metrics.py)
_totals_lock = threading.Lock()


def totals() -> dict[str, int]:
    """Images served from a memo ("hit") or through the vision tower ("miss"), since start."""
    with _totals_lock:
        return dict(_totals)


@dataclass
class _Entry:
    embeds: Any  # (visual tokens, hidden): the merger's output for one image
    deepstack: tuple[Any, ...]  # one (visual tokens, hidden) tensor per DeepStack layer
    nbytes: int


class VisionMemo:
    def __init__(self, max_bytes: int, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S,
                 vision_adapters: Iterable[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self.vision_adapters = frozenset(vision_adapters)  # adapters that change the tower's output
        # Called on the generation worker thread only; the store's lock is uncontended. Its bounds
        # may be changed on a live memo (tests tighten them).
        self.store: BoundedLRU[bytes, _Entry] = BoundedLRU(
            max_entries, max_bytes=max_bytes, size=lambda _, entry: entry.nbytes, ttl_s=ttl_s, clock=clock)
        self.hits = self.misses = self.tower_calls = 0
        self._scope: str | None = None  # None: not serving, the tower runs as is
        self._pictures: list[str] = []  # picture_ids of the images being served, in prompt order
        self._module: Any = None

    @classmethod
    def install(cls, model: Any, max_bytes: int, adapters: Iterable[str] = ()) -> VisionMemo | None:
        """Wrap the vision features of a Qwen3-VL `model` (PEFT-wrapped or not); None when off or unknown."""
        module = image_model(model)
        if max_bytes <= 0 or module is None:
            return None
        memo = cls(max_bytes, vision_adapters=_vision_adapters(module.visual, adapters))
        memo._module = module
        original = module.get_image_features  # the class's bound method

        @functools.wraps(original)
        def get_image_features(pixel_values: Any, image_grid_thw: Any = None, **kwargs: Any) -> Any:
            return memo._features(original, pixel_values, image_grid_thw, **kwargs)

        module.get_image_features = get_image_features  # an instance attribute: the model's forward finds it
        return memo

    def adapters_changed(self, adapters: Iterable[str]) -> None:
        """The model's PEFT adapters changed while serving. Scopes are PEFT names, never reused for
        other weights, so a reloaded adapter's pictures cannot meet its predecessor's features."""
        self.vision_adapters = _vision_adapters(self._module.visual, adapters)

    def __len__(self) -> int:
        return len(self.store)

    def clear(self) -> None:
        self.store.clear()

    # --- the wrapped call ----------------------------------------------------------------------------
    def _active(self) -> bool:
        import torch

        return self._scope is not None and not torch.is_grad_enabled() and not self._module.training

    def _features(self, original: Callable[..., Any], pixel_values: Any, grid: Any, **kwargs: Any) -> Any:
        if not self._active() or grid is None:
            return original(pixel_values, grid, **kwargs)
        import torch

        want_tuple = kwargs.pop("return_dict", True) is False
        rows = grid.prod(-1).tolist()  # patches per image in pixel_values
        keys = self._keys(pixel_values, grid, rows)
        found: list[_Entry | None] = [self.store.get(k) for k in keys]
        missing = [i for i, e in enumerate(found) if e is None]
        self._count(len(keys) - len(missing), len(missing))
        out = None
        if missing:
            if len(missing) == len(keys):
                pv, g = pixel_values, grid
            else:
                starts = [sum(rows[:i]) for i in range(len(rows))]
                pv = torch.cat([pixel_values[starts[i]:starts[i] + rows[i]] for i in missing])
                g = grid[missing]
            out = original(pv, g, return_dict=True, **kwargs)
            self.tower_calls += 1
            if not _has_deepstack(out, len(missing)):  # not the shape this memo knows: no reuse
                return out.to_tuple() if want_tuple else out
            for j, i in enumerate(missing):
                entry = self._entry(out.pooler_output[j], [layer[j] for layer in out.deepstack_features])
                found[i] = entry
                self.store.put(keys[i], entry)
        if out is None or len(missing) < len(keys):
            out = _output(found)
        return out.to_tuple() if want_tuple else out

    def _keys(self, pixel_values: Any, grid: Any, rows: list[int]) -> list[bytes]:
        pictures, self._pictures = self._pictures, []  # they describe the first call only (not videos)
        if len(pictures) == len(rows):
            return [hashlib.blake2b(f"{self._scope}|{pic}|{thw!r}".encode(), digest_size=20).digest()
                    for pic, thw in zip(pictures, grid.tolist(), strict=True)]
        import torch

        flat = pixel_values.detach().contiguous().cpu()
        row_bytes = flat[0].numel() * flat.element_size() if flat.shape[0] else 0
        data = memoryview(flat.reshape(-1).view(torch.uint8).numpy())
        head = f"{self._scope}|{flat.dtype}|{tuple(flat.shape[1:])}|".encode()
        keys, start = [], 0
        for n, thw in zip(rows, grid.tolist(), strict=True):
            h = hashlib.blake2b(head + repr(thw).encode(), digest_size=20)
            h.update(data[start * row_bytes:(start + n) * row_bytes])
            keys.append(h.digest())
            start += n
        return keys

    # --- the bounded store ---------------------------------------------------------------------------
    def _entry(self, embeds: Any, deepstack: list[Any]) -> _Entry:
        kept = [t.clone() for t in (embeds, *deepstack)]  # a split is a view: keep only this image
        nbytes = sum(t.numel() * t.element_size() for t in kept)
        return _Entry(kept[0], tuple(kept[1:]), nbytes)

    def _count(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses
        with _totals_lock:
            _totals["hit"] += hits
            _totals["miss"] += misses


@contextmanager
def serving(memo: VisionMemo | None, adapter: str | None, pictures: list[str] | None = None) -> Iterator[None]:
    """Generation for `adapter` (None: the base model) may reuse and fill the memo.

    `pictures`: `picture_ids` of the batch's images in prompt order (None: key by pixel_values)."""
    if memo is None:
        yield
        return
    memo._scope = adapter if adapter in memo.vision_adapters else ""  # others share the base tower
    memo._pictures = list(pictures or [])
    try:
        yield
    finally:
        memo._scope, memo._pictures = None, []


def picture_ids(requests: Iterable[Any], processing: object) -> list[str]:
    """Each image of `requests` (EngineRequest) in prompt order, as the processor sees it: its
    normalized pixels' `content_hash` and size, plus the processor options (`processing`)."""
    return [f"{part.image.content_hash}|{part.image.width}x{part.image.height}|{processing!r}"
            for request in requests for turn in request.turns for part in turn.parts
            if part.image is not None]


def image_model(model: Any) -> Any:
    """The module whose forward calls `self.get_image_features` (Qwen3VLModel), or None."""
    for module in model.modules():
        if ("visual" in module._modules and hasattr(module, "get_image_features")
                and getattr(getattr(module, "config", None), "model_type", None) in MODEL_TYPES):
            return module
    return None


def _vision_adapters(visual: Any, adapters: Iterable[str]) -> frozenset[str]:
    """Adapters with layers inside the vision tower (their features differ from the base's)."""
    loaded, names = frozenset(adapters), set()
    for module in visual.modules():
        if not type(module).__module__.startswith("peft."):
            continue
        layers = getattr(module, "lora_A", None)
        if layers is None:
            return loaded  # a PEFT layer of another kind: assume every adapter touches the tower
        names.update(layers.keys())
    return frozenset(names & loaded)


def _has_deepstack(out: Any, n: int) -> bool:
    pooled, deep = getattr(out, "pooler_output", None), getattr(out, "deepstack_features", None)
    return (isinstance(pooled, tuple | list) and len(pooled) == n and isinstance(deep, tuple | list)
            and all(isinstance(layer, tuple | list) and len(layer) == n for layer in deep))


def _output(found: list[_Entry | None]) -> Any:
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    output: Any = modeling_qwen3_vl.BaseModelOutputWithDeepstackFeatures  # typed for one tensor, not splits
    entries = [e for e in found if e is not None]
    layers = len(entries[0].deepstack) if entries else 0
    return output(
        pooler_output=tuple(e.embeds for e in entries),
        deepstack_features=[tuple(e.deepstack[k] for e in entries) for k in range(layers)])
