#!/usr/bin/env bash
# The base ablation of this folder, as ../coe_demo/run.sh runs its own, on a Slurm cluster (SLURM_CONF set,
# e.g. the local one from ../shared/recipes/slurm-ci.sh; .venv/bin on PATH).
#   OUT=/tmp/abl_base bash run.sh      # plans, launches, waits, reports: OUT/d2000/ablation.*
here=$(cd "$(dirname "$0")" && pwd)
HERE=$here exec bash "$here/../coe_demo/run.sh"
