"""The parallel layout as one explicit object, and ``parallelize(model, dims)`` that gives it to a model.

``ParallelDims`` holds the sizes (tp, cp, dp, sp), this rank's place in the layout, and the
process groups the model and the loss communicate over. It is made once: ``ParallelDims.current()``
reads Megatron's ``parallel_state`` after ``groups.init_distributed``; ``ParallelDims.single()``
is one device (no groups). Nothing below ``parallel/`` reads ``parallel_state`` for context
parallelism or the loss mean: the model holds the dims it was given, and the loss asks the
model (``dims_of``).

``parallelize(model, dims)`` (torchtitan style: one call applies the layout to a built model)
checks that the model's tensor-parallel linears were built for ``dims.tp`` and ``dims.sp``,
wraps every core-attention slot in ``ContextParallelAttention`` when ``dims.cp > 1``, and sets
``model.parallel_dims``. Tensor parallelism itself is chosen at build time (Megatron's
column/row-parallel linears take their group then), so ``parallelize`` only checks it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ParallelDims:
    """The layout of ``world_size = tp * cp * dp`` ranks (tp fastest, then cp, then dp: Megatron's order).

    The groups are None on one device; ``dp_cp_group`` is the data-parallel group with the
    context-parallel ranks folded in (what the loss mean and Megatron DDP reduce over);
    ``amax_group`` is the FP8 amax reduction group (TP x CP x DP, Megatron's), None on one rank.
    """

    tp: int = 1
    cp: int = 1
    dp: int = 1
    world_size: int = 1
    rank: int = 0
    backend: str = "gloo"
    sp: bool = False
    tp_group: object = field(default=None, compare=False, repr=False)
    cp_group: object = field(default=None, compare=False, repr=False)
    dp_group: object = field(default=None, compare=False, repr=False)
    dp_cp_group: object = field(default=None, compare=False, repr=False)
    amax_group: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        for name in ("tp", "cp", "dp"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ParallelDims.{name}: must be a positive int, got {v!r}")
        if self.tp * self.cp * self.dp != self.world_size:
            raise ValueError(f"ParallelDims: world_size {self.world_size} != tp*cp*dp = "
                             f"{self.tp}*{self.cp}*{self.dp}")
        if self.sp and self.tp == 1:
            raise ValueError("ParallelDims.sp: sequence parallelism splits over the TP group; it needs tp > 1")

    def __deepcopy__(self, memo):
        return self                  # immutable, and process groups are handles to share, not to copy

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def cp_rank(self) -> int:
        return (self.rank // self.tp) % self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // (self.tp * self.cp)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_cp(self) -> int:
        """Ranks that split one global batch (Megatron DDP averages gradients over them)."""
        return self.dp * self.cp

    @classmethod
    def single(cls) -> ParallelDims:
        """One device: no groups, the whole sequence, a local loss mean."""
        return cls()

    @classmethod
    def current(cls, sp: bool = False) -> ParallelDims:
        """The layout Megatron's ``parallel_state`` holds (after ``groups.init_distributed``), with ``sp``."""
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            raise RuntimeError("ParallelDims.current: Megatron's parallel groups are not initialised; "
                               "call parallel.groups.init_distributed() first")
        tp, cp = ps.get_tensor_model_parallel_world_size(), ps.get_context_parallel_world_size()
        dp = ps.get_data_parallel_world_size()
        dims = cls(tp=tp, cp=cp, dp=dp, world_size=dist.get_world_size(), rank=dist.get_rank(),
                   backend=str(dist.get_backend()), sp=bool(sp) and tp > 1,
                   tp_group=ps.get_tensor_model_parallel_group(), cp_group=ps.get_context_parallel_group(),
                   dp_group=ps.get_data_parallel_group(),
                   dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True),
                   amax_group=ps.get_amax_reduction_group(with_context_parallel=True)
                   if dist.get_world_size() > 1 else None)
        got = (ps.get_tensor_model_parallel_rank(), ps.get_context_parallel_rank(), ps.get_data_parallel_rank())
        if got != (dims.tp_rank, dims.cp_rank, dims.dp_rank):      # our rank math assumes tp-cp-dp order
            raise RuntimeError(f"ParallelDims.current: Megatron places rank {dims.rank} at (tp, cp, dp) = {got}, "
                               f"not {(dims.tp_rank, dims.cp_rank, dims.dp_rank)} (order tp-cp-dp expected)")
        return dims


def dims_of(model) -> ParallelDims:
    """The dims ``model`` was given by ``parallelize``, looking through wrappers (DDP, Float16Module:
    ``.module``); one device for a model never parallelized (a plain callable, a test double)."""
    m, seen = model, 0
    while m is not None and seen < 8:
        dims = getattr(m, "parallel_dims", None)
        if isinstance(dims, ParallelDims):
            return dims
        m, seen = getattr(m, "module", None), seen + 1
    return ParallelDims.single()


def _takes_offsets(core: torch.nn.Module) -> bool:
    params = inspect.signature(core.forward).parameters
    return "q_start" in params and "k_start" in params


def parallelize(model: torch.nn.Module, dims: ParallelDims) -> torch.nn.Module:
    """Apply ``dims`` to a built model and return it (the same object).

    The model needs ``cp_shard`` (which tokens a rank computes) and, for cp > 1, core-attention
    slots that take joint offsets (``q_start``, ``k_start``); anything else fails in one line.
    A model is parallelized once.
    """
    from .context_parallel import ContextParallelAttention

    if not isinstance(dims, ParallelDims):
        raise TypeError(f"parallelize: dims must be a ParallelDims, got {type(dims).__name__}")
    name = type(model).__name__
    if not callable(getattr(model, "cp_shard", None)) or not hasattr(model, "parallel_dims"):
        raise TypeError(f"parallelize: {name} has no cp_shard/parallel_dims; it cannot take a parallel layout")
    if model.parallel_dims is not None:
        raise RuntimeError(f"parallelize: this {name} was already parallelized as {model.parallel_dims}")
    tp_group = getattr(model, "tp_group", None)
    built_tp = tp_group.size() if tp_group is not None else 1
    if built_tp != dims.tp:
        raise ValueError(f"parallelize: {name} was built for tp={built_tp}, the dims say tp={dims.tp}")
    built_sp = bool(getattr(model.config, "sequence_parallel", False)) and built_tp > 1
    if built_sp != dims.sp:
        raise ValueError(f"parallelize: {name} was built with sequence_parallel={built_sp}, the dims say sp={dims.sp}")
    if dims.cp > 1:
        slots = [m for m in model.modules() if isinstance(getattr(m, "core_attention", None), torch.nn.Module)]
        if not slots:
            raise ValueError(f"parallelize: cp={dims.cp}, but {name} has no core_attention slot to gather K/V around")
        for m in slots:
            if not _takes_offsets(m.core_attention):
                raise ValueError(f"parallelize: cp={dims.cp} needs cores that take q_start/k_start (a shard of the "
                                 f"joint sequence); {type(m.core_attention).__name__} does not")
        for m in slots:
            m.core_attention = ContextParallelAttention(m.core_attention, dims)
    model.parallel_dims = dims
    return model
