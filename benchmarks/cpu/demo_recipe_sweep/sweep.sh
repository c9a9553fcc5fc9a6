#!/bin/bash
# One row of sweep.jsonl: the 1,000-step demo recipe plus overrides, one seed (docs/measured.md,
# "Levers for the 1,000-step demo"). Run from anywhere in the repo with its .venv built:
#   benchmarks/cpu/demo_recipe_sweep/sweep.sh T8 0 flow.t_loc=0.8      # appends to $OUT/sweep.jsonl
# (The word-pooling and change-weight rows used code that was tried and removed; see measured.md.)
name=$1; seed=$2; shift 2
OUT=${OUT:-/tmp/demo_recipe_sweep}
mkdir -p "$OUT"
cd "$(git rev-parse --show-toplevel)" || exit 2
out=$(.venv/bin/vincie-demo run_dir="$OUT/r_${name}_s$seed" seed="$seed" data.corpus.min_change=2 train.steps=1000 \
      train.lr=1.2e-2 train.progress=false "$@" 2>"$OUT/r_${name}_s$seed.err" | tail -1)
python3 - "$name" "$seed" "$out" "$*" "$OUT/sweep.jsonl" <<'PY'
import json, sys
name, seed, out, ov, dst = sys.argv[1:]
try:
    d = json.loads(out)
except ValueError:
    d = {"error": out[-300:]}
keys = ["turn_success", "success_by_edit", "minutes", "seconds_per_step", "final_loss", "sessions", "error"]
rec = {"name": name, "seed": int(seed), "over": ov, **{k: d.get(k) for k in keys}}
open(dst, "a").write(json.dumps(rec) + "\n")
print(json.dumps(rec))
PY
