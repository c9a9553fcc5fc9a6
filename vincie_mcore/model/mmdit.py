"""MMDiT: embed -> blocks (dual-stream, then shared) -> final layer, on Megatron-Core.

``MMDiT.forward(x_img [S_img, patch_dim], batch: PackedBatch) -> [S_img, patch_dim]``. The
model reads ``txt_emb, txt_turn, txt_pos, img_pos, spec, block_t`` from the batch; the image
stream ``x_img`` (partly noised by ``diffusion/``) comes in separately. What the output means
(velocity, x0, ...) is the diffusion code's business.

Tensor parallelism enters only through the parallel linears chosen in ``specs.py``. With
sequence parallelism each stream is scattered along the sequence here, at the model boundary,
and the image output is gathered back; the blocks only see local chunks (the QKV/fc1 linears
all-gather and linear_proj/fc2 reduce-scatter, as in Megatron).

Context parallelism is given to a built model, never read from global state:
``parallel.dims.parallelize(model, dims)`` sets ``model.parallel_dims`` and, for cp > 1, wraps
every core-attention slot to gather K/V from the other ranks (``parallel/context_parallel.py``).
The forward then keeps this rank's chunk of the joint sequence (``cp_shard``: a ``CPShard``
from ``packed/shard.py``, a view of the inputs, with RoPE and per-block AdaLN following their
tokens) and returns this rank's image rows. A model never parallelized computes the whole
sequence, whatever groups exist.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region, scatter_to_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.utils import sharded_state_dict_default
from megatron.core.utils import get_pg_rank, get_pg_size, get_tensor_model_parallel_group_if_none

from vincie_kernels.reference import block_visibility
from vincie_mcore.packed.batch import PackedBatch
from vincie_mcore.packed.maskspec import KIND_NOISY
from vincie_mcore.packed.shard import CPShard, shard_of

from .attention import KVCache, LayerKV, TorchMaskedAttention, build_rows_plan
from .blocks import GATE_CHUNKS, BlockContext, FinalLayer, mark_sequence_parallel
from ..config import build
from .config import MMDiTConfig
from .embeddings import TextEmbedder, TimestepEmbedder, rope_cos_sin
from .specs import get_block_specs


def check_tensor_parallel(cfg: MMDiTConfig, tp: int) -> None:
    """One-line error when tp cannot split what the column/row-parallel linears split (heads, SwiGLU width)."""
    for name in ("num_heads", "ffn_hidden_size"):
        if getattr(cfg, name) % tp:
            raise ValueError(f"tensor parallel: MMDiTConfig.{name}={getattr(cfg, name)} is not divisible by tp={tp}")


class MMDiT(MegatronModule):
    """The VINCIE MM-DiT.

    Args:
        cfg: architecture (``MMDiTConfig``).
        config: Megatron ``TransformerConfig`` for the parallel layers; None builds the
            single-device one from ``cfg.to_transformer_config()``.
        tp_group: tensor-parallel process group (None: Megatron's global one).
        device: where the model will run; only used to resolve ``attention_backend="auto"``.
        recompute: recompute each block in backward instead of keeping its activations
            (memory for time; a training choice, not architecture).
    """

    def __init__(self, cfg: MMDiTConfig, config=None, tp_group=None, device=None, recompute: bool = False):
        config = config if config is not None else cfg.to_transformer_config()
        super().__init__(config=config)
        self.cfg = cfg
        self.recompute = recompute
        self.tp_group = get_tensor_model_parallel_group_if_none(tp_group)
        check_tensor_parallel(cfg, get_pg_size(self.tp_group))
        D, std, dtype = cfg.hidden_size, cfg.init_method_std, config.params_dtype

        # ---- embedders (applied to the full streams before any sequence split) ----
        self.img_embedder = torch.nn.Linear(cfg.patch_dim, D, dtype=dtype)
        with torch.no_grad():
            torch.nn.init.normal_(self.img_embedder.weight, std=std)
            self.img_embedder.bias.zero_()
        self.txt_embedder = TextEmbedder(cfg.text_dim, D, cfg.max_turns, std).to(dtype)
        n = cfg.image_abs_pos_grid
        self.img_pos_embedder = torch.nn.Embedding(n * n, D, dtype=dtype) if n else None
        if n:
            torch.nn.init.normal_(self.img_pos_embedder.weight, std=std)
        self.t_embedder = TimestepEmbedder(D, cfg.frequency_embedding_size, cfg.timestep_scale, std).to(dtype)
        self.text_cond = torch.nn.Linear(cfg.text_dim, D, dtype=dtype) if cfg.text_adaln else None
        if self.text_cond is not None:
            with torch.no_grad():
                torch.nn.init.normal_(self.text_cond.weight, std=std)
                self.text_cond.bias.zero_()
            mark_sequence_parallel(self.text_cond)
        if cfg.adaln == "single":
            self.adaln_single = torch.nn.Linear(D, 6 * D, dtype=dtype)
            with torch.no_grad():
                torch.nn.init.normal_(self.adaln_single.weight, std=std)
                self.adaln_single.bias.zero_()
                if cfg.adaln_zero_init:
                    self.adaln_single.weight.view(6, D, D)[list(GATE_CHUNKS)] = 0.0
            mark_sequence_parallel(self.adaln_single)
        else:
            self.adaln_single = None
        mark_sequence_parallel(self.t_embedder)   # c feeds per-token modulation of local tokens

        # ---- blocks ----
        dual, shared, final_adaln = get_block_specs(cfg, device)
        self.layers = torch.nn.ModuleList([
            build_module(dual if i < cfg.mm_layers else shared, config=config, layer_number=i + 1,
                         tp_group=self.tp_group)
            for i in range(cfg.num_layers)])
        self.final_layer = FinalLayer(config, final_adaln, cfg.patch_dim, norm_eps=cfg.norm_eps,
                                      zero_init=cfg.adaln_zero_init)
        # the layout (a ParallelDims) parallel.dims.parallelize gives it; None: one device's sequence
        self.parallel_dims = None

    # ------------------------------------------------------------------ forward
    def _check(self, x_img: torch.Tensor, batch: PackedBatch) -> None:
        cfg, spec = self.cfg, batch.spec
        if x_img.dim() != 2 or x_img.shape[1] != cfg.patch_dim:
            raise ValueError(f"x_img: expected [S_img, patch_dim={cfg.patch_dim}], got {tuple(x_img.shape)}")
        if batch.txt_emb.dim() != 2 or batch.txt_emb.shape[1] != cfg.text_dim:
            raise ValueError(f"batch.txt_emb: expected [S_txt, text_dim={cfg.text_dim}], got {tuple(batch.txt_emb.shape)}")
        s_txt, s_img = batch.s_txt, x_img.shape[0]
        if spec.seq_len != s_txt + s_img:
            raise ValueError(f"batch.spec: covers {spec.seq_len} tokens but S_txt + S_img = {s_txt} + {s_img}")
        if batch.block_t.shape != (spec.num_blocks,):
            raise ValueError(f"batch.block_t: expected shape ({spec.num_blocks},), got {tuple(batch.block_t.shape)}")
        if batch.img_pos.shape != (s_img, 3):
            raise ValueError(f"batch.img_pos: expected [S_img={s_img}, 3], got {tuple(batch.img_pos.shape)}")
        if batch.txt_pos.shape[0] != s_txt or batch.txt_pos.dim() not in (1, 2) or \
                (batch.txt_pos.dim() == 2 and batch.txt_pos.shape[1] != 3):
            raise ValueError(f"batch.txt_pos: expected [S_txt={s_txt}] or [S_txt, 3], got {tuple(batch.txt_pos.shape)}")
        if batch.txt_turn.shape != (s_txt,):
            raise ValueError(f"batch.txt_turn: expected [S_txt={s_txt}], got {tuple(batch.txt_turn.shape)}")

    def rope(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [S_joint, head_dim/2]: 1D over the whole head dim for text ([S_txt] positions,
        "separate" RoPE) or the 3D split when the packer gives text 3D positions ("interleaved")."""
        cfg = self.cfg
        txt_axes = (cfg.head_dim,) if batch.txt_pos.dim() == 1 else cfg.rope_axes_dim
        ct, st = rope_cos_sin(batch.txt_pos, txt_axes, cfg.rope_theta)
        ci, si = rope_cos_sin(batch.img_pos, cfg.rope_axes_dim, cfg.rope_theta)
        return torch.cat([ct, ci]), torch.cat([st, si])                       # (S_joint, head_dim/2)

    def block_text_mean(self, batch: PackedBatch) -> torch.Tensor:
        """[nb, text_dim]: per block, the summed mean text embeddings of the text blocks in
        ``batch.block_text`` (0 where none). Computed from ``txt_emb``, so dropping a session's
        text for CFG drops this conditioning with it."""
        if batch.block_text is None or batch.block_text.shape != (batch.spec.num_blocks, 2):
            raise ValueError(f"batch.block_text: text_adaln needs a [{batch.spec.num_blocks}, 2] long tensor "
                             f"from the packer, got {None if batch.block_text is None else tuple(batch.block_text.shape)}")
        emb = batch.txt_emb
        words = (batch.txt_turn < 0).to(emb.dtype)[:, None]                      # <TURN> rows do not count
        tok_block = batch.spec.token_blocks()[: batch.s_txt].to(emb.device).long()
        nb = batch.spec.num_blocks
        sums = emb.new_zeros(nb, emb.shape[1]).index_add_(0, tok_block, emb * words)
        counts = emb.new_zeros(nb, 1).index_add_(0, tok_block, words).clamp(min=1)
        means = torch.cat([sums / counts, emb.new_zeros(1, emb.shape[1])])        # row nb: "none"
        idx = batch.block_text.to(emb.device).long()
        return means[torch.where(idx < 0, nb, idx)].sum(1)                        # (nb, text_dim)

    def cp_shard(self, batch: PackedBatch) -> CPShard:
        """The joint tokens this rank computes under the dims it was given: all of them without CP."""
        dims = self.parallel_dims
        if dims is None or dims.cp == 1:
            return CPShard((0, batch.spec.seq_len), 0, batch.s_txt)
        shard = shard_of(batch.spec, dims.cp, dims.cp_rank, dims.tp)
        if shard.s_txt != batch.s_txt:
            raise ValueError(f"context parallel: the spec's text blocks cover {shard.s_txt} tokens but the text "
                             f"stream has {batch.s_txt}")
        return shard

    def _embed(self, x_img: torch.Tensor, batch: PackedBatch, txt_rows, img_rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of each stream (a slice or long indices) -> h_txt [S_t, 1, D], h_img [S_i, 1, D]."""
        dtype = self.config.params_dtype
        h_txt = self.txt_embedder(batch.txt_emb[txt_rows].to(dtype), batch.txt_turn[txt_rows])[:, None]   # (S_t, 1, D)
        h_img = self.img_embedder(x_img[img_rows].to(dtype))[:, None]                                 # (S_i, 1, D)
        if self.img_pos_embedder is not None:
            n = self.cfg.image_abs_pos_grid
            hw = batch.img_pos[img_rows][:, 1:].to(x_img.device)                                      # (S_i, 2)
            if hw.numel() and int(hw.max()) >= n:
                raise ValueError(f"image_abs_pos_grid={n} is smaller than a {int(hw.max()) + 1}-token image side")
            h_img = h_img + self.img_pos_embedder(hw[:, 0] * n + hw[:, 1])[:, None]                  # (S_i, 1, D)
        return h_txt, h_img

    def _conditioning(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per block: c [nb, D] (timestep, + instruction with text_adaln) and adaLN-single's [nb, 6D]."""
        c = self.t_embedder(batch.block_t)                                           # (nb, D)
        if self.text_cond is not None:
            c = c + self.text_cond(self.block_text_mean(batch).to(self.config.params_dtype))   # (nb, D)
        shared = self.adaln_single(F.silu(c)) if self.adaln_single is not None else None   # (nb, 6D)
        return c, shared

    def forward(self, x_img: torch.Tensor, batch: PackedBatch, kv_cache: KVCache | None = None) -> torch.Tensor:
        """x_img [S_img, patch_dim] -> [S_img, patch_dim] (image stream only).

        Under context parallelism: -> [S_img_local, patch_dim], the rows ``cp_shard(batch).img_rows``.
        With ``kv_cache`` (filled by ``prefill``; block_causal, one process, torch core): only the
        noisy tokens are computed, against the cached context K/V; other rows of the output are 0.
        """
        self._check(x_img, batch)
        if kv_cache is not None:
            return self._forward_step(x_img, batch, kv_cache)
        shard = self.cp_shard(batch)                                            # whole sequence without CP
        blk = batch.spec.token_blocks().to(x_img.device)[shard.joint_rows]      # (S_local,)
        cos, sin = (t[shard.joint_rows] for t in self.rope(batch))              # (S_local, head_dim/2)

        # 1. Embed this rank's tokens of both streams, and the timesteps of every block.
        h_txt, h_img = self._embed(x_img, batch, shard.txt_rows, shard.img_rows)   # (S_txt_l, 1, D), (S_img_l, 1, D)
        c, shared = self._conditioning(batch)                                   # (nb, D), (nb, 6D) or None
        n_txt = h_txt.shape[0]
        streams, stream_blocks = [h_txt, h_img], [blk[:n_txt], blk[n_txt:]]

        # 2. Sequence parallelism: every block works on this rank's chunk of each stream.
        sp = self.config.sequence_parallel and get_pg_size(self.tp_group) > 1
        if sp:
            tp, r = get_pg_size(self.tp_group), get_pg_rank(self.tp_group)
            for name, s in zip(("text", "image"), streams):
                if s.shape[0] % tp:
                    raise ValueError(f"sequence parallel: the {name} stream has {s.shape[0]} tokens, not a "
                                     f"multiple of tp={tp}; pad the packed batch")
            streams = [scatter_to_sequence_parallel_region(s, group=self.tp_group) for s in streams]
            stream_blocks = [b.chunk(tp)[r] for b in stream_blocks]

        # 3. Blocks.
        ctx = BlockContext(c=c, shared_mod=shared, stream_blocks=stream_blocks, rope=(cos, sin),
                           spec=batch.spec, q_start=shard.q_start)
        for layer in self.layers:
            if self.recompute and torch.is_grad_enabled():
                streams = torch.utils.checkpoint.checkpoint(layer, streams, ctx, use_reentrant=False)
            else:
                streams = layer(streams, ctx)

        # 4. Final layer on the image stream.
        out = self._final_layer(streams[1], c, shared, stream_blocks[1])            # (S_img_local, 1, patch_dim)
        if sp:
            # Every rank computes the same loss on the full output: its gradient is split, not summed.
            out = gather_from_sequence_parallel_region(out, tensor_parallel_output_grad=False, group=self.tp_group)
        return out[:, 0]                                                             # (S_img_local, patch_dim)

    def _final_layer(self, x, c, shared, token_blocks):
        """Hook: the official variant's final layer also reads adaLN-single's shared modulation."""
        return self.final_layer(x, c, token_blocks)

    # ------------------------------------------------------------------ KV cache (docs/kv_cache.md)
    def kv_cache_support(self) -> str | None:
        """None when the KV-cache path can run on this model, else the one-line reason it cannot."""
        tp = get_pg_size(self.tp_group)
        cp = 1 if self.parallel_dims is None else self.parallel_dims.cp
        if tp != 1 or cp != 1:
            return f"kv_cache: needs one process (tp=1, cp=1), this model runs tp={tp}, cp={cp}"
        for layer in self.layers:
            core = layer.attention.core_attention
            if not isinstance(core, TorchMaskedAttention):
                return (f"kv_cache: needs the torch attention core, this model's is {type(core).__name__} "
                        f"(model.attention_backend={self.cfg.attention_backend!r})")
        return None

    def new_kv_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    @torch.no_grad()
    def prefill(self, batch: PackedBatch, kv_cache: KVCache) -> int:
        """Compute and cache the K/V of the context tokens of ``batch`` not cached yet (the non-noisy
        blocks some noisy block sees; they never see a noisy block under block_causal). Returns how
        many tokens were added."""
        self._check(batch.img_x0, batch)
        self._check_kv(batch, kv_cache)
        spec, dev, s_txt = batch.spec, batch.img_x0.device, batch.s_txt
        order, kind, session = (t.to(dev) for t in spec.tensors()[1:])
        noisy = kind == KIND_NOISY
        need = (block_visibility(order, kind, session, spec.mask_type)[noisy].any(0) & ~noisy)   # (nb,)
        need = need[spec.token_blocks().to(dev)]                                      # (S,)
        need[kv_cache.joint_rows(s_txt).to(dev)] = False
        rows = need.nonzero().squeeze(1)
        if rows.numel():
            self._run_cached(batch.img_x0, batch, rows[rows < s_txt], rows[rows >= s_txt] - s_txt, kv_cache, True)
        return rows.numel()

    def _forward_step(self, x_img: torch.Tensor, batch: PackedBatch, kv_cache: KVCache) -> torch.Tensor:
        """The noisy tokens against [cached context; themselves] -> [S_img, patch_dim] (0 off noisy rows)."""
        self._check_kv(batch, kv_cache)
        spec, dev, s_txt = batch.spec, x_img.device, batch.s_txt
        img_blk = spec.token_blocks().to(dev)[s_txt:]
        img_q = (spec.block_kind.to(dev)[img_blk] == KIND_NOISY).nonzero().squeeze(1)   # (S_noisy,)
        out = x_img.new_zeros(x_img.shape)
        if img_q.numel():
            none = torch.zeros(0, dtype=torch.long, device=dev)
            out[img_q] = self._run_cached(x_img, batch, none, img_q, kv_cache, False).to(out.dtype)
        return out

    def _check_kv(self, batch: PackedBatch, kv_cache: KVCache) -> None:
        reason = self.kv_cache_support()
        if reason:
            raise ValueError(reason)
        if batch.spec.mask_type != "block_causal":
            raise ValueError(f"kv_cache: needs the block_causal mask; under {batch.spec.mask_type!r} the context "
                             f"attends to the noisy target, so its K/V change every step (docs/kv_cache.md)")
        if not isinstance(kv_cache, KVCache) or kv_cache.num_layers != len(self.layers):
            raise ValueError(f"kv_cache: expected a KVCache of {len(self.layers)} layers (MMDiT.new_kv_cache()), "
                             f"got {type(kv_cache).__name__}")
        s_img = batch.img_x0.shape[0]
        for name, rows, size in (("text", kv_cache.txt_rows, batch.s_txt), ("image", kv_cache.img_rows, s_img)):
            if rows.numel() and int(rows.max()) >= size:       # a longer layout's, or another session's, cache
                raise ValueError(f"kv_cache: cached {name} row {int(rows.max())} lies outside the batch's {size} "
                                 f"{name} rows: the cache is not this session's context")

    def _kv_signature(self, x_img, batch, c, txt_rows, img_rows) -> tuple[torch.Tensor, torch.Tensor]:
        """What the model reads for each token (input row, positions, block order/kind/session, c):
        float [S_t, *] and [S_i, *]. Equal signatures and a closed visible set give equal K/V."""
        spec, s_txt = batch.spec, batch.s_txt
        dev = x_img.device
        blk = spec.token_blocks().to(dev)
        meta = torch.stack([t.to(dev) for t in spec.tensors()[1:]], 1).float()         # (nb, 3)
        tb, ib = blk[txt_rows], blk[img_rows + s_txt]
        tpos = batch.txt_pos[txt_rows].float()
        tpos = tpos[:, None] if tpos.ndim == 1 else tpos.flatten(1)     # (S_t, k); S_t may be 0 (maps only)
        f = lambda t: t.to(dev, torch.float32)
        sig_t = torch.cat([meta[tb], f(batch.txt_emb[txt_rows]), f(batch.txt_turn[txt_rows])[:, None], f(tpos),
                           f(c[tb])], 1)                                 # block meta first: KVCache.join re-sessions
        sig_i = torch.cat([meta[ib], f(x_img[img_rows]), f(batch.img_pos[img_rows]), f(c[ib])], 1)
        return sig_t, sig_i

    def _run_cached(self, x_img, batch, txt_q, img_q, cache: KVCache, store: bool) -> torch.Tensor:
        """Blocks on the rows txt_q (text stream) and img_q (image stream) against [cached; own] K/V
        -> image rows' output [len(img_q), patch_dim]; with ``store`` their K/V join the cache."""
        spec, dev, s_txt = batch.spec, x_img.device, batch.s_txt
        c_txt, c_img = cache.txt_rows.to(dev), cache.img_rows.to(dev)
        blk = spec.token_blocks().to(dev)                                              # (S,)
        q_joint = torch.cat([txt_q, img_q + s_txt])                                    # (Sq,)
        k_joint = torch.cat([c_txt, txt_q, c_img + s_txt, img_q + s_txt])             # (N + Sq,), LayerKV order
        c, shared = self._conditioning(batch)                                          # (nb, D), (nb, 6D)

        # Exactness: the cached tokens must be what a full forward on this batch computes
        # (same inputs, positions, blocks, conditioning), and the rows computed here must see
        # nothing outside [cached; own] while no cached token sees them.
        if len(cache):
            sig_t, sig_i = self._kv_signature(x_img, batch, c, c_txt, c_img)
            for name, now, then, rows in (("text", sig_t, cache.txt_sig, c_txt), ("image", sig_i, cache.img_sig, c_img)):
                bad = ((now - then.to(dev)).abs() > 1e-5 * (1 + then.to(dev).abs())).any(1) if rows.numel() else rows
                if bad.any():
                    raise ValueError(f"kv_cache: cached {name} row {int(rows[bad][0])} no longer matches the batch "
                                     f"(input, position, block or conditioning changed); use a new cache")
        order, kind, session = (t.to(dev) for t in spec.tensors()[1:])
        vis = block_visibility(order, kind, session, spec.mask_type)                   # (nb, nb)
        q_blocks = torch.unique(blk[q_joint])
        lens = spec.block_offsets.to(dev).diff()
        covered = torch.bincount(blk[k_joint], minlength=spec.num_blocks) == lens
        missing = (vis[q_blocks].any(0) & ~covered).nonzero()
        if missing.numel():
            raise ValueError(f"kv_cache: block {int(missing[0])} is visible to the rows being computed but not "
                             f"cached; call prefill on this batch first")
        if len(cache) and vis[torch.unique(blk[torch.cat([c_txt, c_img + s_txt])])][:, q_blocks].any():
            raise ValueError("kv_cache: a cached token sees the rows being computed; the cache is stale")

        plan = build_rows_plan(spec, q_joint, k_joint)
        kvs = [LayerKV(cache, i, plan, txt_q.numel(), store) for i in range(len(self.layers))]
        cos, sin = self.rope(batch)
        h_txt, h_img = self._embed(x_img, batch, txt_q, img_q)                         # (S_t, 1, D), (S_i, 1, D)
        stream_blocks = [blk[txt_q], blk[img_q + s_txt]]
        ctx = BlockContext(c=c, shared_mod=shared, stream_blocks=stream_blocks, rope=(cos[q_joint], sin[q_joint]),
                           spec=spec, kv=kvs)
        streams = [h_txt, h_img]
        for layer in self.layers:
            streams = layer(streams, ctx)
        out = self._final_layer(streams[1], c, shared, stream_blocks[1])[:, 0]         # (S_i, patch_dim)
        if store:                                                                      # commit the whole call at once
            sig_t, sig_i = self._kv_signature(x_img, batch, c, txt_q, img_q)
            cat = lambda old, new: new if old is None else torch.cat([old, new])
            cache.k, cache.v = [l.new_k for l in kvs], [l.new_v for l in kvs]
            cache.txt_sig, cache.img_sig = cat(cache.txt_sig, sig_t), cat(cache.img_sig, sig_i)
            cache.txt_rows, cache.img_rows = torch.cat([c_txt, txt_q]), torch.cat([c_img, img_q])
        return out

    # ------------------------------------------------------------------ checkpointing
    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """Parallel linears shard themselves; everything else is replicated (MegatronModule default).
        ``layers`` is a plain ModuleList, so each block is asked directly."""
        sd = {}
        for name, child in self.named_children():
            if name == "layers":
                for i, layer in enumerate(child):
                    sd.update(layer.sharded_state_dict(f"{prefix}layers.{i}.", sharded_offsets, metadata))
            else:
                sd.update(sharded_state_dict_default(child, f"{prefix}{name}.", sharded_offsets, metadata,
                                                     tp_group=self.tp_group))
        return sd

    # ------------------------------------------------------------------ accounting
    def num_parameters(self) -> int:
        """Parameters held by this rank (the full model when TP = 1)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_step(self, batch: PackedBatch, training: bool = True) -> float:
        """Matmul FLOPs of one forward (x3 with backward) on this packed batch, full model (all TP ranks).

        Linears: 2 * tokens * weights; attention: 4 * heads * head_dim per allowed (q, k) pair per layer
        (QK^T and PV), with allowed pairs counted from the spec's block table, not an S x S mask.
        """
        cfg, spec = self.cfg, batch.spec
        D, F_, L, A = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers, cfg.num_heads * cfg.head_dim
        s_txt, s_img = batch.s_txt, batch.s_img
        per_token_layer = 4 * D * A + 3 * D * F_                                 # qkv + proj + SwiGLU
        linear = 2 * (s_txt + s_img) * L * per_token_layer
        embed = 2 * (s_txt * cfg.text_dim * D + 2 * s_img * cfg.patch_dim * D)   # text/image in + final out
        lens = (spec.block_offsets[1:] - spec.block_offsets[:-1]).double()
        vis = block_visibility(spec.block_order, spec.block_kind, spec.block_session, spec.mask_type).double()
        pairs = float(lens @ vis @ lens)
        attention = 4 * pairs * A * L
        fwd = float(linear + embed + attention)
        return 3 * fwd if training else fwd


def build_model(cfg: MMDiTConfig | dict, tensor_model_parallel_size: int = 1, sequence_parallel: bool = False,
                params_dtype: torch.dtype = torch.float32, tp_group=None, device=None,
                meta: bool = False, recompute: bool = False) -> MMDiT:
    """MMDiTConfig or a dict of its fields -> MMDiT (needs Megatron's parallel groups initialised).

    device: where to put it (None: CUDA when available, else CPU). meta=True builds on the meta
    device without initialisation (parameter counting of 3B/7B on a laptop).
    """
    cfg = cfg if isinstance(cfg, MMDiTConfig) else build(MMDiTConfig, cfg, "model")
    check_tensor_parallel(cfg, tensor_model_parallel_size)
    model_cls = MMDiT
    if cfg.variant == "official":       # the released models' architecture (model/official.py)
        from .official import OfficialMMDiT as model_cls
    if meta:
        tcfg = cfg.to_transformer_config(tensor_model_parallel_size, sequence_parallel, params_dtype,
                                         use_cpu_initialization=True, perform_initialization=False)
        with torch.device("meta"):
            return model_cls(cfg, tcfg, tp_group=tp_group, device="meta", recompute=recompute)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tcfg = cfg.to_transformer_config(tensor_model_parallel_size, sequence_parallel, params_dtype,
                                     use_cpu_initialization=device.type != "cuda")
    return model_cls(cfg, tcfg, tp_group=tp_group, device=device, recompute=recompute).to(device)
