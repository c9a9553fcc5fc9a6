"""Joint attention over the text and image streams, and its two masked cores.

``JointAttention`` owns the projections (one weight set per stream in dual-stream blocks,
one shared set in shared blocks): per stream ``linear_qkv`` -> per-head q/k RMSNorm, then
q, k, v of all streams are concatenated in joint order (text, then image), RoPE is applied,
``core_attention`` runs under the packed mask spec, and the result is split back and sent
through each stream's ``linear_proj``. Which classes fill the slots is decided in ``specs.py``.

Cores take ``(q [Sq, H, D], k [Sk, H, D], v [Sk, H, D], spec, q_start=0, k_start=0)``: the
queries are joint tokens [q_start, q_start + Sq), the keys [k_start, k_start + Sk) (context
parallelism passes a slice). Both follow ``kernels/vincie_kernels/reference.py`` exactly:

* ``TorchMaskedAttention``: per-session SDPA. Tokens are grouped by session (vectorised
  index arithmetic, no per-token Python), sessions of similar size share one batched
  ``scaled_dot_product_attention`` call padded to the bucket's largest session, and each
  session's small mask comes from the block-level visibility table. Memory is
  O(sum over buckets of n * Lq * Lk), never S x S over the packed sequence.
* ``TritonMaskedAttention``: the kernel in ``kernels/vincie_kernels/masked_attention.py``.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from vincie_kernels.reference import block_visibility, token_block_ids
from vincie_mcore.packed.maskspec import MaskSpec

from .embeddings import apply_rope

# ----------------------------------------------------------------------------
# Torch core: per-session SDPA, sessions bucketed by size
# ----------------------------------------------------------------------------

_BUCKET_WASTE = 1.3     # a bucket's padded area may exceed its sessions' true area by at most 30 %


@dataclass
class _Bucket:
    q_rows: torch.Tensor            # long [n, Lq]: rows of q (padding points at row 0)
    k_rows: torch.Tensor            # long [n, Lk]: rows of k/v
    mask: torch.Tensor | None       # bool [n, 1, Lq, Lk], None when every pair is allowed
    out_sel: torch.Tensor           # long [m]: real query slots in the flattened (n * Lq)
    out_rows: torch.Tensor          # long [m]: their rows in q
    dead: torch.Tensor | None       # bool [m]: real rows that see no key (output 0), None if none


def _build_plan(spec: MaskSpec, q_start: int, q_len: int, k_start: int, k_len: int,
                device: torch.device) -> list[_Bucket]:
    offsets, order, kind, session = (t.to(device) for t in spec.tensors())
    blk = token_block_ids(offsets)                                           # (S,)
    vis = block_visibility(order, kind, session, spec.mask_type)             # (nb, nb)
    return _plan_from_blocks(vis, session, blk[q_start:q_start + q_len], blk[k_start:k_start + k_len], device)


def build_rows_plan(spec: MaskSpec, q_rows: torch.Tensor, k_rows: torch.Tensor) -> list[_Bucket]:
    """Bucket plan for queries at joint rows ``q_rows`` against keys at joint rows ``k_rows``
    (any order, long [Sq] / [Sk]): the KV-cache path, whose keys are cached rows + own rows."""
    device = q_rows.device
    offsets, order, kind, session = (t.to(device) for t in spec.tensors())
    blk = token_block_ids(offsets)                                           # (S,)
    vis = block_visibility(order, kind, session, spec.mask_type)             # (nb, nb)
    return _plan_from_blocks(vis, session, blk[q_rows], blk[k_rows], device)


def _plan_from_blocks(vis: torch.Tensor, session: torch.Tensor, qblk: torch.Tensor, kblk: torch.Tensor,
                      device: torch.device) -> list[_Bucket]:
    """Buckets for queries of blocks ``qblk`` [Sq] against keys of blocks ``kblk`` [Sk]."""
    q_len, k_len = qblk.numel(), kblk.numel()
    sess = session.long()
    uniq, inv = torch.unique(torch.cat([sess[qblk], sess[kblk]]), return_inverse=True)
    qs, ks = inv[:q_len], inv[q_len:]                                         # dense session ids
    n_s = uniq.numel()
    qcount, kcount = torch.bincount(qs, minlength=n_s), torch.bincount(ks, minlength=n_s)
    q_sorted, k_sorted = torch.argsort(qs, stable=True), torch.argsort(ks, stable=True)
    q_first, k_first = torch.cumsum(qcount, 0) - qcount, torch.cumsum(kcount, 0) - kcount

    # Greedy buckets over sessions sorted by size (sessions with no keys in range stay 0).
    qc, kc = qcount.tolist(), kcount.tolist()
    live = sorted((s for s in range(n_s) if qc[s] and kc[s]), key=lambda s: (qc[s] * kc[s], qc[s]), reverse=True)
    groups, cur, lq, lk, area = [], [], 0, 0, 0
    for s in live:
        nlq, nlk = max(lq, qc[s]), max(lk, kc[s])
        if cur and (len(cur) + 1) * nlq * nlk > _BUCKET_WASTE * (area + qc[s] * kc[s]):
            groups.append(cur)
            cur, nlq, nlk, area = [], qc[s], kc[s], 0
        cur.append(s)
        lq, lk, area = nlq, nlk, area + qc[s] * kc[s]
    if cur:
        groups.append(cur)

    buckets = []
    for g in groups:
        sb = torch.tensor(g, device=device)
        Lq, Lk = max(qc[s] for s in g), max(kc[s] for s in g)
        ar_q, ar_k = torch.arange(Lq, device=device), torch.arange(Lk, device=device)
        valid_q = ar_q[None] < qcount[sb][:, None]                                 # (n, Lq)
        valid_k = ar_k[None] < kcount[sb][:, None]                                 # (n, Lk)
        q_rows = torch.where(valid_q, q_sorted[(q_first[sb][:, None] + ar_q).clamp(max=q_len - 1)], 0)
        k_rows = torch.where(valid_k, k_sorted[(k_first[sb][:, None] + ar_k).clamp(max=k_len - 1)], 0)
        m = vis[qblk[q_rows][:, :, None], kblk[k_rows][:, None, :]] & valid_k[:, None, :]   # (n, Lq, Lk)
        dead = ~m.any(-1)                                                          # (n, Lq)
        m[..., 0] |= dead            # a blind row gets one real key so SDPA stays finite; zeroed below
        out_sel = valid_q.flatten().nonzero().squeeze(1)                           # (m,)
        dead_sel = dead.flatten()[out_sel]
        buckets.append(_Bucket(q_rows=q_rows, k_rows=k_rows,
                               mask=None if bool(m.all()) else m[:, None],
                               out_sel=out_sel, out_rows=q_rows.flatten()[out_sel],
                               dead=dead_sel if bool(dead_sel.any()) else None))
    return buckets


# The same spec is attended by every layer: keep the last few plans, keyed by the spec
# object itself (specs are treated as immutable once built).
_PLAN_CACHE: list[tuple[weakref.ref, tuple, list[_Bucket]]] = []
_PLAN_CACHE_SIZE = 8


def _cached(spec: MaskSpec, key: tuple, make):
    """Per-spec memo (specs are per batch; every layer asks for the same plan)."""
    for ref, k, plan in _PLAN_CACHE:
        if ref() is spec and k == key:
            return plan
    plan = make()
    _PLAN_CACHE[:] = [e for e in _PLAN_CACHE if e[0]() is not None]     # drop plans of dead specs
    _PLAN_CACHE.insert(0, (weakref.ref(spec), key, plan))
    del _PLAN_CACHE[_PLAN_CACHE_SIZE:]
    return plan


def plan_spec(spec: MaskSpec, device) -> tuple:
    """The spec's four vectors on ``device`` (moved once per batch, not per layer)."""
    return _cached(spec, ("tensors", str(device)), lambda: tuple(t.to(device) for t in spec.tensors()))


