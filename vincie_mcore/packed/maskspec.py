"""The compact attention-mask spec of a packed sequence.

A spec is four small int32 vectors over *blocks* (the rule is written once, in
``vincie_kernels/reference.py``): block offsets in the joint sequence, the block's
order in its session, its kind (text / clean / noisy) and its session id. The mask
itself is never materialised on a fast path: kernels, the per-session torch attention
and context parallelism all read the spec. ``dense()`` exists for tests only.

The token kinds and mask types are the kernels' ABI; they are re-exported here so
that vincie_mcore code names them from one place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vincie_kernels.reference import (KIND_CLEAN, KIND_NOISY, KIND_TEXT, MASK_TYPES,
                                      dense_mask, token_block_ids)

__all__ = ["MaskSpec", "KIND_TEXT", "KIND_CLEAN", "KIND_NOISY", "MASK_TYPES"]


# frozen: plans and CP partitions are cached per spec object (by weakref), so a spec must not
# change once built; eq=False keeps identity semantics (field-wise == on tensors is ambiguous).
@dataclass(frozen=True, eq=False)
class MaskSpec:
    block_offsets: torch.Tensor   # int32 [nb+1], joint-sequence token offsets
    block_order: torch.Tensor     # int32 [nb]
    block_kind: torch.Tensor      # int32 [nb], KIND_*
    block_session: torch.Tensor   # int32 [nb]
    mask_type: str                # "full" | "block_causal"

    def __post_init__(self):
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type: expected one of {MASK_TYPES}, got {self.mask_type!r}")
        nb = self.block_order.numel()
        if self.block_offsets.numel() != nb + 1 or self.block_kind.numel() != nb or self.block_session.numel() != nb:
            raise ValueError("MaskSpec: block_offsets must have nb+1 entries and the other vectors nb")

    @property
    def num_blocks(self) -> int:
        return self.block_order.numel()

    @property
    def seq_len(self) -> int:
        return int(self.block_offsets[-1])

    def token_blocks(self) -> torch.Tensor:
        """[S] block index of every joint token."""
        return token_block_ids(self.block_offsets)

    def to(self, device) -> "MaskSpec":
        return MaskSpec(self.block_offsets.to(device), self.block_order.to(device),
                        self.block_kind.to(device), self.block_session.to(device), self.mask_type)

    def tensors(self):
        """The four vectors in the order the kernels take them."""
        return self.block_offsets, self.block_order, self.block_kind, self.block_session

    def dense(self, q_start: int = 0, q_len: int | None = None) -> torch.Tensor:
        """[Sq, S] bool. Test oracle only: O(S^2) memory."""
        return dense_mask(*self.tensors(), self.mask_type, q_start=q_start, q_len=q_len)
