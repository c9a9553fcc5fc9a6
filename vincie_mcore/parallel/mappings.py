"""Autograd communication verbs that Megatron's ``tensor_parallel.mappings`` does not have.

* ``gather_chunks(x, lengths, group)``: every rank holds a chunk of a sequence, of its own
  length; the result is the whole sequence on every rank. Backward reduce-scatters the
  gradient so each rank gets the summed gradient of its own rows (K/V under context
  parallelism: every rank's queries read every rank's keys).
* ``sum_over(x, group)``: a plain (no-grad) sum over a group, for counts and logged values.

Chunks differ in length, so the gather pads each to the longest and strips the padding,
and it moves ONE contiguous tensor each way: on gloo ``torch.distributed.nn.functional``'s
all_gather returns wrong input gradients when the incoming gradient is non-contiguous
(docs/measured.md, "The gloo all_gather gradient pitfall"), which our own backward avoids by construction.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _check_lengths(x: torch.Tensor, lengths: tuple[int, ...], group) -> int:
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if len(lengths) != world:
        raise ValueError(f"gather_chunks: {len(lengths)} chunk lengths for a group of {world} ranks")
    if x.shape[0] != lengths[rank]:
        raise ValueError(f"gather_chunks: rank {rank} holds {x.shape[0]} rows but its chunk length is {lengths[rank]}")
    return rank


class _GatherChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lengths: tuple[int, ...], group):
        rank = _check_lengths(x, lengths, group)
        ctx.lengths, ctx.group, ctx.rank = lengths, group, rank
        n = max(lengths)
        padded = x.new_zeros((n,) + x.shape[1:])
        padded[: x.shape[0]] = x
        out = x.new_empty((len(lengths) * n,) + x.shape[1:])                # (world * n, ...)
        dist.all_gather_into_tensor(out, padded, group=group)
        out = out.view(len(lengths), n, *x.shape[1:])                       # (world, n, ...)
        return torch.cat([out[r, :lr] for r, lr in enumerate(lengths)])   # (sum(lengths), ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        lengths, n = ctx.lengths, max(ctx.lengths)
        grad = grad.contiguous()
        padded = grad.new_zeros((len(lengths), n) + grad.shape[1:])        # (world, n, ...)
        for r, part in enumerate(grad.split(list(lengths))):
            padded[r, : part.shape[0]] = part
        mine = grad.new_empty((n,) + grad.shape[1:])
        dist.reduce_scatter_tensor(mine, padded.view(-1, *grad.shape[1:]), group=ctx.group)
        return mine[: lengths[ctx.rank]], None, None


def gather_chunks(x: torch.Tensor, lengths: tuple[int, ...], group) -> torch.Tensor:
    """x [lengths[rank], ...] on each rank -> [sum(lengths), ...] (rank order) on every rank.

    Backward: the gradient of this rank's rows summed over every rank.
    """
    if dist.get_world_size(group) == 1:
        return x
    return _GatherChunks.apply(x, tuple(int(v) for v in lengths), group)


def sum_over(x: torch.Tensor, group) -> torch.Tensor:
    """A detached copy of x summed over ``group`` (None: nothing to sum)."""
    x = x.detach().clone()
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(x, group=group)
    return x
