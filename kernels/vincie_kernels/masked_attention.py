"""Masked flash attention for VINCIE's interleaved masks: Triton forward + backward (deterministic by default).

One packed sequence, no batch dimension:

    q [Sq, H, D]   queries of the joint-sequence slice [q_start, q_start + Sq)
    k, v [Sk, H, D] keys/values of the slice [k_start, k_start + Sk)
    out [Sq, H, D], lse [H, Sq] (natural log; -inf for a query that sees no key, whose out is 0)

The mask comes from the compact spec (``kernels/vincie_kernels/reference.py``) through
``kernels/vincie_kernels/worklist.py``: per-token int32 attributes and per-tile work lists.
Each program walks its runs of tiles: *full* tiles with no element mask,
*partial* tiles with the element test; skipped tiles are never loaded.

Backward (by default no atomics, so bit-for-bit deterministic):
    _bwd_delta_kernel: delta = rowsum(dO * O)                [H, Sq] fp32
    _bwd_dkdv_kernel: one program per (head, key tile), walking the transposed list
    _bwd_dq_kernel:   one program per (head, query tile), walking the forward list
The two kernels each recompute S and P: 7 tile matmuls per visible pair. With ``dq=None`` in
``AttentionConfigs`` the dK/dV kernel also adds each pair's dS K into an fp32 dQ with atomic adds
(FlashAttention-2's backward: 5 matmuls, no dQ kernel), at the price of run-to-run variation in
dQ's last bits.
Streamed tiles (K/V of the forward and dQ, Q/dO of dK/dV) come through pointer loads (cp.async
on GPU) or, for a ``KernelConfig(tma=True)``, through TMA tensor descriptors (sm_90+).
Each kernel has its own tiling (``AttentionConfigs``: fwd, dkdv, dq); kernels with equal
tilings share one work list (on GPU the dQ kernel reuses the forward's), and
``tools/vincie_tools/tune_attention.py`` times the alternatives on a GPU.

Matches ``vincie_kernels.reference.attention_reference`` with ``dense_mask``. Head dims
16..128 (powers of two); fp16/bf16 on GPU, fp32 anywhere (under
``TRITON_INTERPRET=1`` on CPU); fp32 accumulation throughout. Sequence lengths
are not specialised on, so a new S never recompiles.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vincie_kernels.worklist import TileRuns, TokenAttrs, WorkLists, build_worklists

__all__ = ["masked_attention", "masked_attention_forward", "plan_masked_attention", "AttentionPlan",
           "AttentionConfigs", "as_configs", "LEGACY_CONFIGS_BF16_D128",
           "MaskedAttentionFunction", "KernelConfig", "default_configs", "build_worklists", "tma_active"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453



# ----------------------------------------------------------------------------- kernels
# Layout: q/k/v/o/do/dq/dk/dv are [S, H, D] with unit stride on D; strides passed per tensor.
# Per-token attributes are int32 [Sq] (queries) and [Sk] (keys); lse/delta are fp32 [H, Sq].

@triton.jit
def _visible(q_sess, q_blk, q_lim, k_sess, k_blk, k_rank):
    """[BM] query attrs x [BN] key attrs -> [BM, BN] bool: the element rule of kernels/vincie_kernels/worklist.py."""
    same_sess = q_sess[:, None] == k_sess[None, :]
    same_blk = q_blk[:, None] == k_blk[None, :]
    return same_sess & (same_blk | (k_rank[None, :] <= q_lim[:, None]))


@triton.jit
def _visible_t(q_sess, q_blk, q_lim, k_sess, k_blk, k_rank):
    """The same rule transposed: [BN] key attrs x [BM] query attrs -> [BN, BM] bool."""
    same_sess = k_sess[:, None] == q_sess[None, :]
    same_blk = k_blk[:, None] == q_blk[None, :]
    return same_sess & (same_blk | (k_rank[:, None] <= q_lim[None, :]))


@triton.jit
def _rows(P, row0, h, S, stride_s, stride_h,
          D: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr):
    """Rows [row0, row0 + BLOCK) of head h as a [BLOCK, D] tile; rows past S read 0.

    TMA: ``P`` is a tensor descriptor over the [S, H * D] view (``_desc``): the copy engine fills
    shared memory and pads out-of-range rows with 0 itself. Otherwise ``P`` is the tensor's pointer.
    """
    if TMA:
        x = P.load([row0, h * D])
    else:
        offs = row0 + tl.arange(0, BLOCK)
        ptrs = P + offs[:, None] * stride_s + h * stride_h + tl.arange(0, D)[None, :]
        if MASKED:
            x = tl.load(ptrs, mask=(offs < S)[:, None], other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _desc(P, S, stride_s, D: tl.constexpr, BLOCK: tl.constexpr, TMA: tl.constexpr):
    """A TMA descriptor of [BLOCK, D] tiles over the [S, H * D] view of an [S, H, D] tensor whose heads
    are contiguous (stride_h == D; the launcher checks), or the pointer itself when TMA is off."""
    if TMA:
        d = tl.make_tensor_descriptor(P, shape=[S, tl.num_programs(0) * D], strides=[stride_s, 1],
                                      block_shape=[BLOCK, D])
    else:
        d = P
    return d


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, q_sess, q_blk, q_lim, kt,
              K, V, KS, KB, KR, h, Sk, scale_log2, stride_ks, stride_kh, stride_vs, stride_vh,
              D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
              TMA: tl.constexpr):
    """One online-softmax step over key tile kt (log2 domain)."""
    offs_n = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    if MASKED:
        n_valid = offs_n < Sk
        k = _rows(K, kt * BLOCK_N, h, Sk, stride_ks, stride_kh, D, BLOCK_N, True, TMA)   # (BN, D)
        v = _rows(V, kt * BLOCK_N, h, Sk, stride_vs, stride_vh, D, BLOCK_N, True, TMA)
        k_sess = tl.load(KS + offs_n, mask=n_valid, other=0)
        k_blk = tl.load(KB + offs_n, mask=n_valid, other=0)
        k_rank = tl.load(KR + offs_n, mask=n_valid, other=0)
        vis = _visible(q_sess, q_blk, q_lim, k_sess, k_blk, k_rank) & n_valid[None, :]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2            # (BM, BN)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # row still empty: avoid -inf - -inf
    else:
        # full tile: complete, every pair visible -> no bounds, no element test
        k = _rows(K, kt * BLOCK_N, h, Sk, stride_ks, stride_kh, D, BLOCK_N, False, TMA)
        v = _rows(V, kt * BLOCK_N, h, Sk, stride_vs, stride_vh, D, BLOCK_N, False, TMA)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["Sq", "Sk", "W"])
def _fwd_kernel(Q, K, V, O, LSE,
                QS, QB, QL, KS, KB, KR,
                FS, FE, NFR, PS, PE, NPR, PERM,  # runs of key tiles per query tile: [Tq, W] x2, [Tq] (x2)
                scale_log2,                      # softmax_scale * log2(e)
                Sq, Sk, W,
                stride_qs, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_os, stride_oh,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
                TMA: tl.constexpr = False):
    h = tl.program_id(0)                         # heads vary fastest: heavy tiles of all heads go first
    tile = tl.load(PERM + tl.program_id(1))
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_valid = offs_m < Sq
    q = tl.load(Q + offs_m[:, None] * stride_qs + h * stride_qh + offs_d[None, :],
                mask=m_valid[:, None], other=0.0)                                   # (BM, D)
    q_sess = tl.load(QS + offs_m, mask=m_valid, other=0)
    q_blk = tl.load(QB + offs_m, mask=m_valid, other=0)
    q_lim = tl.load(QL + offs_m, mask=m_valid, other=0)

    Kd = _desc(K, Sk, stride_ks, D, BLOCK_N, TMA)
    Vd = _desc(V, Sk, stride_vs, D, BLOCK_N, TMA)
    row = tile.to(tl.int64) * W
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    # runs, then tiles of a run: the inner loop is affine, so its K/V loads are pipelined
    for r in range(0, tl.load(NFR + tile)):
        for kt in range(tl.load(FS + row + r), tl.load(FE + row + r)):
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, q_sess, q_blk, q_lim, kt,
                                      Kd, Vd, KS, KB, KR, h, Sk, scale_log2, stride_ks, stride_kh, stride_vs,
                                      stride_vh, D, BLOCK_N, False, DOT_PREC, TMA)
    for r in range(0, tl.load(NPR + tile)):
        for kt in range(tl.load(PS + row + r), tl.load(PE + row + r)):
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, q_sess, q_blk, q_lim, kt,
                                      Kd, Vd, KS, KB, KR, h, Sk, scale_log2, stride_ks, stride_kh, stride_vs,
                                      stride_vh, D, BLOCK_N, True, DOT_PREC, TMA)

    empty = l_i == 0.0                           # saw no key: out 0, lse -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(O + offs_m[:, None] * stride_os + h * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_valid[:, None])
    tl.store(LSE + h * Sq + offs_m, lse, mask=m_valid)


@triton.jit(do_not_specialize=["Sq"])
def _bwd_delta_kernel(O, DO, DELTA, Sq, stride_os, stride_oh, stride_dos, stride_doh,
                      D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[h, m] = sum_d O[m, h, d] * dO[m, h, d] in fp32, [H, Sq]."""
    h = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_valid = offs_m < Sq
    o = tl.load(O + offs_m[:, None] * stride_os + h * stride_oh + offs_d[None, :], mask=m_valid[:, None], other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dos + h * stride_doh + offs_d[None, :],
                 mask=m_valid[:, None], other=0.0)
    tl.store(DELTA + h * Sq + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=m_valid)


