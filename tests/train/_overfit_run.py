"""The overfit run (tests/train/test_overfit.py): the tiny model memorises three sessions.

Run as a script in its own process (``python _overfit_run.py RUN_DIR``): the whole real path,
synthetic videos -> zarr store -> DALI -> encoders -> packing -> Megatron trainer -> editor ->
exact judge, on three held-in sessions whose three turns are single edits. Prints one JSON
line: the mean loss of the last 10 steps, per-turn success and the copy baseline.

One thread, MKL's and ATen's AVX2 paths (set before torch loads): the same numbers on every run
(on x86; runinfo.pin_cpu_arithmetic).
"""
import json
import sys
import time

from vincie_mcore.runinfo import pin_cpu_arithmetic  # noqa: E402  (torch-free)

pin_cpu_arithmetic()

STEPS = 600            # memorised by ~600 steps at lr 1e-2 (400 is not enough: turn 1 fails)
SESSIONS = 3
TURNS = 3


def main(run_dir: str) -> dict:
    import warnings
    from pathlib import Path

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from vincie_mcore.build import data_configs, init_parallel, make_editor, make_model, make_trainer
    from vincie_mcore.config import load_config
    from vincie_mcore.data.corpus import decode_corpus, encode_corpus, synthesize_store
    from vincie_mcore.data.packing import PackedStream
    from vincie_mcore.encoders import TextEncoder, build_image_encoder
    from vincie_mcore.eval.judge import edit_kinds
    from vincie_mcore.eval.synthetic import evaluate, summarize_eval

    t0 = time.time()
    run = Path(run_dir)
    cfg = load_config(["experiment=demo", f"run_dir={run}", f"train.steps={STEPS}", "train.warmup=10",
                       "train.lr=1e-2", "train.min_lr=1e-3", "train.progress=false", "train.log_every=100",
                       "+train.ckpt_dir=null", "+train.tensorboard_dir=null",
                       "model.num_layers=2", "model.mm_layers=1",      # half the demo model: memorises as well
                       "data.corpus.workers=1", "data.pack.token_budget=400", "data.recipe.drop_frame=0.0",
                       "sampler.steps=10"])
    dc = data_configs(cfg)
    world, corpus = dc["world"], dc["corpus"]
    store = synthesize_store(run / "data", 24, world, corpus, "fixed", 7)
    decoded = decode_corpus(store, corpus)
    keep = [s for s in decoded if s.frames.shape[0] > TURNS and s.states
            and all(len(edit_kinds(s.states[k], s.states[k + 1], world)) == 1 for k in range(TURNS))][:SESSIONS]
    if len(keep) < SESSIONS:
        raise RuntimeError(f"overfit run: only {len(keep)} usable sessions in 24 videos")
    image_enc, text_enc = build_image_encoder(dc["image"]), TextEncoder(dc["text"])
    init_parallel(cfg)
    model = make_model(cfg)
    stream = PackedStream(encode_corpus(keep, image_enc), text_enc, dc["recipe"], dc["pack"], seed=0)
    trainer = make_trainer(cfg, model, stream, run)
    trainer.train()
    model.eval()
    results, baseline, _ = evaluate(make_editor(cfg, model, text_enc, image_enc), keep, world, turns=TURNS,
                                    progress=False)
    summary = summarize_eval(results, baseline)
    summary.update(steps=trainer.step, final_loss=sum(trainer.losses[-10:]) / 10,
                   first_loss=sum(trainer.losses[:10]) / 10, seconds=round(time.time() - t0, 1))
    return summary


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
