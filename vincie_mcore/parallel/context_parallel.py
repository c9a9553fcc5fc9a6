"""Context parallelism (CP) for our masks: split the packed sequence, gather K/V, attend locally.

Transformer Engine's CP knows causal and padding masks only; ours are unions of rectangles
read from the compact spec (``packed/maskspec.py``). The scheme (all-gather K/V):

1. ``packed/shard.py`` cuts the joint sequence into ``cp`` contiguous chunks of about equal
   mask area (``partition``) and names one rank's share (``CPShard``, ``shard_of``): pure
   index arithmetic on the spec, shared with the model, which slices its inputs with it.
   This file adds the shard under a given layout (``shard(spec, dims)``).
2. ``ContextParallelAttention`` wraps the core-attention slot: it gathers K and V of every
   rank as one contiguous tensor (``mappings.gather_chunks``), then runs the masked core on
   the local queries against all keys; backward reduce-scatters dK/dV to their owners.
   ``dims.parallelize`` installs it when the model is given dims with cp > 1.
3. The loss (``data_parallel_mean``) sums the local squared errors, divides by the GLOBAL
   count, and pre-multiplies by the dp x cp size that Megatron DDP divides by, so the
   averaged gradient equals one device's.

Everything here takes the layout as a ``ParallelDims`` (``dims.py``), the one the model was
given; nothing reads Megatron's ``parallel_state``, so a model parallelized with
``ParallelDims.single()`` computes the whole sequence even inside a CP group.
"""
from __future__ import annotations

import torch

from vincie_mcore.packed.maskspec import MaskSpec
from vincie_mcore.packed.shard import CPShard, shard_of, stream_split

from .dims import ParallelDims
from .mappings import gather_chunks, sum_over


# ----------------------------------------------------------------------------
# The layout a model was given (``dims.py``): never Megatron's globals
# ----------------------------------------------------------------------------

def shard(spec: MaskSpec, dims: ParallelDims) -> CPShard:
    """This rank's shard under ``dims`` (the whole sequence without CP)."""
    if dims.cp == 1:
        return CPShard((0, spec.seq_len), 0, stream_split(spec))
    return shard_of(spec, dims.cp, dims.cp_rank, dims.tp)


def image_rows(spec: MaskSpec, dims: ParallelDims) -> slice:
    """The image-stream rows the model returns on this rank (all of them without CP)."""
    return shard(spec, dims).img_rows


def data_parallel_mean(sq_sum: torch.Tensor, count: torch.Tensor,
                       dims: ParallelDims) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, global count): the mean of squared errors over every dp x cp rank's elements.

    The returned loss has the global mean as its value on every rank, and the gradient of
    ``world * sq_sum / global_count``: Megatron DDP divides by ``world`` (the dp x cp size)
    and sums, which gives exactly the one-device gradient of the global mean.
    """
    count = count.to(sq_sum.dtype)
    world = dims.dp_cp
    if world == 1:
        return sq_sum / count, count
    total_sq, total_count = sum_over(torch.stack([sq_sum, count]), dims.dp_cp_group).unbind(0)
    local = sq_sum * (world / total_count)
    return local + (total_sq / total_count - local).detach(), total_count


# ----------------------------------------------------------------------------
# The core-attention wrapper
# ----------------------------------------------------------------------------

class ContextParallelAttention(torch.nn.Module):
    """Gathers K/V over the CP group, then runs the wrapped core on the local queries.

    Called like any core: ``(q [Sq, H, D], k, v [Sq, H, D], spec, q_start, k_start)`` with the
    rank's own tokens (``q_start == k_start`` = its chunk start).
    """

    def __init__(self, core: torch.nn.Module, dims: ParallelDims):
        super().__init__()
        if dims.cp < 2 or dims.cp_group is None:
            raise ValueError(f"ContextParallelAttention: needs dims with cp > 1 and a CP group, got {dims}")
        self.core, self.dims = core, dims

    def forward(self, q, k, v, spec: MaskSpec, q_start: int = 0, k_start: int = 0) -> torch.Tensor:
        sh = shard(spec, self.dims)
        if q_start != sh.q_start or k_start != sh.q_start or q.shape[0] != k.shape[0] or \
                q.shape[0] != sh.lengths[sh.rank]:
            raise ValueError(f"context parallel attention: got q rows [{q_start}, {q_start + q.shape[0]}) and k rows "
                             f"from {k_start}, but this rank owns joint tokens [{sh.q_start}, {sh.q_end})")
        kv = torch.stack([k, v], dim=1)                                       # (Sq, 2, H, D): one contiguous tensor
        kv = gather_chunks(kv, sh.lengths, self.dims.cp_group)                # (S, 2, H, D)
        k_all, v_all = kv.unbind(1)
        return self.core(q, k_all, v_all, spec, q_start=q_start, k_start=0)   # (Sq, H, D)