def session_plan(spec: MaskSpec, q_start: int, q_len: int, k_start: int, k_len: int, device) -> list[_Bucket]:
    return _cached(spec, ("torch", q_start, q_len, k_start, k_len, str(device)),
                   lambda: _build_plan(spec, q_start, q_len, k_start, k_len, torch.device(device)))


def _check_core_inputs(q, k, v, spec, q_start, k_start):
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"core attention: expected q [Sq,H,D], k/v [Sk,H,D]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    S = spec.seq_len
    if q_start < 0 or q_start + q.shape[0] > S or k_start < 0 or k_start + k.shape[0] > S:
        raise ValueError(f"core attention: q rows [{q_start}, {q_start + q.shape[0]}) or k rows "
                         f"[{k_start}, {k_start + k.shape[0]}) fall outside the spec's {S} tokens")


class TorchMaskedAttention(torch.nn.Module):
    """Masked attention from the spec with per-session SDPA (reference-exact; CPU and GPU).

    Rows that see no key (possible only with a key slice) give 0, as in the reference.
    """

    def __init__(self, config=None, softmax_scale: float | None = None, **_):
        super().__init__()
        self.softmax_scale = softmax_scale

    def forward(self, q, k, v, spec: MaskSpec, q_start: int = 0, k_start: int = 0) -> torch.Tensor:
        _check_core_inputs(q, k, v, spec, q_start, k_start)
        return self.attend(q, k, v, session_plan(spec, q_start, q.shape[0], k_start, k.shape[0], q.device))

    def attend(self, q, k, v, plan: list[_Bucket]) -> torch.Tensor:
        """q [Sq, H, D], k/v [Sk, H, D] under a bucket plan (``session_plan`` or ``build_rows_plan``)."""
        Sq, H, D = q.shape
        scale = self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(D)
        parts, rows = [], []
        for b in plan:
            n, Lq = b.q_rows.shape
            Lk = b.k_rows.shape[1]
            qb = q.index_select(0, b.q_rows.flatten()).view(n, Lq, H, D).transpose(1, 2)   # (n, H, Lq, D)
            kb = k.index_select(0, b.k_rows.flatten()).view(n, Lk, H, D).transpose(1, 2)   # (n, H, Lk, D)
            vb = v.index_select(0, b.k_rows.flatten()).view(n, Lk, H, D).transpose(1, 2)   # (n, H, Lk, D)
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=b.mask, scale=scale)
            o = o.transpose(1, 2).reshape(n * Lq, H, D).index_select(0, b.out_sel)   # (m, H, D)
            if b.dead is not None:
                o = o.masked_fill(b.dead[:, None, None], 0.0)
            parts.append(o)
            rows.append(b.out_rows)
        out = q.new_zeros(Sq, H, D)
        if not parts:
            return out + 0.0 * q            # keep the graph: nothing is visible
        return out.index_copy(0, torch.cat(rows), torch.cat(parts))          # (Sq, H, D)


