"""Train VINCIE from a Hydra config (single process, or under torchrun / slurm/train.sbatch).

    vincie-train experiment=demo train.steps=500
    torchrun --nproc-per-node 8 -m vincie_tools.train experiment=3b data.corpus.store=/data/store ...

Synthetic data is built on the fly when ``data.corpus.store`` is null.
Resumes from ``<run_dir>/checkpoints`` when a checkpoint exists.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):               # Hydra overrides only; no argparse
        print(f"usage: vincie-train [key=value ...]  (Hydra overrides of configs/)\n{__doc__}")
        return 0
    from vincie_mcore.build import build_training
    from vincie_mcore.config import ConfigError, load_config
    from vincie_mcore.train.metrics import plot_losses

    try:                                                         # a bad value, an impossible layout: one line
        cfg = load_config(argv)
        dims, trainer = build_training(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer.train()
    if dims.rank == 0:
        plot_losses(trainer.losses, Path(cfg.run_dir) / "loss.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
