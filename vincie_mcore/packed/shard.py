"""Context-parallel shard math: which joint tokens each CP rank owns. Pure index arithmetic
on a ``MaskSpec``: no process groups, no communication (``parallel/context_parallel.py`` holds
those and reads its shards from here; the model slices its inputs with a ``CPShard``).

``partition(spec, cp)`` cuts the joint sequence (text stream, then image stream) into ``cp``
contiguous chunks of about equal *mask area*: a query row costs as many (q, k) pairs as it
sees keys, which is one number per block (``row_area``, O(nb^2)), so the cut is found on
block-level prefix sums, never on an S x S mask. Rank r keeps joint tokens
``[bounds[r], bounds[r+1])``: its local text and local image rows (either may be empty).
Cuts fall on multiples of ``multiple`` (the TP size) inside each stream, so sequence
parallelism can still split every local stream. RoPE positions and the per-block AdaLN
conditioning follow their tokens through the global token -> block map.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from vincie_kernels.reference import block_visibility

from .maskspec import KIND_TEXT, MaskSpec


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
