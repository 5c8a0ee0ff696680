#!/usr/bin/env bash
# The bundled models' eval table (docs/eval.md): every split and wording the targets name, n=1,000
# per split, seed 1, both languages. Reports go to OUT (default docs/eval-reports/), one JSON and one
# table per run; the summary lines are printed at the end.
#
#   scripts/eval_bundled.sh [MODEL] [ADAPTER_DIR] [OUT]
#   scripts/eval_bundled.sh shop-toy src/vqaserve/models/shop-toy-sunglasses docs/eval-reports
#
# About 2-4 minutes a run on 2 idle CPU cores; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-shop-toy}
ADAPTER=${2:-src/vqaserve/models/shop-toy-sunglasses}
OUT=${3:-docs/eval-reports}
VQA=${VQA:-.venv/bin/vqa}
N=${N:-1000}
mkdir -p "$OUT"

run() {  # name, then vqa eval arguments
  local name=$1; shift
  echo "== $name" >&2
  "$VQA" eval --model "$MODEL" --n "$N" --seed 1 --quiet --out "$OUT/$name.json" "$@" | tee "$OUT/$name.txt"
}

run test          --synthetic test
run heldout       --synthetic heldout
run paraphrase    --synthetic paraphrase
run test-phrasing1 --synthetic test --phrasing 1
run test-phrasing2 --synthetic test --phrasing 2
run adapter-with-adapter --synthetic adapter --adapter "shop-toy-sunglasses=$ADAPTER"
run test-with-adapter    --synthetic test    --adapter "shop-toy-sunglasses=$ADAPTER"

python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for name in ("test", "heldout", "paraphrase", "test-phrasing1", "test-phrasing2",
             "adapter-with-adapter", "test-with-adapter"):
    r = json.loads((Path(sys.argv[1]) / f"{name}.json").read_text(encoding="utf-8"))
    worst = min(r["by_type"].items(), key=lambda kv: kv[1]["accuracy"])
    print(f"{name:22s} {100 * r['overall']:5.1f}%  weakest type {worst[0]} {100 * worst[1]['accuracy']:.1f}%"
          f"  failed requests {r.get('failed_requests', 0)}")
EOF
