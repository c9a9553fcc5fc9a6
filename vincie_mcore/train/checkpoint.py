"""Checkpoints: Megatron ``dist_checkpointing`` for model + optimizer, a file per rank for the rest.

Layout of ``ckpt_dir``::

    latest                   text: the step of the newest complete checkpoint
    step_0000100/            dist_checkpointing files (model + optimizer, re-shardable
                             across TP/CP/DP) and trainer_state_rank00000.pt, ...
    step_0000200/

A save writes everything into ``step_XXXXXXX.tmp/``, renames it to
``step_XXXXXXX/`` and only then points ``latest`` at it (write-then-rename), so a
crash at any moment leaves the previous checkpoint whole and ``latest`` pointing
at it. Leftover ``*.tmp`` folders are removed by the next save.

Trainer state (step, python/numpy/torch RNG, Megatron's RNG tracker, the
data stream, the loss generator, the config) is per rank: DP ranks draw
different data and noise.

Note (docs/measured.md, "dist_checkpointing and spawn"): ``dist_checkpointing.save`` starts a spawn Manager, so a
script run under torchrun needs its body under ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import os
import re
import shutil

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d{7,})$")
# How the distributed optimizer's state is saved. "fully_reshardable" (canonical per-parameter
# state, gathered on each DP group's first rank at save) reloads at another TP, CP and DP size;
# "dp_reshardable" (each rank's buffer shards, no communication) only at another DP size.
# The choice is written beside the checkpoint (OPTIMIZER_FORMAT_FILE) and read back on load.
OPTIMIZER_FORMAT = "fully_reshardable"
OPTIMIZER_FORMAT_FILE = "optimizer_format.txt"


def step_dir(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:07d}")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized() and _world() > 1:
        dist.barrier()


def _unwrap(model):
    # DDP and Float16Module keep the real model in .module; save the real model's keys
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module

    while isinstance(model, (DistributedDataParallel, Float16Module)):
        model = model.module
    if not hasattr(model, "sharded_state_dict"):
        raise TypeError(f"checkpoint: {type(model).__name__} has no sharded_state_dict(); use a MegatronModule")
    return model


def _prime_empty_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer zero Adam state (with ``step``) before building its state dict for loading.

    Without Transformer Engine or apex (CPU, bare GPU boxes) Megatron's
    DistributedOptimizer.state_dict() reads ``state["step"]`` of every param and
    asserts they agree, which fails on an optimizer that has not stepped yet;
    its init_state_fn creates exp_avg/exp_avg_sq but no step. The values are
    overwritten by the load.
    """
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner, init_fn = getattr(sub, "optimizer", None), getattr(sub, "init_state_fn", None)
        if inner is None or init_fn is None or any(len(v) for v in inner.state.values()):
            continue
        init_fn(inner, getattr(sub, "config", None))
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p].setdefault("step", torch.zeros((), dtype=torch.float32))


def _restore_adam_step(optimizer, loaded: dict) -> None:
    """Put back torch Adam's per-param ``step`` after a DistributedOptimizer load.

    Without TE/apex, Megatron's dp_reshardable load first sets ``step`` from the
    saved param groups, then copies every bucket tensor into the state, ``step``
    included, and the bucket's ``step`` is the load-time (fresh) value. Adam's bias
    correction then restarts, and a resumed run drifts from an uninterrupted one.
    """
    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    states = [loaded] if len(subs) == 1 else [v for _, v in sorted(loaded.items())]
    for sub, sd in zip(subs, states):
        inner = getattr(sub, "optimizer", None)
        groups = sd.get("optimizer", {}).get("param_groups", []) if isinstance(sd, dict) else []
        steps = {g["step"] for g in groups if g.get("step") is not None}
        if inner is None or len(steps) != 1 or type(sub).__name__ != "DistributedOptimizer":
            continue
        step = float(steps.pop())
        for st in inner.state.values():
            if "step" in st:
                st["step"] = torch.tensor(step, dtype=torch.float32)


