"""Per-token mask attributes and per-tile work lists, built on the device from the compact spec.

The mask rule (``kernels/vincie_kernels/reference.py``) is rewritten per token as three int32s,
so that one element test serves both mask types:

    visible(q, k) = sess[q] == sess[k] and (blk[q] == blk[k] or key_rank[k] <= query_limit[q])

    block_causal:  query_limit = order - (kind == NOISY)   (noisy q sees strictly earlier orders)
                   key_rank    = order, or INT32_MAX if the key is noisy (noisy keys only via same block)
    full:          query_limit = INT32_MAX, key_rank = 0   (everything in the session)

A (query tile, key tile) pair is then classified from the min/max of those
attributes inside each tile:

    skip     no pair can be visible: session ranges disjoint, or block ranges
             disjoint and min(key_rank) > max(query_limit). Exact-safe.
    full     every pair is visible: one session on both sides, equal, and either
             max(key_rank) <= min(query_limit) or both tiles lie in one same block;
             and the key tile is complete (no padding keys). Exact-safe.
    partial  anything else; the kernel evaluates the element test. Always safe.

Cost: O(S) for the token attributes and tile summaries, O(Tq * Tk) small integer
ops for the classification (Tq = ceil(Sq / block_m)); no S x S tensor and no
host synchronisation, so building is asynchronous on a GPU. On CUDA the same
lists come from four small Triton kernels plus a few torch ops (see "fused GPU
build" below); the plain torch path serves CPU tensors and is the reference.

Work lists are stored as *runs* of consecutive tiles, padded per row ("ELL"):
for each query tile, the [start, end) key-tile ranges of its full tiles and of
its partial tiles. A kernel loops over runs, then over the tiles of a run; the
inner loop's addresses are affine in its index, so Triton software-pipelines the
K/V loads (a flat list of tile indices makes every load indirect, and Triton
then does not pipeline them). The visible key tiles of a block-causal row form
a few long runs (whole images). The transposed runs (for each key tile, its
query tiles) feed the dK/dV backward. ``perm`` lists row tiles by decreasing
work so the heaviest programs start first.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vincie_kernels.reference import KIND_NOISY, MASK_TYPES

INT32_MAX = 2**31 - 1

__all__ = ["TokenAttrs", "TileRuns", "WorkLists", "token_attributes", "build_worklists", "classify_tiles",
           "first_difference", "SKIP", "PARTIAL", "FULL"]

SKIP, PARTIAL, FULL = 0, 1, 2


@dataclass
class TokenAttrs:
    """Per-token int32 attributes of a query slice and a key slice of the joint sequence."""
    q_sess: torch.Tensor    # [Sq]
    q_blk: torch.Tensor     # [Sq]
    q_limit: torch.Tensor   # [Sq]
    k_sess: torch.Tensor    # [Sk]
    k_blk: torch.Tensor     # [Sk]
    k_rank: torch.Tensor    # [Sk]


@dataclass
class TileRuns:
    """Runs of consecutive tiles for each row tile (query tiles; key tiles when transposed).

    Row r's full tiles are the union of [full_start[r, i], full_end[r, i]) for i < n_full_runs[r];
    its partial tiles likewise. Runs are sorted and disjoint; the arrays are padded to [R, W].
    """
    full_start: torch.Tensor    # int32 [R, W]
    full_end: torch.Tensor      # int32 [R, W]
    n_full_runs: torch.Tensor   # int32 [R]
    part_start: torch.Tensor    # int32 [R, W]
    part_end: torch.Tensor      # int32 [R, W]
    n_part_runs: torch.Tensor   # int32 [R]
    n_full: torch.Tensor        # int32 [R]  number of full tiles
    n_part: torch.Tensor        # int32 [R]  number of partial tiles
    perm: torch.Tensor          # int32 [R]  rows by decreasing work

    @property
    def width(self) -> int:
        return self.full_start.shape[1]


@dataclass
class WorkLists:
    """Tile work lists for one (block_m, block_n) tiling. See the module docstring."""
    block_m: int
    block_n: int
    num_q_tiles: int
    num_k_tiles: int
    q: TileRuns                 # per query tile: runs of key tiles (forward, dQ)
    k: TileRuns                 # per key tile: runs of query tiles (dK, dV)

    def counts(self) -> dict:
        """Numbers of full / partial / skipped tile pairs and of runs (host sync: for reports only)."""
        n_full, n_part = int(self.q.n_full.sum()), int(self.q.n_part.sum())
        total = self.num_q_tiles * self.num_k_tiles
        return {"full": n_full, "partial": n_part, "skip": total - n_full - n_part, "total": total,
                "q_runs": int(self.q.n_full_runs.sum() + self.q.n_part_runs.sum()),
                "k_runs": int(self.k.n_full_runs.sum() + self.k.n_part_runs.sum())}


def _check_spec(block_offsets, block_order, block_kind, block_session, mask_type):
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    nb = block_order.numel()
    for name, t, n in (("block_offsets", block_offsets, nb + 1), ("block_order", block_order, nb),
                       ("block_kind", block_kind, nb), ("block_session", block_session, nb)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
        if t.dim() != 1 or t.numel() != n:
            raise ValueError(f"{name} must be 1-D with {n} entries (nb = {nb}), got shape {tuple(t.shape)}")
        if t.device != block_offsets.device:
            raise ValueError(f"{name} is on {t.device}, block_offsets on {block_offsets.device}")
    if nb == 0:
        raise ValueError("mask spec has no blocks")


def _check_args(block_offsets, block_order, block_kind, block_session, mask_type, q_start, q_len, k_start, k_len):
    _check_spec(block_offsets, block_order, block_kind, block_session, mask_type)
    if q_start < 0 or k_start < 0 or q_len < 0 or k_len < 0:
        raise ValueError(f"negative slice: q_start={q_start} q_len={q_len} k_start={k_start} k_len={k_len}")
    if block_offsets.device.type == "cpu":   # free to check here; on a GPU it would cost a sync
        S = int(block_offsets[-1])
        if q_start + q_len > S or k_start + k_len > S:
            raise ValueError(f"slice beyond the spec's sequence length {S}: "
                             f"queries end at {q_start + q_len}, keys at {k_start + k_len}")


def token_attributes(block_offsets, block_order, block_kind, block_session, mask_type: str,
                     q_start: int, q_len: int, k_start: int, k_len: int) -> TokenAttrs:
    """O(S) per-token attributes for queries [q_start, q_start+q_len) and keys [k_start, k_start+k_len)."""
    _check_args(block_offsets, block_order, block_kind, block_session, mask_type, q_start, q_len, k_start, k_len)
    dev = block_offsets.device

    def per_token(start, length):
        pos = torch.arange(start, start + length, device=dev, dtype=torch.int32)
        # right=True: among empty blocks sharing an offset, the last (non-empty) one owns the token
        blk = (torch.searchsorted(block_offsets, pos, right=True) - 1).to(torch.int32)   # (L,)
        blk = blk.clamp_(0, block_order.numel() - 1)
        blk_l = blk.long()
        return blk, block_order[blk_l], block_kind[blk_l] == KIND_NOISY, block_session[blk_l]

    q_blk, q_order, q_noisy, q_sess = per_token(q_start, q_len)
    k_blk, k_order, k_noisy, k_sess = per_token(k_start, k_len)
    if mask_type == "full":
        q_limit = torch.full_like(q_order, INT32_MAX)
        k_rank = torch.zeros_like(k_order)
    else:
        q_limit = q_order - q_noisy.to(torch.int32)
        k_rank = torch.where(k_noisy, torch.full_like(k_order, INT32_MAX), k_order)
    return TokenAttrs(q_sess.contiguous(), q_blk.contiguous(), q_limit.contiguous(),
                      k_sess.contiguous(), k_blk.contiguous(), k_rank.contiguous())


def _tile_minmax(x: torch.Tensor, tile: int):
    """[n, L] -> ([n, T], [n, T]) min and max per tile of each row; the last tile is padded by repeating
    its last value. One stacked pass for all of a side's attributes: the torch build is launch-bound."""
    n, L = x.shape
    T = (L + tile - 1) // tile
    pad = T * tile - L
    if pad:
        x = torch.cat([x, x[:, -1:].expand(n, pad)], dim=1)
    return torch.aminmax(x.view(n, T, tile), dim=2)                           # (n, T) each


