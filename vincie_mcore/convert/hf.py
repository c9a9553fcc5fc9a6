"""Training checkpoint <-> Hugging Face-style export folder (docs/export.md).

* ``export_checkpoint``: a ``train/checkpoint.py`` checkpoint saved at any TP x CP x DP layout
  (with or without the distributed optimizer) -> config.json + safetensors of full, unsharded
  tensors. Megatron's ``torch_dist`` format is PyTorch Distributed Checkpoint (DCP) with each
  model tensor stored under its global shape, so one process reads whole tensors straight from
  the files (``dcp.load(..., no_dist=True)``), one shard's worth at a time: no process group,
  no model, never more than about one output shard in memory. The SwiGLU ``linear_fc1`` is
  stored by Megatron as [gate (all TP ranks); up (all TP ranks)], the single-device layout.
* ``import_checkpoint``: an export -> a training checkpoint (step 0) at the layout of a composed
  config, written by the real trainer on ``tp x cp x dp`` spawned ranks, so ``vincie-train``
  with that config resumes from it: the exported weights, a fresh optimizer (Adam moments 0,
  step 0), the schedule at its start, each rank's RNG and data stream as a fresh run has them.
* ``convert_trainer_state``: rewrite an old (unsafe) trainer-state file you trust.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from ..hf.files import ExportError, read_config, read_tensors, write_export

# ----------------------------------------------------------------------------
# Finding the checkpoint and its config
# ----------------------------------------------------------------------------


def _load_yaml_config(path: Path):
    from omegaconf import OmegaConf
    return OmegaConf.load(path)


def locate(path, config=None) -> tuple[Path, dict, object | None]:
    """A run folder, a ckpt_dir (with ``latest``) or a step folder -> (step folder, model config dict,
    the full run config or None).

    The model config comes from ``config`` (a YAML file: a run's config.yaml or just the ``model``
    group), else from the config.yaml of the run folder the checkpoint sits in.
    """
    from ..train.checkpoint import complete_dir, latest_step

    p = Path(path)
    if not p.is_dir():
        raise ExportError(f"checkpoint: {p} is not a folder")
    run_cfg_file = None
    if (p / "config.yaml").is_file():                        # a run folder
        run_cfg_file = p / "config.yaml"
        # (an import-official folder is its own ckpt_dir: 'latest' beside config.yaml, as build.load_run reads it)
        p = Path(_load_yaml_config(run_cfg_file).get("train", {}).get("ckpt_dir")
                 or (p if (p / "latest").is_file() else p / "checkpoints"))
    if (p / ".metadata").is_file():                          # a step folder
        step = p
    else:
        s = latest_step(str(p)) if p.is_dir() else None
        if s is None:
            raise ExportError(f"checkpoint: no complete checkpoint in {p} (no 'latest' and no .metadata)")
        step = Path(complete_dir(str(p), s))          # the step's folder, or its .prev after a crash mid-replace
    if run_cfg_file is None:
        for up in (step.parent, step.parent.parent):
            if (up / "config.yaml").is_file():
                run_cfg_file = up / "config.yaml"
                break
    src = Path(config) if config is not None else run_cfg_file
    if src is None:
        raise ExportError(f"checkpoint: no config.yaml next to {step} (pass --config with the run's config.yaml "
                          f"or its model group)")
    if not src.is_file():
        raise ExportError(f"config: {src} is not a file")
    node = _load_yaml_config(src)
    from omegaconf import OmegaConf
    d = OmegaConf.to_container(node, resolve=True)
    full = node if all(k in d for k in ("model", "data", "flow", "sampler")) else None   # a whole run config
    model = d["model"] if "model" in d else d
    return step, model, full


# ----------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------

def _expected(model_cfg: dict) -> dict:
    from ..hf.modeling import VincieMMDiT
    with torch.device("meta"):
        return VincieMMDiT(**model_cfg).expected_tensors()


def export_checkpoint(ckpt, out, dtype: str = "fp32", max_shard_size="5GB", config=None) -> dict:
    """Write the export folder ``out`` from the training checkpoint ``ckpt``; returns the stats
    {"tensors", "bytes", "shards", "peak_rss_mb", "seconds"}."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from ..config import build
    from ..model.config import MMDiTConfig

    step, model_cfg, full = locate(ckpt, config)
    try:
        model_cfg = build(MMDiTConfig, model_cfg, "model").to_dict()      # defaults filled in, validated
    except (ValueError, TypeError) as e:
        raise ExportError(f"model config: {str(e).splitlines()[0]}") from None
    expected = _expected(model_cfg)
    # DCP's .metadata and byte items are pickles: check them with restricted loaders first
    # (train/checkpoint.py check_dist_files), so a checkpoint from someone else runs no code here.
    # Exports (what we hand to others) hold no pickle.
    from ..train.checkpoint import check_dist_files
    try:
        check_dist_files(str(step))
    except ValueError as e:
        raise ExportError(str(e).splitlines()[0]) from None
    meta = dcp.FileSystemReader(str(step)).read_metadata().state_dict_metadata
    stored = {}
    for k, (shape, _) in expected.items():
        m = meta.get(k)
        if not isinstance(m, TensorStorageMetadata):
            raise ExportError(f"checkpoint {step}: missing tensor {k}")
        if tuple(m.size) != shape:
            raise ExportError(f"checkpoint {step}: tensor {k} has shape {list(m.size)}, the config expects {list(shape)}")
        stored[k] = (shape, m.properties.dtype)

    def load_group(names):
        sd = {k: torch.empty(stored[k][0], dtype=stored[k][1]) for k in names}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                     # "assuming ... a single process": we are
            dcp.load(sd, storage_reader=dcp.FileSystemReader(str(step)), no_dist=True)
        return sd

    extra = {"source": {"checkpoint": str(step)}}
    if full is not None:
        from ..hf.pipeline import pipeline_section
        extra["pipeline"] = pipeline_section(full)
    return write_export(out, model_cfg, stored, load_group, dtype=dtype, max_shard_size=max_shard_size, extra=extra)


