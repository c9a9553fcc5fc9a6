import os, sys, json, time
from vincie_mcore.runinfo import pin_cpu_arithmetic
pin_cpu_arithmetic()
import torch
from pathlib import Path
from vincie_mcore.config import load_config
from vincie_mcore.build import data_configs, init_parallel, make_editor, make_model, make_trainer
from vincie_mcore.data.corpus import decode_corpus, encode_corpus, synthesize_store
from vincie_mcore.data.packing import PackedStream
from vincie_mcore.encoders import TextEncoder, build_image_encoder
from vincie_mcore.eval.synthetic import evaluate, summarize_eval
from vincie_mcore.train.ema import EMA
import shutil

def main():
    over = sys.argv[1:]
    cfg = load_config(["experiment=demo", "train.progress=false", *over])
    run = Path(cfg.run_dir); run.mkdir(parents=True, exist_ok=True)
    dc = data_configs(cfg); world, corpus = dc["world"], dc["corpus"]
    torch.set_num_threads(int(cfg.threads))
    t0 = time.time()
    ts = synthesize_store(run / "train", corpus.videos, world, corpus, corpus.sampling, int(cfg.seed), corpus.min_change)
    hs = synthesize_store(run / "heldout", corpus.heldout_videos, world, corpus, corpus.heldout_sampling, int(cfg.seed) + 10_000)
    decoded = decode_corpus(ts, corpus, corpus.max_sessions); held = decode_corpus(hs, corpus)
    image_enc = build_image_encoder(dc["image"]); text_enc = TextEncoder(dc["text"])
    tc = encode_corpus(decoded, image_enc)
    init_parallel(cfg); model = make_model(cfg)
    stream = PackedStream(tc, text_enc, dc["recipe"], dc["pack"], seed=int(cfg.seed))
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    tr = make_trainer(cfg, model, stream, run)
    extra = {d: EMA(tr.model.module, d) for d in [float(x) for x in os.environ.get("EXTRA", "").split(",") if x]}
    orig = tr.train_step
    def step():
        m = orig()
        for e in extra.values(): e.update()
        return m
    tr.train_step = step
    t1 = time.perf_counter(); tr.train(); train_s = time.perf_counter() - t1
    model.eval(); editor = make_editor(cfg, model, text_enc, image_enc)
    out = {"over": over, "steps": tr.step, "s_per_step": round(train_s / tr.step, 3),
           "final_loss": round(sum(tr.losses[-20:]) / 20, 5), "sessions": len(tc)}
    def ev(tag):
        r, b, _ = evaluate(editor, held, world, turns=3, batch=int(cfg.eval.batch))
        out[tag] = summarize_eval(r, b)["turn_success"]; print(tag, out[tag], flush=True)
    ev("raw")
    if tr.ema is not None:
        with tr.ema.applied(): ev(f"ema{tr.cfg.ema_decay}")
    for d, e in extra.items():
        with e.applied(): ev(f"ema{d}")
    out["minutes"] = round((time.time() - t0) / 60, 2)
    print(json.dumps(out)); (run / "exp.json").write_text(json.dumps(out))

if __name__ == "__main__":
    main()
