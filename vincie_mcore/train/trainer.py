"""The training loop: ``train()`` -> ``train_step()`` -> ``forward_backward_step()`` (override any of them).

The model is a MegatronModule built for one device; the trainer wraps it in
Megatron DDP (bf16 additionally in ``Float16Module``), builds Megatron's AdamW
and the warmup+cosine scheduler, and resumes from ``cfg.ckpt_dir`` if a
checkpoint is there. Process groups must exist first
(``vincie_mcore.parallel.groups.init_distributed``).

Contracts of the pieces it is handed:

* ``loss_fn(model, batch, generator) -> (loss, metrics)``: scalar loss with
  grad; metrics a dict of floats/0-d tensors (``"tokens"`` counts tokens, if given), and
  optionally ``"loss_parts"``: {name: tensor [2] (this rank's squared-error sum, element count)},
  logged per window as ``loss/<name>`` = sum / count over the window and the DP x CP ranks.
* ``batch_stream``: ``next(stream) -> PackedBatch`` (anything with ``.to(device)``),
  ``stream.state_dict()`` and ``stream.load_state_dict(state)``, so a resumed run
  sees the same batches. A stream with ``last_pack`` (``data.stream.LatentStream``: the global index
  of the pack just drawn) gets the loss's noise from (seed, pack) instead of from a per-rank
  generator: a pack's noise does not depend on the DP size or on which rank draws it (elastic resume).
* ``hooks``: objects with any of ``on_step_end(trainer, metrics)``, ``on_save(trainer, path)``,
  ``on_train_end(trainer)`` (``train/hooks.py``), called on every rank.

Gradient accumulation (``train.micro_batches`` = m > 1): an optimizer step runs forward and backward on
m batches of the stream, then one DP reduction and one update. The loss of each is a mean over its own
global element count, so for the step to equal one batch of all m (the same gradient, the same logged
loss), micro-batch a's backward is weighted by count_a / count_0 and the summed gradient by
count_0 / sum(counts): the loss must report the count it averaged over (``metrics["loss_count"]``,
summed over the DP x CP ranks as ``context_parallel.data_parallel_mean`` does). With m = 1 nothing is
weighted (bit-identical to no accumulation).

Health: a step whose loss (on any rank) or global grad norm is not finite is skipped: no
optimizer, scheduler or EMA update, and ``self.step`` (which counts optimizer updates, so the
schedule and checkpoints stay in update units) does not advance; its batch is consumed. It is
counted in ``self.skipped_steps``, and ``train.max_bad_steps`` in a row stop the run without a save.
``train()`` writes ``run_info.json`` (code version, package versions, host, layout, config).

Preemption (``train.save_on_signal``): while ``train()`` runs, SIGUSR1 and SIGTERM only set a flag. At
the next step boundary the ranks all-reduce it (with the time-out flag: one collective a step), so they
all stop after the same step, save it, and ``train()`` raises ``Preempted``; ``vincie-train`` then exits
with ``launch.EXIT_PREEMPTED`` and slurm/train.sbatch requeues the job (docs/slurm_training.md).
The step in flight when the signal comes is finished and saved: no completed step is lost.
"""
from __future__ import annotations