# ----------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------

def _local_slice(name: str, full: torch.Tensor, param: torch.nn.Parameter, tp: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's part of a full tensor (the inverse of parity.full_tensors' unshard)."""
    if not getattr(param, "tensor_model_parallel", False) or tp == 1:
        return full
    dim = param.partition_dim
    if name.endswith("linear_fc1.weight") or name.endswith("linear_fc1.bias"):   # SwiGLU: [gate_r; up_r]
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, 0)[tp_rank], up.chunk(tp, 0)[tp_rank]], dim=0)
    return full.chunk(tp, dim=dim)[tp_rank]


def _fill_from_export(model, job: dict, dims) -> None:
    """The exported weights, this rank's slice of each (a ``write_step0`` fill)."""
    full = read_tensors(job["hf"], _expected(job["cfg"]["model"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_local_slice(name, full[name], p, dims.tp, dims.tp_rank).to(p.dtype))
    del full


def _step0_worker(rank: int, job: dict):
    import sys

    from omegaconf import OmegaConf

    from ..signals import unblock_signals
    unblock_signals()                    # a rank from the helpers' fork server (parity._start_forkserver)
    log = open(Path(job["out"]) / f"import_rank{rank}.log", "w")
    sys.stdout = sys.stderr = log
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // job["world"]))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(job["world"]), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
    from ..build import init_parallel, make_model
    from ..config import build
    from ..parallel import groups
    from ..train.checkpoint import _prime_empty_optimizer_state
    from ..train.trainer import TrainConfig, Trainer

    cfg = OmegaConf.create(job["cfg"])
    dims = init_parallel(cfg)
    model = make_model(cfg)
    job["fill"](model, job, dims)
    t = dict(OmegaConf.to_container(cfg.train, resolve=True))
    t.update(ckpt_dir=job["out"], tensorboard_dir=None, resume=False, progress=False)
    trainer = Trainer(build(TrainConfig, t, "train"), model, loss_fn=None, batch_stream=None)
    # a never-stepped optimizer has no Adam state to save; zeros with step 0 are exactly a fresh start
    _prime_empty_optimizer_state(trainer.optimizer)
    trainer.save_checkpoint()
    groups.destroy()
    log.close()


def write_step0(cfg, out, fill, what: str, **job) -> dict:
    """Spawn the run's ``tp x cp x dp`` ranks, build the model on each, ``fill(model, job, dims)`` it (a
    module-level function: it crosses into the ranks), and save a step-0 training checkpoint with a fresh
    optimizer into ckpt_dir ``out``. ``what`` names the command in errors. -> {"world", "tp", "cp", "dp"}."""
    import torch.multiprocessing as mp
    from omegaconf import OmegaConf

    from ..parallel.groups import _free_port
    from ..parallel.parity import _start_forkserver

    if os.path.exists(os.path.join(out, "latest")):
        raise ExportError(f"{what}: {out} already holds a checkpoint ('latest'); pick an empty ckpt_dir")
    p = cfg.parallel
    tp, cp = int(p.tp), int(p.cp)
    dp = int(p.dp) if p.get("dp") is not None else 1
    world = tp * cp * dp
    os.makedirs(out, exist_ok=True)
    cfg = OmegaConf.merge(cfg, {"parallel": {"dp": dp}})
    job.update(cfg=OmegaConf.to_container(cfg, resolve=True), out=str(out), world=world, port=_free_port(),
               fill=fill)
    try:
        _start_forkserver()                  # ranks fork from a server that imported torch + Megatron once
        mp.start_processes(_step0_worker, args=(job,), nprocs=world, start_method="forkserver")
    except Exception as e:
        f = Path(out) / "import_rank0.log"
        tail = " | ".join([ln for ln in f.read_text().splitlines() if ln.strip()][-2:]) if f.exists() else ""
        raise RuntimeError(f"{what}: a rank failed ({str(e).splitlines()[0]}): {tail}") from None
    for r in range(world):
        f = Path(out) / f"import_rank{r}.log"
        if f.exists() and not f.read_text().strip():
            f.unlink()
    return {"world": world, "tp": tp, "cp": cp, "dp": dp}


def import_checkpoint(hf, out, overrides: list[str] | None = None) -> dict:
    """Write a step-0 training checkpoint into ckpt_dir ``out`` from the export ``hf``.

    overrides: Hydra overrides composing the run's config (``experiment=...``, ``parallel.tp=2``,
    ``train.use_distributed_optimizer=true``, ...): its layout, optimizer and schedule are the ones
    the checkpoint is written for. Its model group must describe the exported architecture.
    Returns {"ckpt_dir", "step", "world", "tensors", "seconds"}.
    """
    import time

    from ..config import ConfigError, build, load_config
    from ..model.config import MMDiTConfig

    t0 = time.perf_counter()
    meta = read_config(hf)
    exported = build(MMDiTConfig, meta["model"], "model")
    cfg = load_config(list(overrides or []))
    mine = build(MMDiTConfig, cfg.model, "model")
    for f in ("attention_backend", "attention_tilings", "transformer_impl", "fused_ops"):   # kernels, not architecture
        setattr(mine, f, getattr(exported, f))
    if mine != exported:
        key = next(k for k in exported.to_dict() if getattr(mine, k) != getattr(exported, k))
        raise ConfigError(f"model.{key}: the config gives {getattr(mine, key)!r} but the export holds "
                          f"{getattr(exported, key)!r} (pick the experiment/model the export was trained with)")
    expected = _expected(exported.to_dict())
    read_tensors(hf, expected, names=[])                             # a bad folder is refused before spawning
    lay = write_step0(cfg, out, _fill_from_export, "import", hf=str(hf))
    return {"ckpt_dir": str(out), "step": 0, **lay, "tensors": len(expected),
            "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------
# Trainer state
# ----------------------------------------------------------------------------

def convert_trainer_state(src, dst) -> dict:
    """Copy the old-format trainer-state file ``src`` to ``dst`` in the safe format
    (``train.checkpoint.convert_trainer_state``; it unpickles ``src``: only for files you trust)."""
    import shutil

    from ..train.checkpoint import convert_trainer_state as convert
    from ..train.checkpoint import read_trainer_state

    if not os.path.isfile(src):
        raise ExportError(f"trainer-state: {src} is not a file")
    if os.path.abspath(src) != os.path.abspath(dst):
        shutil.copyfile(src, dst)
    convert(str(dst))
    state = read_trainer_state(str(dst))
    return {"out": str(dst), "step": state.get("step")}


def dumps(stats: dict) -> str:
    return json.dumps(stats, sort_keys=False)