def _load_optimizer(optimizer, loaded: dict) -> None:
    """optimizer.load_state_dict, except that a fully_reshardable DistributedOptimizer state is loaded
    in two parts with torch Adam's per-param ``step`` kept out of the second.

    Without TE/apex, Megatron (0.16) first sets ``step`` from the saved param groups, then copies
    every entry of the optimizer state from the loaded per-parameter tensors, which carry no
    ``step`` (KeyError). The step set by the first part is put back after the second.
    """
    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    states = [loaded] if len(subs) == 1 else [v for _, v in sorted(loaded.items())]
    for sub, sd in zip(subs, states):
        inner = getattr(sub, "optimizer", None)
        if type(sub).__name__ != "DistributedOptimizer" or sd.get("param_state_sharding_type") != "fully_reshardable":
            sub.load_state_dict(sd)
            continue
        sd = dict(sd)
        param_state = sd.pop("param_state")
        sub.load_state_dict(sd)                          # param groups, step, scaler
        steps = {p: st.pop("step") for p, st in inner.state.items() if "step" in st}
        sub.load_parameter_state_from_fully_reshardable(param_state)
        for p, step in steps.items():
            inner.state[p]["step"] = step


def _sharded_state(model, optimizer, is_loading: bool, fmt: str = OPTIMIZER_FORMAT) -> dict:
    metadata = {"distrib_optim_sharding_type": fmt}
    model_sd = _unwrap(model).sharded_state_dict(metadata=dict(metadata))
    state = {"model": model_sd}
    if optimizer is not None:
        if is_loading:
            _prime_empty_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=dict(metadata))
    return state


def _trainer_state_file(path: str, rank: int) -> str:
    return os.path.join(path, f"trainer_state_rank{rank:05d}.pt")


def _write_trainer_state(path: str, trainer_state: dict) -> None:
    tmp = _trainer_state_file(path, _rank()) + ".part"
    torch.save(trainer_state, tmp)
    os.replace(tmp, _trainer_state_file(path, _rank()))


def read_trainer_state(path: str) -> dict:
    """A trainer-state file, loaded with ``weights_only=True``: tensors, numbers, strings and
    containers only, so a file from someone else cannot run code (docs/design.md, "Files we load").

    The numpy RNG state is stored as a tensor and numbers. Older files pickled it as numpy
    arrays, which load only while numpy's array reconstructor is allow-listed (Megatron-Core's
    dist_checkpointing adds it when imported); anything else is refused in one line, and
    ``convert_trainer_state(path)`` rewrites a file you trust in the safe format.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), "a pickled object")
        raise ValueError(f"checkpoint: {path} holds objects that only an unsafe (code-running) load could read "
                         f"({why[:120]}); if you trust the file, rewrite it with "
                         f"python -c \"from vincie_mcore.train.checkpoint import convert_trainer_state as c; "
                         f"c('{path}')\"") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint: {path} holds a {type(state).__name__}, not a trainer-state dict")
    return state


def convert_trainer_state(path: str) -> None:
    """Rewrite an old-format trainer-state file (numpy RNG state pickled) in the safe format.

    This runs a full unpickle: only call it on a file you trust.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    rng = state.get("rng", {})
    if isinstance(rng.get("numpy"), tuple):
        rng["numpy"] = numpy_state_to_safe(rng["numpy"])
    tmp = path + ".part"
    torch.save(state, tmp)
    os.replace(tmp, path)
    read_trainer_state(path)                        # the result must load safely


def numpy_state_to_safe(st: tuple) -> dict:
    """``np.random.get_state()`` as tensors and numbers (``weights_only`` refuses numpy arrays)."""
    name, keys, pos, has_gauss, cached = st
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def numpy_state_from_safe(d) -> tuple:
    """Back to ``np.random.set_state``'s tuple; an old-format tuple passes through."""
    if isinstance(d, tuple):
        return d
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached_gaussian"])


