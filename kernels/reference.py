"""The mask rule, written once in plain PyTorch, and a dense attention oracle.

A packed sequence of length S is tiled by ``nb`` contiguous *blocks* (one text
turn, one image, one mask image, ...). The compact spec is four int32 vectors:

    block_offsets  [nb + 1]  block b covers tokens [offsets[b], offsets[b+1]);
                             offsets[0] == 0, offsets[-1] == S, non-decreasing
    block_order    [nb]      the block's index in its interleaved session; a noisy
                             copy shares the order of its clean twin
    block_kind     [nb]      KIND_TEXT, KIND_CLEAN or KIND_NOISY
    block_session  [nb]      packed-session id; attention never crosses sessions

plus a mask type:

    "full"          q sees k iff same session.
    "block_causal"  q sees k iff same session and (same block, or k is not noisy
                    and ((q not noisy and order(k) <= order(q)) or
                         (q noisy and order(k) < order(q)))).

Padding is a block of its own session: it sees only itself.

Everything here builds an S x S tensor: it is the *test oracle* and nothing
else. Fast paths (kernels, per-session torch attention) work from the spec.
"""
from __future__ import annotations

import math

import torch

KIND_TEXT = 0
KIND_CLEAN = 1
KIND_NOISY = 2
MASK_TYPES = ("full", "block_causal")


def token_block_ids(block_offsets: torch.Tensor) -> torch.Tensor:
    """[nb+1] offsets -> [S] block index of every token."""
    lengths = (block_offsets[1:] - block_offsets[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=block_offsets.device), lengths)


def block_visibility(block_order, block_kind, block_session, mask_type: str) -> torch.Tensor:
    """[nb, nb] bool: may a query in block i attend to a key in block j."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    same_session = block_session[:, None] == block_session[None, :]
    if mask_type == "full":
        return same_session
    nb = block_order.numel()
    same_block = torch.eye(nb, dtype=torch.bool, device=block_order.device)
    q_noisy = (block_kind == KIND_NOISY)[:, None]
    k_noisy = (block_kind == KIND_NOISY)[None, :]
    ro_q, ro_k = block_order[:, None], block_order[None, :]
    causal = torch.where(q_noisy, ro_k < ro_q, ro_k <= ro_q)
    return same_session & (same_block | (~k_noisy & causal))


def dense_mask(block_offsets, block_order, block_kind, block_session, mask_type: str,
               q_start: int = 0, q_len: int | None = None,
               k_start: int = 0, k_len: int | None = None) -> torch.Tensor:
    """[Sq, Sk] bool mask for queries [q_start, q_start+q_len) and keys [k_start, k_start+k_len)."""
    S = int(block_offsets[-1])
    q_len = S - q_start if q_len is None else q_len
    k_len = S - k_start if k_len is None else k_len
    tok = token_block_ids(block_offsets)
    vis = block_visibility(block_order, block_kind, block_session, mask_type)
    tq = tok[q_start:q_start + q_len]
    tk = tok[k_start:k_start + k_len]
    return vis[tq][:, tk]


def attention_reference(q, k, v, mask: torch.Tensor, softmax_scale: float | None = None):
    """Dense masked attention. q [Sq, H, D], k/v [Sk, H, D], mask [Sq, Sk] bool -> out [Sq, H, D], lse [H, Sq].

    Rows that see no key give out 0 and lse -inf.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale      # (H, Sq, Sk)
    s = s.masked_fill(~mask[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                     # (H, Sq)
    p = torch.exp(s - lse[..., None].masked_fill(torch.isinf(lse)[..., None], 0.0))
    p = p.masked_fill(~mask[None], 0.0)
    out = torch.einsum("hqk,khd->qhd", p, v.float())                     # (Sq, H, D)
    return out.to(q.dtype), lse
