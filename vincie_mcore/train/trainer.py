"""The training loop: ``train()`` -> ``train_step()`` -> ``forward_backward_step()`` (override any of them).

The model is a MegatronModule built for one device; the trainer wraps it in
Megatron DDP (bf16 additionally in ``Float16Module``), builds Megatron's AdamW
and the warmup+cosine scheduler, and resumes from ``cfg.ckpt_dir`` if a
checkpoint is there. Process groups must exist first
(``vincie_mcore.parallel.groups.init_distributed``).

Contracts of the pieces it is handed:

* ``loss_fn(model, batch, generator) -> (loss, metrics)``: scalar loss with
  grad; metrics a dict of floats/0-d tensors (``"tokens"`` counts tokens, if given).
* ``batch_stream``: ``next(stream) -> PackedBatch`` (anything with ``.to(device)``),
  ``stream.state_dict()`` and ``stream.load_state_dict(state)``, so a resumed run
  sees the same batches.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from ..model.fp8 import FP8Config, check_fp8_batch, check_fp8_model, fp8_autocast
from ..parallel import cpu_compat
from .ema import EMA
from .metrics import MetricsWriter, Throughput, batch_tokens, model_flops
from .optim import build_optimizer, build_scheduler, current_lr

DTYPES = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    steps: int = 100                 # optimizer steps in total (a resumed run continues up to this)
    lr: float = 1e-3                 # peak learning rate
    min_lr: float = 0.0              # end of the cosine decay
    warmup: int = 0                  # linear warmup steps (< steps)
    weight_decay: float = 0.0        # AdamW decay (not on biases / norms)
    betas: tuple = (0.9, 0.95)       # AdamW betas
    eps: float = 1e-8                # AdamW epsilon
    grad_clip: float = 1.0           # max global grad norm; 0 disables clipping
    ema_decay: float = 0.0           # > 0: keep an EMA of the weights (train/ema.py) to sample with; 0: none
    dtype: str = "auto"              # "fp32", "bf16" (fp32 master weights), "auto": bf16 on GPU, fp32 on CPU
    use_distributed_optimizer: bool = False   # shard optimizer state over DP
    log_every: int = 10              # console line + TensorBoard scalars every N steps
    save_every: int = 0              # checkpoint every N steps; 0: only at the end / on time-out
    keep_last: int = 3               # complete checkpoints kept; 0 keeps all
    ckpt_dir: str | None = None      # where checkpoints live; None: never save or resume
    resume: bool = True              # load the latest checkpoint in ckpt_dir if there is one
    tensorboard_dir: str | None = None   # None: no TensorBoard
    seed: int = 0                    # seeds python/numpy/torch and the loss generator (offset by DP rank)
    max_minutes: float | None = None     # stop (and save) once this much wall time has passed
    progress: bool = True            # tqdm bar on rank 0
    fp8: FP8Config = field(default_factory=FP8Config)   # FP8 linears via Transformer Engine (model/fp8.py)

    def __post_init__(self):
        def bad(key, why):
            raise ValueError(f"TrainConfig.{key}: {why}, got {getattr(self, key)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key in ("steps", "log_every"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                bad(key, "must be an int >= 1")
        for key in ("warmup", "save_every", "keep_last", "seed"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 0:
                bad(key, "must be an int >= 0")
        if self.warmup >= self.steps:
            bad("warmup", f"must be < steps ({self.steps})")
        for key in ("lr", "eps"):
            if not is_num(getattr(self, key)) or getattr(self, key) <= 0:
                bad(key, "must be a finite number > 0")
        if not is_num(self.ema_decay) or not 0 <= self.ema_decay < 1:
            bad("ema_decay", "must be a number in [0, 1)")
        for key in ("min_lr", "weight_decay", "grad_clip"):
            if not is_num(getattr(self, key)) or getattr(self, key) < 0:
                bad(key, "must be a finite number >= 0")
        if self.min_lr > self.lr:
            bad("min_lr", f"must be <= lr ({self.lr})")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(is_num(b) and 0 <= b < 1 for b in self.betas):
            bad("betas", "must be two numbers in [0, 1)")
        if self.dtype not in DTYPES:
            bad("dtype", f"must be one of {DTYPES}")
        if self.dtype == "bf16" and not torch.cuda.is_available():
            bad("dtype", "bf16 training needs a GPU (use 'fp32' or 'auto' on CPU)")
        if self.max_minutes is not None and (not is_num(self.max_minutes) or self.max_minutes <= 0):
            bad("max_minutes", "must be None or a number > 0")
        for key in ("ckpt_dir", "tensorboard_dir"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                bad(key, "must be None or a path string")
        for key in ("resume", "progress", "use_distributed_optimizer"):
            if not isinstance(getattr(self, key), bool):
                bad(key, "must be a bool")
        self.fp8 = FP8Config.from_dict(self.fp8)
        if self.fp8.enabled and not self.bf16:
            bad("dtype", "FP8 (fp8.enabled) trains around bf16 weights: use 'bf16' or 'auto' on a GPU")

    @property
    def bf16(self) -> bool:
        return self.dtype == "bf16" or (self.dtype == "auto" and torch.cuda.is_available())

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a plain/Hydra dict; unknown keys are an error naming the key."""
        names = {f.name for f in fields(cls)}
        for k in d:
            if k not in names:
                raise ValueError(f"TrainConfig.{k}: unknown key (known: {', '.join(sorted(names))})")
        return cls(**dict(d))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class Trainer:
    """Megatron-DDP training of one model with one loss on one batch stream.

    model: a MegatronModule (not yet wrapped) on ``device``; its ``config`` is a
    TransformerConfig (``bf16=True`` when training in bf16).
    After ``train()``, ``self.losses`` holds the loss of every step this Trainer ran.
    """

    def __init__(self, cfg: TrainConfig, model, loss_fn, batch_stream, device: torch.device | str | None = None):
        from megatron.core import parallel_state
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.transformer.module import Float16Module

        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("Trainer: process groups are not initialised; call parallel.groups.init_distributed() first")
        if not hasattr(model, "config"):
            raise TypeError(f"Trainer: model {type(model).__name__} has no .config (expected a MegatronModule)")
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
        self.loss_fn, self.stream = loss_fn, batch_stream
        self.rank = _rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()

        # 1. seeds (model init is the caller's business; these cover data order, dropout, noise)
        random.seed(cfg.seed + self.dp_rank)
        np.random.seed(cfg.seed + self.dp_rank)
        torch.manual_seed(cfg.seed + self.dp_rank)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed * 1_000_003 + self.dp_rank)

        # 2. precision + Megatron DDP (grads land in one contiguous fp32 buffer per dtype)
        mcfg = model.config
        check_fp8_model(cfg.fp8, model)
        if cfg.bf16:
            if not getattr(mcfg, "bf16", False):
                raise ValueError("TrainConfig.dtype: bf16 training needs the model's TransformerConfig(bf16=True)")
            model = Float16Module(mcfg, model)
        ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                use_distributed_optimizer=cfg.use_distributed_optimizer)
        self.model = DistributedDataParallel(mcfg, ddp_cfg, model)

        # 3. optimizer + scheduler
        self.optimizer = build_optimizer([self.model], lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                         eps=cfg.eps, clip_grad=cfg.grad_clip, bf16=cfg.bf16,
                                         use_distributed_optimizer=cfg.use_distributed_optimizer)
        self.scheduler = build_scheduler(self.optimizer, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup,
                                         total_steps=cfg.steps, weight_decay=cfg.weight_decay)

        # the EMA shadows this rank's weights (fp32); it is sampled with, never trained
        self.ema = EMA(self.model.module, cfg.ema_decay) if cfg.ema_decay > 0 else None

        self.step = 0
        self.losses: list[float] = []
        self.resumed_from: int | None = None
        if cfg.ckpt_dir is not None and cfg.resume:
            self.load_checkpoint()

    # ------------------------------------------------------------------
    # checkpoint state
    # ------------------------------------------------------------------

    def state_dict(self) -> dict:
        """This rank's trainer state: step, every RNG, the data stream, the config."""
        from megatron.core.tensor_parallel import get_cuda_rng_tracker
        return {
            "step": self.step,
            "rng": {
                "python": random.getstate(),
                "numpy": ckpt.numpy_state_to_safe(np.random.get_state()),   # weights_only-loadable
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "tracker": get_cuda_rng_tracker().get_states(),
                "generator": self.generator.get_state(),
            },
            "stream": self.stream.state_dict() if hasattr(self.stream, "state_dict") else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker
        self.step = int(state["step"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(ckpt.numpy_state_from_safe(rng["numpy"]))
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        get_cuda_rng_tracker().set_states(rng["tracker"])
        self.generator.set_state(rng["generator"])
        if state.get("stream") is not None:
            if not hasattr(self.stream, "load_state_dict"):
                raise TypeError(f"Trainer: checkpoint holds a data-stream state but {type(self.stream).__name__} "
                                "has no load_state_dict()")
            self.stream.load_state_dict(state["stream"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("Trainer: train.ema_decay > 0 but the checkpoint holds no EMA weights "
                                 "(it was saved without one); resume with train.ema_decay=0")
            self.ema.load_state_dict(state["ema"])

    def save_checkpoint(self) -> str | None:
        if self.cfg.ckpt_dir is None:
            return None
        return ckpt.save(self.cfg.ckpt_dir, self.step, self.model, self.optimizer, self.scheduler,
                         self.state_dict(), keep_last=self.cfg.keep_last)

    def load_checkpoint(self) -> bool:
        """Load ``latest`` from cfg.ckpt_dir if present; True if something was loaded."""
        state = ckpt.load(self.cfg.ckpt_dir, self.model, self.optimizer, self.scheduler)
        if state is None:
            return False
        self.load_state_dict(state)
        self.resumed_from = self.step
        return True

    # ------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------

    def forward_backward_step(self, batch):
        """Loss and backward on one batch. Returns (loss tensor, metrics dict).

        With ``cfg.fp8.enabled`` the forward runs under TE's FP8 autocast (the backward follows it).
        """
        mcfg = self.model.config
        check_fp8_batch(self.cfg.fp8, batch, mcfg.tensor_model_parallel_size, mcfg.sequence_parallel)
        # CPU: outside cpu_compat's function mode (~20 us a torch call); nothing here asks for CUDA by name
        with cpu_compat.suspended():
            with fp8_autocast(self.cfg.fp8):
                loss, metrics = self.loss_fn(self.model, batch, self.generator)
            loss.backward()
        return loss.detach(), metrics

    def train_step(self) -> dict:
        """One optimizer step. Returns step metrics (loss, grad_norm, lr, tokens, flops)."""
        from megatron.core.distributed import finalize_model_grads

        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        with cpu_compat.suspended():      # packing asks for no CUDA either
            batch = next(self.stream)
        if hasattr(batch, "to"):
            batch = batch.to(self.device)
        loss, metrics = self.forward_backward_step(batch)
        # DP all-reduce of the grad buffer, plus TP all-reduce of sequence-parallel norm grads
        finalize_model_grads([self.model])
        self.scheduler.step(1)            # before the step: step k runs at lr(k), see optim.build_scheduler
        lr = current_lr(self.optimizer)
        ok, grad_norm, _ = self.optimizer.step()
        if ok and self.ema is not None:
            self.ema.update()
        self.step += 1
        tokens = metrics.get("tokens", None) if isinstance(metrics, dict) else None
        return {
            "loss": float(loss),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "lr": lr,
            "tokens": int(tokens) if tokens is not None else batch_tokens(batch),
            "flops": model_flops(self.model, batch),
            "skipped": not ok,
            "extra": {k: float(v) for k, v in (metrics or {}).items()
                      if k not in ("loss", "tokens") and isinstance(v, (int, float, torch.Tensor))
                      and (not isinstance(v, torch.Tensor) or v.numel() == 1)},
        }

    def _dp_mean(self, x: float) -> float:
        """Mean of a logged scalar over the data-parallel ranks (every rank must call it)."""
        from megatron.core import parallel_state
        n = parallel_state.get_data_parallel_world_size()
        if n == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=parallel_state.get_data_parallel_group())
        return t.item() / n

    def _should_stop_for_time(self, t0: float) -> bool:
        if self.cfg.max_minutes is None:
            return False
        flag = torch.tensor([float(time.monotonic() - t0 > 60.0 * self.cfg.max_minutes)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)   # every rank stops at the same step
        return bool(flag.item())

    def train(self, until: int | None = None) -> list[float]:
        """Run from self.step to cfg.steps (or to step ``until``, or until max_minutes), then save.

        The schedule always spans cfg.steps; ``until`` only stops early (as a
        time-out would), so a run split in parts matches an uninterrupted one.
        Returns the losses of the steps run by this call.
        """
        from tqdm import tqdm

        cfg, main = self.cfg, self.rank == 0
        last = cfg.steps if until is None else min(int(until), cfg.steps)
        writer = MetricsWriter(cfg.tensorboard_dir, self.rank)
        thr = Throughput()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and cfg.progress),
                   desc="train", dynamic_ncols=True)
        t0 = time.monotonic()
        run_losses, window = [], []
        saved_at = None
        self.model.train()
        try:
            while self.step < last:
                m = self.train_step()
                run_losses.append(m["loss"])
                window.append(m["loss"])
                thr.update(m["tokens"], m["flops"])
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == last:
                    rates = thr.read()
                    loss_avg = self._dp_mean(sum(window) / len(window))
                    window.clear()
                    writer.scalars(self.step, {"loss": loss_avg, "lr": m["lr"], "grad_norm": m["grad_norm"],
                                               "tokens_per_s": rates["tokens_per_s"], "tflops": rates["tflops"],
                                               **m["extra"]})
                    if main:
                        tfl = f" | {rates['tflops']:.3g} TFLOP/s/dev" if rates["tflops"] is not None else ""
                        gn = f"{m['grad_norm']:.3f}" if m["grad_norm"] is not None else "-"
                        bar.write(f"step {self.step:>7d} | loss {loss_avg:.5f} | lr {m['lr']:.3e} | "
                                  f"grad {gn} | {rates['tokens_per_s']:.0f} tok/s/dev{tfl}")
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if self._should_stop_for_time(t0):
                    if main:
                        bar.write(f"stopping at step {self.step}: max_minutes={cfg.max_minutes} reached")
                    break
            if saved_at != self.step:
                self.save_checkpoint()
        finally:
            bar.close()
            writer.close()
        self.losses.extend(run_losses)
        return run_losses
