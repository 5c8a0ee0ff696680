#!/usr/bin/env bash
# gpu-check.sh — is the vqaserve gateway a bottleneck in front of vLLM? (one GPU, at most 8 minutes)
#
# Builds a tiny random Qwen3-VL with the project's own builder (vqaserve.modeling.builder, recipe
# "small": head_dim 64, vLLM-friendly), serves it with `vllm serve`, puts `vqa serve --engine upstream`
# in front, and measures requests/s at concurrency 32 directly against vLLM and through the gateway
# (scripts/loadgen.py; unique questions, so the answer cache never hits). Prints the ratio
# gateway / direct; the target is >= 0.95.
#
# Run from the repository root on a machine with one NVIDIA GPU:
#     bash scripts/gpu-check.sh
# Environment (all optional):
#     PYTHON=python3        interpreter that has (or gets) torch + vLLM
#     WHEELS=.whl           folder of wheels for an offline install (pip --no-index --find-links);
#                           without it, missing packages come from PyPI (needs internet)
#     OUT=/tmp/gpu-check    logs and result JSON go here ($OUT on the device tool comes back)
#     CONCURRENCY=32 REQUESTS=640 VLLM_PORT=8011 GATEWAY_PORT=8012 GATEWAY_WORKERS=8
# With this workplace's device tool (no internet there): download the wheels here first, e.g.
#     python3 -m pip download --only-binary=:all: --python-version 3.12 \
#         --platform manylinux_2_28_x86_64 -d .whl vllm fastapi uvicorn pydantic-settings python-multipart
# then run: bash scripts/gpu-check.sh with carry [".whl"]. Note vLLM's wheel and its pinned torch are
# far over the tool's 64 MiB carry limit; there the check needs an image that already holds vLLM.
set -euo pipefail

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-/tmp/gpu-check}
CONCURRENCY=${CONCURRENCY:-32}
REQUESTS=${REQUESTS:-640}
VLLM_PORT=${VLLM_PORT:-8011}
GATEWAY_PORT=${GATEWAY_PORT:-8012}
GATEWAY_WORKERS=${GATEWAY_WORKERS:-8}  # ~9 ms CPU per 512x512 request: give the gateway cores
MODEL_DIR=${MODEL_DIR:-/tmp/gpu-check-model}
MODEL_NAME=tiny-qwen3-vl
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

log() { echo "[gpu-check +$(( $(date +%s) - START ))s] $*"; }
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_ready() {  # URL SECONDS NAME LOGFILE
  local url=$1 limit=$2 name=$3 logfile=$4 waited=0
  until curl -sf "$url" >/dev/null 2>&1; do
    sleep 2; waited=$((waited + 2))
    if (( waited >= limit )); then
      log "$name not ready after ${limit}s; last log lines:"; tail -n 40 "$logfile"; exit 1
    fi
  done
  log "$name ready after ${waited}s"
}

log "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo none)"

# 1. vLLM and the gateway's dependencies ------------------------------------------------------------
need=()
"$PYTHON" -c "import vllm" 2>/dev/null || need+=(vllm)
for mod in fastapi uvicorn pydantic_settings multipart prometheus_client ahocorasick redis; do
  "$PYTHON" -c "import $mod" 2>/dev/null || need+=("$mod")
done
if ((${#need[@]})); then
  pkgs=()
  for mod in "${need[@]}"; do
    case $mod in
      pydantic_settings) pkgs+=(pydantic-settings) ;; multipart) pkgs+=(python-multipart) ;;
      prometheus_client) pkgs+=(prometheus-client) ;; ahocorasick) pkgs+=(pyahocorasick) ;;
      *) pkgs+=("$mod") ;;
    esac
  done
  log "installing: ${pkgs[*]}"
  if [[ -d $WHEELS ]]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "${pkgs[@]}"
  else
    "$PYTHON" -m pip install -q "${pkgs[@]}"
  fi
fi
log "vllm $("$PYTHON" -c 'import vllm; print(vllm.__version__)')"

# 2. A tiny random Qwen3-VL, built offline by the project's own builder -----------------------------
"$PYTHON" - "$MODEL_DIR" <<'EOF'
import sys
from vqaserve.modeling.builder import build_model_dir
print("model dir:", build_model_dir(sys.argv[1], "small", seed=0))
EOF

# 3. vLLM on it -------------------------------------------------------------------------------------
"$PYTHON" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --served-model-name "$MODEL_NAME" \
  --host 127.0.0.1 --port "$VLLM_PORT" --max-model-len 4096 --gpu-memory-utilization 0.5 \
  --limit-mm-per-prompt '{"image": 1, "video": 0}' \
  --mm-processor-kwargs '{"size": {"shortest_edge": 262144, "longest_edge": 1310720}}' \
  >"$OUT/vllm.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$VLLM_PORT/v1/models" 300 vLLM "$OUT/vllm.log"

# 4. The gateway in front ---------------------------------------------------------------------------
VQA_ENGINE=upstream VQA_UPSTREAM_URL="http://127.0.0.1:$VLLM_PORT/v1" VQA_UPSTREAM_MODEL="$MODEL_NAME" \
VQA_SAFETY_IMAGE=off VQA_WORKERS="$GATEWAY_WORKERS" VQA_QUEUE_MAX=1024 VQA_BATCH_MAX_WAIT_MS=0 \
  "$PYTHON" -m vqaserve serve --host 127.0.0.1 --port "$GATEWAY_PORT" >"$OUT/gateway.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$GATEWAY_PORT/ready" 60 gateway "$OUT/gateway.log"

# 5. Measure: direct first (also warms vLLM), then through the gateway, then direct again -----------
load() {  # LABEL PORT
  "$PYTHON" scripts/loadgen.py --url "http://127.0.0.1:$2/v1" --model "$MODEL_NAME" --label "$1" \
    --requests "$REQUESTS" --concurrency "$CONCURRENCY" --json-out "$OUT/$1.json"
}
load direct1 "$VLLM_PORT"
load gateway "$GATEWAY_PORT"
load direct2 "$VLLM_PORT"

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
r = {name: json.load(open(f"{out}/{name}.json")) for name in ("direct1", "gateway", "direct2")}
direct = max(r["direct1"]["requests_per_s"], r["direct2"]["requests_per_s"])  # the stricter baseline
ratio = r["gateway"]["requests_per_s"] / direct if direct else 0.0
summary = {"direct_rps": direct, "gateway_rps": r["gateway"]["requests_per_s"], "ratio": round(ratio, 3),
           "target": 0.95, "pass": ratio >= 0.95, "gateway_p95_ms": r["gateway"]["p95_ms"],
           "direct_p95_ms": r["direct1"]["p95_ms"], "errors": {k: v["errors"] for k, v in r.items()}}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(f"requests/s through the gateway / direct to vLLM at concurrency {r['gateway']['concurrency']}: "
      f"{summary['gateway_rps']} / {direct} = {ratio:.3f} (target >= 0.95: {'PASS' if summary['pass'] else 'FAIL'})")
EOF
log "done"