def classify_tiles(attrs: TokenAttrs, block_m: int, block_n: int) -> torch.Tensor:
    """[Tq, Tk] int8 of SKIP / PARTIAL / FULL (see module docstring). O(S + Tq*Tk)."""
    Sq, Sk = attrs.q_sess.numel(), attrs.k_sess.numel()
    if Sq == 0 or Sk == 0:
        return torch.zeros(((Sq + block_m - 1) // block_m, (Sk + block_n - 1) // block_n),
                           dtype=torch.int8, device=attrs.q_sess.device)
    q_lo, q_hi = _tile_minmax(torch.stack([attrs.q_sess, attrs.q_blk, attrs.q_limit]), block_m)   # (3, Tq)
    k_lo, k_hi = _tile_minmax(torch.stack([attrs.k_sess, attrs.k_blk, attrs.k_rank]), block_n)    # (3, Tk)
    (qs_lo, qb_lo, ql_lo), (qs_hi, qb_hi, ql_hi) = q_lo[:, :, None], q_hi[:, :, None]          # (Tq, 1) each
    (ks_lo, kb_lo, kr_lo), (ks_hi, kb_hi, kr_hi) = k_lo[:, None, :], k_hi[:, None, :]          # (1, Tk) each
    Tk = kr_lo.shape[1]
    k_complete = (torch.arange(Tk, device=kr_lo.device) + 1) * block_n <= Sk  # (Tk,)

    sess_disjoint = (qs_hi < ks_lo) | (ks_hi < qs_lo)                           # (Tq, Tk)
    blk_disjoint = (qb_hi < kb_lo) | (kb_hi < qb_lo)
    skip = sess_disjoint | (blk_disjoint & (kr_lo > ql_hi))
    one_session = (qs_lo == qs_hi) & (ks_lo == ks_hi) & (qs_lo == ks_lo)
    one_block = (qb_lo == qb_hi) & (kb_lo == kb_hi) & (qb_lo == kb_lo)
    full = one_session & ((kr_hi <= ql_lo) | one_block) & k_complete[None, :]
    cls = torch.full(skip.shape, PARTIAL, dtype=torch.int8, device=skip.device)
    cls.masked_fill_(full, FULL)
    cls.masked_fill_(skip, SKIP)
    return cls


def _runs(is_c: torch.Tensor, width: int):
    """[..., R, C] bool -> (start [..., R, W], end [..., R, W], count [..., R]): maximal runs of True,
    sorted, zero-padded."""
    C = is_c.shape[-1]
    pad = torch.zeros_like(is_c[..., :1])
    prev = torch.cat([pad, is_c[..., :-1]], dim=-1)                            # (..., R, C)
    nxt = torch.cat([is_c[..., 1:], pad], dim=-1)
    col = torch.arange(C, device=is_c.device, dtype=torch.int32)
    starts, ends = is_c & ~prev, is_c & ~nxt                                   # run starts, run ends (inclusive)
    # marked columns moved to the front of each row, in order: a sort of unique keys, no host sync; starts
    # and ends sorted in one call
    key = torch.where(torch.stack([starts, ends]), col, col + C)              # (2, ..., R, C)
    found = torch.sort(key, dim=-1).values[..., :width]                       # (2, ..., R, W)
    count = starts.sum(dim=-1, dtype=torch.int32)
    valid = torch.arange(width, device=is_c.device) < count[..., None]
    start = torch.where(valid, found[0], 0).to(torch.int32)
    end = torch.where(valid, found[1] + 1, 0).to(torch.int32)
    return start, end, count


def _tile_runs(cls: torch.Tensor) -> TileRuns:
    """[R, C] classes -> TileRuns (runs of full and of partial tiles per row)."""
    R, C = cls.shape
    width = max(1, (C + 1) // 2)            # at most ceil(C/2) disjoint runs of one class per row
    is_c = torch.stack([cls == FULL, cls == PARTIAL])                          # (2, R, C): both classes at once
    start, end, nruns = _runs(is_c, width)
    n = is_c.sum(dim=2, dtype=torch.int32)                                     # (2, R) tiles per row
    # heaviest rows first (partial tiles cost a little more); stable for determinism
    perm = torch.argsort(-(n[0] + 2 * n[1]), stable=True).to(torch.int32)
    # the full-tile lists are views at offset 0; the partial ones are copied, as a view at offset R * W
    # int32s would change its 16-byte alignment with the length (and recompile the kernels)
    return TileRuns(start[0], end[0], nruns[0], start[1].clone(), end[1].clone(), nruns[1].clone(), n[0], n[1].clone(),
                    perm)


# ----------------------------------------------------------------------------- fused GPU build
# The torch path above is ~130 small ops a tiling (191 before the side and class stacking; launch-bound:
# ~4 ms a tiling on an H200 at 191, whatever S is). On CUDA the
# same lists come from 2 Triton launches per direction plus a zero-fill and an argsort: one kernel
# turns token positions into attributes and per-tile min/max, one walks each row's tiles in chunks,
# classifies them and scatters run starts/ends at their prefix-sum positions. Same output, bit for
# bit (tests/kernels/test_worklist.py compares the two under the interpreter).

_CHUNK = 256    # tiles of a row classified per step (fixed: a new S must not recompile)


@triton.jit(do_not_specialize=["start", "length", "nb", "n_steps", "n_tiles"])
def _tile_attr_kernel(OFF, ORDER, KIND, SESS, A_SESS, A_BLK, A_THIRD, MM,
                      start, length, nb, n_steps, n_tiles,
                      IS_QUERY: tl.constexpr, FULL_MASK: tl.constexpr, NOISY: tl.constexpr, TILE: tl.constexpr):
    """Tokens of one tile -> sess, blk, limit (queries) or rank (keys); MM [6, n_tiles] gets their min/max."""
    t = tl.program_id(0)
    i = t * TILE + tl.arange(0, TILE)
    valid = i < length
    pos = start + i
    # searchsorted(OFF, pos, right=True) as a branch-free binary search over the nb + 1 offsets
    lo = tl.zeros([TILE], tl.int32)
    hi = tl.zeros([TILE], tl.int32) + (nb + 1)
    for _ in range(n_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        le = tl.load(OFF + mid, mask=active & valid, other=0) <= pos
        lo = tl.where(active & le, mid + 1, lo)
        hi = tl.where(active & ~le, mid, hi)
    blk = tl.minimum(tl.maximum(lo - 1, 0), nb - 1)
    order = tl.load(ORDER + blk, mask=valid, other=0)
    noisy = tl.load(KIND + blk, mask=valid, other=0) == NOISY
    sess = tl.load(SESS + blk, mask=valid, other=0)
    if IS_QUERY:
        if FULL_MASK:
            third = tl.zeros([TILE], tl.int32) + 2147483647
        else:
            third = order - noisy.to(tl.int32)
    else:
        if FULL_MASK:
            third = tl.zeros([TILE], tl.int32)
        else:
            third = tl.where(noisy, 2147483647, order)
    tl.store(A_SESS + i, sess, mask=valid)
    tl.store(A_BLK + i, blk, mask=valid)
    tl.store(A_THIRD + i, third, mask=valid)
    big, small = 2147483647, -2147483648
    tl.store(MM + t, tl.min(tl.where(valid, sess, big), 0))
    tl.store(MM + n_tiles + t, tl.max(tl.where(valid, sess, small), 0))
    tl.store(MM + 2 * n_tiles + t, tl.min(tl.where(valid, blk, big), 0))
    tl.store(MM + 3 * n_tiles + t, tl.max(tl.where(valid, blk, small), 0))
    tl.store(MM + 4 * n_tiles + t, tl.min(tl.where(valid, third, big), 0))
    tl.store(MM + 5 * n_tiles + t, tl.max(tl.where(valid, third, small), 0))


@triton.jit
def _classify(qs_lo, qs_hi, qb_lo, qb_hi, ql_lo, ql_hi, ks_lo, ks_hi, kb_lo, kb_hi, kr_lo, kr_hi, k_complete):
    """classify_tiles' rule on broadcast tile stats -> SKIP 0 / PARTIAL 1 / FULL 2."""
    sess_disjoint = (qs_hi < ks_lo) | (ks_hi < qs_lo)
    blk_disjoint = (qb_hi < kb_lo) | (kb_hi < qb_lo)
    skip = sess_disjoint | (blk_disjoint & (kr_lo > ql_hi))
    one_session = (qs_lo == qs_hi) & (ks_lo == ks_hi) & (qs_lo == ks_lo)
    one_block = (qb_lo == qb_hi) & (kb_lo == kb_hi) & (qb_lo == kb_lo)
    full = one_session & ((kr_hi <= ql_lo) | one_block) & k_complete
    return tl.where(skip, 0, tl.where(full, 2, 1))


@triton.jit
def _col_class(ROW_MM, COL_MM, r, c, R, C, Sk, block_n, ROWS_ARE_Q: tl.constexpr):
    """Classes of row tile r against column tiles c ([CHUNK]); columns outside [0, C) give SKIP."""
    ok = (c >= 0) & (c < C)
    a0 = tl.load(ROW_MM + r)
    a1 = tl.load(ROW_MM + R + r)
    a2 = tl.load(ROW_MM + 2 * R + r)
    a3 = tl.load(ROW_MM + 3 * R + r)
    a4 = tl.load(ROW_MM + 4 * R + r)
    a5 = tl.load(ROW_MM + 5 * R + r)
    b0 = tl.load(COL_MM + c, mask=ok, other=0)
    b1 = tl.load(COL_MM + C + c, mask=ok, other=0)
    b2 = tl.load(COL_MM + 2 * C + c, mask=ok, other=0)
    b3 = tl.load(COL_MM + 3 * C + c, mask=ok, other=0)
    b4 = tl.load(COL_MM + 4 * C + c, mask=ok, other=0)
    b5 = tl.load(COL_MM + 5 * C + c, mask=ok, other=0)
    if ROWS_ARE_Q:
        cls = _classify(a0, a1, a2, a3, a4, a5, b0, b1, b2, b3, b4, b5, (c + 1) * block_n <= Sk)
    else:
        cls = _classify(b0, b1, b2, b3, b4, b5, a0, a1, a2, a3, a4, a5, (r + 1) * block_n <= Sk)
    return tl.where(ok, cls, 0)


@triton.jit
def _emit_runs(cls, cls_prev, cls_next, c, START, END, n_starts, n_ends, n_tiles, KIND: tl.constexpr):
    """Scatter this chunk's run starts / ends of class KIND after those already written. Starts and
    ends are counted apart: a run open across a chunk boundary has its start in one chunk and its end
    in the next, so slot i of END is the i-th end, not (starts so far + i)."""
    is_c = cls == KIND
    st = is_c & (cls_prev != KIND)
    en = is_c & (cls_next != KIND)
    tl.store(START + n_starts + tl.cumsum(st.to(tl.int32), 0) - 1, c, mask=st)
    tl.store(END + n_ends + tl.cumsum(en.to(tl.int32), 0) - 1, c + 1, mask=en)
    return (n_starts + tl.sum(st.to(tl.int32), 0), n_ends + tl.sum(en.to(tl.int32), 0),
            n_tiles + tl.sum(is_c.to(tl.int32), 0))


@triton.jit(do_not_specialize=["R", "C", "W", "Sk", "PLANE", "CSTRIDE"])
def _runs_kernel(ROW_MM, COL_MM, RUNS, COUNTS, R, C, W, Sk, block_n, PLANE, CSTRIDE,
                 ROWS_ARE_Q: tl.constexpr, CHUNK: tl.constexpr):
    """Row tile r: RUNS [4, PLANE] holding [R, W] each (full start/end, partial start/end); COUNTS
    [5, CSTRIDE] holding [R] each (full runs, partial runs, full tiles, partial tiles, -(full + 2
    partial) as the sort key)."""
    r = tl.program_id(0)
    row = r.to(tl.int64) * W
    plane = PLANE.to(tl.int64)
    nfr = tl.zeros([], tl.int32)
    npr = tl.zeros([], tl.int32)
    nfe = tl.zeros([], tl.int32)
    npe = tl.zeros([], tl.int32)
    nf = tl.zeros([], tl.int32)
    npt = tl.zeros([], tl.int32)
    for c0 in range(0, C, CHUNK):
        c = c0 + tl.arange(0, CHUNK)
        cls = _col_class(ROW_MM, COL_MM, r, c, R, C, Sk, block_n, ROWS_ARE_Q)
        cls_prev = _col_class(ROW_MM, COL_MM, r, c - 1, R, C, Sk, block_n, ROWS_ARE_Q)
        cls_next = _col_class(ROW_MM, COL_MM, r, c + 1, R, C, Sk, block_n, ROWS_ARE_Q)
        nfr, nfe, nf = _emit_runs(cls, cls_prev, cls_next, c, RUNS + row, RUNS + plane + row, nfr, nfe, nf, 2)
        npr, npe, npt = _emit_runs(cls, cls_prev, cls_next, c, RUNS + 2 * plane + row, RUNS + 3 * plane + row,
                                   npr, npe, npt, 1)
    tl.store(COUNTS + r, nfr)
    tl.store(COUNTS + CSTRIDE + r, npr)
    tl.store(COUNTS + 2 * CSTRIDE + r, nf)
    tl.store(COUNTS + 3 * CSTRIDE + r, npt)
    tl.store(COUNTS + 4 * CSTRIDE + r, -(nf + 2 * npt))


def _aligned(n: int) -> int:
    """n rounded up to 4 int32s (16 bytes). Views that start at such offsets of one allocation keep the
    allocation's 16-byte alignment, which Triton's JIT specialises pointers on: a view whose alignment
    changed with the sequence length would recompile the attention kernels at that new length."""
    return (n + 3) // 4 * 4


def _fused_ok(block_m: int, block_n: int) -> bool:
    return all(b >= 16 and b & (b - 1) == 0 for b in (block_m, block_n))


def _tile_attrs_fused(spec, mask_type, start, length, tile, is_query):
    """-> (sess, blk, third) [length] int32 and min/max stats [6, T] int32 for one side."""
    off, order, kind, sess = spec
    dev = off.device
    T = (length + tile - 1) // tile
    L = _aligned(length)
    out = torch.empty(3 * L + 6 * T, device=dev, dtype=torch.int32)           # one allocation
    a_sess, a_blk, a_third = out[:length], out[L:L + length], out[2 * L:2 * L + length]
    mm = out[3 * L:].view(6, T)                                                  # (6, T)
    nb = order.numel()
    _tile_attr_kernel[(T,)](off, order, kind, sess, a_sess, a_blk, a_third, mm, start, length, nb,
                            (nb + 1).bit_length() + 1, T, IS_QUERY=is_query, FULL_MASK=mask_type == "full",
                            NOISY=KIND_NOISY, TILE=tile, num_warps=4)
    return (a_sess, a_blk, a_third), mm


def _tile_runs_fused(row_mm, col_mm, Sk: int, block_n: int, rows_are_q: bool) -> TileRuns:
    R, C = row_mm.shape[1], col_mm.shape[1]
    W = max(1, (C + 1) // 2)
    plane, cstride = _aligned(R * W), _aligned(R)                              # each list 16-byte aligned
    buf = torch.zeros(4, plane, device=row_mm.device, dtype=torch.int32)         # zero-padded runs
    counts = torch.empty(5, cstride, device=row_mm.device, dtype=torch.int32)
    _runs_kernel[(R,)](row_mm, col_mm, buf, counts, R, C, W, Sk, block_n, plane, cstride,
                       ROWS_ARE_Q=rows_are_q, CHUNK=_CHUNK, num_warps=4)
    runs = buf[:, :R * W].view(4, R, W)
    counts = counts[:, :R]
    perm = torch.argsort(counts[4], stable=True).to(torch.int32)
    return TileRuns(runs[0], runs[1], counts[0], runs[2], runs[3], counts[1], counts[2], counts[3], perm)


def _build_fused(spec, mask_type, q_start, q_len, k_start, k_len, block_m, block_n, attrs):
    q_attr, q_mm = _tile_attrs_fused(spec, mask_type, q_start, q_len, block_m, True)
    k_attr, k_mm = _tile_attrs_fused(spec, mask_type, k_start, k_len, block_n, False)
    if attrs is None:
        attrs = TokenAttrs(*q_attr, *k_attr)
    Tq, Tk = q_mm.shape[1], k_mm.shape[1]
    wl = WorkLists(block_m, block_n, Tq, Tk, _tile_runs_fused(q_mm, k_mm, k_len, block_n, True),
                   _tile_runs_fused(k_mm, q_mm, k_len, block_n, False))
    return attrs, wl


def build_worklists(block_offsets, block_order, block_kind, block_session, mask_type: str,
                    q_start: int, q_len: int, k_start: int, k_len: int,
                    block_m: int, block_n: int, attrs: TokenAttrs | None = None, backend: str = "auto"):
    """Token attributes + work lists for one tiling. Returns (TokenAttrs, WorkLists).

    Pass ``attrs`` to reuse already built token attributes (e.g. a second tiling).
    ``backend``: "torch" (plain torch ops), "triton" (the fused kernels; on CPU only under
    TRITON_INTERPRET=1) or "auto" (triton on CUDA for power-of-two tiles >= 16, else torch).
    Both give identical tensors.
    """
    if block_m <= 0 or block_n <= 0:
        raise ValueError(f"tile sizes must be positive, got block_m={block_m} block_n={block_n}")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    spec = (block_offsets, block_order, block_kind, block_session)
    if backend == "auto":
        # On an H200 the fused build skipped tiles at S = 45k and disagreed at 11.5k: run ends were
        # misplaced in rows of more than _CHUNK tiles (fixed; docs/measured.md). Until a GPU run
        # confirms the fix at those sizes, "auto" is the GPU-verified torch build.
        backend = "torch"
    if backend == "triton":
        if not _fused_ok(block_m, block_n):
            raise ValueError(f"the triton work-list build needs power-of-two tiles >= 16, got {block_m}x{block_n}")
        if q_len > 0 and k_len > 0:
            _check_args(*spec, mask_type, q_start, q_len, k_start, k_len)
            return _build_fused(spec, mask_type, q_start, q_len, k_start, k_len, block_m, block_n, attrs)
    if attrs is None:
        attrs = token_attributes(*spec, mask_type, q_start, q_len, k_start, k_len)
    cls = classify_tiles(attrs, block_m, block_n)                               # (Tq, Tk)
    Tq, Tk = cls.shape
    wl = WorkLists(block_m, block_n, Tq, Tk, _tile_runs(cls), _tile_runs(cls.t()))
    return attrs, wl


_ATTR_FIELDS = ("q_sess", "q_blk", "q_limit", "k_sess", "k_blk", "k_rank")
_RUN_FIELDS = ("full_start", "full_end", "n_full_runs", "part_start", "part_end", "n_part_runs", "n_full", "n_part",
               "perm")


def first_difference(a: WorkLists, b: WorkLists, attrs_a: TokenAttrs | None = None,
                     attrs_b: TokenAttrs | None = None) -> str | None:
    """Where two builds of the same tiling differ, as "q.full_end" / "attrs.k_rank" / "tiling", or None when
    every tensor is equal (dtype included) and starts 16-byte aligned. The torch and fused builds must give
    None: the tests and the GPU bench (which compares them at the benchmark sizes) use this one check."""
    if (a.block_m, a.block_n, a.num_q_tiles, a.num_k_tiles) != (b.block_m, b.block_n, b.num_q_tiles, b.num_k_tiles):
        return "tiling"
    pairs = [(f"{side}.{f}", getattr(getattr(a, side), f), getattr(getattr(b, side), f))
             for side in ("q", "k") for f in _RUN_FIELDS]
    if attrs_a is not None and attrs_b is not None:
        pairs += [(f"attrs.{f}", getattr(attrs_a, f), getattr(attrs_b, f)) for f in _ATTR_FIELDS]
    for name, x, y in pairs:
        if x.dtype != y.dtype or not torch.equal(x, y):
            return name
        # the attention kernels get these tensors: Triton specialises pointers on 16-byte alignment, so a
        # view that lost it at some length would recompile them (H200: 3.7 s first calls, docs/measured.md)
        if x.data_ptr() % 16 or y.data_ptr() % 16:
            return f"{name} (alignment)"
    return None
