"""The demo pipeline (``make demo``): the whole path, small, on the CPU.

synthetic videos -> zarr session store -> DALI decode -> latent store (encoded once) -> streaming
loader -> tiny MM-DiT on Megatron-Core (flow matching) -> 3-turn editing of held-out sessions ->
exact judge; the training data path is ``vincie-train``'s (``build.build_training``). ``run_demo`` prints its
progress and returns the summary (turn_success, baseline_success, success_by_edit, steps,
seconds_per_step, git_sha, minutes, ...), also written to ``<run_dir>/results.json``.

The schedule is a fixed number of steps (``train.steps`` in configs/experiment/demo.yaml) on
a fixed number of torch threads (``threads``), so a seed gives the same result on a fast or a
slow machine; only the minutes differ. The CLI is ``vincie-demo``.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import torch

from .build import build_training, data_configs, make_editor
from .data.corpus import decode_corpus, synthesize_store
from .encoders import TextEncoder, build_image_encoder
from .eval.synthetic import evaluate, evaluate_t2i, evaluate_t2v, summarize_eval, summarize_t2i, summarize_t2v
from .infer.editor import save_strip
from .runinfo import arithmetic_info, code_version
from .train.hooks import unwrap
from .train.metrics import plot_losses, write_json


def run_demo(cfg, t_start: float | None = None) -> dict:
    """The demo on a resolved config (``experiment=demo`` plus overrides); ``t_start``
    (``time.time()``) is when the run began, for its ``minutes``. Raises ``ConfigError``
    naming the key for a bad value."""
    t_start = time.time() if t_start is None else t_start
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    dc = data_configs(cfg)
    world, corpus = dc["world"], dc["corpus"]

    if cfg.get("threads"):                                     # same arithmetic on any Intel x86 (docs/measured.md)
        torch.set_num_threads(int(cfg.threads))

    # 1. data: the held-out sessions (decoded: a small store, edited turn after turn); the training corpus
    # is vincie-train's (build_training): synthesized, encoded once into <run_dir>/latents, streamed
    print("== 1. synthetic videos -> session stores -> latent store", flush=True)
    held_store = synthesize_store(run / "heldout", corpus.heldout_videos, world, corpus, corpus.heldout_sampling,
                                  int(cfg.seed) + 10_000)
    held = decode_corpus(held_store, corpus)
    if (run / "checkpoints").exists():                          # the demo trains afresh; the data is reused
        print(f"   removing the previous demo checkpoints in {run / 'checkpoints'}", flush=True)
        shutil.rmtree(run / "checkpoints")

    # 2. model + trainer: a fixed number of steps on a fixed number of threads (same result anywhere)
    _, trainer = build_training(cfg)                            # ConfigError (e.g. warmup >= steps): one line
    model = unwrap(trainer.model)
    print(f"   {trainer.stream.num_sessions} training sessions (streamed), {len(held)} held-out sessions", flush=True)
    print("== 2. train the tiny MM-DiT (Megatron-Core, CPU)", flush=True)
    print(f"   {model.num_parameters() / 1e6:.2f}M parameters, {int(cfg.train.steps)} steps, "
          f"{torch.get_num_threads()} threads", flush=True)
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    plot_losses(trainer.losses, run / "loss.png")

    # 3. multi-turn editing of held-out sessions, judged exactly
    print("== 3. edit held-out sessions turn after turn", flush=True)
    model.eval()
    editor = make_editor(cfg, model, TextEncoder(dc["text"]), build_image_encoder(dc["image"]))
    with trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext():   # sample the average
        results, baseline, strips = evaluate(editor, held, world, turns=int(cfg.eval.turns), batch=int(cfg.eval.batch))
    for i, (imgs, texts, truth) in enumerate(strips):
        save_strip([x.numpy() for x in imgs], run / f"strip_{i}.png", texts)
        save_strip(list(truth), run / f"truth_{i}.png", texts)
    summary = summarize_eval(results, baseline)
    if dc["recipe"].t2i_prob > 0:                               # the run also learned text-to-image
        print("== 4. draw held-out first frames from their captions (text-to-image)", flush=True)
        with trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext():
            t2i, t2i_base, t2i_strips = evaluate_t2i(editor, held, world, batch=int(cfg.eval.batch))
        summary |= summarize_t2i(t2i, t2i_base)
        for i, (caption, out, truth) in enumerate(t2i_strips):
            save_strip([out, truth], run / f"t2i_{i}.png", labels=[caption, "true frame"])
    if dc["recipe"].t2v_prob > 0:                               # ... and text-to-video
        print("== 5. generate held-out clips from caption + transitions (text-to-video)", flush=True)
        with trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext():
            t2v, t2v_base, t2v_strips = evaluate_t2v(editor, held, world, turns=int(cfg.eval.turns),
                                                     batch=int(cfg.eval.batch))
        summary |= summarize_t2v(t2v, t2v_base)
        for i, (caption, texts, clip, truth) in enumerate(t2v_strips):
            save_strip(list(clip) + list(truth), run / f"t2v_{i}.png",
                       labels=[caption] + list(texts) + ["true frames:"] + [""] * len(texts))
    summary["minutes"] = round((time.time() - t_start) / 60, 2)
    summary["steps"] = trainer.step
    summary["seconds_per_step"] = round(train_s / max(len(trainer.losses), 1), 4)
    summary["threads"] = torch.get_num_threads()
    summary["ema_decay"] = trainer.cfg.ema_decay
    summary.update(code_version())
    summary.update(arithmetic_info())
    summary["final_loss"] = round(sum(trainer.losses[-20:]) / max(len(trainer.losses[-20:]), 1), 5)
    write_json(run / "results.json", summary)
    print(f"   edit strips: {run}/strip_*.png (truth_*.png for the ground truth), loss curve: {run}/loss.png")
    return summary
