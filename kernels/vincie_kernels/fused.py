"""Fused Triton kernels for the element-wise work around an MM-DiT block (forward and backward).

What Megatron-Core's local spec leaves as separate passes over [S, D] / [S, H, Dh] activations:

* ``norm_modulate(x, mods, blk, shift_idx, scale_idx, eps, rms)``:
  ``norm(x) * (1 + mods[blk, scale_idx]) + mods[blk, shift_idx]`` with a weightless LayerNorm
  (``rms=False``) or RMSNorm (``rms=True``, the official variant's pre-norm). The modulation row of
  each token's block is gathered inside the kernel: no [S, 6, D] tensor is materialised.
* ``gated_residual(x, y, mods, blk, gate_idx)``: ``x + mods[blk, gate_idx] * y``.
* ``qk_norm_rope(x, weight, cos, sin, eps)``: per-head RMSNorm with a weight (torch.nn.RMSNorm, what
  Megatron's WrappedTorchNorm builds) followed by the pairwise RoPE of ``model/embeddings.apply_rope``.

All statistics and arithmetic are fp32 (inputs fp32, bf16 or fp16); each output is rounded once to the
input's dtype. Any S (0 included), D up to 8192, head dims up to 512 (even).

Gradients of ``mods`` are per-block sums over tokens. Each backward program owns a tile of rows and,
for every block id between the tile's smallest and largest, sums its rows in registers and adds the
result to an fp32 [nb, C, D] buffer with one atomic add per column. Tokens of a block are contiguous
runs in the packed layout (``packed/batch.py``: blocks are consecutive spans of the joint sequence, so
each stream's ``stream_blocks`` is non-decreasing), so a tile spans one or a few ids; any order stays
correct, only slower. The atomics make the summation order, and so the last bits of d(mods), vary from
run to run on a GPU. The QK weight gradient is written as per-program partial rows and summed by torch.

Row counts (S, S * H) are left out of Triton's specialisation (``do_not_specialize``): a new sequence
length must not compile the kernels again (tests/kernels/test_no_recompile.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["norm_modulate", "gated_residual", "qk_norm_rope",
           "NormModulateFunction", "GatedResidualFunction", "QKNormRopeFunction"]

MAX_D = 8192
MAX_HEAD_DIM = 512
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- kernels
# x, y, dy are [S, D] with unit stride on D; mods [nb, C, D] contiguous; blk int64 [S].

@triton.jit
def _block_sums_add(dst_ptr, stride_nb, b, rmask, v, cols, cmask):
    """Add the column sums of the rows of ``v`` [BS, BD] whose block id ``b`` [BS] is the same, one
    atomic add per (block id, column) into ``dst_ptr + id * stride_nb + cols``."""
    b_lo = tl.min(tl.where(rmask, b, 2147483647), 0)
    b_hi = tl.max(tl.where(rmask, b, -1), 0)
    for bb in range(b_lo, b_hi + 1):
        sel = rmask & (b == bb)
        if tl.sum(sel.to(tl.int32), 0) > 0:
            part = tl.sum(tl.where(sel[:, None], v, 0.0), 0)
            tl.atomic_add(dst_ptr + bb * stride_nb + cols, part, mask=cmask)


@triton.jit(do_not_specialize=["S"])
def _norm_modulate_fwd(x_ptr, mods_ptr, blk_ptr, y_ptr, mean_ptr, rstd_ptr, S, D, stride_x, stride_y,
                       stride_mb, stride_mc, SHIFT, SCALE, eps,
                       IS_RMS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_D)
    rmask, cmask = rows < S, cols < D
    m2 = rmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    if IS_RMS:
        mean = tl.zeros([BLOCK_S], dtype=tl.float32)
    else:
        mean = tl.sum(x, 1) / D
    xc = tl.where(m2, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
    xhat = xc * rstd[:, None]
    b = tl.load(blk_ptr + rows, mask=rmask, other=0)
    mrow = mods_ptr + b[:, None] * stride_mb + cols[None, :]
    shift = tl.load(mrow + SHIFT * stride_mc, mask=m2, other=0.0).to(tl.float32)
    scale = tl.load(mrow + SCALE * stride_mc, mask=m2, other=0.0).to(tl.float32)
    y = xhat * (1.0 + scale) + shift
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def _norm_modulate_bwd_chunk(x_ptr, dy_ptr, mods_ptr, rows, rmask, b, mean, rstd, d0, D, stride_x, stride_dy,
                             stride_mb, stride_mc, SCALE, BLOCK_DC: tl.constexpr):
    """One column chunk of the backward's rows: its columns and mask, dy, the normalised x and
    g = d(norm(x)) = dy * (1 + scale). Both passes of ``_norm_modulate_bwd`` read it."""
    cols = d0 + tl.arange(0, BLOCK_DC)
    cmask = cols < D
    m2 = rmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    scale = tl.load(mods_ptr + b[:, None] * stride_mb + SCALE * stride_mc + cols[None, :], mask=m2,
                    other=0.0).to(tl.float32)
    xhat = tl.where(m2, (x - mean[:, None]) * rstd[:, None], 0.0)
    return cols, cmask, m2, dy, xhat, dy * (1.0 + scale)


@triton.jit(do_not_specialize=["S"])
def _norm_modulate_bwd(x_ptr, dy_ptr, mods_ptr, blk_ptr, mean_ptr, rstd_ptr, dx_ptr, dmods_ptr, S, D,
                       stride_x, stride_dy, stride_dx, stride_mb, stride_mc, stride_db, stride_dc, SHIFT, SCALE,
                       IS_RMS: tl.constexpr, MODS_GRAD: tl.constexpr,
                       BLOCK_S: tl.constexpr, BLOCK_DC: tl.constexpr):
    """Two passes over column chunks of BLOCK_S rows: the row sums dx needs, then dx and the per-block
    d(shift), d(scale) sums. Many rows per program keep the atomic adds few (one per block and column)."""
    rows = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    rmask = rows < S
    mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
    b = tl.load(blk_ptr + rows, mask=rmask, other=0)
    c1 = tl.zeros([BLOCK_S], dtype=tl.float32)
    c2 = tl.zeros([BLOCK_S], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_DC):
        cols, cmask, m2, dy, xhat, g = _norm_modulate_bwd_chunk(x_ptr, dy_ptr, mods_ptr, rows, rmask, b, mean, rstd,
                                                                d0, D, stride_x, stride_dy, stride_mb, stride_mc,
                                                                SCALE, BLOCK_DC)
        c1 += tl.sum(g, 1)
        c2 += tl.sum(g * xhat, 1)
    c1 = c1 / D
    c2 = c2 / D
    for d0 in range(0, D, BLOCK_DC):
        cols, cmask, m2, dy, xhat, g = _norm_modulate_bwd_chunk(x_ptr, dy_ptr, mods_ptr, rows, rmask, b, mean, rstd,
                                                                d0, D, stride_x, stride_dy, stride_mb, stride_mc,
                                                                SCALE, BLOCK_DC)
        if IS_RMS:
            dx = rstd[:, None] * (g - xhat * c2[:, None])
        else:
            dx = rstd[:, None] * (g - c1[:, None] - xhat * c2[:, None])
        tl.store(dx_ptr + rows[:, None] * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)
        if MODS_GRAD:
            _block_sums_add(dmods_ptr + SHIFT * stride_dc, stride_db, b, rmask, dy, cols, cmask)
            _block_sums_add(dmods_ptr + SCALE * stride_dc, stride_db, b, rmask, dy * xhat, cols, cmask)


@triton.jit(do_not_specialize=["S"])
def _gated_residual_fwd(x_ptr, y_ptr, mods_ptr, blk_ptr, out_ptr, S, D, stride_x, stride_y, stride_o,
                        stride_mb, stride_mc, GATE, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_D)
    rmask, cmask = rows < S, cols < D
    m2 = rmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    b = tl.load(blk_ptr + rows, mask=rmask, other=0)
    gate = tl.load(mods_ptr + b[:, None] * stride_mb + GATE * stride_mc + cols[None, :], mask=m2,
                   other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], (x + gate * y).to(out_ptr.dtype.element_ty),
             mask=m2)


@triton.jit(do_not_specialize=["S"])
def _gated_residual_bwd(dout_ptr, y_ptr, mods_ptr, blk_ptr, dy_ptr, dmods_ptr, S, D, stride_do, stride_y,
                        stride_dy, stride_mb, stride_mc, stride_db, GATE,
                        Y_GRAD: tl.constexpr, MODS_GRAD: tl.constexpr,
                        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (row tiles, column chunks): element-wise, so tall tiles cost nothing and keep atomics few."""
    rows = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask, cmask = rows < S, cols < D
    m2 = rmask[:, None] & cmask[None, :]
    do = tl.load(dout_ptr + rows[:, None] * stride_do + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    b = tl.load(blk_ptr + rows, mask=rmask, other=0)
    if Y_GRAD:
        gate = tl.load(mods_ptr + b[:, None] * stride_mb + GATE * stride_mc + cols[None, :], mask=m2,
                       other=0.0).to(tl.float32)
        tl.store(dy_ptr + rows[:, None] * stride_dy + cols[None, :], (do * gate).to(dy_ptr.dtype.element_ty),
                 mask=m2)
    if MODS_GRAD:
        y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        _block_sums_add(dmods_ptr, stride_db, b, rmask, do * y, cols, cmask)


# x [S, H, Dh] with strides (stride_s, stride_h, 1); out/dout/dx contiguous [S, H, Dh]; cos/sin [S, Dh/2].
# Rows r of the flattened (S * H) are (s, h) = (r // H, r % H); channel pairs (2j, 2j + 1) rotate by angle j.

@triton.jit(do_not_specialize=["R"])
def _qk_norm_rope_fwd(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, rstd_ptr, R, H, HALF, stride_s, stride_h,
                      stride_cs, eps, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, BLOCK_J)
    rmask, jmask = rows < R, j < HALF
    m2 = rmask[:, None] & jmask[None, :]
    s, h = rows // H, rows % H
    src = x_ptr + (s * stride_s + h * stride_h)[:, None] + 2 * j[None, :]
    x0 = tl.load(src, mask=m2, other=0.0).to(tl.float32)
    x1 = tl.load(src + 1, mask=m2, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(x0 * x0, 1) + tl.sum(x1 * x1, 1)) / (2 * HALF) + eps)
    w0 = tl.load(w_ptr + 2 * j, mask=jmask, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + 2 * j + 1, mask=jmask, other=0.0).to(tl.float32)
    n0 = x0 * rstd[:, None] * w0[None, :]
    n1 = x1 * rstd[:, None] * w1[None, :]
    cs_off = s[:, None] * stride_cs + j[None, :]
    c = tl.load(cos_ptr + cs_off, mask=m2, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + cs_off, mask=m2, other=0.0).to(tl.float32)
    dst = out_ptr + rows[:, None] * (2 * HALF) + 2 * j[None, :]
    tl.store(dst, (n0 * c - n1 * sn).to(out_ptr.dtype.element_ty), mask=m2)
    tl.store(dst + 1, (n0 * sn + n1 * c).to(out_ptr.dtype.element_ty), mask=m2)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit(do_not_specialize=["R"])
