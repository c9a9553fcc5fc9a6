"""The mask rule, written once in plain PyTorch, and a dense attention oracle.

A packed sequence of length S is tiled by ``nb`` contiguous *blocks* (one text
turn, one image, one mask image, one text-to-video clip's noisy frames, ...). The
compact spec is four int32 vectors:

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
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32     # fp64 in: fp64 throughout
    s = torch.einsum("qhd,khd->hqk", q.to(ct), k.to(ct)) * scale        # (H, Sq, Sk)
    s = s.masked_fill(~mask[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                     # (H, Sq)
    p = torch.exp(s - lse[..., None].masked_fill(torch.isinf(lse)[..., None], 0.0))
    p = p.masked_fill(~mask[None], 0.0)
    out = torch.einsum("hqk,khd->qhd", p, v.to(ct))                      # (Sq, H, D)
    return out.to(q.dtype), lse


def attention_reference_grads(q, k, v, do, mask: torch.Tensor, softmax_scale: float | None = None,
                              max_scores_bytes: int = 2**30):
    """fp64 (out, dq, dk, dv) of ``attention_reference`` for upstream gradient ``do`` (all [S, H, D]).

    Plain torch autograd in float64, so the answer's own rounding (and its thread-dependent summation
    order) is far below any kernel's error, over groups of heads and of query rows so that a group's
    S x S scores stay under ``max_scores_bytes`` (at S = 45k: one head, ~2.9k rows at a time). dK and
    dV accumulate over the row groups in the leaves' ``.grad``. The tuner's and checks' independent
    answer at sizes where all heads' scores would not fit.
    """
    Sq, H, _ = q.shape
    row_bytes = max(1, k.shape[0] * 8)
    heads = max(1, min(H, max_scores_bytes // (row_bytes * max(1, Sq))))
    rows = max(1, min(Sq, max_scores_bytes // (row_bytes * heads)))
    parts = []
    for h in range(0, H, heads):
        hs = slice(h, h + heads)
        kh, vh = (t[:, hs].detach().double().requires_grad_() for t in (k, v))
        outs, dqs = [], []
        for r in range(0, Sq, rows):
            qh = q[r:r + rows, hs].detach().double().requires_grad_()
            out, _ = attention_reference(qh, kh, vh, mask[r:r + rows], softmax_scale)
            out.backward(do[r:r + rows, hs].double())
            outs.append(out.detach())
            dqs.append(qh.grad)
            del out, qh
        parts.append((torch.cat(outs), torch.cat(dqs), kh.grad, vh.grad))
    return tuple(torch.cat([pt[i] for pt in parts], dim=1) for i in range(4))


# ----------------------------------------------------------------------------- test layouts
# Layout helpers for kernel tests and the kernels' own check/bench/tune. ``spec_from_blocks`` is also
# where vincie_mcore's batch builder (vincie_mcore/packed/builder.py) turns its block tuples into
# the four vectors; the rule above stays independent of it and checks it.

def spec_from_blocks(blocks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(length, order, kind, session), ...] in sequence order -> the four int32 spec vectors (CPU)."""
    if not blocks:
        raise ValueError("spec_from_blocks: no blocks")
    lengths = torch.tensor([b[0] for b in blocks], dtype=torch.int32)
    if (lengths < 0).any():
        raise ValueError(f"spec_from_blocks: negative block length in {lengths.tolist()}")
    offsets = torch.zeros(len(blocks) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(lengths, 0)
    cols = [torch.tensor([b[i] for b in blocks], dtype=torch.int32) for i in (1, 2, 3)]
    return (offsets, *cols)


def random_blocks(gen: torch.Generator, max_tokens: int = 256, max_sessions: int = 3,
                  text_first: bool | None = None, padding: bool | None = None, image_scale: int = 1):
    """A random packed layout as [(length, order, kind, session), ...]: awkward on purpose.

    Several sessions of interleaved turns (image, text, optional mask image), noisy
    copies of target images, single-token blocks, long text blocks, lengths that are
    no multiple of any tile; either session-contiguous or the joint layout (every
    text block first, then every image block); optionally a trailing padding block.
    ``image_scale`` > 1 makes images that many times longer (GPU-sized tiles).
    """
    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    def length(kind):
        r = rint(0, 9)
        if r == 0:
            return 1                                   # single-token block
        if kind == KIND_TEXT and r >= 8:
            return rint(40, 70)                        # long text turn
        if kind != KIND_TEXT and image_scale > 1:
            return rint(2, 29) * image_scale + rint(0, image_scale - 1)
        return rint(2, 29)

    if text_first is None:
        text_first = bool(rint(0, 1))
    if padding is None:
        padding = rint(0, 3) == 0
    n_sessions = rint(1, max_sessions)
    budget = max_tokens // n_sessions
    blocks = []
    for s in range(n_sessions):
        sess, used, order, turn = [], 0, 0, 0
        while used < budget * 0.6 or turn < 1:
            img = (length(KIND_CLEAN), order, KIND_CLEAN, s)
            sess.append(img)
            if turn > 0:                               # every target also has a noisy copy
                sess.append((img[0], order, KIND_NOISY, s))
            order += 1
            if rint(0, 2) == 0:                        # region-of-editing mask image
                sess.append((length(KIND_CLEAN), order, KIND_CLEAN, s))
                order += 1
            sess.append((length(KIND_TEXT), order, KIND_TEXT, s))
            order += 1
            turn += 1
            used = sum(b[0] for b in sess)
            if used + 2 * budget // 5 > budget:
                break
        blocks.extend(sess)
    if text_first:
        blocks = [b for b in blocks if b[2] == KIND_TEXT] + [b for b in blocks if b[2] != KIND_TEXT]
    if padding:
        blocks.append((rint(1, 20), 0, KIND_CLEAN, n_sessions))
    return blocks
