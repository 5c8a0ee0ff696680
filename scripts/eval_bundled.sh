#!/usr/bin/env bash
# The bundled models' eval table (docs/eval.md): every split, wording and task the targets name,
# n=1,000 per split, seed 1, both languages: the catalogue's questions (test, heldout, the paraphrase
# split of held-out wordings, the two training paraphrases), the attributes as JSON asked with
# response_format (per field), questions a photo cannot answer (the can't-tell sentence), and the
# sunglasses adapter. Reports go to OUT (default docs/eval-reports/), one JSON and one table per run;
# the summary lines are printed at the end.
#
#   scripts/eval_bundled.sh [MODEL] [ADAPTER_DIR] [OUT]
#   scripts/eval_bundled.sh shop-toy src/vqaserve/models/shop-toy-sunglasses docs/eval-reports
#   RECORD=1 scripts/eval_bundled.sh     # also add each figure to the model's / adapter's train.json
#
# About 40-50 s a run, ~8 minutes in all, on 2 idle CPU cores; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-shop-toy}
ADAPTER=${2:-src/vqaserve/models/shop-toy-sunglasses}
OUT=${3:-docs/eval-reports}
VQA=${VQA:-.venv/bin/vqa}
N=${N:-1000}
mkdir -p "$OUT"

RECORD=${RECORD:-0}

run() {  # name, the directory whose train.json records it, then vqa eval arguments
  local name=$1 record_dir=$2; shift 2
  local record=()
  [ "$RECORD" = 1 ] && record=(--record "$record_dir")
  echo "== $name" >&2
  "$VQA" eval --model "$MODEL" --n "$N" --seed 1 --quiet --out "$OUT/$name.json" "${record[@]}" "$@" \
    | tee "$OUT/$name.txt"
}

run test           "$MODEL" --synthetic test
run heldout        "$MODEL" --synthetic heldout
run paraphrase     "$MODEL" --synthetic paraphrase
run test-phrasing1 "$MODEL" --synthetic test --phrasing 1
run test-phrasing2 "$MODEL" --synthetic test --phrasing 2
run json-test               "$MODEL" --synthetic test --task json
run json-paraphrase         "$MODEL" --synthetic paraphrase --task json
run unanswerable-test       "$MODEL" --synthetic test --task unanswerable
run unanswerable-paraphrase "$MODEL" --synthetic paraphrase --task unanswerable
run adapter-with-adapter "$ADAPTER" --synthetic adapter --adapter "shop-toy-sunglasses=$ADAPTER"
run test-with-adapter    "$ADAPTER" --synthetic test    --adapter "shop-toy-sunglasses=$ADAPTER"

python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for name in ("test", "heldout", "paraphrase", "test-phrasing1", "test-phrasing2", "json-test", "json-paraphrase",
             "unanswerable-test", "unanswerable-paraphrase", "adapter-with-adapter", "test-with-adapter"):
    r = json.loads((Path(sys.argv[1]) / f"{name}.json").read_text(encoding="utf-8"))
    refusals = r.get("refusals", {})
    auroc = (r.get("confidence") or {}).get("auroc")  # confidence: right vs wrong (docs/eval.md)
    if "by_field" in r:
        detail = "fields " + " ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in r["by_field"].items())
    elif "unanswerable" in refusals:
        detail = f"can't-tell sentence in the question's language {100 * refusals['unanswerable']['in_language']:.1f}%"
    else:
        worst = min(r["by_type"].items(), key=lambda kv: kv[1]["accuracy"])
        langs = " ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in r["by_lang"].items())
        detail = (f"{langs}  weakest type {worst[0]} {100 * worst[1]['accuracy']:.1f}%  refused "
                  f"{100 * refusals.get('catalogue', {}).get('share', 0):.1f}%  confidence AUROC {auroc}")
    print(f"{name:24s} {100 * r['overall']:5.1f}%  {detail}  failed requests {r.get('failed_requests', 0)}")
EOF