def _qk_norm_rope_bwd(x_ptr, w_ptr, cos_ptr, sin_ptr, rstd_ptr, dout_ptr, dx_ptr, dw_part_ptr, R, H, HALF,
                      stride_s, stride_h, stride_cs, W_GRAD: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, BLOCK_J)
    rmask, jmask = rows < R, j < HALF
    m2 = rmask[:, None] & jmask[None, :]
    s, h = rows // H, rows % H
    src = x_ptr + (s * stride_s + h * stride_h)[:, None] + 2 * j[None, :]
    x0 = tl.load(src, mask=m2, other=0.0).to(tl.float32)
    x1 = tl.load(src + 1, mask=m2, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
    w0 = tl.load(w_ptr + 2 * j, mask=jmask, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + 2 * j + 1, mask=jmask, other=0.0).to(tl.float32)
    cs_off = s[:, None] * stride_cs + j[None, :]
    c = tl.load(cos_ptr + cs_off, mask=m2, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + cs_off, mask=m2, other=0.0).to(tl.float32)
    do_off = rows[:, None] * (2 * HALF) + 2 * j[None, :]
    do0 = tl.load(dout_ptr + do_off, mask=m2, other=0.0).to(tl.float32)
    do1 = tl.load(dout_ptr + do_off + 1, mask=m2, other=0.0).to(tl.float32)
    dn0 = do0 * c + do1 * sn                                 # the transpose of the rotation
    dn1 = do1 * c - do0 * sn
    xh0 = x0 * rstd[:, None]
    xh1 = x1 * rstd[:, None]
    if W_GRAD:
        part = dw_part_ptr + pid * (2 * HALF) + 2 * j
        tl.store(part, tl.sum(dn0 * xh0, 0), mask=jmask)
        tl.store(part + 1, tl.sum(dn1 * xh1, 0), mask=jmask)
    g0 = dn0 * w0[None, :]
    g1 = dn1 * w1[None, :]
    c2 = (tl.sum(g0 * xh0, 1) + tl.sum(g1 * xh1, 1)) / (2 * HALF)
    tl.store(dx_ptr + do_off, (rstd[:, None] * (g0 - xh0 * c2[:, None])).to(dx_ptr.dtype.element_ty), mask=m2)
    tl.store(dx_ptr + do_off + 1, (rstd[:, None] * (g1 - xh1 * c2[:, None])).to(dx_ptr.dtype.element_ty), mask=m2)


# ----------------------------------------------------------------------------- launch helpers

def _row_tiles(D: int, block_s: int | None) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_D): whole rows per program, about 4k elements per tile (the forward)."""
    block_d = triton.next_power_of_2(D)
    if block_s is None:
        block_s = max(1, min(16, 4096 // block_d))
    return block_s, block_d


def _bwd_tiles(D: int, block_s: int | None, block_dc: int | None) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_DC) of the backward kernels: tall tiles of column chunks, so a block's rows are summed
    in registers and the atomic adds into d(mods) number about S / BLOCK_S per column."""
    return (32 if block_s is None else block_s), (min(triton.next_power_of_2(D), 128) if block_dc is None else block_dc)