import contextlib
import math
import platform
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from ..config import ConfigError, build
from ..model.fp8 import FP8Config, check_fp8_batch, fp8_autocast, prepare_fp8_model
from ..parallel import cpu_compat
from ..parallel.dims import ParallelDims
from .ema import EMA
from ..runinfo import arithmetic_info, code_version
from ..signals import STOP_SIGNALS, stop_signals_blocked
from .metrics import MetricsWriter, Throughput, batch_tokens, model_flops, write_json
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
    init_from: str | None = None     # a checkpoint folder whose model weights start the run (build.init_weights)
    tensorboard_dir: str | None = None   # None: no TensorBoard
    seed: int = 0                    # seeds python/numpy/torch and the loss generator (offset by DP rank)
    max_minutes: float | None = None     # stop (and save) once this much wall time has passed
    progress: bool = True            # tqdm bar on rank 0
    max_bad_steps: int = 8           # stop (saving nothing) after this many non-finite steps in a row; 0: never
    save_on_signal: bool = True      # SIGUSR1/SIGTERM during train(): save at the step boundary, raise Preempted
    micro_batches: int = 1           # batches per optimizer step and rank (gradient accumulation)
    eval_every: int = 0              # > 0: build.make_trainer adds an EvalHook (train/hooks.py) every N steps
    eval_store: str | None = None    # held-out session store of the eval hook (None: <run_dir>/heldout/store)
    eval_sessions: int | None = None     # decode at most this many held-out sessions for the eval hook
    fp8: FP8Config = field(default_factory=FP8Config)   # FP8 linears via Transformer Engine (model/fp8.py)

    def __post_init__(self):
        def bad(key, why):
            raise ValueError(f"TrainConfig.{key}: {why}, got {getattr(self, key)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key in ("steps", "log_every", "micro_batches"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                bad(key, "must be an int >= 1")
        for key in ("warmup", "save_every", "keep_last", "seed", "max_bad_steps", "eval_every"):
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
        if self.eval_sessions is not None and (not is_int(self.eval_sessions) or self.eval_sessions < 1):
            bad("eval_sessions", "must be None or an int >= 1")
        for key in ("ckpt_dir", "tensorboard_dir", "init_from", "eval_store"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                bad(key, "must be None or a path string")
        for key in ("resume", "progress", "use_distributed_optimizer", "save_on_signal"):
            if not isinstance(getattr(self, key), bool):
                bad(key, "must be a bool")
        if not isinstance(self.fp8, FP8Config):             # a mapping when constructed by hand
            self.fp8 = build(FP8Config, self.fp8, "train.fp8")
        if self.fp8.enabled and not self.bf16:
            bad("dtype", "FP8 (fp8.enabled) trains around bf16 weights: use 'bf16' or 'auto' on a GPU")

    @property
    def params_dtype(self) -> torch.dtype:
        """The dtype the model's parameters are built in (``precision``)."""
        return precision(self.dtype)

    @property
    def bf16(self) -> bool:
        return self.params_dtype == torch.bfloat16


def precision(dtype: str = "auto") -> torch.dtype:
    """The one place ``train.dtype`` becomes a parameter dtype: "bf16" and "auto" are bfloat16 on a GPU,
    everything else float32. A run folder trained in bf16 thus loads in float32 on a CPU (inference);
    training in "bf16" without a GPU is refused by ``TrainConfig`` itself."""
    if dtype not in DTYPES:
        raise ConfigError(f"train.dtype: must be one of {DTYPES}, got {dtype!r}")
    return torch.bfloat16 if dtype in ("auto", "bf16") and torch.cuda.is_available() else torch.float32


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _check_model_dims(model, dims: ParallelDims) -> None:
    """A model that takes a layout (``parallel_dims``) must hold the trainer's: its loss means over
    the model's dims, while Megatron DDP averages over the trainer's groups."""
    if not hasattr(model, "parallel_dims"):
        return                                   # a module with no layout of its own (test doubles)
    given = model.parallel_dims
    if given is None and dims.dp_cp > 1:
        raise ValueError(f"Trainer: {type(model).__name__} was never given its layout (dp={dims.dp}, cp={dims.cp}); "
                         f"call parallel.dims.parallelize(model, ParallelDims.current()) first")
    if given is not None and (given.tp, given.cp, given.dp) != (dims.tp, dims.cp, dims.dp):
        raise ValueError(f"Trainer: the model was parallelized as tp={given.tp} cp={given.cp} dp={given.dp}, "
                         f"but the process groups are tp={dims.tp} cp={dims.cp} dp={dims.dp}")


class BadStepsError(RuntimeError):
    """``train.max_bad_steps`` non-finite steps in a row."""


class Preempted(RuntimeError):
    """SIGUSR1/SIGTERM reached a rank during ``train()``: every rank finished the step in flight and
    saved it (``checkpoint``: its folder, None without a ckpt_dir)."""

    def __init__(self, step: int, signal_name: str, checkpoint: str | None):
        super().__init__(f"train: {signal_name} received; stopped after step {step} and saved it "
                         f"({checkpoint or 'no ckpt_dir: nothing saved'})")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


class StopSignals:
    """Within ``with``: SIGUSR1 and SIGTERM set ``received`` (the first one's name) instead of their
    default action; the previous handlers come back on exit. Python can only install handlers in the
    main thread: elsewhere it installs nothing (the signals keep their default action).

    ``vincie-train`` enters one before its imports and hands it to ``Trainer.train(stop_signals=...)``,
    so a signal during start-up (imports, data, resume) is not fatal: the run stops after its first step."""

    SIGNALS = STOP_SIGNALS

    def __init__(self, enabled: bool = True):
        self.enabled, self.received, self.signum, self._old = enabled, None, None, {}

    def _on(self, signum, frame):
        if self.received is None:
            self.received, self.signum = signal.Signals(signum).name, signum

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._on) for s in self.SIGNALS}
            # a handler never runs for a blocked signal: a process started from the helpers' fork
            # server (signals.py) starts with these blocked
            self._mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)
        return self

    @property
    def installed(self) -> bool:
        return bool(self._old)

    def ignore_after(self) -> None:
        """On exit, ignore the signals instead of restoring the old handlers (an exiting process that
        must keep its exit code; Python keeps SIG_IGN through its shutdown)."""
        self._old = {s: signal.SIG_IGN for s in self._old}

    def __exit__(self, *exc):
        if self._old:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        return False


