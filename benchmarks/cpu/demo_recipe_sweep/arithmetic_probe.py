# Arithmetic probe (docs/measured.md, "Same seed, other machine"): trains STEPS demo steps and prints a hash of
# the weights and the environment pins, e.g. `ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python arithmetic_probe.py 20`;
# two runs with equal hashes did the same arithmetic.
import sys, os
from vincie_mcore.runinfo import pin_cpu_arithmetic
pin_cpu_arithmetic()
import torch, hashlib
from pathlib import Path
from vincie_mcore.config import load_config
from vincie_mcore.build import data_configs, init_parallel, make_model, make_trainer
from vincie_mcore.data.corpus import decode_corpus, encode_corpus, synthesize_store
from vincie_mcore.data.packing import PackedStream
from vincie_mcore.encoders import TextEncoder, build_image_encoder
def main():
    steps = int(sys.argv[1])
    cfg = load_config(["experiment=demo", "run_dir=" + os.environ.get("OUT", "/tmp/arithmetic_probe"), "data.corpus.min_change=2", "train.lr=1.2e-2", "train.log_every=1000", "train.progress=false", *sys.argv[2:]])
    torch.set_num_threads(2)
    dc = data_configs(cfg); corpus = dc["corpus"]; run = Path(cfg.run_dir)
    st = synthesize_store(run / "train", corpus.videos, dc["world"], corpus, corpus.sampling, int(cfg.seed), corpus.min_change)
    tc = encode_corpus(decode_corpus(st, corpus, corpus.max_sessions), build_image_encoder(dc["image"]))
    init_parallel(cfg); model = make_model(cfg)
    stream = PackedStream(tc, TextEncoder(dc["text"]), dc["recipe"], dc["pack"], seed=int(cfg.seed))
    import shutil; shutil.rmtree(run / "checkpoints", ignore_errors=True)
    h0 = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
    # warmup as make_trainer used to shorten it (min(warmup, steps // 10)): the printed hashes stay comparable
    tr = make_trainer(cfg, model, stream, run, steps=steps, warmup=min(int(cfg.train.warmup), steps // 10)); tr.cfg.save_every = 0
    tr.train()
    h = hashlib.sha1(b"".join(p.detach().float().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
    print("RESULT", {k: os.environ.get(k) for k in ["MKL_CBWR","ATEN_CPU_CAPABILITY","ONEDNN_MAX_CPU_ISA","MKL_ENABLE_INSTRUCTIONS"]}, "init", h0, "final", h, repr(tr.losses[-1]), flush=True)
if __name__=='__main__': main()