class TritonMaskedAttention(torch.nn.Module):
    """Masked attention from the spec with the Triton kernel (``kernels/vincie_kernels/masked_attention.py``).

    ``tilings`` (``model.attention_tilings``, text as in ``kernels/vincie_kernels/tilings.py``) apply to
    bf16/fp16 on CUDA; fp32 (twice the shared memory per tile) and the CPU interpreter keep the defaults.
    """

    def __init__(self, config=None, softmax_scale: float | None = None, tilings: str = "default", **_):
        super().__init__()
        from vincie_kernels.tilings import parse_tilings, tilings_text
        self.softmax_scale = softmax_scale
        self.tilings = tilings_text(parse_tilings(tilings))
        self._tiling_configs = None          # AttentionConfigs, made at the first CUDA bf16/fp16 call

    def _configs(self, q: torch.Tensor):
        if self.tilings == "default" or q.device.type != "cuda" or q.dtype == torch.float32:
            return None
        if self._tiling_configs is None:
            from vincie_kernels.tilings import attention_configs, parse_tilings
            self._tiling_configs = attention_configs(parse_tilings(self.tilings))
        return self._tiling_configs

    def forward(self, q, k, v, spec: MaskSpec, q_start: int = 0, k_start: int = 0) -> torch.Tensor:
        _check_core_inputs(q, k, v, spec, q_start, k_start)
        try:
            from vincie_kernels.masked_attention import masked_attention, plan_masked_attention
        except ImportError as e:
            raise RuntimeError(f"attention backend 'triton' needs vincie_kernels.masked_attention, which failed to "
                               f"import ({e}); use attention_backend='torch'") from e
        # every layer of a step shares the spec: build the kernel's work lists once per (spec, slice)
        configs = self._configs(q)
        key = ("triton", q_start, q.shape[0], k_start, k.shape[0], q.shape[-1], q.dtype, str(q.device), configs)
        plan = _cached(spec, key, lambda: plan_masked_attention(
            *plan_spec(spec, q.device), spec.mask_type, q_start, q.shape[0], k_start, k.shape[0], q.shape[-1],
            q.dtype, configs=configs))
        out = masked_attention(q, k, v, *plan_spec(spec, q.device), spec.mask_type, q_start=q_start,
                               k_start=k_start, softmax_scale=self.softmax_scale, plan=plan)
        return out[0] if isinstance(out, tuple) else out


