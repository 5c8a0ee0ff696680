"""`vqa doctor`: is this machine able to serve (or fine-tune) the configured model, and if not,
what to do. report.py holds the report and the environment checks, model.py the model checks and
`diagnose`, memory.py the peak-memory forecast (plain arithmetic: the GPU check imports it on a
machine that has torch and transformers but not the service's own dependencies)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"diagnose": "model", "Workload": "model", "Report": "report", "Finding": "report",
         "PACKAGES": "report", "render": "report", "to_json": "report"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vqaserve.doctor.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vqaserve.doctor' has no attribute {name!r}")
