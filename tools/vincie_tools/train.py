"""Train VINCIE from a Hydra config (single process, under torchrun, or one srun task per GPU).

    vincie-train experiment=demo train.steps=500
    torchrun --nproc-per-node 8 -m vincie_tools.train experiment=3b data.corpus.store=/data/store ...
    sbatch slurm/train_7b.sh data.corpus.store=/lustre/store ...     (srun, one task per GPU)

Synthetic data is built on the fly when ``data.corpus.store`` is null (by rank 0; the others wait).
Resumes from ``<run_dir>/checkpoints`` when a checkpoint exists. On SIGUSR1/SIGTERM it saves the
step in flight and exits with 75 (``vincie_mcore.train.launch.EXIT_PREEMPTED``), on which
slurm/train.sbatch requeues the job.

``--check-layout --nodes N --gpus-per-node G`` only prints the resolved layout (TP/CP/DP, global
batch, tokens per step) for that allocation, or refuses it in one line (exit 2); slurm/train.sbatch
runs it before starting any rank.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _check_layout(argv: list[str]) -> int:
    import argparse

    from vincie_mcore.config import ConfigError, load_config
    from vincie_mcore.train.launch import resolve_layout

    p = argparse.ArgumentParser(prog="vincie-train --check-layout")
    p.add_argument("--check-layout", action="store_true")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    args, overrides = p.parse_known_args(argv)
    try:
        layout = resolve_layout(load_config(overrides), args.nodes, args.gpus_per_node)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(layout.describe(), flush=True)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):               # Hydra overrides only; no argparse
        print(f"usage: vincie-train [key=value ...]  (Hydra overrides of configs/)\n"
              f"       vincie-train --check-layout --nodes N --gpus-per-node G [key=value ...]\n{__doc__}")
        return 0
    if "--check-layout" in argv:
        return _check_layout(argv)
    from vincie_mcore.train.trainer import StopSignals

    with StopSignals() as stop:                                  # from here on a SIGUSR1/SIGTERM is a request to save
        return _train(argv, stop)


def _train(argv: list[str], stop) -> int:
    from vincie_mcore.build import build_run_config, build_training
    from vincie_mcore.config import ConfigError, load_config
    from vincie_mcore.train.launch import EXIT_PREEMPTED, Layout, env_from_srun
    from vincie_mcore.train.metrics import plot_losses
    from vincie_mcore.train.trainer import Preempted

    env_from_srun()                                              # srun task -> RANK/WORLD_SIZE/LOCAL_RANK
    try:                                                         # a bad value, an impossible layout: one line
        cfg = load_config(argv)
        build_run_config(cfg)                                    # every section's bad key before any group or data
        dims, trainer = build_training(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dims.rank == 0:
        nodes = int(os.environ.get("SLURM_NNODES", "1"))
        nodes = nodes if dims.world_size % nodes == 0 else 1
        print(Layout(tp=dims.tp, cp=dims.cp, dp=dims.dp, nodes=nodes, gpus_per_node=dims.world_size // nodes,
                     token_budget=int(cfg.data.pack.token_budget),
                     micro_batches=int(cfg.train.get("micro_batches", 1))).describe(), flush=True)
    try:
        if not trainer.cfg.save_on_signal:                       # the signals' default action again
            stop.__exit__(None, None, None)
            if stop.signum is not None:
                signal.raise_signal(stop.signum)
        trainer.train(stop_signals=stop if trainer.cfg.save_on_signal else None)
    except Preempted as e:
        if dims.rank == 0:
            print(f"{e}; exiting with {EXIT_PREEMPTED} (requeue me)", file=sys.stderr, flush=True)
        # Under `srun --kill-on-bad-exit` the first rank to exit 75 gets the others a SIGTERM, which
        # must not kill them during their interpreter shutdown (their exit code would then not be 75).
        # Ignored (not handled) signals stay ignored through the shutdown; a normal exit (not os._exit)
        # also shuts down the Manager process that Megatron's checkpointing started.
        stop.ignore_after()
        return EXIT_PREEMPTED
    if dims.rank == 0:
        plot_losses(trainer.losses, Path(cfg.run_dir) / "loss.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
