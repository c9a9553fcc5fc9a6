"""Checkpoints: Megatron ``dist_checkpointing`` for model + optimizer, a file per rank for the rest.

Layout of ``ckpt_dir``::

    latest                   text: the step of the newest complete checkpoint
    step_0000100/            dist_checkpointing files (model + optimizer, re-shardable
                             across TP/CP/DP) and trainer_state_rank00000.pt, ...
    step_0000200/

A save writes everything into ``step_XXXXXXX.tmp/``, fsyncs every file and folder in it, renames it to
``step_XXXXXXX/`` and only then points ``latest`` at it (write-then-rename, the parent folder fsynced
after each rename), so a crash or power loss at any moment leaves the previous checkpoint whole and
``latest`` pointing at it. Leftover ``*.tmp`` folders are removed by the next save.

Saving a step that already has a folder (a preemption right after a periodic save, a re-save after a
resume) moves the old folder to ``step_XXXXXXX.prev/`` first, renames the new one into place, and only
then deletes ``.prev``: the good copy is never deleted before the new one is in place. A crash between
the two renames leaves only ``.prev``; ``latest_step`` and ``load`` take it, and the next save renames
it back.

Trainer state (step, python/numpy/torch RNG, Megatron's RNG tracker, the
data stream, the loss generator, the config) is per rank: DP ranks draw
different data and noise.

Loading a checkpoint from someone else runs no code: ``check_dist_files`` reads every pickle that
Megatron/torch would unpickle (common.pt, the DCP ``.metadata``, the byte items in the ``.distcp``
files) with a restricted loader first and refuses the folder in one line if one needs more
(docs/design.md, "Files we load").

Note (docs/measured.md, "dist_checkpointing and spawn"): ``dist_checkpointing.save`` starts a spawn Manager, so a
script run under torchrun needs its body under ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch_strategy
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

from ..paths import inside

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


PREV = ".prev"      # the previous folder of a step being saved again (see the module docstring)


def complete_dir(ckpt_dir: str, step: int) -> str | None:
    """The folder holding step ``step``: ``step_XXXXXXX/``, else its ``.prev`` (a crash mid-replace), else None."""
    for path in (step_dir(ckpt_dir, step), step_dir(ckpt_dir, step) + PREV):
        if os.path.isdir(path):
            return path
    return None


def _fsync(path: str) -> None:
    """Flush a file's or a folder's (its entries') data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """fsync every file and folder under ``root`` (files first, then their folder)."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(folder, name))
        _fsync(folder)


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
    # fsynced by the rank that wrote it: on a shared file system another node's fsync would not flush it
    tmp = _trainer_state_file(path, _rank()) + ".part"
    with open(tmp, "wb") as f:
        torch.save(trainer_state, f)
        f.flush()
        os.fsync(f.fileno())
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
                         f"vincie-convert trainer-state --in {path} --out {path}") from None
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


# ----------------------------------------------------------------------------
# Files from someone else: what Megatron 0.16 / torch 2.13 unpickle when loading a dist checkpoint
#   common.pt      torch.load, weights_only left at torch's default (True since 2.6, but
#                  TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns it off): read below with weights_only=True
#   .metadata      torch DCP FileSystemReader.read_metadata: plain pickle.load (runs code)
#   .distcp bytes  DefaultLoadPlanner.load_bytes: torch.load(weights_only=False) (runs code);
#                  tensors are read with weights_only=True
# ----------------------------------------------------------------------------

# The globals a DCP .metadata of ours references (all plain dataclasses, enums and lookups);
# any other global is refused. torch dtypes (torch.float32, ...) are allowed separately.
_DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "BytesStorageMetadata", "TensorStorageMetadata",
        "TensorProperties", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.planner": {
        "SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "megatron.core.dist_checkpointing.strategies.torch": {"MCoreMetadata", "MCoreSavePlan"},
}
_BACKENDS = {"sharded_backend": "torch_dist", "common_backend": "torch"}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name in _DCP_METADATA_GLOBALS.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")


