#!/usr/bin/env bash
# The context ablation of this folder at 4 training sizes (1 seed each), on a Slurm cluster
# (SLURM_CONF set, e.g. the local one from ../shared/recipes/slurm-ci.sh).
#   OUT=/tmp/abl bash run.sh                 # plans, launches, waits, reports: OUT/d{N}/ablation.*
# REUSE=SWEEP: copy SWEEP/runs/default_d{N}_s0/{checkpoints,tensorboard} (a vincie-sweep run with the
# same overrides on the same store, e.g. sweep_demo_fig5/run1000's) into the run before launch. The
# training element then resumes at its last step and trains nothing; only the two evaluations run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:?set OUT}
for n in ${SIZES:-250 500 1000 2000}; do
  d=$OUT/d$n
  vincie-ablate plan --config "$here/d$n.yaml" --sweep "$d" --quiet
  if [ -n "${REUSE:-}" ]; then
    mkdir -p "$d/runs/context_d${n}_s0"
    cp -r "$REUSE/runs/default_d${n}_s0/checkpoints" "$REUSE/runs/default_d${n}_s0/tensorboard" "$d/runs/context_d${n}_s0/"
  fi
  vincie-ablate launch --sweep "$d"
done
for n in ${SIZES:-250 500 1000 2000}; do
  while [ ! -f "$OUT/d$n/results.json" ] || [ -n "$(squeue -h 2>/dev/null)" ]; do sleep 5; done
  vincie-ablate report --sweep "$OUT/d$n"
done