def sum_counts(counts: dict[str, int], group=None, device=None) -> dict[str, int]:
    """``counts`` summed over the ranks of ``group`` (every rank calls it with the same keys, in the same
    order): the sessions each source of a union gave the whole data-parallel step, not one rank's share."""
    if not counts or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return counts
    t = torch.tensor(list(counts.values()), dtype=torch.float64, device=device or _flag_device())
    dist.all_reduce(t, group=group)
    return {k: int(round(v)) for k, v in zip(counts, t.tolist())}


def _flag_device() -> torch.device:
    """Where a collective's tensor must live: NCCL takes only CUDA tensors, gloo CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Trainer:
    """Megatron-DDP training of one model with one loss on one batch stream.

    model: a MegatronModule (not yet wrapped) on ``device``; its ``config`` is a
    TransformerConfig (``bf16=True`` when training in bf16).
    run_dir: where ``run_info.json`` goes (default: the parent of ``cfg.ckpt_dir``; neither: not written).
    After ``train()``, ``self.losses`` holds the loss of every optimizer step this Trainer ran
    (skipped steps excluded) and ``self.skipped_steps`` counts the skipped ones (kept on resume).
    """

    def __init__(self, cfg: TrainConfig, model, loss_fn, batch_stream, device: torch.device | str | None = None,
                 run_dir: str | None = None, hooks: list | None = None):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.transformer.module import Float16Module

        dims = ParallelDims.current()          # the layout, once; raises in one line without process groups
        if not hasattr(model, "config"):
            raise TypeError(f"Trainer: model {type(model).__name__} has no .config (expected a MegatronModule)")
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
        self.loss_fn, self.stream = loss_fn, batch_stream
        self.hooks = list(hooks or [])
        micro = getattr(batch_stream, "micro", None)      # a LatentStream deals packs for a number of micro-batches
        if micro is not None and micro != cfg.micro_batches:
            raise ValueError(f"TrainConfig.micro_batches: {cfg.micro_batches}, but the batch stream deals "
                             f"{micro} micro-batches a step (build it with micro_batches={cfg.micro_batches})")
        self.rank = _rank()
        # the DP reductions below use the layout's groups, and the model must agree with it
        self.dims = dims
        _check_model_dims(model, self.dims)
        self.dp_rank = self.dims.dp_rank

        # 1. seeds (model init is the caller's business; these cover data order, dropout, noise)
        random.seed(cfg.seed + self.dp_rank)
        np.random.seed(cfg.seed + self.dp_rank)
        torch.manual_seed(cfg.seed + self.dp_rank)
        # the loss draws its noise on the CPU (diffusion/flow.py) and moves it: a CPU generator, so a
        # GPU run draws the same numbers as a CPU run
        self.generator = torch.Generator()
        self.generator.manual_seed(cfg.seed * 1_000_003 + self.dp_rank)

        # 2. precision + Megatron DDP (grads land in one contiguous fp32 buffer per dtype)
        mcfg = model.config
        # devices that share this replica's step (the model's FLOP count is per replica); CP is in the
        # layout, not in the model's TransformerConfig
        self._tp_cp = self.dims.tp * self.dims.cp
        prepare_fp8_model(cfg.fp8, model)      # checks; torchao: converts the plain linears in place
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
        self.skipped_steps = 0           # non-finite steps skipped over the whole run
        self.bad_in_row = 0              # ... since the last good step
        self.run_dir = run_dir if run_dir is not None else (
            str(Path(cfg.ckpt_dir).resolve().parent) if cfg.ckpt_dir is not None else None)
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
            "skipped_steps": self.skipped_steps,
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
        self.skipped_steps = int(state.get("skipped_steps", 0))     # absent in older checkpoints
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
        with stop_signals_blocked():
            path = ckpt.save(self.cfg.ckpt_dir, self.step, self.model, self.optimizer, self.scheduler,
                             self.state_dict(), keep_last=self.cfg.keep_last)
        self._call_hooks("on_save", path)
        return path

    def _call_hooks(self, event: str, *args) -> None:
        for h in self.hooks:
            fn = getattr(h, event, None)
            if fn is not None:
                fn(self, *args)

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
            with fp8_autocast(self.cfg.fp8, group=self.dims.amax_group):
                loss, metrics = self.loss_fn(self.model, batch, self.generator)
            (loss if self.cfg.micro_batches == 1 else loss * self._micro_weight(metrics)).backward()
        return loss.detach(), metrics

    def _micro_weight(self, metrics) -> float:
        """count_a / count_0 for micro-batch a (see the module docstring); records count_a."""
        count = metrics.get("loss_count") if isinstance(metrics, dict) else None
        if count is None:
            raise ValueError("TrainConfig.micro_batches > 1 needs the loss's metrics['loss_count'] (the global "
                             "element count its mean is over) to weight the micro-batches")
        count = float(count)
        self._counts.append(count)
        return count / self._counts[0]

    def _seed_noise(self) -> None:
        """The loss generator from (seed, global pack index) when the stream names its pack."""
        k = getattr(self.stream, "last_pack", None)
        if k is not None:
            self.generator.manual_seed(int(np.random.SeedSequence([self.cfg.seed, 0x401E, int(k)])
                                           .generate_state(1, np.uint64)[0]))

    def train_step(self) -> dict:
        """One step on one batch. Returns step metrics (loss, grad_norm, lr, tokens, flops, skipped,
        data_wait_s, loss_parts). A non-finite step is skipped (see the module docstring)."""
        from megatron.core.distributed import finalize_model_grads

        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        n = self.cfg.micro_batches
        self._counts = []
        data_wait_s, tokens, flops, losses, extras, loss_parts = 0.0, 0, 0.0, [], [], {}
        for a in range(n):
            t_wait = time.perf_counter()
            with cpu_compat.suspended():      # packing asks for no CUDA either
                batch = next(self.stream)
            data_wait_s += time.perf_counter() - t_wait
            self._seed_noise()
            if hasattr(batch, "to"):
                batch = batch.to(self.device)
            # no DP reduction until the last micro-batch (Megatron DDP only syncs in finalize_model_grads
            # without overlap; no_sync keeps it so with overlap too)
            with (self.model.no_sync() if a < n - 1 else contextlib.nullcontext()):
                loss, metrics = self.forward_backward_step(batch)
            metrics = metrics if isinstance(metrics, dict) else {}
            losses.append(loss)
            tok = metrics.get("tokens", None)
            tokens += int(tok) if tok is not None else batch_tokens(batch)
            f = self._device_flops(batch)
            flops = None if f is None or flops is None else flops + f
            for k, v in (metrics.get("loss_parts") or {}).items():
                loss_parts[k] = loss_parts[k] + v if k in loss_parts else v
            extras.append(metrics)
        if n > 1:
            # the step's loss and gradient are those of one batch of all n: weights count_a / total
            total = sum(self._counts)
            loss = sum(x.float() * (c / total) for x, c in zip(losses, self._counts))
            self.model.scale_gradients(self._counts[0] / total)
        # DP all-reduce of the grad buffer, plus TP all-reduce of sequence-parallel norm grads
        finalize_model_grads([self.model])
        found_inf, grad_norm = self._prepare_grads()
        loss_host, bad = self._loss_and_bad_flag(loss)
        bad = bad or found_inf or grad_norm is None or not math.isfinite(grad_norm)
        if bad:
            self.skipped_steps += 1
            self.bad_in_row += 1
            lr = current_lr(self.optimizer)
        else:
            self.bad_in_row = 0
            self.scheduler.step(1)        # before the step: step k runs at lr(k), see optim.build_scheduler
            lr = current_lr(self.optimizer)
            if self.optimizer_step(grad_norm) and self.ema is not None:
                self.ema.update()
            self.step += 1
        extra = {}                           # other scalars of the loss: mean over the micro-batches
        for m in extras:
            for k, v in m.items():
                if k not in ("loss", "tokens", "loss_count") and isinstance(v, (int, float, torch.Tensor)) \
                        and (not isinstance(v, torch.Tensor) or v.numel() == 1):
                    extra[k] = extra.get(k, 0.0) + float(v) / n
        return {
            "loss": loss_host,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": tokens,
            "flops": flops,
            "skipped": bad,
            "data_wait_s": data_wait_s,
            "loss_parts": loss_parts,
            "extra": extra,
        }

    # Megatron's optimizer.step() is prepare_grads -> grad norm -> clip -> step_with_ready_grads
    # (ChainedOptimizer.step, which the others match); it is split here so a non-finite norm is seen
    # before anything (scheduler included) moves, with the same calls, so a good step is bit-identical.
    # The trainer never calls optimizer.step(): wrap optimizer_step() to see the grads it will use.
    def _device_flops(self, batch) -> float | None:
        """This device's share of the step's FLOPs: the model's count is for the whole replica, whose
        tp x cp devices split it (each DP replica counts its own batch), so TFLOP/s is per device."""
        f = model_flops(self.model, batch)
        return None if f is None else f / self._tp_cp

    def _prepare_grads(self) -> tuple[bool, float | None]:
        """(inf found by a grad scaler, global grad norm) of the main grads."""
        found_inf = self.optimizer.prepare_grads()
        return bool(found_inf), (None if found_inf else self.optimizer.get_grad_norm())

    def optimizer_step(self, grad_norm: float) -> bool:
        """Clip the prepared main grads to ``cfg.grad_clip`` by ``grad_norm`` and update; True if it did."""
        from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
        with torch.no_grad():
            for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
                params = [] if getattr(opt, "is_stub_optimizer", False) else opt.get_parameters()
                if params and opt.config.clip_grad > 0.0:
                    clip_grad_by_total_norm_fp32(params, max_norm=opt.config.clip_grad, total_norm=grad_norm,
                                                 use_decoupled_grad=opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
            return self.optimizer.step_with_ready_grads()

    def _loss_and_bad_flag(self, loss: torch.Tensor) -> tuple[float, bool]:
        """(this rank's loss, any rank's loss non-finite): one host read, as the loss alone cost before."""
        bad = (~torch.isfinite(loss.detach().float())).float().reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)    # every rank skips the same steps
        loss_host, flag = torch.cat([loss.detach().float().reshape(1), bad]).tolist()
        return loss_host, flag > 0

    def _window_loss_parts(self, acc: dict) -> dict:
        """{"loss/<name>": window mean} from summed (sq, count) parts, summed over the DP x CP ranks."""
        if not acc:
            return {}
        names = sorted(acc)
        t = torch.stack([acc[k] for k in names])          # (n, 2) float64
        if self.dims.dp_cp > 1:
            dist.all_reduce(t, group=self.dims.dp_cp_group)
        return {f"loss/{k}": (s / c if c > 0 else None) for k, (s, c) in zip(names, t.tolist())}

    def run_info(self) -> dict:
        """What ran: code version, package versions, CPU arithmetic, host, world size and layout, the train config."""
        from importlib.metadata import PackageNotFoundError, version
        from importlib.util import find_spec

        def pkg(*names):
            for n in names:
                try:
                    return version(n)
                except PackageNotFoundError:
                    pass
            return None

        te = pkg("transformer_engine", "transformer-engine", "transformer_engine_torch") \
            if find_spec("transformer_engine") is not None else None
        return {
            "code": code_version(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "megatron-core": pkg("megatron-core", "megatron_core"), "transformer-engine": te,
                         "triton": pkg("triton"), "numpy": np.__version__,
                         "cuda": torch.version.cuda if torch.cuda.is_available() else None},
            "arithmetic": arithmetic_info(),      # CPU and BLAS/ATen paths: which runs can match bit for bit
            "host": socket.gethostname(),
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else str(self.device),
            # what really ran, for checks that a GPU run took the CUDA paths (tools/gpu_check.sh train_smoke)
            "torch_device": str(self.device), "backend": dist.get_backend() if dist.is_initialized() else None,
            "dtype": "bf16" if self.cfg.bf16 else "fp32",
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "layout": {"tp": self.dims.tp, "cp": self.dims.cp, "dp": self.dims.dp},
            "start_step": self.step,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "train_config": asdict(self.cfg),
        }

    def write_run_info(self) -> str | None:
        """``<run_dir>/run_info.json`` (rank 0); earlier starts of the run (resumes) kept under "previous"."""
        if self.rank != 0 or self.run_dir is None:
            return None
        path = Path(self.run_dir) / "run_info.json"
        info, previous = self.run_info(), []
        if path.is_file():
            import json
            try:
                old = json.loads(path.read_text())
                previous = old.pop("previous", []) + [old]
            except (OSError, ValueError, AttributeError):
                previous = []          # an unreadable old record is not worth stopping a run for
        info["previous"] = previous
        write_json(path, info)
        return str(path)

    def _on_bad_step(self, m: dict, writer: MetricsWriter, bar) -> None:
        """Log a skipped step (one console line, the TensorBoard count); raise after max_bad_steps in a row."""
        cfg = self.cfg
        gn = "-" if m["grad_norm"] is None else f"{m['grad_norm']:.4g}"
        writer.scalars(self.step, {"skipped_steps": self.skipped_steps})
        if self.rank == 0:
            bar.write(f"step {self.step + 1:>7d} skipped: loss {m['loss']:.4g}, grad norm {gn} not finite "
                      f"({self.bad_in_row} in a row, {self.skipped_steps} in all); weights, optimizer, "
                      f"scheduler and EMA untouched")
        if cfg.max_bad_steps and self.bad_in_row >= cfg.max_bad_steps:
            raise BadStepsError(f"train: {self.bad_in_row} non-finite steps in a row after step {self.step} "
                                f"(train.max_bad_steps={cfg.max_bad_steps}); stopped without saving, the last "
                                f"checkpoint is the last good state")

    def _dp_mean(self, x: float) -> float:
        """Mean of a logged scalar over the data-parallel ranks (every rank must call it)."""
        n = self.dims.dp
        if n == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.dims.dp_group)
        return t.item() / n

    def _stop_flags(self, t0: float, signals: StopSignals) -> tuple[bool, bool]:
        """(time is up, a stop signal came) on any rank: one all-reduce, so every rank stops at the same step."""
        timed = self.cfg.max_minutes is not None and time.monotonic() - t0 > 60.0 * self.cfg.max_minutes
        flags = [float(timed), float(signals.received is not None)]
        if dist.is_initialized() and dist.get_world_size() > 1 and (self.cfg.max_minutes is not None or signals.installed):
            t = torch.tensor(flags, device=_flag_device())
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = t.tolist()
        return flags[0] > 0, flags[1] > 0

    def train(self, until: int | None = None, stop_signals: StopSignals | None = None) -> list[float]:
        """Run from self.step to cfg.steps (or to step ``until``, or until max_minutes), then save.

        The schedule always spans cfg.steps; ``until`` only stops early (as a
        time-out would), so a run split in parts matches an uninterrupted one.
        Returns the losses of the optimizer steps run by this call (skipped steps excluded).
        Raises BadStepsError after ``train.max_bad_steps`` non-finite steps in a row (nothing saved), and
        Preempted after saving on SIGUSR1/SIGTERM (``train.save_on_signal``; see the module docstring).
        ``stop_signals``: an already entered StopSignals (the caller's, kept on return); None: one of its own
        for the duration of the call when ``train.save_on_signal``.
        """
        from tqdm import tqdm

        cfg, main = self.cfg, self.rank == 0
        last = cfg.steps if until is None else min(int(until), cfg.steps)
        self.write_run_info()
        writer = MetricsWriter(cfg.tensorboard_dir, self.rank)
        thr = Throughput()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and cfg.progress),
                   desc="train", dynamic_ncols=True)
        t0 = time.monotonic()
        run_losses, window, parts = [], [], {}
        saved_at = None
        self.model.train()
        own = stop_signals is None
        signals = StopSignals(cfg.save_on_signal) if own else stop_signals
        try:
            if own:
                signals.__enter__()
            while self.step < last:
                m = self.train_step()
                thr.data_wait(m["data_wait_s"])
                if m["skipped"]:
                    self._on_bad_step(m, writer, bar)
                else:
                    run_losses.append(m["loss"])
                    window.append(m["loss"])
                    for k, v in m["loss_parts"].items():     # on device; read once per window
                        v = v.detach().double()
                        parts[k] = parts[k] + v if k in parts else v
                    thr.update(m["tokens"], m["flops"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
                if not m["skipped"] and (self.step % cfg.log_every == 0 or self.step == last):
                    rates = thr.read()
                    loss_avg = self._dp_mean(sum(window) / len(window))
                    window.clear()
                    by_part = self._window_loss_parts(parts)
                    parts = {}
                    # a union's sources: the share of the sessions each gave since the last line, all DP ranks
                    drawn = sum_counts(self.stream.drawn() if hasattr(self.stream, "drawn") else {},
                                       self.dims.dp_group, self.device)
                    total = sum(drawn.values())
                    shares = {k: v / total for k, v in drawn.items()} if total else {}
                    writer.scalars(self.step, {"loss": loss_avg, "lr": m["lr"], "grad_norm": m["grad_norm"],
                                               "tokens_per_s": rates["tokens_per_s"], "tflops": rates["tflops"],
                                               "data_wait_pct": rates["data_wait_pct"],
                                               "skipped_steps": self.skipped_steps, **by_part, **m["extra"],
                                               **{f"source_share/{k}": v for k, v in shares.items()}})
                    if main:
                        tfl = f" | {rates['tflops']:.3g} TFLOP/s/dev" if rates["tflops"] is not None else ""
                        gn = f"{m['grad_norm']:.3f}" if m["grad_norm"] is not None else "-"
                        skipped = f" | skipped {self.skipped_steps}" if self.skipped_steps else ""
                        src = (" | sources " + " ".join(f"{k} {v:.0%}" for k, v in shares.items())) if shares else ""
                        bar.write(f"step {self.step:>7d} | loss {loss_avg:.5f} | lr {m['lr']:.3e} | "
                                  f"grad {gn} | {rates['tokens_per_s']:.0f} tok/s/dev{tfl} | "
                                  f"data wait {rates['data_wait_pct']:.1f}%{skipped}{src}")
                self._call_hooks("on_step_end", m)
                if not m["skipped"] and cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                timed_out, signalled = self._stop_flags(t0, signals)
                if signalled:
                    # the signal may have reached another rank only
                    name = signals.received or "a stop signal (on another rank)"
                    if main:
                        bar.write(f"stopping at step {self.step}: {name} received; saving step {self.step}")
                    path = self.save_checkpoint() if saved_at != self.step else (
                        ckpt.step_dir(cfg.ckpt_dir, self.step) if cfg.ckpt_dir is not None else None)
                    raise Preempted(self.step, name, path)
                if timed_out:
                    if main:
                        bar.write(f"stopping at step {self.step}: max_minutes={cfg.max_minutes} reached")
                    break
            if saved_at != self.step:
                self.save_checkpoint()
            self._call_hooks("on_train_end")
        finally:
            if own:
                signals.__exit__(None, None, None)
            bar.close()
            writer.close()
            self.losses.extend(run_losses)
        return run_losses
