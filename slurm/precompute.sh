#!/usr/bin/env bash
# Encode a session store into a latent store on Slurm (docs/latent_store.md): one array task per
# part, then a check job that runs only if every part succeeded (afterok) and writes the row index.
#
#   bash slurm/precompute.sh /lustre/store /lustre/latents 64 --dtype=bfloat16 data=real \
#       data.text_encoder.path=/models/flan-t5-xxl data.image_encoder.path=/models/vae --partition=gpu --gpus-per-task=1
#
# key=value: Hydra overrides (the encoders, image size and recipe texts: the keys training reads);
# --dtype=... and --block-rows=...: passed to vincie-precompute; any other --option: to sbatch, for the array.
# A task that dies (preempted, killed, node lost) is rerun alone, and skips the blocks it finished:
#   sbatch --array=7 slurm/precompute_part.sbatch /lustre/store /lustre/latents 64 ...;  sbatch slurm/precompute_check.sbatch /lustre/latents
set -euo pipefail
store=${1:?usage: bash slurm/precompute.sh STORE OUT PARTS [key=value ...] [--dtype=D] [sbatch options]}
out=${2:?out}
parts=${3:?number of parts}
shift 3
here=$(cd "$(dirname "$0")" && pwd)
tool=() sb=()
for a in "$@"; do
  case $a in
    --dtype=*|--block-rows=*) tool+=("$a") ;;
    --*) sb+=("$a") ;;
    *=*) tool+=("$a") ;;
    *) echo "precompute.sh: unexpected argument $a" >&2; exit 2 ;;
  esac
done
array=$(sbatch --parsable --array="0-$((parts - 1))" "${sb[@]}" "$here/precompute_part.sbatch" "$store" "$out" "$parts" "${tool[@]}")
array=${array%%;*}
check=$(sbatch --parsable --dependency="afterok:$array" "$here/precompute_check.sbatch" "$out")
echo "parts: job $array (array 0-$((parts - 1))); check: job ${check%%;*} (after all parts succeed)"