def latest_step(ckpt_dir: str) -> int | None:
    """The step ``latest`` points at, or None when there is no complete checkpoint."""
    f = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(f):
        return None
    text = open(f).read().strip()
    if not text.isdigit():
        raise ValueError(f"checkpoint: {f} holds {text!r}, not a step number")
    step = int(text)
    if not os.path.isdir(step_dir(ckpt_dir, step)):
        raise FileNotFoundError(f"checkpoint: {f} points at step {step} but {step_dir(ckpt_dir, step)} is missing")
    return step


def list_steps(ckpt_dir: str) -> list[int]:
    """Steps of the complete checkpoint folders in ckpt_dir, ascending."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(m.group(1)) for m in map(_STEP_RE.match, os.listdir(ckpt_dir)) if m)


def save(ckpt_dir: str, step: int, model, optimizer, scheduler, trainer_state: dict, keep_last: int = 3) -> str:
    """Save a complete checkpoint of ``step`` atomically; returns its folder. Collective: call on every rank.

    model: the (DDP-wrapped or bare) MegatronModule; optimizer: a MegatronOptimizer or None;
    scheduler: an OptimizerParamScheduler or None; trainer_state: this rank's picklable dict.
    keep_last: complete checkpoints to keep (older ones are deleted); 0 keeps all.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint.save: step must be a non-negative int, got {step!r}")
    final = step_dir(ckpt_dir, step)
    tmp = final + ".tmp"
    if _rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        for name in os.listdir(ckpt_dir):          # debris of an interrupted save
            if name.endswith(".tmp"):
                shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
        os.makedirs(tmp)
    _barrier()

    # 1. model + optimizer (collective, every rank writes its shards)
    state = _sharded_state(model, optimizer, is_loading=False)
    dist_checkpointing.save(state, tmp)
    if _rank() == 0:
        with open(os.path.join(tmp, OPTIMIZER_FORMAT_FILE), "w") as f:
            f.write(OPTIMIZER_FORMAT + "\n")
    # 2. this rank's trainer state, the scheduler with it (it is identical on every rank)
    trainer_state = dict(trainer_state, step=step,
                         scheduler=scheduler.state_dict() if scheduler is not None else None)
    _write_trainer_state(tmp, trainer_state)
    _barrier()

    # 3. publish: rename the folder, then repoint `latest` (each a single atomic rename)
    if _rank() == 0:
        if os.path.isdir(final):                   # re-saving a step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        latest_tmp = os.path.join(ckpt_dir, LATEST + ".tmp")
        with open(latest_tmp, "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(latest_tmp, os.path.join(ckpt_dir, LATEST))
        if keep_last > 0:
            for old in list_steps(ckpt_dir)[:-keep_last]:
                if old != step:
                    shutil.rmtree(step_dir(ckpt_dir, old), ignore_errors=True)
    _barrier()
    return final


def load(ckpt_dir: str, model, optimizer=None, scheduler=None, step: int | None = None) -> dict | None:
    """Load the checkpoint ``latest`` points at (or ``step``) into model/optimizer/scheduler.

    Returns this rank's trainer state (rank 0's when the world grew since the save),
    or None when ckpt_dir holds no complete checkpoint. Collective: call on every rank.
    """
    if step is None:
        step = latest_step(ckpt_dir)
        if step is None:
            return None
    path = step_dir(ckpt_dir, step)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint.load: no checkpoint folder {path}")

    fmt_file = os.path.join(path, OPTIMIZER_FORMAT_FILE)     # absent in checkpoints older than the file
    fmt = open(fmt_file).read().strip() if os.path.isfile(fmt_file) else "dp_reshardable"
    state = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True, fmt=fmt), path)
    _unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        # no_grad: in fp32 the DistributedOptimizer's main params are views of the model's
        # leaf params, and it copies into them in place
        with torch.no_grad():
            _load_optimizer(optimizer, state["optimizer"])
        _restore_adam_step(optimizer, state["optimizer"])

    f = _trainer_state_file(path, _rank())
    if not os.path.isfile(f):
        f = _trainer_state_file(path, 0)
    trainer_state = read_trainer_state(f)
    if scheduler is not None and trainer_state.get("scheduler") is not None:
        scheduler.load_state_dict(trainer_state["scheduler"])
    return trainer_state