@triton.jit
def _row_stats(LSE, DELTA, h, offs_m, m_valid, Sq):
    """[BM] lse in log2 units (+inf for padding and empty rows, so their p is 0) and delta."""
    lse = tl.load(LSE + h * Sq + offs_m, mask=m_valid, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + h * Sq + offs_m, mask=m_valid, other=0.0)
    return lse2, delta


@triton.jit
def _dkdv_tile(dk, dv, k, v, k_sess, k_blk, k_rank, qt,
               Q, DO, LSE, DELTA, QS, QB, QL, DQA, h, Sq, sm_scale, scale_log2,
               stride_qs, stride_qh, stride_dos, stride_doh, stride_dqas, stride_dqah,
               D: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
               TMA: tl.constexpr, DQ_ATOMIC: tl.constexpr):
    """Accumulate query tile qt into dK, dV of one key tile (transposed products, [BN, BM]);
    DQ_ATOMIC: also add this pair's dS K into the fp32 dQ accumulator DQA."""
    offs_m = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < Sq
    q = _rows(Q, qt * BLOCK_M, h, Sq, stride_qs, stride_qh, D, BLOCK_M, True, TMA)       # (BM, D)
    do = _rows(DO, qt * BLOCK_M, h, Sq, stride_dos, stride_doh, D, BLOCK_M, True, TMA)
    lse2, delta = _row_stats(LSE, DELTA, h, offs_m, m_valid, Sq)
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * scale_log2             # (BN, BM)
    p_t = tl.exp2(s_t - lse2[None, :])
    if MASKED:
        q_sess = tl.load(QS + offs_m, mask=m_valid, other=0)
        q_blk = tl.load(QB + offs_m, mask=m_valid, other=0)
        q_lim = tl.load(QL + offs_m, mask=m_valid, other=0)
        # the test built directly in the (BN, BM) orientation: a tl.trans of it would cost a shuffle
        vis_t = _visible_t(q_sess, q_blk, q_lim, k_sess, k_blk, k_rank)              # (BN, BM)
        p_t = tl.where(vis_t, p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)                      # (BN, BM)
    ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
    dk += tl.dot(ds_t, q, input_precision=DOT_PREC)
    if DQ_ATOMIC:
        # padding keys add nothing: they sit only in partial tiles (p = 0 there), and their k rows are 0
        dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PREC) * sm_scale       # (BM, D) fp32
        tl.atomic_add(DQA + offs_m[:, None] * stride_dqas + h * stride_dqah + tl.arange(0, D)[None, :], dq,
                      mask=m_valid[:, None], sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["Sq", "Sk", "W"])
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQA,
                     QS, QB, QL, KS, KB, KR,
                     FS, FE, NFR, PS, PE, NPR, PERM,   # runs of query tiles per key tile (transposed lists)
                     sm_scale, scale_log2,
                     Sq, Sk, W,
                     stride_qs, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
                     stride_dos, stride_doh, stride_dks, stride_dkh, stride_dvs, stride_dvh,
                     stride_dqas, stride_dqah,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
                     TMA: tl.constexpr = False, DQ_ATOMIC: tl.constexpr = False):
    h = tl.program_id(0)
    tile = tl.load(PERM + tl.program_id(1))
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    n_valid = offs_n < Sk
    k = tl.load(K + offs_n[:, None] * stride_ks + h * stride_kh + offs_d[None, :],
                mask=n_valid[:, None], other=0.0)                                   # (BN, D)
    v = tl.load(V + offs_n[:, None] * stride_vs + h * stride_vh + offs_d[None, :],
                mask=n_valid[:, None], other=0.0)
    # padding keys get an impossible session so the element test drops them
    k_sess = tl.load(KS + offs_n, mask=n_valid, other=-2147483648)
    k_blk = tl.load(KB + offs_n, mask=n_valid, other=0)
    k_rank = tl.load(KR + offs_n, mask=n_valid, other=0)

    Qd = _desc(Q, Sq, stride_qs, D, BLOCK_M, TMA)
    DOd = _desc(DO, Sq, stride_dos, D, BLOCK_M, TMA)
    row = tile.to(tl.int64) * W
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    # full query tiles may hold padding rows: their do = 0 and p = 0, so they add nothing
    for r in range(0, tl.load(NFR + tile)):
        for qt in range(tl.load(FS + row + r), tl.load(FE + row + r)):
            dk, dv = _dkdv_tile(dk, dv, k, v, k_sess, k_blk, k_rank, qt,
                                Qd, DOd, LSE, DELTA, QS, QB, QL, DQA, h, Sq, sm_scale, scale_log2,
                                stride_qs, stride_qh, stride_dos, stride_doh, stride_dqas, stride_dqah,
                                D, BLOCK_M, False, DOT_PREC, TMA, DQ_ATOMIC)
    for r in range(0, tl.load(NPR + tile)):
        for qt in range(tl.load(PS + row + r), tl.load(PE + row + r)):
            dk, dv = _dkdv_tile(dk, dv, k, v, k_sess, k_blk, k_rank, qt,
                                Qd, DOd, LSE, DELTA, QS, QB, QL, DQA, h, Sq, sm_scale, scale_log2,
                                stride_qs, stride_qh, stride_dos, stride_doh, stride_dqas, stride_dqah,
                                D, BLOCK_M, True, DOT_PREC, TMA, DQ_ATOMIC)
    dk = dk * sm_scale
    tl.store(DK + offs_n[:, None] * stride_dks + h * stride_dkh + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=n_valid[:, None])
    tl.store(DV + offs_n[:, None] * stride_dvs + h * stride_dvh + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=n_valid[:, None])


