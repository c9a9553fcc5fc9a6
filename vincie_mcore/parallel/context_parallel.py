"""Context parallelism (CP) for our masks: split the packed sequence, gather K/V, attend locally.

Transformer Engine's CP knows causal and padding masks only; ours are unions of rectangles
read from the compact spec (``data/maskspec.py``). The scheme (all-gather K/V):

1. ``partition(spec, cp)`` cuts the joint sequence (text stream, then image stream) into
   ``cp`` contiguous chunks of about equal *mask area*: a query row costs as many (q, k)
   pairs as it sees keys, which is one number per block (``row_area``, O(nb^2)), so the cut
   is found on block-level prefix sums, never on an S x S mask. Rank r keeps joint tokens
   ``[bounds[r], bounds[r+1])``: its local text and local image rows (either may be empty).
   Cuts fall on multiples of ``multiple`` (the TP size) inside each stream, so sequence
   parallelism can still split every local stream.
2. The model slices its inputs to the rank's tokens (``CPShard``): RoPE positions and the
   per-block AdaLN conditioning follow their tokens through the global token -> block map.
3. ``ContextParallelAttention`` wraps the core-attention slot: it gathers K and V of every
   rank as one contiguous tensor (``mappings.gather_chunks``), then runs the masked core on
   the local queries against all keys; backward reduce-scatters dK/dV to their owners.
4. The loss (``data_parallel_mean``) sums the local squared errors, divides by the GLOBAL
   count, and pre-multiplies by the dp x cp size that Megatron DDP divides by, so the
   averaged gradient equals one device's.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from vincie_kernels.reference import KIND_TEXT, block_visibility
from vincie_mcore.data.maskspec import MaskSpec

from .mappings import gather_chunks, sum_over


# ----------------------------------------------------------------------------
# The split
# ----------------------------------------------------------------------------

def stream_split(spec: MaskSpec) -> int:
    """S_txt of the joint layout: the offset of the first non-text block (S when all are text)."""
    kinds = spec.block_kind.tolist()
    first = next((i for i, k in enumerate(kinds) if k != KIND_TEXT), len(kinds))
    if any(k == KIND_TEXT for k in kinds[first:]):
        raise ValueError("context parallel: the spec has a text block after an image block; expected the joint "
                         "layout (every text block, then every image block)")
    return int(spec.block_offsets[first])


def row_area(spec: MaskSpec) -> torch.Tensor:
    """float64 [nb]: keys visible to one query row of each block (its cost in the masked core)."""
    lens = (spec.block_offsets[1:] - spec.block_offsets[:-1]).double()
    vis = block_visibility(spec.block_order, spec.block_kind, spec.block_session, spec.mask_type)
    return vis.double() @ lens                                                # (nb,)


def _prefix_area(spec: MaskSpec, x: torch.Tensor) -> torch.Tensor:
    """Mask area of joint tokens [0, x) for each position in x (block prefix sums + a partial block)."""
    offs = spec.block_offsets.long()
    lens = (offs[1:] - offs[:-1]).double()
    area = row_area(spec)
    cum = torch.cat([area.new_zeros(1), torch.cumsum(lens * area, 0)])       # (nb+1,)
    b = (torch.searchsorted(offs, x, right=True) - 1).clamp(0, area.numel() - 1)
    return cum[b] + (x - offs[b]).double() * area[b]


def _candidates(s_txt: int, S: int, multiple: int) -> torch.Tensor:
    """Allowed cut positions in (0, S): multiples of ``multiple`` inside each stream, and the stream border."""
    txt = torch.arange(multiple, s_txt, multiple)
    img = torch.arange(s_txt, S, multiple)
    c = torch.unique(torch.cat([txt, img]))
    return c[(c > 0) & (c < S)]


def _partition(spec: MaskSpec, cp: int, multiple: int) -> tuple[int, ...]:
    S, s_txt = spec.seq_len, stream_split(spec)
    if cp == 1:
        return (0, S)
    cand = _candidates(s_txt, S, multiple)
    if cand.numel() < cp - 1:
        at = f" at multiples of tp={multiple} inside each stream" if multiple > 1 else ""
        raise ValueError(f"context parallel: the packed sequence has {S} tokens (text {s_txt}, image {S - s_txt}), "
                         f"too short to cut into cp={cp} non-empty chunks{at}; pack more tokens or lower cp")
    area = _prefix_area(spec, cand)                                           # (n_cand,), non-decreasing
    total = float(_prefix_area(spec, torch.tensor([S]))[0])
    n, prev, cuts = cand.numel(), -1, []
    for k in range(1, cp):
        target = total * k / cp
        j = int(torch.searchsorted(area, torch.tensor([target], dtype=area.dtype))[0])
        if j == n or (j > 0 and target - float(area[j - 1]) <= float(area[j]) - target):
            j -= 1                                                            # the nearer of the two neighbours
        j = min(max(j, prev + 1), n - (cp - k))                               # keep every chunk non-empty
        cuts.append(int(cand[j]))
        prev = j
    return (0, *cuts, S)


_CACHE: list[tuple[weakref.ref, tuple, tuple[int, ...]]] = []


def partition(spec: MaskSpec, cp: int, multiple: int = 1) -> tuple[int, ...]:
    """Chunk bounds ``(0, b_1, ..., b_{cp-1}, S)`` balancing mask area; cached per spec object."""
    if cp < 1 or multiple < 1:
        raise ValueError(f"context parallel: cp and multiple must be >= 1, got cp={cp}, multiple={multiple}")
    key = (cp, multiple)
    for ref, k, bounds in _CACHE:
        if ref() is spec and k == key:
            return bounds
    bounds = _partition(spec, cp, multiple)
    _CACHE[:] = [e for e in _CACHE if e[0]() is not None][:7]
    _CACHE.insert(0, (weakref.ref(spec), key, bounds))
    return bounds


@dataclass(frozen=True)
class CPShard:
    """One rank's share of the joint sequence: tokens ``[bounds[rank], bounds[rank+1])``."""

    bounds: tuple[int, ...]
    rank: int
    s_txt: int

    @property
    def q_start(self) -> int:
        return self.bounds[self.rank]

    @property
    def q_end(self) -> int:
        return self.bounds[self.rank + 1]

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.bounds[:-1], self.bounds[1:]))

    @property
    def joint_rows(self) -> slice:
        return slice(self.q_start, self.q_end)

    @property
    def txt_rows(self) -> slice:
        """This rank's rows of the text stream."""
        return slice(min(self.q_start, self.s_txt), min(self.q_end, self.s_txt))

    @property
    def img_rows(self) -> slice:
        """This rank's rows of the image stream."""
        return slice(max(self.q_start - self.s_txt, 0), max(self.q_end - self.s_txt, 0))


def shard_of(spec: MaskSpec, cp: int, rank: int, multiple: int = 1) -> CPShard:
    if not 0 <= rank < cp:
        raise ValueError(f"context parallel: rank {rank} outside cp={cp}")
    return CPShard(partition(spec, cp, multiple), rank, stream_split(spec))


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