# ----------------------------------------------------------------------------
# KV cache (block_causal inference; torch core only; docs/kv_cache.md)
# ----------------------------------------------------------------------------

SIG_SESSION = 2      # the column of a token's session in a cache signature (``MMDiT._kv_signature``: order, kind, session first)


class KVCache:
    """Per-layer K and V of context tokens, as the core consumes them (after QK-norm and RoPE).

    Filled by ``MMDiT.prefill`` and read by ``MMDiT.forward(..., kv_cache=)``. Entries are the
    cached text-stream tokens, then the cached image-stream tokens, each named by its stream row
    (``txt_rows``, ``img_rows``: stable while a session grows, since texts and frames are only
    appended) and with a signature of what the model read for it (input row, positions, block
    order/kind/session, AdaLN conditioning), so a call refuses a batch whose context differs.
    One cache per conditioning branch (CFG's unconditional branch drops the text: its own cache).
    """

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers     # [N, H, d] each
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.txt_rows = torch.zeros(0, dtype=torch.long)            # [N_txt] text-stream rows
        self.img_rows = torch.zeros(0, dtype=torch.long)            # [N_img] image-stream rows
        self.txt_sig: torch.Tensor | None = None                    # float [N_txt, *]
        self.img_sig: torch.Tensor | None = None                    # float [N_img, *]

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def n_txt(self) -> int:
        return self.txt_rows.numel()

    def __len__(self) -> int:
        return self.txt_rows.numel() + self.img_rows.numel()

    def joint_rows(self, s_txt: int) -> torch.Tensor:
        """long [N]: the cached tokens' joint rows in a batch with ``s_txt`` text tokens (entry order)."""
        return torch.cat([self.txt_rows, self.img_rows + s_txt])

    def sizes(self) -> tuple[int, int]:
        """(text entries, image entries): what ``truncate`` takes the cache back to."""
        return self.n_txt, self.img_rows.numel()

    def truncate(self, sizes: tuple[int, int]) -> None:
        """Drop the entries added after the cache held ``sizes`` (a call cut short): each stream's entries
        are kept in the order they were added (K/V: [text entries; image entries]), so its first ones stay."""
        n_txt, n_img = sizes
        if (n_txt, n_img) == self.sizes():
            return
        if n_txt > self.n_txt or n_img > self.img_rows.numel():
            raise ValueError(f"kv_cache: cannot truncate {self.sizes()} entries to {sizes}")
        idx = torch.cat([torch.arange(n_txt), self.n_txt + torch.arange(n_img)])
        for layer in range(self.num_layers):
            for name in ("k", "v"):
                t = getattr(self, name)[layer]
                getattr(self, name)[layer] = None if t is None or not idx.numel() else t[idx.to(t.device)]
        self.txt_rows, self.img_rows = self.txt_rows[:n_txt], self.img_rows[:n_img]
        self.txt_sig = None if self.txt_sig is None or not idx.numel() else self.txt_sig[:n_txt]
        self.img_sig = None if self.img_sig is None or not idx.numel() else self.img_sig[:n_img]

    def nbytes(self) -> int:
        """Bytes held: K and V of every layer plus the rows and signatures."""
        ts = [*self.k, *self.v, self.txt_rows, self.img_rows, self.txt_sig, self.img_sig]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    @staticmethod
    def join(caches: list["KVCache"], txt_starts: list[int], img_starts: list[int]) -> "KVCache":
        """One cache for a batch of sessions (``infer.editor``'s batched turns). Cache i holds session i's
        entries as a one-session batch names them (rows from 0, session 0); here they take the session's
        place in the batch (its first text-stream row ``txt_starts[i]``, image-stream row ``img_starts[i]``)
        and session number i. Entry order: every session's text entries, then every session's image entries."""
        out = KVCache(caches[0].num_layers)
        parts = [c for c in caches if len(c)]
        if not parts:
            return out
        t = [c.n_txt for c in caches]
        for layer in range(out.num_layers):
            for name in ("k", "v"):
                xs = [getattr(c, name)[layer] for c in caches]
                getattr(out, name)[layer] = torch.cat([x[:n] for x, n in zip(xs, t) if x is not None]
                                                      + [x[n:] for x, n in zip(xs, t) if x is not None])

        def resession(sig, i):
            sig = sig.clone()
            sig[:, SIG_SESSION] = i
            return sig
        out.txt_rows = torch.cat([c.txt_rows + a for c, a in zip(caches, txt_starts)])
        out.img_rows = torch.cat([c.img_rows + a for c, a in zip(caches, img_starts)])
        out.txt_sig = torch.cat([resession(c.txt_sig, i) for i, c in enumerate(caches) if len(c)])
        out.img_sig = torch.cat([resession(c.img_sig, i) for i, c in enumerate(caches) if len(c)])
        return out

    def split(self, txt_starts: list[int], img_starts: list[int]) -> list["KVCache"]:
        """``join``'s inverse, after the batch's calls added entries: session i's entries (in the order
        they were added) as a one-session cache. Sessions follow each other in both streams, so a row's
        session is the last start at or below it."""
        n = len(txt_starts)
        if not len(self):
            return [KVCache(self.num_layers) for _ in range(n)]
        ts = torch.searchsorted(torch.tensor(txt_starts, device=self.txt_rows.device), self.txt_rows, right=True) - 1
        im = torch.searchsorted(torch.tensor(img_starts, device=self.img_rows.device), self.img_rows, right=True) - 1
        out = []
        for i in range(n):
            ti, ii = (ts == i).nonzero().squeeze(1), (im == i).nonzero().squeeze(1)
            c = KVCache(self.num_layers)
            if ti.numel() + ii.numel():
                idx = torch.cat([ti, self.n_txt + ii])
                for layer in range(self.num_layers):
                    c.k[layer] = self.k[layer][idx.to(self.k[layer].device)]
                    c.v[layer] = self.v[layer][idx.to(self.v[layer].device)]
                c.txt_rows, c.img_rows = self.txt_rows[ti] - txt_starts[i], self.img_rows[ii] - img_starts[i]
                c.txt_sig, c.img_sig = self.txt_sig[ti.to(self.txt_sig.device)].clone(), \
                    self.img_sig[ii.to(self.img_sig.device)].clone()
                c.txt_sig[:, SIG_SESSION] = 0
                c.img_sig[:, SIG_SESSION] = 0
            out.append(c)
        return out


