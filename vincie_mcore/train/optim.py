"""Megatron's optimizer (AdamW, fp32 master weights, grad clipping) and its LR/WD scheduler.

Two builders, so the trainer never spells out Megatron's long argument lists:
``build_optimizer(model_chunks, ...)`` -> ``MegatronOptimizer`` and
``build_scheduler(optimizer, ...)`` -> ``OptimizerParamScheduler`` (linear warmup
then cosine decay to ``min_lr``). Megatron's scheduler also applies ``wd_mult``
(0 for biases and norm weights), so weight decay is only right with it.
"""
from __future__ import annotations

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler


def build_optimizer(model_chunks, *, lr: float, min_lr: float = 0.0, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    clip_grad: float = 1.0, bf16: bool | None = None,
                    use_distributed_optimizer: bool = False):
    """AdamW over Megatron-DDP-wrapped ``model_chunks`` (a list of DDP modules).

    bf16=None: bf16 params with fp32 master weights on GPU, plain fp32 on CPU.
    clip_grad=0 turns clipping off. With use_distributed_optimizer the optimizer
    state is sharded over the data-parallel group (DDP must be built with the same flag).
    """
    if bf16 is None:
        bf16 = torch.cuda.is_available()
    cfg = OptimizerConfig(
        optimizer="adam",                # Megatron's "adam" is AdamW (decoupled weight decay)
        lr=lr,
        min_lr=min_lr,                   # copied into every param group; the scheduler reads it there
        weight_decay=weight_decay,
        adam_beta1=betas[0],
        adam_beta2=betas[1],
        adam_eps=eps,
        clip_grad=clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    opt = get_megatron_optimizer(cfg, list(model_chunks))
    if not torch.cuda.is_available():
        _use_foreach(opt)
    return opt


def _use_foreach(optimizer) -> None:
    """CPU: torch's AdamW defaults to a Python loop over parameters there (foreach only on CUDA),
    a dozen torch calls per tensor; the multi-tensor path does each update in one call per group."""
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and "foreach" in inner.defaults:
            inner.defaults["foreach"] = True
            for group in inner.param_groups:
                group["foreach"] = True


def build_scheduler(optimizer, *, lr: float, warmup_steps: int, total_steps: int,
                    min_lr: float = 0.0, weight_decay: float = 0.0) -> OptimizerParamScheduler:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``.

    Call ``scheduler.step(1)`` right *before* optimizer step k, so step k runs at
    lr(k) (k = 1..total_steps): warmup k/warmup*lr, the last step at exactly min_lr,
    and no step wasted at lr 0. ``num_steps`` then equals the trainer's step; it is
    saved with the checkpoint and on load the checkpoint's values win.
    The optimizer must be built with the same ``lr`` and ``min_lr`` (Megatron keeps
    them per param group).
    """
    if total_steps <= warmup_steps:
        raise ValueError(f"build_scheduler: total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=lr,
        min_lr=min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=total_steps,
        lr_decay_style="cosine",
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=total_steps,
        wd_incr_style="constant",
    )


def current_lr(optimizer) -> float:
    """The learning rate of the default parameter group (for logging)."""
    groups = optimizer.param_groups
    for g in groups:
        if g.get("default_config", False):
            return float(g["lr"])
    return float(groups[0]["lr"]) if groups else 0.0
