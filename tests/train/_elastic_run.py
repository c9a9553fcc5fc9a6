"""Tiny MM-DiT runs on a latent store through build's pieces, in this process (DP1) or in spawned gloo
ranks (DP2): the helper of test_elastic.py. A run returns its losses, the head pack of every step
(the global order), its step and, on rank 0, its parameters."""
import os
import sys
import warnings

OVERRIDES = ["model=tiny", "model.num_layers=1", "model.mm_layers=1", "data=synthetic", "data.corpus.workers=1",
             "data.pack.token_budget=400", "parallel.tp=1", "parallel.cp=1", "parallel.sp=false",
             "train.steps=4", "train.warmup=0", "train.lr=1e-3", "+train.eps=1e-6", "train.save_every=2",
             "train.log_every=1", "train.progress=false", "train.dtype=fp32"]


def config(store, run_dir, micro: int, extra=()):
    from vincie_mcore.config import load_config
    return load_config([*OVERRIDES, f"data.corpus.latents={store}", f"run_dir={run_dir}",
                        f"train.micro_batches={micro}", *extra])


def run(store, init, run_dir, micro: int, until: int | None = None, extra=()) -> dict:
    """Train (or resume) ``run_dir`` on the current process groups with ``micro`` micro-batches a step."""
    from pathlib import Path

    import torch

    from vincie_mcore.build import data_configs, init_parallel, make_model, make_trainer
    from vincie_mcore.data.stream import stream_from_config

    cfg = config(store, run_dir, micro, extra)
    dims = init_parallel(cfg)
    model = make_model(cfg)
    model.load_state_dict(torch.load(init, weights_only=True))
    stream = stream_from_config(data_configs(cfg), int(cfg.seed), dims, micro_batches=micro)
    trainer = make_trainer(cfg, model, stream, Path(run_dir))
    heads = []
    trainer.hooks.append(type("Heads", (), {"on_step_end": lambda self, t, m: heads.append(t.stream.state_dict()["pack"])})())
    losses = trainer.train(until=until)
    return dict(losses=losses, heads=heads, step=trainer.step, resumed_from=trainer.resumed_from,
                params={n: p.detach().clone() for n, p in model.named_parameters()} if dims.rank == 0 else None)


def worker(rank: int, world: int, port: int, jobs: list, out: str):
    """Spawned rank: the jobs (kwargs of ``run``) one after the other; rank 0 saves the results."""
    import torch
    warnings.filterwarnings("ignore")
    sys.stdout = sys.stderr = open(os.path.join(out, f"rank{rank}.log"), "w")
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    results = [run(**job) for job in jobs]
    if rank == 0:
        torch.save(results, os.path.join(out, "results.pt"))
