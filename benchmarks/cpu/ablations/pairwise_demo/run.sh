#!/usr/bin/env bash
# Table 5's pairwise ablation at 2,000 sessions x 1 seed, on a Slurm cluster (SLURM_CONF set).
#   OUT=/tmp/abl_pw bash run.sh            # plans, launches, waits, reports: OUT/ablation.*
# REUSE=SWEEP copies SWEEP/runs/default_d2000_s0/{checkpoints,tensorboard} into the session arm (same
# overrides, same store: sweep_demo_fig5/run1000's model); the pairwise arm always trains.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:?set OUT}
vincie-ablate plan --config "$here/d2000.yaml" --sweep "$OUT" --quiet
if [ -n "${REUSE:-}" ]; then
  mkdir -p "$OUT/runs/session_d2000_s0"
  cp -r "$REUSE/runs/default_d2000_s0/checkpoints" "$REUSE/runs/default_d2000_s0/tensorboard" "$OUT/runs/session_d2000_s0/"
fi
vincie-ablate launch --sweep "$OUT"
while [ ! -f "$OUT/results.json" ] || [ -n "$(squeue -h 2>/dev/null)" ]; do sleep 5; done
vincie-ablate report --sweep "$OUT"
