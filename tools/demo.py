"""`make demo`: the whole pipeline, small, on the CPU, in about 15 minutes.

synthetic videos -> zarr session store -> DALI decode -> tiny MM-DiT on
Megatron-Core (flow matching) -> 3-turn editing of held-out sessions -> exact
judge. Prints what it learned; the LAST line is a JSON object with
turn_success, baseline_success, success_by_edit, minutes.

    python -m tools.demo [hydra overrides, e.g. train.max_minutes=3 data.corpus.videos=500]
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> dict:
    t_start = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    from omegaconf import OmegaConf

    from vincie_mcore import experiment as ex
    from vincie_mcore.config import build, load_config
    from vincie_mcore.data.packing import PackedStream
    from vincie_mcore.diffusion.flow import FlowConfig
    from vincie_mcore.encoders import TextEncoder, build_image_encoder
    from vincie_mcore.infer.editor import save_strip

    from vincie_mcore.config import ConfigError
    try:
        cfg = load_config(["experiment=demo", *argv])
        ex.data_configs(cfg)                                     # validate the data groups up front
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    dc = ex.data_configs(cfg)
    world, corpus = dc["world"], dc["corpus"]

    # 1. data: videos -> sessions (resumable), then DALI-decode and encode once
    print("== 1. synthetic videos -> session store", flush=True)
    train_store = ex.synthesize_store(run / "train", corpus.videos, world, corpus, corpus.sampling, int(cfg.seed))
    held_store = ex.synthesize_store(run / "heldout", corpus.heldout_videos, world, corpus, corpus.heldout_sampling,
                                     int(cfg.seed) + 10_000)
    decoded = ex.decode_corpus(train_store, corpus, corpus.max_sessions)
    held = ex.decode_corpus(held_store, corpus)
    image_enc = build_image_encoder(dc["image"])
    text_enc = TextEncoder(dc["text"])
    train_corpus = ex.encode_corpus(decoded, image_enc)
    print(f"   {len(train_corpus)} training sessions, {len(held)} held-out sessions", flush=True)

    # 2. model + trainer; the schedule is sized to the time budget from a measured step time
    print("== 2. train the tiny MM-DiT (Megatron-Core, CPU)", flush=True)
    ex.init_parallel(cfg)
    model = ex.make_model(cfg)
    stream = PackedStream(train_corpus, text_enc, dc["recipe"], dc["pack"], seed=int(cfg.seed))
    flow = build(FlowConfig, cfg.flow, "flow")
    minutes = cfg.train.get("max_minutes") or 9.0
    if cfg.get("demo_steps"):                                   # a fixed schedule (comparisons across machines)
        steps = int(cfg.demo_steps)
        print(f"   {model.num_parameters() / 1e6:.2f}M parameters, {steps} steps (demo_steps)", flush=True)
    else:
        step_s = ex.time_per_step(model, stream, flow) * 1.25  # + batch building (~12%), optimizer, logging
        steps = max(20, int(minutes * 60 / step_s))
        print(f"   {model.num_parameters() / 1e6:.2f}M parameters, ~{step_s:.2f} s/step -> {steps} steps", flush=True)
    if (run / "checkpoints").exists():                          # the demo trains afresh; the corpus is reused
        print(f"   removing the previous demo checkpoints in {run / 'checkpoints'}", flush=True)
        shutil.rmtree(run / "checkpoints")
    trainer = ex.make_trainer(cfg, model, stream, run, steps=steps)
    trainer.train()
    ex.plot_losses(trainer.losses, run / "loss.png")

    # 3. multi-turn editing of held-out sessions, judged exactly
    print("== 3. edit held-out sessions turn after turn", flush=True)
    model.eval()
    editor = ex.make_editor(cfg, model, text_enc, image_enc)
    results, baseline, strips = ex.evaluate(editor, held, world, turns=int(cfg.eval.turns), batch=int(cfg.eval.batch))
    for i, (imgs, texts, truth) in enumerate(strips):
        save_strip([x.numpy() for x in imgs], run / f"strip_{i}.png", texts)
        save_strip(list(truth), run / f"truth_{i}.png", texts)
    summary = ex.summarize_eval(results, baseline)
    summary["minutes"] = round((time.time() - t_start) / 60, 2)
    summary["steps"] = trainer.step
    summary["final_loss"] = round(sum(trainer.losses[-20:]) / max(len(trainer.losses[-20:]), 1), 5)
    ex.write_json(run / "results.json", summary)
    print(f"   edit strips: {run}/strip_*.png (truth_*.png for the ground truth), loss curve: {run}/loss.png")
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
