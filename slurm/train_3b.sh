#!/usr/bin/env bash
# VINCIE 3B (paper: 15k steps). Layout and sizes live in configs/experiment/3b.yaml;
# extra Hydra overrides pass through:  sbatch slurm/train_3b.sh data.corpus.store=/path/to/store
# (the real-data group also needs data.text_encoder.path and data.image_encoder.path: configs/data/real.yaml)
# It prints the resolved layout first, refuses one that does not fit the allocation, and saves and requeues
# itself on a preemption signal (slurm/train.sbatch, docs/slurm_training.md). One node, 2 GPUs, tiny model:
#   sbatch --nodes=1 --gpus-per-node=2 slurm/train_3b.sh model=tiny data=synthetic train=tiny train.steps=200 parallel.tp=1 parallel.cp=1 parallel.sp=false
#SBATCH --job-name=vincie-3b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
exec bash "${SLURM_SUBMIT_DIR:-.}/slurm/train.sbatch" experiment=3b "$@"
