#!/usr/bin/env bash
# The coe ablations of this folder, on a Slurm cluster (SLURM_CONF set, e.g. the local one from
# ../shared/recipes/slurm-ci.sh).   OUT=/tmp/abl_coe bash run.sh   # plans, launches, waits, reports: OUT/d2000/ablation.*
# CONFIG=d2000_4k (4,000 steps, 2 seeds) -> OUT/d2000_4k/.
set -euo pipefail
here=${HERE:-$(cd "$(dirname "$0")" && pwd)}        # the folder of the configs (attention_demo/run.sh sets it)
OUT=${OUT:?set OUT}
CONFIG=${CONFIG:-d2000}
d=$OUT/$CONFIG
vincie-ablate plan --config "$here/$CONFIG.yaml" --sweep "$d" --quiet
vincie-ablate launch --sweep "$d"
while [ ! -f "$d/results.json" ] || [ -n "$(squeue -h 2>/dev/null)" ]; do sleep 5; done
vincie-ablate report --sweep "$d"