@dataclass
class LayerKV:
    """One layer's view of a cache during one call: keys are [cached text; own text; cached image;
    own image] (the entry order ``plan`` was built for); with ``store`` the extended K/V wait in
    ``new_k``/``new_v`` until ``MMDiT`` commits the call (a failed call leaves the cache as it was)."""
    cache: KVCache
    layer: int
    plan: list[_Bucket]
    n_q_txt: int                       # own text tokens (the first rows of q/k/v)
    store: bool
    new_k: torch.Tensor | None = None
    new_v: torch.Tensor | None = None

    def attend(self, core: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(core, TorchMaskedAttention):
            raise ValueError(f"kv_cache: needs the torch attention core, got {type(core).__name__}")
        kc, vc, nt, nq = self.cache.k[self.layer], self.cache.v[self.layer], self.cache.n_txt, self.n_q_txt
        if kc is None:
            kc, vc = k[:0], v[:0]
        k_all = torch.cat([kc[:nt], k[:nq], kc[nt:], k[nq:]])          # (N + Sq, H, d)
        v_all = torch.cat([vc[:nt], v[:nq], vc[nt:], v[nq:]])
        if self.store:
            self.new_k, self.new_v = k_all, v_all
        return core.attend(q, k_all, v_all, self.plan)                  # (Sq, H, d)


# ----------------------------------------------------------------------------
# Joint attention: projections per stream + core slot
# ----------------------------------------------------------------------------

@dataclass
class JointAttentionSubmodules:
    linear_qkv: ModuleSpec | type = None
    q_layernorm: ModuleSpec | type = None
    k_layernorm: ModuleSpec | type = None
    core_attention: ModuleSpec | type = None
    linear_proj: ModuleSpec | type = None


class AttentionProjections(MegatronModule):
    """One weight set: linear_qkv (column-parallel, per-head [q, k, v] rows), q/k RMSNorm, linear_proj."""

    def __init__(self, config, submodules: JointAttentionSubmodules, tp_group=None):
        super().__init__(config=config)
        d = config.kv_channels
        self.linear_qkv = build_module(
            submodules.linear_qkv, config.hidden_size, 3 * config.num_attention_heads * d, config=config,
            init_method=config.init_method, gather_output=False, bias=True, skip_bias_add=False,
            is_expert=False, tp_comm_buffer_name="qkv", tp_group=tp_group)
        self.q_layernorm = build_module(submodules.q_layernorm, config=config, hidden_size=d,
                                        eps=config.layernorm_epsilon)
        self.k_layernorm = build_module(submodules.k_layernorm, config=config, hidden_size=d,
                                        eps=config.layernorm_epsilon)
        self.linear_proj = build_module(
            submodules.linear_proj, config.num_attention_heads * d, config.hidden_size, config=config,
            init_method=config.output_layer_init_method, bias=True, input_is_parallel=True,
            skip_bias_add=False, is_expert=False, tp_comm_buffer_name="proj", tp_group=tp_group)

    def qkv(self, x: torch.Tensor, qk_norm: bool = True):
        """x [S, 1, D] -> q, k, v [S', H_local, d] (S' is the full stream under sequence parallelism).
        qk_norm=False: q, k before their RMSNorm (the fused kernel applies it with RoPE)."""
        y, _ = self.linear_qkv(x)                                           # (S', 1, 3 * H_local * d)
        d = self.config.kv_channels
        y = y.reshape(y.shape[0], y.shape[-1] // (3 * d), 3, d)             # (S', H_local, 3, d); S' may be 0
        q, k, v = y.unbind(2)                                               # (S', H_local, d) each
        if not qk_norm:
            return q, k, v
        return self.q_layernorm(q), self.k_layernorm(k), v

    def proj(self, o: torch.Tensor) -> torch.Tensor:
        """o [S', H_local, d] -> [S, 1, D]."""
        out, _ = self.linear_proj(o.reshape(o.shape[0], 1, o.shape[1] * o.shape[2]))   # (S, 1, D); S may be 0
        return out


class JointAttention(MegatronModule):
    """Attention over cat(streams) under the mask spec.

    weight_names: one projection set per name, stored under that name (checkpoint keys
    ``attention.txt.linear_qkv.weight`` ...). ``forward`` maps stream i to set ``stream_weights[i]``.
    """

    def __init__(self, config, submodules: JointAttentionSubmodules, weight_names: tuple[str, ...],
                 tp_group=None, fused_ops: str = "torch"):
        super().__init__(config=config)
        from .fused_ops import get_fused_ops   # here: fused_ops imports model/blocks.py
        self.ops = get_fused_ops(fused_ops)   # QK-norm + RoPE: torch or one Triton pass (model/fused_ops.py)
        self.weight_names = tuple(weight_names)
        for name in self.weight_names:
            self.add_module(name, AttentionProjections(config, submodules, tp_group=tp_group))
        self.core_attention = build_module(submodules.core_attention, config=config,
                                           softmax_scale=config.softmax_scale or 1.0 / math.sqrt(config.kv_channels))

    def forward(self, streams: list[torch.Tensor], stream_weights: list[int], rope: tuple[torch.Tensor, torch.Tensor],
                spec: MaskSpec, q_start: int = 0, kv: LayerKV | None = None) -> list[torch.Tensor]:
        """streams[i] [S_i, 1, D] (local under SP); rope cos/sin [S_joint, d/2] -> list of [S_i, 1, D].

        q_start: joint index of the first token (context parallelism hands each rank a chunk of
        the joint sequence; its core slot then gathers the other ranks' keys).
        kv: KV-cache path (``MMDiT.prefill``/``forward(kv_cache=)``): the streams hold only the rows
        being computed, which attend to the cached keys and their own.
        """
        projs = [getattr(self, self.weight_names[w]) for w in stream_weights]
        fused = self.ops.fuses_qk(projs)
        qkvs = [p.qkv(x, qk_norm=not fused) for p, x in zip(projs, streams)]
        lens = [t[0].shape[0] for t in qkvs]
        if fused:
            q, k = self.ops.qk_norm_rope(qkvs, projs, *rope)                   # (S_joint, H_local, d)
            v = torch.cat([t[2] for t in qkvs], dim=0)
        else:
            q, k, v = (torch.cat([t[i] for t in qkvs], dim=0) for i in range(3))  # (S_joint, H_local, d)
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            o = kv.attend(self.core_attention, q, k, v)                           # (S_rows, H_local, d)
        else:
            o = self.core_attention(q, k, v, spec, q_start=q_start, k_start=q_start)   # (S_joint, H_local, d)
        return [p.proj(oi) for p, oi in zip(projs, o.split(lens, dim=0))]