@triton.jit
def _dq_tile(dq, q, do, lse2, delta, q_sess, q_blk, q_lim, kt,
             K, V, KS, KB, KR, h, Sk, scale_log2, stride_ks, stride_kh, stride_vs, stride_vh,
             D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
             TMA: tl.constexpr):
    """Accumulate key tile kt into dQ of one query tile."""
    offs_n = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < Sk
    k = _rows(K, kt * BLOCK_N, h, Sk, stride_ks, stride_kh, D, BLOCK_N, True, TMA)       # (BN, D)
    v = _rows(V, kt * BLOCK_N, h, Sk, stride_vs, stride_vh, D, BLOCK_N, True, TMA)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2                # (BM, BN)
    p = tl.exp2(s - lse2[:, None])
    if MASKED:
        k_sess = tl.load(KS + offs_n, mask=n_valid, other=0)
        k_blk = tl.load(KB + offs_n, mask=n_valid, other=0)
        k_rank = tl.load(KR + offs_n, mask=n_valid, other=0)
        vis = _visible(q_sess, q_blk, q_lim, k_sess, k_blk, k_rank) & n_valid[None, :]
        p = tl.where(vis, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)                        # (BM, BN)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["Sq", "Sk", "W"])
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   QS, QB, QL, KS, KB, KR,
                   FS, FE, NFR, PS, PE, NPR, PERM,     # runs of key tiles per query tile (forward lists)
                   sm_scale, scale_log2,
                   Sq, Sk, W,
                   stride_qs, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
                   stride_dos, stride_doh, stride_dqs, stride_dqh,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
                   TMA: tl.constexpr = False):
    h = tl.program_id(0)
    tile = tl.load(PERM + tl.program_id(1))
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_valid = offs_m < Sq
    q = tl.load(Q + offs_m[:, None] * stride_qs + h * stride_qh + offs_d[None, :],
                mask=m_valid[:, None], other=0.0)                                   # (BM, D)
    do = tl.load(DO + offs_m[:, None] * stride_dos + h * stride_doh + offs_d[None, :],
                 mask=m_valid[:, None], other=0.0)
    lse2, delta = _row_stats(LSE, DELTA, h, offs_m, m_valid, Sq)
    q_sess = tl.load(QS + offs_m, mask=m_valid, other=0)
    q_blk = tl.load(QB + offs_m, mask=m_valid, other=0)
    q_lim = tl.load(QL + offs_m, mask=m_valid, other=0)

    Kd = _desc(K, Sk, stride_ks, D, BLOCK_N, TMA)
    Vd = _desc(V, Sk, stride_vs, D, BLOCK_N, TMA)
    row = tile.to(tl.int64) * W
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    for r in range(0, tl.load(NFR + tile)):
        for kt in range(tl.load(FS + row + r), tl.load(FE + row + r)):
            dq = _dq_tile(dq, q, do, lse2, delta, q_sess, q_blk, q_lim, kt,
                          Kd, Vd, KS, KB, KR, h, Sk, scale_log2, stride_ks, stride_kh, stride_vs, stride_vh,
                          D, BLOCK_N, False, DOT_PREC, TMA)
    for r in range(0, tl.load(NPR + tile)):
        for kt in range(tl.load(PS + row + r), tl.load(PE + row + r)):
            dq = _dq_tile(dq, q, do, lse2, delta, q_sess, q_blk, q_lim, kt,
                          Kd, Vd, KS, KB, KR, h, Sk, scale_log2, stride_ks, stride_kh, stride_vs, stride_vh,
                          D, BLOCK_N, True, DOT_PREC, TMA)
    dq = dq * sm_scale
    tl.store(DQ + offs_m[:, None] * stride_dqs + h * stride_dqh + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=m_valid[:, None])


