"""Parallel-layout parity: train the tiny MM-DiT in one process and in a TP x CP x DP layout, compare.

The tiny model (``configs/model/tiny.yaml``, torch core, ``adaln_zero_init`` off so every
parameter has a gradient from step 1) is trained for ``steps`` optimizer steps (Megatron
DDP + Megatron Adam via ``train.trainer.Trainer``, grad clipping on) once in ONE process and
once in the layout, as spawned CPU processes over gloo, from the same initial weights (the
one-process model saved with ``dist_checkpointing`` and loaded resharded).

Data: each step draws ``parts`` synthetic packed batches (deterministic in seed and step,
already noised). A layout with data-parallel size dp gives rank d the union of parts
``[d*parts/dp, (d+1)*parts/dp)``; the one-process reference sees the union of all of them,
so the global batch, and the tokens per step, are the same everywhere.

Compared: the loss of every step on every rank; every parameter's full gradient at the
first step (after Megatron's reductions, TP shards concatenated, distributed-optimizer
shards gathered) on every replica; every parameter after the last step. Relative diff =
max|a - b| / max(max|b|, 1e-12) (``rel_diff``); ``check_layouts`` flags a layout whose diffs
exceed ``tol`` (fp32: 1e-5). The CLI is ``vincie-check-parallel-parity``.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..config import CONFIG_DIR, build
from ..packed.batch import PackedBatch
from ..packed.builder import BatchBuilder, concat
from ..packed.maskspec import KIND_CLEAN, KIND_NOISY
from ..signals import unblock_signals

TINY = CONFIG_DIR / "model" / "tiny.yaml"
PAD_MULTIPLE = 8          # every part's streams are padded to this, for any tp (SP) used here
TINY_NUMBER = 1e-12
# Adam's epsilon. With the usual 1e-8, gradient elements near 1e-8 (biases here) turn fp32
# round-off (~1e-4 of such an element) into update differences of ~1e-4 * lr, and biases start
# at 0: that measures Adam's conditioning, not the layout. 1e-6 keeps the update smooth there.
ADAM_EPS = 1e-6


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    cp: int = 1
    dp: int = 1
    sp: bool = False
    dist_opt: bool = False

    @property
    def world(self) -> int:
        return self.tp * self.cp * self.dp

    def __post_init__(self):
        for k in ("tp", "cp", "dp"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"layout: {k} must be an int >= 1, got {v!r}")
        if self.sp and self.tp == 1:
            raise ValueError("layout: --sp (sequence parallel) needs --tp > 1")


# ----------------------------------------------------------------------------
# Data: synthetic packed batches, noised once, and their union
# ----------------------------------------------------------------------------

def _model_dict() -> dict:
    import yaml
    d = yaml.safe_load(TINY.read_text())
    d.update(attention_backend="torch", adaln_zero_init=False)
    return d


def synthetic_part(gen: torch.Generator, tokens: int, mask_type: str, text_dim: int, patch_dim: int):
    """One packed batch of ~``tokens`` tokens: sessions of 1-3 turns, streams padded to PAD_MULTIPLE.

    Returns (batch, x_t, target), noised with a rectified-flow draw from ``gen``.
    """
    from ..diffusion.flow import FlowConfig, noise_batch

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    b = BatchBuilder(mask_type, pad_multiple=PAD_MULTIPLE)
    used = 0
    while used < tokens:                        # sessions until the part holds ~tokens tokens
        b.session()
        turns, h, w = rint(1, 3), rint(2, 4), rint(2, 4)
        b.image(0, KIND_CLEAN, (h, w), rope_turn=0)
        used += h * w
        for t in range(turns):
            n = rint(3, 10)
            b.text(2 * t + 1, t, length=n)
            last = t == turns - 1
            if mask_type == "block_causal" or not last:
                b.image(2 * t + 2, KIND_CLEAN, (h, w), rope_turn=t + 1)
                used += h * w
            if mask_type == "block_causal" or last:
                b.image(2 * t + 2, KIND_NOISY, (h, w), rope_turn=t + 1)
                used += h * w
            used += n
    batch = b.build(gen, text_dim=text_dim, patch_dim=patch_dim)
    x_t, target, batch = noise_batch(batch, FlowConfig(prediction="v", text_drop=0.0), gen)
    return batch, x_t, target


def merge_parts(parts):
    """Union of packed parts in the joint layout: every text block, then every image block; sessions renumbered."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda i: torch.cat([p[i] for p in parts])  # noqa: E731
    return concat([p[0] for p in parts]), cat(1), cat(2)