def _unsafe(f: str, e: Exception) -> ValueError:
    m = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", str(e))
    if m is None:
        return ValueError(f"checkpoint: {f} cannot be read safely ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
    return ValueError(f"checkpoint: {f} holds objects that only an unsafe (code-running) load could read "
                      f"(it calls {m.group(1)}); refusing it")


def _load_weights_only(f, data: bytes | None = None):
    """torch.load(weights_only=True) of a file (or of ``data``, a slice of it); refuses in one line."""
    try:
        return torch.load(io.BytesIO(data) if data is not None else f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:    # hostile, or not a torch file
        raise _unsafe(f, e) from None


class _SafeCommonLoad(TorchCommonLoadStrategy):
    """Megatron's common-state load with ``weights_only=True`` written out, so no environment
    variable can turn a code-running load back on."""

    def load_common(self, checkpoint_dir):
        f = os.path.join(checkpoint_dir, "common.pt")
        if not os.path.isfile(f):
            raise FileNotFoundError(f"checkpoint: no common state {f}")
        return _load_weights_only(f)


def _read_metadata_safely(path):
    """The DCP ``.metadata`` of ``path`` through ``_MetadataUnpickler``; one line if it is not safe."""
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    md_file = os.path.join(path, ".metadata")
    try:
        with open(md_file, "rb") as fh:
            md = _MetadataUnpickler(fh).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint: no DCP metadata {md_file}") from None
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, EOFError) as e:
        raise _unsafe(md_file, e) from None
    if not isinstance(md, Metadata):
        raise ValueError(f"checkpoint: {md_file} is not well-formed DCP metadata")
    if getattr(md, "storage_meta", None) is None:
        md.storage_meta = StorageMeta()
    return md


class _SafeReader(mcore_torch_strategy.CachedMetadataFileSystemReader):
    """Megatron's reader with the metadata read by ``_MetadataUnpickler`` (torch's is a plain pickle.load)."""

    def read_metadata(self, *args, **kwargs):
        if self._cached_metadata is None:
            md = _read_metadata_safely(os.fspath(self.path))
            md.storage_meta.load_id = self.load_id            # as torch's read_metadata sets it
            self._cached_metadata = md
        return self._cached_metadata


class _SafeBytesPlanner(mcore_torch_strategy.MCoreLoadPlanner):
    """Megatron's load planner with byte items (its ShardedObjects) read ``weights_only=True``: torch's
    ``DefaultLoadPlanner.load_bytes`` unpickles them in full."""

    def load_bytes(self, read_item, value) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        fqn = read_item.dest_index.fqn
        obj = _load_weights_only(f"checkpoint byte item {fqn}", value.read())
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


class _SafeShardedLoad(mcore_torch_strategy.TorchDistLoadShardedStrategy):
    """Megatron's torch_dist load, with every unpickle it makes safe *during* the load, not only in
    ``check_dist_files`` before it: a file swapped in between the check and the load (someone who can
    write into the folder while it loads) cannot run code either. Megatron builds its reader and
    planner from two names of its strategies.torch module; they point at ours for the call."""

    _HOOKS = {"_get_filesystem_reader": lambda path, cache_metadata=False: _SafeReader(path),
              "MCoreLoadPlanner": _SafeBytesPlanner}

    def _safely(self, method, *args):
        mod = mcore_torch_strategy
        missing = [k for k in self._HOOKS if not hasattr(mod, k)]
        if missing:            # another megatron-core: refuse rather than load with a plain unpickle
            raise RuntimeError(f"checkpoint: {mod.__name__} has no {', '.join(missing)}; the safe dist-checkpoint "
                               f"load cannot hook this megatron-core")
        saved = {k: getattr(mod, k) for k in self._HOOKS}
        try:
            for k, v in self._HOOKS.items():
                setattr(mod, k, v)
            return method(*args)
        finally:
            for k, v in saved.items():
                setattr(mod, k, v)

    def load(self, sharded_state_dict, checkpoint_dir):
        return self._safely(super().load, sharded_state_dict, checkpoint_dir)

    def load_tensors_metadata(self, checkpoint_dir, metadata=None):
        return self._safely(super().load_tensors_metadata, checkpoint_dir, metadata)

    def load_sharded_metadata(self, checkpoint_dir):
        return self._safely(super().load_sharded_metadata, checkpoint_dir)


def _load_failure(e) -> Exception:
    """The one-line refusal inside torch's ``CheckpointException`` (a BaseException listing every rank's
    error and traceback); the first rank's error otherwise, as it was."""
    for exc, _ in e.failures.values():
        if isinstance(exc, ValueError) and str(exc).startswith("checkpoint:"):
            return exc
        m = re.search(r"checkpoint: .*?; refusing it", str(exc))      # ours, inside torch's AssertionError text
        if m:
            return ValueError(m.group(0))
    return next(iter(e.failures.values()))[0]


def check_dist_files(path: str) -> None:
    """Refuse, in one line, a dist-checkpoint folder that Megatron could not load without running code.

    Reads (never with a full unpickle): metadata.json (backends must be torch_dist/torch);
    common.pt with ``weights_only=True``; the DCP ``.metadata`` with an unpickler that knows only
    the DCP dataclasses; every storage file it names must lie inside ``path``; every byte item
    (Megatron's ShardedObjects, which torch would read with ``weights_only=False``) with
    ``weights_only=True``. Megatron then reads the files again, through ``_SafeShardedLoad``'s safe
    reader and planner, so a file replaced between this check and the load cannot run code either.
    """
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex

    cfg_file = os.path.join(path, "metadata.json")
    try:
        cfg = json.load(open(cfg_file))
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint: {cfg_file} is missing or not JSON ({type(e).__name__})") from None
    for key, want in _BACKENDS.items():
        if not isinstance(cfg, dict) or cfg.get(key) != want:
            raise ValueError(f"checkpoint: {cfg_file} names {key}={cfg.get(key) if isinstance(cfg, dict) else cfg!r}, "
                             f"expected {want!r}")
    _load_weights_only(os.path.join(path, "common.pt"))
    md_file = os.path.join(path, ".metadata")
    md = _read_metadata_safely(path)
    if not (isinstance(md, Metadata) and isinstance(md.storage_data, dict) and isinstance(md.state_dict_metadata, dict)
            and all(isinstance(i, MetadataIndex) and isinstance(v, _StorageInfo) and isinstance(v.relative_path, str)
                    and isinstance(v.offset, int) and isinstance(v.length, int) for i, v in md.storage_data.items())):
        raise ValueError(f"checkpoint: {md_file} is not well-formed DCP metadata")
    byte_keys = {k for k, v in md.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
    for index, info in md.storage_data.items():
        f = inside(path, info.relative_path, what=f"checkpoint: {md_file} storage file")
        if info.transform_descriptors:      # compression etc.: we never write it, torch would decode it
            raise ValueError(f"checkpoint: {md_file} asks for transforms {list(info.transform_descriptors)} on {f}")
        if index.fqn in byte_keys:
            with open(f, "rb") as fh:
                fh.seek(info.offset)
                _load_weights_only(f"{f} [{index.fqn}]", fh.read(info.length))


def latest_step(ckpt_dir: str) -> int | None:
    """The step ``latest`` points at, or None when there is no complete checkpoint."""
    f = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(f):
        return None
    text = open(f).read().strip()
    if not text.isdigit():
        raise ValueError(f"checkpoint: {f} holds {text!r}, not a step number")
    step = int(text)
    if complete_dir(ckpt_dir, step) is None:
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
    tmp, prev = final + ".tmp", final + PREV
    if _rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        for name in os.listdir(ckpt_dir):          # debris of an interrupted save
            path = os.path.join(ckpt_dir, name)
            if name.endswith(".tmp"):
                shutil.rmtree(path, ignore_errors=True)
            elif name.endswith(PREV) and _STEP_RE.match(name[:-len(PREV)]):
                if os.path.isdir(path[:-len(PREV)]):      # the replace finished: the old copy is garbage
                    shutil.rmtree(path, ignore_errors=True)
                else:                                      # it stopped between the renames: put it back
                    os.rename(path, path[:-len(PREV)])
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

    # 3. publish: everything on disk, rename the folder, then repoint `latest` (each a single atomic
    #    rename, made durable by an fsync of the parent folder)
    if _rank() == 0:
        _fsync_tree(tmp)          # Megatron fsyncs its shards, not common.pt / metadata.json
        if os.path.isdir(final):                   # re-saving a step: the good copy steps aside, not away
            os.rename(final, prev)
            _fsync(ckpt_dir)
        os.rename(tmp, final)
        _fsync(ckpt_dir)
        latest_tmp = os.path.join(ckpt_dir, LATEST + ".tmp")
        with open(latest_tmp, "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(latest_tmp, os.path.join(ckpt_dir, LATEST))
        _fsync(ckpt_dir)
        if os.path.isdir(prev):
            shutil.rmtree(prev)
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
    path = complete_dir(ckpt_dir, step)
    if path is None:
        raise FileNotFoundError(f"checkpoint.load: no checkpoint folder {step_dir(ckpt_dir, step)}")

    fmt_file = os.path.join(path, OPTIMIZER_FORMAT_FILE)     # absent in checkpoints older than the file
    fmt = open(fmt_file).read().strip() if os.path.isfile(fmt_file) else "dp_reshardable"
    if fmt not in ("fully_reshardable", "dp_reshardable"):
        raise ValueError(f"checkpoint: {fmt_file} holds {fmt[:40]!r}, not fully_reshardable or dp_reshardable")
    check_dist_files(path)                                   # before Megatron unpickles anything
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        state = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True, fmt=fmt), path,
                                        sharded_strategy=_SafeShardedLoad(), common_strategy=_SafeCommonLoad())
    except CheckpointException as e:        # torch wraps each rank's error, tracebacks and all
        raise _load_failure(e) from None
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
