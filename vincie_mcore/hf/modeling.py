"""VincieMMDiT: the VINCIE MM-DiT in plain PyTorch (torch.nn only), loadable from an exported folder.

The same math as ``vincie_mcore/model/mmdit.py`` (and ``model/official.py`` for ``variant: official``, the
released VINCIE-3B/7B; docs/official.md) for one device: no Megatron-Core, no process
groups, no tensor/sequence/context parallelism, the torch attention core only. Parameter names
are the Megatron model's single-device state-dict names (the exported tensor names,
docs/export.md), so ``load_state_dict`` takes a training model's ``state_dict()`` (minus
Megatron's ``_extra_state`` entries) or an export's tensors as they are.

    model = VincieMMDiT.from_pretrained("exports/demo")        # config.json + *.safetensors
    out = model(x_img, batch)                                  # [S_img, patch_dim] -> [S_img, patch_dim]

Shapes: one packed sequence, no batch dimension; streams are [S, D] (text, then image, in
joint order). Blocks use ``[S, 1, D]`` only where the Megatron code does, to keep the
arithmetic (and so the result) the same.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from vincie_kernels.reference import block_visibility, token_block_ids
from vincie_mcore.config import build
from vincie_mcore.model.config import MMDiTConfig
from vincie_mcore.model.embeddings import TextEmbedder, TimestepEmbedder, apply_rope, rope_cos_sin
from vincie_mcore.packed.batch import PackedBatch
from vincie_mcore.packed.maskspec import MaskSpec

GATE_CHUNKS = (2, 5)            # gate_a, gate_m among the six modulation vectors (as model/blocks.py)
# The MMDiTConfig fields this file implements. A field added to MMDiTConfig later is refused
# (one line) unless it keeps its default, so a new architecture option cannot be silently dropped.
# attention_backend / attention_tilings / transformer_impl / fused_ops choose kernels, not math: this model
# always runs torch ops.
IMPLEMENTED = frozenset((
    "hidden_size", "num_layers", "mm_layers", "num_heads", "head_dim", "ffn_hidden_size", "text_dim", "patch_dim",
    "max_turns", "rope_theta", "image_abs_pos_grid", "text_adaln", "rope_axes_dim", "softmax_scale", "adaln",
    "adaln_zero_init", "norm_eps", "qk_norm_eps", "frequency_embedding_size", "timestep_scale", "init_method_std",
    "attention_backend", "attention_tilings", "transformer_impl", "fused_ops",
    # the released models (model/official.py); rope_image_origin only places positions in the batch
    "variant", "image_in_dim", "text_proj", "rope_image_origin"))


def check_supported(cfg: MMDiTConfig) -> None:
    """One-line refusal for a config this plain model does not implement."""
    for f in dataclasses.fields(MMDiTConfig):
        if f.name not in IMPLEMENTED and getattr(cfg, f.name) != f.default:
            raise ValueError(f"VincieMMDiT: config key {f.name}={getattr(cfg, f.name)!r} is not implemented "
                             f"by vincie_mcore/hf/modeling.py")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------
# Attention core: per-session SDPA under the packed mask (torch path of model/attention.py)
# ----------------------------------------------------------------------------

def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float) -> torch.Tensor:
    """q, k, v [S, H, d] over the whole joint sequence -> [S, H, d].

    Tokens only see tokens of their own session, so each session is one SDPA call with its
    small mask from the block visibility table (kernels/vincie_kernels/reference.py's rule).
    """
    offsets, order, kind, session = (t.to(q.device) for t in spec.tensors())
    blk = token_block_ids(offsets)                                           # (S,)
    vis = block_visibility(order, kind, session, spec.mask_type)             # (nb, nb)
    tok_sess = session.long()[blk]                                           # (S,)
    out = q.new_zeros(q.shape)
    for s in torch.unique(tok_sess).tolist():
        rows = (tok_sess == s).nonzero().squeeze(1)                          # (L,)
        b = blk[rows]
        mask = vis[b[:, None], b[None, :]]                                   # (L, L)
        qs, ks, vs = (t.index_select(0, rows).transpose(0, 1) for t in (q, k, v))   # (H, L, d)
        o = F.scaled_dot_product_attention(qs[None], ks[None], vs[None],
                                           attn_mask=None if bool(mask.all()) else mask, scale=scale)[0]
        out.index_copy_(0, rows, o.transpose(0, 1))                          # (L, H, d)
    return out


# ----------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------

class AdaLNTable(nn.Module):
    """adaLN-single: shared(c) + a learned [chunks, D] table of this layer/stream."""

    def __init__(self, D: int, chunks: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(chunks, D))

    def forward(self, c: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return shared.reshape(shared.shape[0], self.table.shape[0], -1) + self.table   # (nb, chunks, D)


class AdaLNLinear(nn.Module):
    """Per-layer adaLN (DiT): Linear(SiLU(c))."""

    def __init__(self, D: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(D, chunks * D)

    def forward(self, c: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(F.silu(c)).reshape(c.shape[0], self.chunks, -1)           # (nb, chunks, D)


class Projections(nn.Module):
    """One weight set: linear_qkv (rows [q, k, v] per head), per-head q/k RMSNorm, linear_proj."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        A, d = cfg.num_heads * cfg.head_dim, cfg.head_dim
        self.head_dim = d
        self.linear_qkv = nn.Linear(cfg.hidden_size, 3 * A)
        self.q_layernorm = nn.RMSNorm(d, eps=cfg.qk_norm_eps)
        self.k_layernorm = nn.RMSNorm(d, eps=cfg.qk_norm_eps)
        self.linear_proj = nn.Linear(A, cfg.hidden_size)

    def qkv(self, x: torch.Tensor):
        y = self.linear_qkv(x)                                               # (S, 1, 3A)
        y = y.reshape(y.shape[0], y.shape[-1] // (3 * self.head_dim), 3, self.head_dim)   # (S, H, 3, d)
        q, k, v = y.unbind(2)                                                # (S, H, d)
        return self.q_layernorm(q), self.k_layernorm(k), v


class SwiGLU(nn.Module):
    """linear_fc1 (D -> 2F, rows [gate; up]) -> silu(gate) * up -> linear_fc2 (F -> D)."""

    def __init__(self, D: int, F_: int, bias: bool = True):
        super().__init__()
        self.linear_fc1 = nn.Linear(D, 2 * F_, bias=bias)
        self.linear_fc2 = nn.Linear(F_, D, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.linear_fc1(x), 2, dim=-1)
        return self.linear_fc2(F.silu(a) * b)


class Block(nn.Module):
    """Dual-stream (weight sets ``txt``, ``img``) or shared (``joint``) MM-DiT block; joint attention."""

    def __init__(self, cfg: MMDiTConfig, dual: bool):
        super().__init__()
        self.names = ("txt", "img") if dual else ("joint",)
        self.stream_weights = (0, 1) if dual else (0, 0)
        self.norm_eps = cfg.norm_eps
        self.official = cfg.variant == "official"       # weightless RMSNorm pre-norms, SwiGLU without biases
        self.scale = cfg.softmax_scale or 1.0 / math.sqrt(cfg.head_dim)
        adaln = AdaLNTable if cfg.adaln == "single" else AdaLNLinear
        self.adaln = nn.ModuleDict({n: adaln(cfg.hidden_size, 6) for n in self.names})
        self.attention = nn.ModuleDict({n: Projections(cfg) for n in self.names})
        self.mlp = nn.ModuleDict({n: SwiGLU(cfg.hidden_size, cfg.ffn_hidden_size, bias=not self.official)
                                  for n in self.names})

    def _norm(self, x):
        if self.official:
            return F.rms_norm(x, (x.shape[-1],), eps=self.norm_eps)
        return F.layer_norm(x, (x.shape[-1],), eps=self.norm_eps)

    def forward(self, streams, c, shared, stream_blocks, rope, spec):
        """streams [text [S_txt, 1, D], image [S_img, 1, D]] -> same shapes."""
        names = [self.names[w] for w in self.stream_weights]
        mods = [self.adaln[n](c, shared).index_select(0, b).unsqueeze(1).unbind(2)      # 6 x (S_i, 1, D)
                for n, b in zip(names, stream_blocks)]
        h = [modulate(self._norm(x), m[0], m[1]) for x, m in zip(streams, mods)]
        qkvs = [self.attention[n].qkv(x) for n, x in zip(names, h)]
        lens = [t[0].shape[0] for t in qkvs]
        q, k, v = (torch.cat([t[i] for t in qkvs], dim=0) for i in range(3))  # (S, H, d)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        o = masked_attention(q, k, v, spec, self.scale)                      # (S, H, d)
        attn = [self.attention[n].linear_proj(oi.reshape(oi.shape[0], 1, -1))          # (S_i, 1, D)
                for n, oi in zip(names, o.split(lens, dim=0))]
        streams = [x + m[2] * a for x, m, a in zip(streams, mods, attn)]
        return [x + m[5] * self.mlp[n](modulate(self._norm(x), m[3], m[4])) for n, x, m in zip(names, streams, mods)]


class FinalLayer(nn.Module):
    """norm -> modulate(shift, scale from the block timestep) -> Linear(D, patch_dim)."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        self.norm_eps = cfg.norm_eps
        self.adaln = (AdaLNTable if cfg.adaln == "single" else AdaLNLinear)(cfg.hidden_size, 2)
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_dim)

    def forward(self, x, c, token_blocks):
        shift, scale = self.adaln(c, torch.cat([c, c], dim=-1)).index_select(0, token_blocks).unsqueeze(1).unbind(2)
        return self.linear(modulate(F.layer_norm(x, (x.shape[-1],), eps=self.norm_eps), shift, scale))


class OfficialFinalLayer(nn.Module):
    """The release's: RMSNorm (weight) -> modulate(attention shift/scale of adaLN-single's shared + table)
    -> Linear(D, patch_dim) (as model/official.py)."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.table = nn.Parameter(torch.zeros(2, cfg.hidden_size))
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_dim)

    def forward(self, x, shared, token_blocks):
        mod = shared.reshape(shared.shape[0], 6, -1)[:, :2] + self.table                  # (nb, 2, D)
        shift, scale = mod.index_select(0, token_blocks).unsqueeze(1).unbind(2)           # (S, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))