def _warps(elements: int) -> int:
    return 8 if elements >= 4096 else 4


def _check_rows(name: str, x: torch.Tensor, mods: torch.Tensor, blk: torch.Tensor, *chunks: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name}: x must be [S, D], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name}: x dtype must be float32/bfloat16/float16, got {x.dtype}")
    if x.shape[1] > MAX_D:
        raise ValueError(f"{name}: D={x.shape[1]} exceeds the supported {MAX_D}")
    if mods.dim() != 3 or mods.shape[2] != x.shape[1]:
        raise ValueError(f"{name}: mods must be [nb, C, D={x.shape[1]}], got shape {tuple(mods.shape)}")
    if blk.shape != (x.shape[0],) or blk.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: blk must be an int64/int32 [S={x.shape[0]}] vector of block ids, "
                         f"got {blk.dtype} {tuple(blk.shape)}")
    for c in chunks:
        if not 0 <= c < mods.shape[1]:
            raise ValueError(f"{name}: chunk index {c} outside mods' {mods.shape[1]} chunks")
    if not (x.device == mods.device == blk.device):
        raise ValueError(f"{name}: x, mods and blk must share a device, got {x.device}, {mods.device}, {blk.device}")


# ----------------------------------------------------------------------------- autograd Functions

class NormModulateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mods, blk, shift_idx, scale_idx, eps, rms, block_s, block_dc):
        S, D = x.shape
        x, mods, blk = x.contiguous(), mods.contiguous(), blk.contiguous()
        y = torch.empty_like(x)
        mean = torch.empty(S, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        BS, BD = _row_tiles(D, block_s)
        if S:
            _norm_modulate_fwd[(triton.cdiv(S, BS),)](
                x, mods, blk, y, mean, rstd, S, D, x.stride(0), y.stride(0), mods.stride(0), mods.stride(1),
                shift_idx, scale_idx, eps, IS_RMS=rms, BLOCK_S=BS, BLOCK_D=BD, num_warps=_warps(BS * BD))
        ctx.save_for_backward(x, mods, blk, mean, rstd)
        ctx.cfg = (shift_idx, scale_idx, rms, *_bwd_tiles(D, block_s, block_dc))
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mods, blk, mean, rstd = ctx.saved_tensors
        shift_idx, scale_idx, rms, BS, BDC = ctx.cfg
        S, D = x.shape
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        mods_grad = ctx.needs_input_grad[1]
        dmods = torch.zeros(mods.shape, dtype=torch.float32, device=x.device) if mods_grad else None
        if S:
            dm = dmods if mods_grad else rstd        # any pointer: the MODS_GRAD=False branch never touches it
            _norm_modulate_bwd[(triton.cdiv(S, BS),)](
                x, dy, mods, blk, mean, rstd, dx, dm, S, D, x.stride(0), dy.stride(0), dx.stride(0),
                mods.stride(0), mods.stride(1), dmods.stride(0) if mods_grad else 0,
                dmods.stride(1) if mods_grad else 0, shift_idx, scale_idx,
                IS_RMS=rms, MODS_GRAD=mods_grad, BLOCK_S=BS, BLOCK_DC=BDC, num_warps=_warps(BS * BDC))
        return dx, (dmods.to(mods.dtype) if mods_grad else None), None, None, None, None, None, None, None


class GatedResidualFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, mods, blk, gate_idx, block_s, block_dc):
        S, D = x.shape
        x, y, mods, blk = x.contiguous(), y.contiguous(), mods.contiguous(), blk.contiguous()
        out = torch.empty_like(x)
        BS, BD = _row_tiles(D, block_s)
        if S:
            _gated_residual_fwd[(triton.cdiv(S, BS),)](
                x, y, mods, blk, out, S, D, x.stride(0), y.stride(0), out.stride(0), mods.stride(0), mods.stride(1),
                gate_idx, BLOCK_S=BS, BLOCK_D=BD, num_warps=_warps(BS * BD))
        ctx.save_for_backward(y, mods, blk)
        ctx.cfg = (gate_idx, *_bwd_tiles(D, block_s, block_dc), x.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        y, mods, blk = ctx.saved_tensors
        gate_idx, BS, BDC, x_dtype = ctx.cfg
        S, D = y.shape
        dout = dout.contiguous()
        _, y_grad, mods_grad = ctx.needs_input_grad[:3]
        dy = torch.empty_like(y) if y_grad else None
        dmods = torch.zeros(mods.shape, dtype=torch.float32, device=y.device) if mods_grad else None
        if S and (y_grad or mods_grad):
            _gated_residual_bwd[(triton.cdiv(S, BS), triton.cdiv(D, BDC))](
                dout, y, mods, blk, dy if y_grad else dout, dmods[:, gate_idx] if mods_grad else dout, S, D,
                dout.stride(0), y.stride(0), dy.stride(0) if y_grad else 0, mods.stride(0), mods.stride(1),
                dmods.stride(0) if mods_grad else 0, gate_idx,
                Y_GRAD=y_grad, MODS_GRAD=mods_grad, BLOCK_S=BS, BLOCK_D=BDC, num_warps=_warps(BS * BDC))
        dx = dout.to(x_dtype) if ctx.needs_input_grad[0] else None
        return dx, dy, (dmods.to(mods.dtype) if mods_grad else None), None, None, None, None


class QKNormRopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, cos, sin, eps, block_r):
        S, H, Dh = x.shape
        if x.stride(2) != 1:
            x = x.contiguous()
        cos, sin, weight = cos.contiguous(), sin.contiguous(), weight.contiguous()
        out = torch.empty(S, H, Dh, dtype=x.dtype, device=x.device)
        rstd = torch.empty(S * H, dtype=torch.float32, device=x.device)
        BR, BJ = block_r, triton.next_power_of_2(Dh // 2)
        if S * H:
            _qk_norm_rope_fwd[(triton.cdiv(S * H, BR),)](
                x, weight, cos, sin, out, rstd, S * H, H, Dh // 2, x.stride(0), x.stride(1), cos.stride(0), eps,
                BLOCK_R=BR, BLOCK_J=BJ)
        ctx.save_for_backward(x, weight, cos, sin, rstd)
        ctx.cfg = (BR, BJ)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, cos, sin, rstd = ctx.saved_tensors
        BR, BJ = ctx.cfg
        S, H, Dh = x.shape
        dout = dout.contiguous()
        dx = torch.empty(S, H, Dh, dtype=x.dtype, device=x.device)
        w_grad = ctx.needs_input_grad[1]
        n_prog = triton.cdiv(S * H, BR)
        parts = torch.zeros(max(n_prog, 1), Dh, dtype=torch.float32, device=x.device) if w_grad else None
        if S * H:
            _qk_norm_rope_bwd[(n_prog,)](
                x, weight, cos, sin, rstd, dout, dx, parts if w_grad else rstd, S * H, H, Dh // 2,
                x.stride(0), x.stride(1), cos.stride(0), W_GRAD=w_grad, BLOCK_R=BR, BLOCK_J=BJ)
        dw = parts.sum(0).to(weight.dtype) if w_grad else None
        return dx, dw, None, None, None, None


# ----------------------------------------------------------------------------- entry points

def norm_modulate(x: torch.Tensor, mods: torch.Tensor, blk: torch.Tensor, shift_idx: int, scale_idx: int,
                  eps: float, rms: bool = False, block_s: int | None = None,
                  block_dc: int | None = None) -> torch.Tensor:
    """x [S, D], mods [nb, C, D], blk [S] -> norm(x) * (1 + mods[blk, scale_idx]) + mods[blk, shift_idx].

    norm: weightless LayerNorm, or RMSNorm with ``rms``. Differentiable in x and mods.
    ``block_s``: rows per program (None: about 4k elements per forward tile, 32 rows in backward);
    ``block_dc``: the backward's column chunk (None: up to 128).
    """
    _check_rows("norm_modulate", x, mods, blk, shift_idx, scale_idx)
    if not eps > 0:
        raise ValueError(f"norm_modulate: eps must be > 0, got {eps!r}")
    return NormModulateFunction.apply(x, mods, blk, int(shift_idx), int(scale_idx), float(eps), bool(rms), block_s,
                                      block_dc)


def gated_residual(x: torch.Tensor, y: torch.Tensor, mods: torch.Tensor, blk: torch.Tensor, gate_idx: int,
                   block_s: int | None = None, block_dc: int | None = None) -> torch.Tensor:
    """x, y [S, D], mods [nb, C, D], blk [S] -> x + mods[blk, gate_idx] * y (differentiable in x, y, mods)."""
    _check_rows("gated_residual", x, mods, blk, gate_idx)
    if y.shape != x.shape or y.dtype != x.dtype:
        raise ValueError(f"gated_residual: y must match x ({x.dtype} {tuple(x.shape)}), got {y.dtype} {tuple(y.shape)}")
    return GatedResidualFunction.apply(x, y, mods, blk, int(gate_idx), block_s, block_dc)


def qk_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
                 block_r: int = 16) -> torch.Tensor:
    """x [S, H, Dh] (any strides with unit channel stride), weight [Dh], cos/sin [S, Dh/2] ->
    rope(rms_norm(x) * weight) [S, H, Dh] contiguous, in x's dtype. Differentiable in x and weight
    (the RoPE tables are constants)."""
    if x.dim() != 3 or x.shape[2] % 2 or not 2 <= x.shape[2] <= MAX_HEAD_DIM:
        raise ValueError(f"qk_norm_rope: x must be [S, H, Dh] with even Dh <= {MAX_HEAD_DIM}, got {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"qk_norm_rope: x dtype must be float32/bfloat16/float16, got {x.dtype}")
    S, H, Dh = x.shape
    if weight.shape != (Dh,):
        raise ValueError(f"qk_norm_rope: weight must be [Dh={Dh}], got {tuple(weight.shape)}")
    if cos.shape != (S, Dh // 2) or sin.shape != cos.shape:
        raise ValueError(f"qk_norm_rope: cos/sin must be [S={S}, Dh/2={Dh // 2}], got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}")
    if not eps > 0:
        raise ValueError(f"qk_norm_rope: eps must be > 0, got {eps!r}")
    return QKNormRopeFunction.apply(x, weight, cos, sin, float(eps), int(block_r))
