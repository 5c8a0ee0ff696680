"""`accelerate launch -m vqaserve train`: two processes (gloo DDP on this CPU) train one adapter together.

Launched with the DDP config docs/train.md gives (deploy/accelerate/ddp.yaml). `accelerate launch --cpu`
would run several CPU processes through MPI only (`--mpirun_hostfile`); without MPI it starts one. The
multi-GPU launcher starts them with torchrun, and on a machine with no GPU (or with ACCELERATE_USE_CPU=true,
set here so a GPU machine runs the same test) each process trains on the CPU, synchronising gradients
over gloo: the code path of a multi-GPU run but for the NCCL backend.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DDP_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "accelerate" / "ddp.yaml"  # the one docs give


def test_two_processes_train_one_adapter_that_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "ddp-adapter"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
           "--num_processes", "2", "--main_process_port", str(free_port()),
           "-m", "vqaserve", "train", "--model", str(tiny_model_dir), "--lora", "--dtype", "bfloat16",
           "--gradient-checkpointing", "--grad-accum", "2", "--batch-size", "2", "--steps", "3",
           "--checkpoint-every", "2", "--synthetic", "train:1", "--max-turns", "1", "--workers", "0",
           "--threads", "1", "--time-budget-min", "30", "--out", str(out)]  # a budget: the processes agree on it
    proc = subprocess.run(cmd, env=subprocess_env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # each process says it ran, with its own slice of the data stream
        assert f"process {rank} of 2 on cpu" in proc.stderr and f"data seed {rank}" in proc.stderr
    assert proc.stderr.count("trained 3 steps") == 1  # one process writes the output
    info = json.loads((out / "train.json").read_text())
    assert info["processes"] == 2 and info["grad_accum"] == 2
    assert info["samples_seen"] == 3 * 2 * 2 * 2  # steps x batch x accumulation x processes
    assert info["placement"]["dtype"] == "bfloat16" and len(info["loss_curve"]) == 1
    assert not (out / "checkpoint").exists()
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(out))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # trained (B starts at zero), and loaded
