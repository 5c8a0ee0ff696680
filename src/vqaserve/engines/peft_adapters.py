"""LoRA adapter versions on one Hugging Face model through PEFT (the in-process engine's adapters).

Each version (engines/adapters.py) gets a PEFT adapter name of its own (`vqa_adapter_N`, never reused),
so a reloaded adapter is a different set of weights beside the old one, and the vision memo, which
keys pictures by the PEFT name, can never hand the new version the old version's features. Every
method runs on the engine's one worker thread: PEFT's active adapter is model state, and loading
between two batches is what lets requests in flight finish on their own weights.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from vqaserve.engines.adapters import AdapterVersion
from vqaserve.errors import InvalidRequest, NotFound
from vqaserve.settings import resolve_model_path


def adapter_dir(path: str) -> str:
    """A PEFT LoRA directory (or a bundled adapter's name) -> its directory; InvalidRequest otherwise."""
    directory = resolve_model_path(path)
    if not (Path(directory) / "adapter_config.json").is_file():
        raise InvalidRequest(f"no adapter_config.json in {path!r}; give the directory `vqa train --lora` "
                             "wrote (a PEFT LoRA adapter) as this server sees it", param="path")
    return directory


class PeftAdapters:
    """Which PEFT adapter holds which version, and the model wrapped or unwrapped as they come and go."""

    def __init__(self, base_model: str) -> None:
        self.base_model = base_model  # for error messages
        self._names: dict[str, str] = {}  # version key -> PEFT adapter name
        self._counter = itertools.count(1)

    def peft_names(self) -> list[str]:
        return list(self._names.values())

    def has(self, key: str) -> bool:
        return key in self._names

    def peft_name(self, key: str | None) -> str | None:
        return None if key is None else self._names.get(key)

    def attach(self, model: Any, version: AdapterVersion) -> Any:
        """Load `version`'s weights beside the others; returns the model (PEFT-wrapped on the first)."""
        from peft import PeftModel

        name = f"vqa_adapter_{next(self._counter)}"
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(version.path, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, version.path, adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InvalidRequest(f"adapter {version.name!r} does not fit model {self.base_model!r} "
                                 f"({type(exc).__name__}); train it on this base model", param="path") from None
        model.eval()
        self._names[version.key] = name
        return model

    def detach(self, model: Any, version: AdapterVersion) -> Any:
        """Free `version`'s weights; returns the model (the bare base model once no adapter is left)."""
        name = self._names.pop(version.key, None)
        if name is None:
            return model
        if self._names:
            model.delete_adapter(name)
            return model
        # PEFT cannot run a PeftModel whose last adapter was deleted: take the LoRA layers out instead.
        return model.unload()

    def context(self, model: Any, key: str | None) -> Any:
        """Make `key`'s version (None: the base model, bit for bit) the one the next generate() uses."""
        if key is None:
            return model.disable_adapter() if self._names else nullcontext()
        name = self._names.get(key)
        if name is None:
            raise NotFound(f"adapter {key.split('@')[0]!r} is not loaded; GET /v1/models lists the served "
                           "models", param="model")
        model.set_adapter(name)
        return nullcontext()
