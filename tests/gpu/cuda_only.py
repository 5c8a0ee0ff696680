"""Shared by the CUDA tests: skip the whole module on a machine without CUDA (never on an import error:
torch must import; only a missing GPU skips), and the tiny model's pixel budget."""

from __future__ import annotations

import pytest
import torch

BUDGET = (4 * 32 * 32, 64 * 32 * 32)  # 4..64 visual tokens: the tiny model's processor budget


def require_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA", allow_module_level=True)
