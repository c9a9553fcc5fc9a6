#!/usr/bin/env bash
# Build a session store from real videos on Slurm: one array task per part, then a merge job that
# runs only if every part succeeded (afterok). Plan first, on a login node (it only lists files):
#
#   vincie-build-sessions plan --manifest videos.jsonl --store /lustre/store --shards 64 --config build.yaml
#   (or, for an image-editing dataset: vincie-build-sessions edits --data D --store /lustre/store --shards 64 ...)
#   bash slurm/sessions.sh /lustre/store            # submits 64 tasks + the merge; prints both job ids
#
# Extra sbatch options for the array pass through: bash slurm/sessions.sh STORE --partition=gpu --gpus-per-task=1
# A task that dies (preempted, killed, node lost) is rerun alone, and resumes where it stopped:
#   sbatch --array=7 slurm/sessions_part.sbatch /lustre/store 64;  sbatch slurm/sessions_merge.sbatch /lustre/store
set -euo pipefail
store=${1:?usage: bash slurm/sessions.sh STORE [sbatch options for the array]}
shift
here=$(cd "$(dirname "$0")" && pwd)
parts=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["parts"])' "$store/plan/plan.json")
array=$(sbatch --parsable --array="0-$((parts - 1))" "$@" "$here/sessions_part.sbatch" "$store" "$parts")
array=${array%%;*}
merge=$(sbatch --parsable --dependency="afterok:$array" "$here/sessions_merge.sbatch" "$store")
echo "parts: job $array (array 0-$((parts - 1))); merge: job ${merge%%;*} (after all parts succeed)"
