"""scripts/need-disk.sh: a venv install stops at once, naming the space it needs, on a disk too full
for it (CI once died minutes into pip with a bare "No space left on device")."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "need-disk.sh"


def _run(gb: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), str(gb), str(path), "creating .venv"],
                          capture_output=True, text=True, timeout=30)


def test_a_disk_with_room_passes_quietly(tmp_path: Path) -> None:
    proc = _run(0, tmp_path / "not" / "made" / "yet")  # the venv's folder need not exist yet
    assert proc.returncode == 0 and proc.stderr == ""


def test_a_full_disk_is_named_with_what_is_needed(tmp_path: Path) -> None:
    free_gb = shutil.disk_usage(tmp_path).free // 2**30
    proc = _run(free_gb + 1000, tmp_path / ".venv")
    assert proc.returncode == 2
    assert f"creating .venv needs ~{free_gb + 1000} GB free" in proc.stderr and "Free some space" in proc.stderr
    said = re.search(r"; (\d+) GB are free", proc.stderr)
    assert said and abs(int(said.group(1)) - free_gb) <= 1, proc.stderr  # other work may write meanwhile