@dataclass
class NoisedBatch(PackedBatch):
    """A packed batch with its noised image stream and regression target (the loss reads them)."""
    x_t: torch.Tensor | None = None       # [S_img, patch_dim]
    target: torch.Tensor | None = None    # [S_img, patch_dim]


class ParityStream:
    """Step k -> this DP rank's union of parts (batch with ``x_t``/``target`` attached); state = step."""

    def __init__(self, seed: int, parts: int, tokens: int, mask_type: str, dp_rank: int, dp: int,
                 text_dim: int, patch_dim: int):
        if parts % dp:
            raise ValueError(f"parity stream: {parts} parts per step do not split over dp={dp}")
        self.seed, self.parts, self.tokens, self.mask_type = seed, parts, tokens, mask_type
        self.mine = range(dp_rank * parts // dp, (dp_rank + 1) * parts // dp)
        self.text_dim, self.patch_dim, self.step = text_dim, patch_dim, 0

    def __iter__(self):
        return self

    def __next__(self):
        parts = [synthetic_part(torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * 1009 + p),
                                self.tokens // self.parts, self.mask_type, self.text_dim, self.patch_dim)
                 for p in self.mine]
        self.step += 1
        batch, x_t, target = merge_parts(parts)
        return NoisedBatch(**{f.name: getattr(batch, f.name) for f in fields(PackedBatch)}, x_t=x_t, target=target)

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = int(state["step"])


def parity_loss(model, batch, gen):
    """The training loss on pre-noised data (``flow.prediction_loss``: global token mean over dp x cp)."""
    from ..diffusion.flow import prediction_loss
    return prediction_loss(model, batch.x_t, batch.target, batch)


# ----------------------------------------------------------------------------
# One run of a layout: spawned ranks, results written per rank
# ----------------------------------------------------------------------------

def _full_grads(ddp) -> dict:
    """param -> its full DP-reduced gradient (gathering distributed-optimizer shards from the grad buffer)."""
    import torch.distributed as dist
    out = {}
    if ddp.ddp_config.use_distributed_optimizer:
        for bg in ddp.bucket_groups:
            n, r = bg.intra_distributed_optimizer_instance_size, bg.intra_distributed_optimizer_instance_rank
            for bucket in bg.buckets:
                data, shard = bucket.grad_data, bucket.grad_data.numel() // n
                full = torch.empty_like(data)
                dist.all_gather_into_tensor(full, data[r * shard:(r + 1) * shard].clone(),
                                            group=bg.intra_distributed_optimizer_instance_group)
                for p in bucket.params_list:
                    o = p.main_grad.storage_offset() - data.storage_offset()
                    out[p] = full[o:o + p.numel()].view_as(p).clone()
    for p in ddp.module.parameters():
        out.setdefault(p, p.main_grad.detach().clone())
    return out


def _worker(rank: int, run: dict):
    unblock_signals()                   # a rank, not a helper: a stop signal acts on it
    out = Path(run["out_dir"])
    log = open(out / f"rank{rank}.log", "w")
    sys.stdout = sys.stderr = log
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // run["world"]))   # ranks share the CPU cores
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(run["world"]), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(run["port"]))
    from megatron.core import dist_checkpointing

    from ..model import MMDiTConfig, build_model
    from ..train.trainer import TrainConfig, Trainer
    from . import groups
    from .dims import ParallelDims, parallelize

    L = Layout(**run["layout"])
    dims = groups.init_distributed(tp=L.tp, cp=L.cp, dp=L.dp, seed=run["seed"])
    mcfg = build(MMDiTConfig, _model_dict(), "model")
    torch.manual_seed(run["seed"])
    model = build_model(mcfg, tensor_model_parallel_size=L.tp, sequence_parallel=L.sp, device="cpu")
    parallelize(model, ParallelDims.current(sp=L.sp))
    init = run["init_dir"]
    if run["save_init"]:
        # biases start at 0 and would only hold a couple of Adam steps (~lr): a relative diff
        # against that scale is noise, so give every all-zero parameter a random start
        with torch.no_grad():
            for p in model.parameters():
                if not p.abs().max() > 0:
                    p.normal_(0.0, mcfg.init_method_std)
        dist_checkpointing.save(model.sharded_state_dict(), init)
    else:
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), init))
    names = {p: n for n, p in model.named_parameters()}
    stream = ParityStream(run["seed"], run["parts"], run["tokens"], run["mask"], dims.dp_rank, L.dp,
                          mcfg.text_dim, mcfg.patch_dim)
    tcfg = TrainConfig(steps=run["steps"], lr=run["lr"], eps=run["adam_eps"], weight_decay=0.01, grad_clip=1.0, dtype="fp32",
                       use_distributed_optimizer=L.dist_opt, log_every=10 ** 6, ckpt_dir=run["ckpt_dir"],
                       progress=False, seed=run["seed"])
    trainer = Trainer(tcfg, model, parity_loss, stream, device="cpu")

    grads, step_fn, train_step = {}, trainer.optimizer_step, trainer.train_step
    step_flops = []

    def train_step_and_capture():            # this device's FLOPs of each step, as the trainer logs them
        m = train_step()
        step_flops.append(m["flops"])
        return m
    trainer.train_step = train_step_and_capture

    def step_and_capture(grad_norm):        # the gradient the optimizer is about to use, first step only
        if not grads:
            grads.update({names[p]: g for p, g in _full_grads(trainer.model).items()})
        return step_fn(grad_norm)
    trainer.optimizer_step = step_and_capture
    t0 = time.perf_counter()
    trainer.train(until=run["until"])
    seconds = time.perf_counter() - t0

    def tp_dim(p):
        return getattr(p, "partition_dim", -1) if getattr(p, "tensor_model_parallel", False) else -1
    first = ParityStream(run["seed"], run["parts"], run["tokens"], run["mask"], dims.dp_rank, L.dp,
                         mcfg.text_dim, mcfg.patch_dim)
    sh = model.cp_shard(next(first))         # which tokens this rank computed at step 1
    res = dict(rank=rank, tp_rank=dims.tp_rank, cp_rank=dims.cp_rank, dp_rank=dims.dp_rank,
               local_tokens=(sh.txt_rows.stop - sh.txt_rows.start, sh.img_rows.stop - sh.img_rows.start),
               sequence_parallel=bool(model.config.sequence_parallel),
               losses=list(trainer.losses), resumed_from=trainer.resumed_from, seconds=seconds, step_flops=step_flops,
               dims={n: tp_dim(p) for n, p in model.named_parameters()},
               grads=grads, params={n: p.detach().clone() for n, p in model.named_parameters()},
               )
    torch.save(res, out / f"rank{rank}.pt")
    groups.destroy()
    log.close()


