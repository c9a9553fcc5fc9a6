#!/usr/bin/env bash
# The attention ablation of this folder, on a Slurm cluster (SLURM_CONF set, e.g. the local one from
# ../shared/recipes/slurm-ci.sh).   OUT=/tmp/abl_attention bash run.sh   # plans, launches, waits, reports: OUT/d2000/ablation.*
# (1,000 steps, 2 seeds)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:?set OUT}
CONFIG=${CONFIG:-d2000}
d=$OUT/$CONFIG
vincie-ablate plan --config "$here/$CONFIG.yaml" --sweep "$d" --quiet
vincie-ablate launch --sweep "$d"
while [ ! -f "$d/results.json" ] || [ -n "$(squeue -h 2>/dev/null)" ]; do sleep 5; done
vincie-ablate report --sweep "$d"
