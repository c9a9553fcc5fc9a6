#!/usr/bin/env bash
# A benchmark run over N GPUs: an array of N tasks, each editing every N-th session into one --out
# (vincie-benchmark ... --shard i/N), then a scoring job that runs only if every task succeeded (afterok):
# the same command without --shard, which reads every edit back (making any that are missing) and scores.
#
#   bash slurm/benchmark.sh 8 -- mse --data mse_bench/ --run runs/3b --judge judge.yaml --out results/mse --batch 8
#   bash slurm/benchmark.sh 8 --partition=gpu -- magicbrush --data mb/test --run runs/3b --clip C --dino D --out results/mb
#
# Before --: sbatch options for the array (and the scoring job). A task that dies is rerun alone and
# resumes (each edit is written as it is made): sbatch --array=3 slurm/benchmark_part.sbatch 8 mse ...
# Bulk editing the same way (vincie-edit batch --shard i/N, then the gallery):
#   VINCIE_BIN=vincie-edit bash slurm/benchmark.sh 8 -- batch --run runs/3b --jobs jobs.jsonl --out edits/ --batch 8
set -euo pipefail
n=${1:?usage: bash slurm/benchmark.sh N [sbatch options] -- mse|magicbrush ARGS...}
shift
opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
[ "${1:-}" = "--" ] || { echo "usage: bash slurm/benchmark.sh N [sbatch options] -- mse|magicbrush ARGS..." >&2; exit 2; }
shift
[ $# -gt 0 ] || { echo "benchmark.sh: no vincie-benchmark arguments after --" >&2; exit 2; }
case "$n" in ''|*[!0-9]*|0) echo "benchmark.sh: N must be a positive integer, got '$n'" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")" && pwd)
array=$(sbatch --parsable --array="0-$((n - 1))" ${opts[@]+"${opts[@]}"} "$here/benchmark_part.sbatch" "$n" "$@")
array=${array%%;*}
# VINCIE_SCORE_OPTS: sbatch options for the scoring job alone, after the others (e.g. --gpus-per-task=0)
read -r -a score_opts <<< "${VINCIE_SCORE_OPTS:-}"
score=$(sbatch --parsable --dependency="afterok:$array" ${opts[@]+"${opts[@]}"} ${score_opts[@]+"${score_opts[@]}"} \
  "$here/benchmark_score.sbatch" "$@")
echo "edits: job $array (array 0-$((n - 1))); scoring: job ${score%%;*} (after every task succeeds)"
