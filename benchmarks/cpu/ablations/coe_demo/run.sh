#!/usr/bin/env bash
# The coe ablation of this folder (1 seed), on a Slurm cluster (SLURM_CONF set, e.g. the local one from
# ../shared/recipes/slurm-ci.sh).   OUT=/tmp/abl_coe bash run.sh   # plans, launches, waits, reports: OUT/d2000/ablation.*
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:?set OUT}
d=$OUT/d2000
vincie-ablate plan --config "$here/d2000.yaml" --sweep "$d" --quiet
vincie-ablate launch --sweep "$d"
while [ ! -f "$d/results.json" ] || [ -n "$(squeue -h 2>/dev/null)" ]; do sleep 5; done
vincie-ablate report --sweep "$d"