_PRELOAD = ["torch", "megatron.core.parallel_state", "megatron.core.dist_checkpointing", "megatron.core.optimizer",
            "megatron.core.distributed", "vincie_mcore.model.mmdit", "vincie_mcore.train.trainer",
            "vincie_mcore.parallel.parity"]


def _start_forkserver() -> None:
    """Ranks fork from one server that imported torch and Megatron once (~5-10 s per process
    otherwise, every run); the server itself runs no torch op, so forking it is safe. It is the
    helpers' server (``signals.helper_context``): ranks start with the stop signals blocked and
    unblock them (``_worker``)."""
    from ..signals import helper_context
    helper_context(_PRELOAD)


def run_layout(layout: Layout, mask: str, steps: int, work_dir: str, *, parts: int, tokens: int, seed: int,
               lr: float, adam_eps: float, init_dir: str, save_init: bool = False, ckpt_dir: str | None = None,
               until: int | None = None) -> list[dict]:
    """Spawn ``layout.world`` ranks, train, return each rank's results (losses, grads, params)."""
    import torch.multiprocessing as mp

    from .groups import _free_port

    _start_forkserver()
    out = Path(tempfile.mkdtemp(prefix="run_", dir=work_dir))
    run = dict(layout=asdict(layout), world=layout.world, port=_free_port(), out_dir=str(out), mask=mask,
               steps=steps, parts=parts, tokens=tokens, seed=seed, lr=lr, adam_eps=adam_eps, init_dir=init_dir, save_init=save_init,
               ckpt_dir=ckpt_dir, until=until)
    try:
        mp.start_processes(_worker, args=(run,), nprocs=layout.world, start_method="forkserver")
    except Exception as e:
        tails = []
        for r in range(layout.world):
            f = out / f"rank{r}.log"
            if f.exists():
                lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
                tails.append(f"--- rank {r}: " + " | ".join(lines[-3:]))
        raise RuntimeError(f"layout {layout} failed: {e}\n" + "\n".join(tails)) from None
    # tensors, numbers, strings and containers only (see `res` in _worker): the safe loader reads them
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(layout.world)]