# ----------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class KernelConfig:
    """One tiling + launch shape of one kernel. block_m tiles queries, block_n keys.

    Exactly one per (kernel, head dim, dtype, device): no autotuning, no recompiles.
    ``tma``: stream the kernel's K/V (dK/dV: Q/dO) tiles through Hopper's tensor memory accelerator
    (device-side tensor descriptors) instead of per-thread loads; used where the device has TMA
    (sm_90+) or under the interpreter, and where the tensor's heads are contiguous (``_tma_ok``),
    else the kernel falls back to pointer loads. Same results either way.
    """
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    tma: bool = False


@dataclass(frozen=True)
class AttentionConfigs:
    """Configs of the forward, the dK/dV kernel and the dQ kernel (the delta kernel follows dQ's block_m).

    ``dq=None``: no dQ kernel; the dK/dV kernel accumulates dQ with fp32 atomic adds (text form
    ``dq=atomic``). Five tile matmuls per visible pair instead of seven, but dQ's last bits vary from
    run to run on a GPU, and dQ takes an fp32 [Sq, H, D] buffer during the backward.
    """
    fwd: KernelConfig
    dkdv: KernelConfig
    dq: KernelConfig | None

    @property
    def dq_atomic(self) -> bool:
        return self.dq is None


# The configs before the backward was retuned (one 64x64 tiling for both backward kernels): reachable
# as configs=LEGACY_CONFIGS_BF16_D128 or configs=(KernelConfig(128, 64, 8, 3), KernelConfig(64, 64, 8, 2)).
LEGACY_CONFIGS_BF16_D128 = AttentionConfigs(KernelConfig(128, 64, 8, 3), KernelConfig(64, 64, 8, 2),
                                            KernelConfig(64, 64, 8, 2))