class OfficialTextEmbedder(nn.Module):
    """The release's text input (as model/official.py): ``<TURN>_i`` rows replaced by row i of a table in the
    text encoder's space, then Linear (3B) or Linear-GELU(tanh)-Linear-RMSNorm (7B)."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        mlp = cfg.text_proj == "mlp_norm"
        self.max_turns = cfg.max_turns
        self.turn_embedding = nn.Embedding(cfg.max_turns, cfg.text_dim)
        self.fc1 = nn.Linear(cfg.text_dim, cfg.text_dim) if mlp else None
        self.proj = nn.Linear(cfg.text_dim, cfg.hidden_size)
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps) if mlp else None

    def forward(self, txt_emb, txt_turn):
        if txt_turn.numel() and int(txt_turn.max()) >= self.max_turns:
            raise ValueError(f"txt_turn: turn index {int(txt_turn.max())} >= max_turns={self.max_turns}")
        x = torch.where((txt_turn >= 0)[:, None], self.turn_embedding(txt_turn.clamp(min=0)), txt_emb)
        if self.fc1 is not None:
            x = F.gelu(self.fc1(x), approximate="tanh")
        x = self.proj(x)
        return self.norm(x) if self.norm is not None else x


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------

class VincieMMDiT(nn.Module):
    """The VINCIE MM-DiT for one device. The constructor arguments are the config
    (``MMDiTConfig``'s fields, e.g. ``hidden_size``, ``num_layers``, ``mm_layers``; docs/export.md).

    Weights start at zero: they come from ``from_pretrained`` or ``load_state_dict``.
    """

    def __init__(self, **config):
        super().__init__()
        cfg = build(MMDiTConfig, config, "model")
        check_supported(cfg)
        self.cfg = cfg
        D = cfg.hidden_size
        self.official = cfg.variant == "official"
        self.in_dim = cfg.image_in_dim or cfg.patch_dim
        self.img_embedder = nn.Linear(self.in_dim, D)
        self.txt_embedder = OfficialTextEmbedder(cfg) if self.official else \
            TextEmbedder(cfg.text_dim, D, cfg.max_turns, cfg.init_method_std)
        n = cfg.image_abs_pos_grid
        self.img_pos_embedder = nn.Embedding(n * n, D) if n else None
        self.t_embedder = TimestepEmbedder(D, cfg.frequency_embedding_size, cfg.timestep_scale, cfg.init_method_std)
        self.text_cond = nn.Linear(cfg.text_dim, D) if cfg.text_adaln else None
        self.adaln_single = nn.Linear(D, 6 * D) if cfg.adaln == "single" else None
        self.layers = nn.ModuleList([Block(cfg, dual=i < cfg.mm_layers) for i in range(cfg.num_layers)])
        self.final_layer = OfficialFinalLayer(cfg) if self.official else FinalLayer(cfg)

    @property
    def config(self) -> dict:
        """The constructor arguments (written to config.json)."""
        return self.cfg.to_dict()

    # ------------------------------------------------------------------ forward
    def rope(self, batch: PackedBatch):
        """cos, sin [S, head_dim/2] (as MMDiT.rope)."""
        cfg = self.cfg
        if self.official:          # text (j, j, j) over the three axes; channels after them unrotated
            tpos = batch.txt_pos if batch.txt_pos.dim() == 2 else batch.txt_pos[:, None].expand(-1, 3)
            ct, st = rope_cos_sin(tpos, cfg.rope_axes_dim, cfg.rope_theta)
            ci, si = rope_cos_sin(batch.img_pos, cfg.rope_axes_dim, cfg.rope_theta)
            cos, sin = torch.cat([ct, ci]), torch.cat([st, si])
            free = cfg.head_dim // 2 - cos.shape[1]
            return (torch.cat([cos, cos.new_ones(cos.shape[0], free)], 1),
                    torch.cat([sin, sin.new_zeros(sin.shape[0], free)], 1))
        txt_axes = (cfg.head_dim,) if batch.txt_pos.dim() == 1 else cfg.rope_axes_dim
        ct, st = rope_cos_sin(batch.txt_pos, txt_axes, cfg.rope_theta)
        ci, si = rope_cos_sin(batch.img_pos, cfg.rope_axes_dim, cfg.rope_theta)
        return torch.cat([ct, ci]), torch.cat([st, si])

    def block_text_mean(self, batch: PackedBatch) -> torch.Tensor:
        """[nb, text_dim]: per block, the summed mean embeddings of its instruction blocks (as MMDiT)."""
        nb = batch.spec.num_blocks
        if batch.block_text is None or batch.block_text.shape != (nb, 2):
            raise ValueError(f"batch.block_text: text_adaln needs a [{nb}, 2] long tensor from the packer")
        emb = batch.txt_emb
        words = (batch.txt_turn < 0).to(emb.dtype)[:, None]                     # <TURN> rows do not count
        tok_block = batch.spec.token_blocks()[: batch.s_txt].to(emb.device).long()
        sums = emb.new_zeros(nb, emb.shape[1]).index_add_(0, tok_block, emb * words)
        counts = emb.new_zeros(nb, 1).index_add_(0, tok_block, words).clamp(min=1)
        means = torch.cat([sums / counts, emb.new_zeros(1, emb.shape[1])])       # row nb: "none"
        idx = batch.block_text.to(emb.device).long()
        return means[torch.where(idx < 0, nb, idx)].sum(1)                       # (nb, text_dim)

    def forward(self, x_img: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """x_img [S_img, patch_dim] -> [S_img, patch_dim] (the image stream's prediction)."""
        cfg, spec = self.cfg, batch.spec
        if x_img.dim() != 2 or x_img.shape[1] != self.in_dim:
            what = "image_in_dim" if self.official else "patch_dim"
            raise ValueError(f"x_img: expected [S_img, {what}={self.in_dim}], got {tuple(x_img.shape)}")
        if spec.seq_len != batch.s_txt + x_img.shape[0]:
            raise ValueError(f"batch.spec: covers {spec.seq_len} tokens but S_txt + S_img = "
                             f"{batch.s_txt} + {x_img.shape[0]}")
        dtype = self.img_embedder.weight.dtype
        blk = spec.token_blocks().to(x_img.device)                                    # (S,)
        rope = self.rope(batch)
        h_txt = self.txt_embedder(batch.txt_emb.to(dtype), batch.txt_turn)[:, None]    # (S_txt, 1, D)
        h_img = self.img_embedder(x_img.to(dtype))[:, None]                           # (S_img, 1, D)
        if self.img_pos_embedder is not None:
            n = cfg.image_abs_pos_grid
            hw = batch.img_pos[:, 1:].to(x_img.device)                                # (S_img, 2)
            if hw.numel() and int(hw.max()) >= n:
                raise ValueError(f"image_abs_pos_grid={n} is smaller than a {int(hw.max()) + 1}-token image side")
            h_img = h_img + self.img_pos_embedder(hw[:, 0] * n + hw[:, 1])[:, None]
        c = self.t_embedder(batch.block_t)                                            # (nb, D)
        if self.text_cond is not None:
            c = c + self.text_cond(self.block_text_mean(batch).to(dtype))
        shared = self.adaln_single(F.silu(c)) if self.adaln_single is not None else None   # (nb, 6D)
        n_txt = h_txt.shape[0]
        streams, stream_blocks = [h_txt, h_img], [blk[:n_txt], blk[n_txt:]]
        for layer in self.layers:
            streams = layer(streams, c, shared, stream_blocks, rope, spec)
        if self.official:
            return self.final_layer(streams[1], shared, stream_blocks[1])[:, 0]       # (S_img, patch_dim)
        return self.final_layer(streams[1], c, stream_blocks[1])[:, 0]                # (S_img, patch_dim)

    # ------------------------------------------------------------------ files
    def expected_tensors(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape, dtype) of every tensor an export of this config holds."""
        return {k: (tuple(v.shape), v.dtype) for k, v in self.state_dict().items()}

    @classmethod
    def from_pretrained(cls, folder, dtype: torch.dtype | None = None, device="cpu") -> "VincieMMDiT":
        """Build from ``folder/config.json`` and load its safetensors (never a pickle)."""
        from vincie_mcore.hf.files import read_config, read_tensors

        meta = read_config(folder)
        with torch.device("meta"):
            model = cls(**meta["model"])
        sd = read_tensors(folder, model.expected_tensors())
        model.load_state_dict(sd, assign=True)
        model = model.to(device)
        return model.to(dtype) if dtype is not None else model

    def save_pretrained(self, folder, dtype: str = "fp32", max_shard_size: int | str = "5GB",
                        extra: dict | None = None) -> dict:
        """Write ``config.json`` + safetensors (one file or shards + index) + README.md; returns the stats."""
        from vincie_mcore.hf.files import write_export

        sd = {k: v.detach() for k, v in self.state_dict().items()}
        return write_export(folder, self.config, {k: (tuple(v.shape), v.dtype) for k, v in sd.items()},
                            lambda names: {k: sd[k] for k in names}, dtype=dtype, max_shard_size=max_shard_size,
                            extra=extra)