# ----------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------

def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max(max|b|, tiny), with b the one-device reference."""
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        raise ValueError(f"parity: shape {tuple(a.shape)} vs reference {tuple(b.shape)}")
    return float((a - b).abs().max() / max(float(b.abs().max()), TINY_NUMBER)) if b.numel() else 0.0


def _unshard(name: str, shards: list[torch.Tensor], dim: int) -> torch.Tensor:
    if "linear_fc1" in name:               # SwiGLU: each TP rank holds [gate_r; up_r]
        halves = [t.chunk(2, dim=0) for t in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=dim)


def full_tensors(ranks: list[dict], key: str) -> list[tuple[str, str, torch.Tensor]]:
    """(replica, name, full tensor) for every (dp, cp) replica; replicated params once per TP rank."""
    out, reps = [], {}
    for r in ranks:
        reps.setdefault((r["dp_rank"], r["cp_rank"]), []).append(r)
    for (d, c), rs in sorted(reps.items()):
        rs = sorted(rs, key=lambda r: r["tp_rank"])
        for name, dim in rs[0]["dims"].items():
            if dim < 0:
                out += [(f"dp{d}cp{c}tp{r['tp_rank']}", name, r[key][name]) for r in rs]
            else:
                out.append((f"dp{d}cp{c}", name, _unshard(name, [r[key][name] for r in rs], dim)))
    return out


def compare(ref: dict, ranks: list[dict]) -> dict:
    worst = {"loss": (0.0, ""), "grad": (0.0, ""), "param": (0.0, "")}

    def note(kind, d, where):
        if not d <= worst[kind][0] or math.isnan(d):
            worst[kind] = (d, where)
    ref_losses = torch.tensor(ref["losses"])
    for r in ranks:
        note("loss", rel_diff(torch.tensor(r["losses"]), ref_losses), f"rank{r['rank']}")
    for kind, key in (("grad", "grads"), ("param", "params")):
        for rep, name, t in full_tensors(ranks, key):
            note(kind, rel_diff(t, ref[key][name]), f"{rep}:{name}")
    return {f"max_rel_diff_{k}": v[0] for k, v in worst.items()} | {f"worst_{k}": v[1] for k, v in worst.items()}


def check_layouts(layouts: list[Layout], mask: str, steps: int, *, tokens: int = 400, seed: int = 0,
                  lr: float = 1e-3, adam_eps: float = ADAM_EPS, tol: float = 1e-5, work_dir: str | None = None) -> list[dict]:
    """One reference run (one process), then each layout on the same data; one result dict per layout."""
    parts = math.lcm(*(L.dp for L in layouts))
    own = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="parity_")
    try:
        init = os.path.join(work_dir, "init")
        os.makedirs(init, exist_ok=True)
        common = dict(parts=parts, tokens=tokens, seed=seed, lr=lr, adam_eps=adam_eps, init_dir=init)
        t0 = time.perf_counter()
        ref = run_layout(Layout(), mask, steps, work_dir, save_init=True, **common)[0]
        t_ref = time.perf_counter() - t0
        results = []
        for L in layouts:
            t0 = time.perf_counter()
            ranks = run_layout(L, mask, steps, work_dir, **common)
            res = compare(ref, ranks)
            # every device logs its share: the shares of one step add up to the one-device count
            total = sum(r["step_flops"][0] for r in ranks)
            res["flops_rel_diff"] = abs(total - ref["step_flops"][0]) / ref["step_flops"][0]
            ok = all(res[f"max_rel_diff_{k}"] <= tol for k in ("loss", "grad", "param"))
            dp0 = sorted((r for r in ranks if r["dp_rank"] == 0 and r["tp_rank"] == 0), key=lambda r: r["cp_rank"])
            results.append(dict(layout=asdict(L), mask=mask, steps=steps, tokens_per_step=tokens, parts=parts,
                                cp_local_tokens=[list(r["local_tokens"]) for r in dp0],
                                sequence_parallel=ranks[0]["sequence_parallel"], **res, ok=ok, tol=tol, ref_loss=ref["losses"],
                                seconds=round(time.perf_counter() - t0, 1), ref_seconds=round(t_ref, 1)))
        return results
    finally:
        if own:
            shutil.rmtree(work_dir, ignore_errors=True)

