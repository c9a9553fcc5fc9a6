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
    from omegaconf import OmegaConf

    from vincie_mcore import experiment as ex
    from vincie_mcore.config import ConfigError, load_config
    from vincie_mcore.data.packing import PackedStream
    from vincie_mcore.encoders import TextEncoder, build_image_encoder

    try:
        cfg = load_config(argv)
        dc = ex.data_configs(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    try:
        dims = ex.init_parallel(cfg)
    except ValueError as e:                                      # impossible layout: one line naming it
        print(f"error: parallel: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if dims.rank == 0:
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    corpus = dc["corpus"]
    store = corpus.store or ex.synthesize_store(run / "train", corpus.videos, dc["world"], corpus, corpus.sampling,
                                                int(cfg.seed))
    decoded = ex.decode_corpus(store, corpus, corpus.max_sessions)
    train_corpus = ex.encode_corpus(decoded, build_image_encoder(dc["image"]))
    # every DP rank draws its own batches; TP/CP ranks of one replica share them
    stream = PackedStream(train_corpus, TextEncoder(dc["text"]), dc["recipe"], dc["pack"],
                          seed=int(cfg.seed) + 7919 * dims.dp_rank)
    try:                                                         # e.g. warmup >= steps: one line, no traceback
        model = ex.make_model(cfg)
        trainer = ex.make_trainer(cfg, model, stream, run)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer.train()
    if dims.rank == 0:
        ex.plot_losses(trainer.losses, run / "loss.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