FA2_CONFIGS_BF16_D128 = AttentionConfigs(KernelConfig(128, 64, 8, 3), KernelConfig(32, 128, 8, 2),
                                         KernelConfig(128, 64, 8, 2))


def default_configs(head_dim: int, dtype: torch.dtype, device: torch.device) -> AttentionConfigs:
    """Per-kernel tilings. On GPU the dQ kernel shares the forward's tiling, so its work lists are reused."""
    if device.type != "cuda":                  # Triton interpreter: small tiles keep numpy fast
        return AttentionConfigs(KernelConfig(32, 16), KernelConfig(16, 32), KernelConfig(16, 32))
    if dtype == torch.float32:                 # checks only: fp32 tiles are 2x the shared memory
        return AttentionConfigs(KernelConfig(64, 32, 4, 2), KernelConfig(32, 32, 4, 1), KernelConfig(32, 32, 4, 1))
    # FlashAttention-2/3 shape of the backward: dK/dV programs own 128 keys (dK, dV stay in registers,
    # two warpgroups of 64 key rows each) and stream small query tiles of Q/dO; dQ programs own 128
    # queries and stream 64-key tiles of K/V, like the forward (so they share its work lists).
    if head_dim <= 64:
        return AttentionConfigs(KernelConfig(128, 64, 4, 3), KernelConfig(64, 64, 4, 2), KernelConfig(64, 64, 4, 2))
    # The tilings checked and benchmarked on an H200 (benchmarks/h200/). FA2_CONFIGS_BF16_D128 (dK/dV
    # 32x128, dQ 128x64: spill-free on sm_90, ~2x faster backward in the tune run) disagreed with them
    # on dK/dV in that run while the fused work-list build was on; opt in with configs= until a GPU
    # session re-runs tools/vincie_tools/tune_attention.py with the torch build.
    return LEGACY_CONFIGS_BF16_D128


def as_configs(configs) -> AttentionConfigs:
    """AttentionConfigs, or a tuple (fwd, bwd) (one config for both backward kernels) or (fwd, dkdv, dq);
    dq may be None (dQ accumulated atomically by the dK/dV kernel)."""
    if isinstance(configs, AttentionConfigs):
        return configs
    if isinstance(configs, (tuple, list)) and all(isinstance(c, KernelConfig) for c in configs[:2]):
        if len(configs) == 2:
            return AttentionConfigs(configs[0], configs[1], configs[1])
        if len(configs) == 3 and (configs[2] is None or isinstance(configs[2], KernelConfig)):
            return AttentionConfigs(*configs)
    raise TypeError(f"configs must be AttentionConfigs or a tuple of 2 or 3 KernelConfig (dq may be None), "
                    f"got {configs!r}")


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact products (TF32 would miss the fp32 tolerances); fp16/bf16 ignore this
    return "ieee" if dtype == torch.float32 else "tf32"


# ----------------------------------------------------------------------------- launchers

