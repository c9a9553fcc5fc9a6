"""Context parallelism (CP) for our masks: split the packed sequence, gather K/V, attend locally.

Transformer Engine's CP knows causal and padding masks only; ours are unions of rectangles
read from the compact spec (``packed/maskspec.py``). The scheme (all-gather K/V):

1. ``packed/shard.py`` cuts the joint sequence into ``cp`` contiguous chunks of about equal
   mask area (``partition``) and names one rank's share (``CPShard``, ``shard_of``): pure
   index arithmetic on the spec, shared with the model, which slices its inputs with it.
   This file adds what needs the process groups: the current layout's shard.
2. ``ContextParallelAttention`` wraps the core-attention slot: it gathers K and V of every
   rank as one contiguous tensor (``mappings.gather_chunks``), then runs the masked core on
   the local queries against all keys; backward reduce-scatters dK/dV to their owners.
3. The loss (``data_parallel_mean``) sums the local squared errors, divides by the GLOBAL
   count, and pre-multiplies by the dp x cp size that Megatron DDP divides by, so the
   averaged gradient equals one device's.
"""
from __future__ import annotations

import torch

from vincie_mcore.packed.maskspec import MaskSpec
from vincie_mcore.packed.shard import CPShard, shard_of, stream_split

from .mappings import gather_chunks, sum_over


# ----------------------------------------------------------------------------
# The current layout (Megatron's parallel_state owns the groups)
# ----------------------------------------------------------------------------

def cp_group():
    """The context-parallel group, or None when CP is off or the groups do not exist."""
    from megatron.core import parallel_state as ps
    if not ps.model_parallel_is_initialized() or ps.get_context_parallel_world_size() == 1:
        return None
    return ps.get_context_parallel_group()


def current_shard(spec: MaskSpec) -> CPShard:
    """This rank's shard under the current layout (the whole sequence without CP)."""
    from megatron.core import parallel_state as ps
    group = cp_group()
    if group is None:
        return CPShard((0, spec.seq_len), 0, stream_split(spec))
    return shard_of(spec, ps.get_context_parallel_world_size(), ps.get_context_parallel_rank(),
                    ps.get_tensor_model_parallel_world_size())


def image_rows(spec: MaskSpec) -> slice:
    """The image-stream rows the model returns on this rank (all of them without CP)."""
    return current_shard(spec).img_rows


def data_parallel_mean(sq_sum: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, global count): the mean of squared errors over every dp x cp rank's elements.

    The returned loss has the global mean as its value on every rank, and the gradient of
    ``world * sq_sum / global_count``: Megatron DDP divides by ``world`` (the dp x cp size)
    and sums, which gives exactly the one-device gradient of the global mean.
    """
    from megatron.core import parallel_state as ps
    count = count.to(sq_sum.dtype)
    if not ps.model_parallel_is_initialized():
        return sq_sum / count, count
    group = ps.get_data_parallel_group(with_context_parallel=True)
    world = ps.get_data_parallel_world_size(with_context_parallel=True)
    if world == 1:
        return sq_sum / count, count
    total_sq, total_count = sum_over(torch.stack([sq_sum, count]), group).unbind(0)
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

    def __init__(self, core: torch.nn.Module, group, multiple: int = 1):
        super().__init__()
        self.core, self.group, self.multiple = core, group, multiple

    def forward(self, q, k, v, spec: MaskSpec, q_start: int = 0, k_start: int = 0) -> torch.Tensor:
        import torch.distributed as dist
        sh = shard_of(spec, dist.get_world_size(self.group), dist.get_rank(self.group), self.multiple)
        if q_start != sh.q_start or k_start != sh.q_start or q.shape[0] != k.shape[0] or \
                q.shape[0] != sh.lengths[sh.rank]:
            raise ValueError(f"context parallel attention: got q rows [{q_start}, {q_start + q.shape[0]}) and k rows "
                             f"from {k_start}, but this rank owns joint tokens [{sh.q_start}, {sh.q_end})")
        kv = torch.stack([k, v], dim=1)                                       # (Sq, 2, H, D): one contiguous tensor
        kv = gather_chunks(kv, sh.lengths, self.group)                        # (S, 2, H, D)
        k_all, v_all = kv.unbind(1)
        return self.core(q, k_all, v_all, spec, q_start=q_start, k_start=0)   # (Sq, H, D)


def wrap_core_attention(model: torch.nn.Module, multiple: int):
    """Put every ``core_attention`` slot of ``model`` behind ``ContextParallelAttention``.

    Returns the CP group, or None (and changes nothing) without context parallelism.
    """
    group = cp_group()
    if group is None:
        return None
    for m in list(model.modules()):
        core = getattr(m, "core_attention", None)
        if isinstance(core, torch.nn.Module) and not isinstance(core, ContextParallelAttention):
            m.core_attention = ContextParallelAttention(core, group, multiple)
    return group
