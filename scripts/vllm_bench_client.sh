#!/usr/bin/env bash
# vLLM's own load generator (`vllm bench serve`, openai-chat backend, random-mm dataset) against any
# OpenAI-compatible server: vLLM itself, a vqaserve gateway, or the in-process vqaserve.
#
#   scripts/vllm_bench_client.sh BASE_URL [NUM_PROMPTS] [-- extra vllm bench serve args]
#
# The model name and tokenizer are the bundled shop-toy's; the client runs from .venv-vllm.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: scripts/vllm_bench_client.sh BASE_URL [NUM_PROMPTS] [-- args]" >&2; exit 2; }
url="$1"; shift
n=64
if [ $# -gt 0 ] && [ "$1" != "--" ]; then n="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
exec bash "$ROOT/scripts/vllm.sh" bench serve --backend openai-chat --endpoint /v1/chat/completions \
  --base-url "$url" --model shop-toy --tokenizer "$ROOT/src/vqaserve/models/shop-toy" \
  --dataset-name random-mm --num-prompts "$n" --random-input-len 32 --random-output-len 16 \
  --random-mm-base-items-per-request 1 --random-mm-limit-mm-per-prompt '{"image": 1, "video": 0}' \
  --random-mm-bucket-config '{(256, 256, 1): 1.0}' --ignore-eos --max-concurrency 16 --seed 0 "$@"