def _check_inputs(q, k, v):
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [S, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q [Sq, H, D] and k [Sk, H, D] disagree on H, D: {tuple(q.shape)} vs {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be float16, bfloat16 or float32, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    D = q.shape[2]
    if D < 16 or D > 128 or D & (D - 1):
        raise ValueError(f"head dim must be a power of two in [16, 128], got {D}")
    if q.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("masked_attention on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
        if q.dtype != torch.float32:
            raise TypeError(f"the Triton interpreter computes fp16/bf16 wrongly; use float32 on CPU, got {q.dtype}")
    elif q.device.type != "cuda":
        raise ValueError(f"unsupported device {q.device}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.numel() >= 2**31:
            raise ValueError(f"{name} has {t.numel()} elements; int32 offsets need < 2**31")


def tma_active(cfgs: AttentionConfigs, q, k, v) -> dict:
    """Per kernel, whether a launch on these tensors streams through TMA (benchmarks record it). dK/dV
    streams Q and dO; the backward makes dO contiguous, so q decides for both."""
    q, k, v = _contig(q), _contig(k), _contig(v)
    return {"fwd": _tma_ok(cfgs.fwd, k, v), "dkdv": _tma_ok(cfgs.dkdv, q, q),
            "dq": None if cfgs.dq_atomic else _tma_ok(cfgs.dq, k, v)}


def _runs_args(r: TileRuns):
    return r.full_start, r.full_end, r.n_full_runs, r.part_start, r.part_end, r.n_part_runs, r.perm


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _scratch(size: int, alignment: int, stream):
    # device-side tensor descriptors live in a per-launch global scratch buffer that Triton asks for
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _tma_ok(cfg: KernelConfig, *streamed: torch.Tensor) -> bool:
    """Whether this launch uses TMA: the config asks for it, the device has it, and each streamed
    [S, H, D] tensor is a 2-D [S, H * D] view TMA can address (heads contiguous, 16-byte aligned base
    and row stride)."""
    if not cfg.tma or not hasattr(tl, "make_tensor_descriptor"):     # Triton before 3.4: pointer loads
        return False
    t0 = streamed[0]
    if t0.device.type == "cuda":
        if torch.cuda.get_device_capability(t0.device)[0] < 9:
            return False
        # Triton's allocator setting is per thread (a ContextVar): the backward runs on autograd's thread.
        # One the caller set is kept; Triton's default (NullAllocator) raises at launch.
        from triton.runtime import _allocation
        if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            triton.set_allocator(_scratch)
    # (a TMA descriptor cannot describe an empty tensor: an empty key slice loads nothing anyway)
    return all(t.shape[0] > 0 and t.stride(1) == t.shape[2] and t.data_ptr() % 16 == 0
               and (t.stride(0) * t.element_size()) % 16 == 0 for t in streamed)


def _fwd(q, k, v, attrs: TokenAttrs, wl: WorkLists, scale: float, cfg: KernelConfig):
    Sq, H, D = q.shape
    Sk = k.shape[0]
    out = torch.empty_like(q)
    lse = torch.empty((H, Sq), device=q.device, dtype=torch.float32)
    if Sq == 0:
        return out, lse
    _fwd_kernel[(H, wl.num_q_tiles)](
        q, k, v, out, lse,
        attrs.q_sess, attrs.q_blk, attrs.q_limit, attrs.k_sess, attrs.k_blk, attrs.k_rank,
        *_runs_args(wl.q), scale * LOG2E, Sq, Sk, wl.q.width,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        D=D, BLOCK_M=wl.block_m, BLOCK_N=wl.block_n, DOT_PREC=_dot_precision(q.dtype), TMA=_tma_ok(cfg, k, v),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, lse


def _bwd_delta(out, do, block_m: int, num_warps: int):
    """delta = rowsum(dO * O), fp32 [H, Sq]."""
    Sq, H, D = out.shape
    delta = torch.empty((H, Sq), device=out.device, dtype=torch.float32)
    _bwd_delta_kernel[(H, triton.cdiv(Sq, block_m))](
        out, do, delta, Sq, out.stride(0), out.stride(1), do.stride(0), do.stride(1),
        D=D, BLOCK_M=block_m, num_warps=num_warps)
    return delta


def _bwd_delta_for(out, do, cfgs: AttentionConfigs):
    """delta with the dQ kernel's row tiling (the dK/dV kernel's when dQ is atomic: no dQ tiling then)."""
    c = cfgs.dkdv if cfgs.dq_atomic else cfgs.dq
    return _bwd_delta(out, do, c.block_m, c.num_warps)


def _bwd_dkdv(do, q, k, v, lse, delta, attrs: TokenAttrs, wl: WorkLists, scale: float, cfg: KernelConfig,
              atomic_dq: bool = False):
    """dK, dV: one program per (head, key tile of wl.block_n), over the transposed lists wl.k.
    -> (dk, dv, dq): dq is None unless ``atomic_dq``, where the same programs add it up in fp32."""
    Sq, H, D = q.shape
    Sk = k.shape[0]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    # without atomics dK stands in for the unused accumulator (the branch is compiled out)
    dqa = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if atomic_dq else dk
    _bwd_dkdv_kernel[(H, wl.num_k_tiles)](
        q, k, v, do, lse, delta, dk, dv, dqa,
        attrs.q_sess, attrs.q_blk, attrs.q_limit, attrs.k_sess, attrs.k_blk, attrs.k_rank,
        *_runs_args(wl.k), scale, scale * LOG2E, Sq, Sk, wl.k.width,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        dqa.stride(0), dqa.stride(1),
        D=D, BLOCK_M=wl.block_m, BLOCK_N=wl.block_n, DOT_PREC=_dot_precision(q.dtype), TMA=_tma_ok(cfg, q, do),
        DQ_ATOMIC=atomic_dq, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    # the kernel added dS K already scaled: one cast left (none for fp32)
    return dk, dv, (dqa.to(q.dtype) if atomic_dq else None)


def _bwd_dq(do, q, k, v, lse, delta, attrs: TokenAttrs, wl: WorkLists, scale: float, cfg: KernelConfig):
    """dQ: one program per (head, query tile of wl.block_m), over the forward-direction lists wl.q."""
    Sq, H, D = q.shape
    Sk = k.shape[0]
    dq = torch.empty_like(q)
    _bwd_dq_kernel[(H, wl.num_q_tiles)](
        q, k, v, do, lse, delta, dq,
        attrs.q_sess, attrs.q_blk, attrs.q_limit, attrs.k_sess, attrs.k_blk, attrs.k_rank,
        *_runs_args(wl.q), scale, scale * LOG2E, Sq, Sk, wl.q.width,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        D=D, BLOCK_M=wl.block_m, BLOCK_N=wl.block_n, DOT_PREC=_dot_precision(q.dtype), TMA=_tma_ok(cfg, k, v),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dq


def _bwd(do, q, k, v, out, lse, attrs: TokenAttrs, wl_dkdv: WorkLists, wl_dq: WorkLists, scale: float,
         cfgs: AttentionConfigs):
    if q.shape[0] == 0 or k.shape[0] == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    delta = _bwd_delta_for(out, do, cfgs)
    dk, dv, dq = _bwd_dkdv(do, q, k, v, lse, delta, attrs, wl_dkdv, scale, cfgs.dkdv, atomic_dq=cfgs.dq_atomic)
    if dq is None:
        dq = _bwd_dq(do, q, k, v, lse, delta, attrs, wl_dq, scale, cfgs.dq)
    return dq, dk, dv


# ----------------------------------------------------------------------------- autograd + public API

class MaskedAttentionFunction(torch.autograd.Function):
    """out = softmax(q k^T * scale, masked by the spec) v.

    forward(q [Sq,H,D], k [Sk,H,D], v [Sk,H,D], attrs, wl_fwd, wl_dkdv, wl_dq, scale, cfgs) -> out [Sq,H,D]
    backward -> dq, dk, dv (same shapes). Matches vincie_kernels.reference.attention_reference(q, k, v, dense_mask(...)).
    ``wl_dkdv`` / ``wl_dq`` may be None when no gradient is needed; ``wl_dq`` is None when dQ is atomic.
    """

    @staticmethod
    def forward(ctx, q, k, v, attrs, wl_fwd, wl_dkdv, wl_dq, scale, cfgs):
        q, k, v = _contig(q), _contig(k), _contig(v)
        out, lse = _fwd(q, k, v, attrs, wl_fwd, scale, cfgs.fwd)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.attrs, ctx.wl_dkdv, ctx.wl_dq, ctx.scale, ctx.cfgs = attrs, wl_dkdv, wl_dq, scale, cfgs
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        if ctx.wl_dkdv is None or (ctx.wl_dq is None and not ctx.cfgs.dq_atomic):
            raise RuntimeError("masked_attention: backward work lists were not built (inputs did not require grad)")
        dq, dk, dv = _bwd(do.contiguous(), q, k, v, out, lse, ctx.attrs, ctx.wl_dkdv, ctx.wl_dq, ctx.scale,
                          ctx.cfgs)
        return dq, dk, dv, None, None, None, None, None, None


@dataclass
class AttentionPlan:
    """Everything masked_attention derives from the spec: build once per packed batch, reuse in every layer.

    Work lists are built once per distinct tiling: kernels that share a (block_m, block_n) share the object.
    """
    q_start: int
    q_len: int
    k_start: int
    k_len: int
    head_dim: int
    dtype: torch.dtype
    attrs: TokenAttrs
    wl_fwd: WorkLists
    wl_dkdv: WorkLists | None
    wl_dq: WorkLists | None         # None too when cfgs.dq_atomic (no dQ kernel)
    cfgs: AttentionConfigs

    @property
    def wl_bwd(self) -> WorkLists | None:
        """The dK/dV lists (the backward's own tiling; kept for callers of the old two-config plan)."""
        return self.wl_dkdv


def plan_masked_attention(block_offsets, block_order, block_kind, block_session, mask_type: str,
                          q_start: int, q_len: int, k_start: int, k_len: int, head_dim: int,
                          dtype: torch.dtype, need_bwd: bool = True, configs=None,
                          worklist_backend: str = "auto") -> AttentionPlan:
    """Token attributes + forward (and backward) work lists for one (spec, slice, head dim, dtype). No sync.

    ``configs``: AttentionConfigs, (fwd, bwd) or (fwd, dkdv, dq) KernelConfigs; default ``default_configs``.
    ``worklist_backend``: how the lists are built (``build_worklists``' backend: "auto", "torch", "triton").
    """
    device = block_offsets.device
    for name, t in (("block_order", block_order), ("block_kind", block_kind), ("block_session", block_session)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but block_offsets is on {device}")
    cfgs = as_configs(configs) if configs is not None else default_configs(head_dim, dtype, device)
    spec = (block_offsets, block_order, block_kind, block_session, mask_type, q_start, q_len, k_start, k_len)
    attrs, wl_f = build_worklists(*spec, cfgs.fwd.block_m, cfgs.fwd.block_n, backend=worklist_backend)
    lists = {(cfgs.fwd.block_m, cfgs.fwd.block_n): wl_f}

    def lists_for(cfg):
        key = (cfg.block_m, cfg.block_n)
        if key not in lists:
            lists[key] = build_worklists(*spec, cfg.block_m, cfg.block_n, attrs=attrs, backend=worklist_backend)[1]
        return lists[key]

    wl_dkdv = lists_for(cfgs.dkdv) if need_bwd else None
    wl_dq = lists_for(cfgs.dq) if need_bwd and not cfgs.dq_atomic else None
    return AttentionPlan(q_start, q_len, k_start, k_len, head_dim, dtype, attrs, wl_f, wl_dkdv, wl_dq, cfgs)


def _prepare(q, k, v, spec, mask_type, q_start, k_start, softmax_scale, need_bwd, configs, plan):
    _check_inputs(q, k, v)
    Sq, H, D = q.shape
    Sk = k.shape[0]
    if spec[0].device != q.device:
        raise ValueError(f"block_offsets is on {spec[0].device} but q is on {q.device}")
    if plan is None:
        plan = plan_masked_attention(*spec, mask_type, q_start, Sq, k_start, Sk, D, q.dtype, need_bwd, configs)
    else:
        got = (plan.q_start, plan.q_len, plan.k_start, plan.k_len, plan.head_dim, plan.dtype)
        want = (q_start, Sq, k_start, Sk, D, q.dtype)
        if got != want:
            raise ValueError(f"plan was built for (q_start, Sq, k_start, Sk, D, dtype) = {got}, called with {want}")
        if need_bwd and (plan.wl_dkdv is None or (plan.wl_dq is None and not plan.cfgs.dq_atomic)):
            raise ValueError("plan was built with need_bwd=False but gradients are required")
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)
    return plan, scale


def masked_attention(q, k, v, block_offsets, block_order, block_kind, block_session, mask_type: str,
                     q_start: int = 0, k_start: int = 0, softmax_scale: float | None = None,
                     *, plan: AttentionPlan | None = None, configs=None) -> torch.Tensor:
    """Attention of queries [q_start, q_start+Sq) over keys [k_start, k_start+Sk) of one packed joint sequence.

    q [Sq, H, D], k/v [Sk, H, D] -> out [Sq, H, D]; differentiable in q, k, v.
    The spec tensors (int32, on q's device) and ``mask_type`` ("full" | "block_causal")
    define the mask as in ``kernels/vincie_kernels/reference.py``. A query that sees no key gets 0.
    ``plan`` (from ``plan_masked_attention``, same spec) skips rebuilding the work lists:
    build it once per batch and pass it to every layer. ``configs`` (AttentionConfigs, or
    KernelConfig tuples (fwd, bwd) / (fwd, dkdv, dq)) overrides the tiling; tests and tuning use it.
    """
    need_bwd = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    spec = (block_offsets, block_order, block_kind, block_session)
    plan, scale = _prepare(q, k, v, spec, mask_type, q_start, k_start, softmax_scale, need_bwd, configs, plan)
    return MaskedAttentionFunction.apply(q, k, v, plan.attrs, plan.wl_fwd, plan.wl_dkdv, plan.wl_dq, scale,
                                         plan.cfgs)


def masked_attention_forward(q, k, v, block_offsets, block_order, block_kind, block_session, mask_type: str,
                             q_start: int = 0, k_start: int = 0, softmax_scale: float | None = None,
                             *, plan: AttentionPlan | None = None, configs=None):
    """Forward only, no autograd: -> (out [Sq, H, D], lse [H, Sq] fp32, natural log, -inf for empty rows)."""
    spec = (block_offsets, block_order, block_kind, block_session)
    plan, scale = _prepare(q, k, v, spec, mask_type, q_start, k_start, softmax_scale, False, configs, plan)
    return _fwd(_contig(q), _contig(k), _contig(v), plan.attrs, plan.wl_fwd, scale, plan.cfgs.fwd)
