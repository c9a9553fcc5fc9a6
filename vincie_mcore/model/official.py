"""The released VINCIE-3B/7B architecture: ``model.variant: official`` (docs/official.md).

Same Megatron-Core model, specs, parallel linears, attention cores and checkpoints as the paper
variant; what differs is chosen here and in ``specs.py``:

* conditioning: one image token per patch carrying, per pixel, [x_t | clean latent | flag]
  (``image_in_dim`` wide); every frame of a session is in the sequence under the sample's t (all
  blocks of a session share ``block_t``), full attention within the session; the model predicts
  every frame and the sampler keeps the last (``official_session_batch``, ``official_image_tokens``);
* pre-norms: RMSNorm without weight (``OfficialDualStreamBlock`` / ``OfficialSharedBlock``);
* final layer: RMSNorm with weight, modulated by the *attention* shift/scale of adaLN-single's shared
  modulation plus learned offsets (``OfficialFinalLayer``);
* RoPE: three axes of ``rope_axes_dim`` over the head, the remaining channels unrotated; text token j
  at (j, j, j); image i at (L_text + i, h, w) or (i, h, w) (``rope_image_origin``);
* text: ``<TURN>_i`` rows come from a table in the text encoder's space, before the projection, which is
  a Linear (3B) or Linear-GELU(tanh)-Linear followed by RMSNorm (7B) (``OfficialTextEmbedder``);
* SwiGLU without biases (``MMDiTConfig.to_transformer_config``).

Weights of the release are mapped onto these modules by ``vincie_mcore/convert/official.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

from vincie_mcore.packed.batch import PackedBatch
from vincie_mcore.packed.official import (OFFICIAL_NEGATIVE_PROMPT, official_frames,  # noqa: F401 (re-exported)
                                          official_image_tokens, official_session_batch, official_turn_texts)

from .blocks import DualStreamBlock, SharedBlock, mark_sequence_parallel, modulate
from .embeddings import rope_cos_sin
from .mmdit import MMDiT


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------

class _RMSPreNorm:
    pre_norm = "rms"

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.norm_eps)


class OfficialDualStreamBlock(_RMSPreNorm, DualStreamBlock):
    """Dual-stream block with the release's weightless RMSNorm pre-norms."""


class OfficialSharedBlock(_RMSPreNorm, SharedBlock):
    """Shared block with the release's weightless RMSNorm pre-norms."""


class OfficialTextEmbedder(torch.nn.Module):
    """Text-encoder rows [S, text_dim] -> [S, D]. ``<TURN>_i`` rows are replaced by row i of a table in the
    text encoder's space *before* the projection (the release's prompt-id embedding, 64 rows).

    text_proj "linear": ``proj``; "mlp_norm": ``proj(gelu_tanh(fc1(x)))`` then ``norm`` (RMSNorm, weight)."""

    def __init__(self, text_dim: int, hidden_size: int, max_turns: int, text_proj: str, eps: float, std: float):
        super().__init__()
        self.max_turns = max_turns
        self.turn_embedding = torch.nn.Embedding(max_turns, text_dim)
        self.fc1 = torch.nn.Linear(text_dim, text_dim) if text_proj == "mlp_norm" else None
        self.proj = torch.nn.Linear(text_dim, hidden_size)
        self.norm = torch.nn.RMSNorm(hidden_size, eps=eps) if text_proj == "mlp_norm" else None
        for lin in (self.fc1, self.proj):
            if lin is not None:
                torch.nn.init.normal_(lin.weight, std=std)
                torch.nn.init.zeros_(lin.bias)
        torch.nn.init.normal_(self.turn_embedding.weight, std=std)

    def forward(self, txt_emb: torch.Tensor, txt_turn: torch.Tensor) -> torch.Tensor:
        if txt_turn.numel() and int(txt_turn.max()) >= self.max_turns:
            raise ValueError(f"txt_turn: turn index {int(txt_turn.max())} >= max_turns={self.max_turns}")
        x = txt_emb.to(self.proj.weight.dtype)
        x = torch.where((txt_turn >= 0)[:, None], self.turn_embedding(txt_turn.clamp(min=0)), x)   # (S, text_dim)
        if self.fc1 is not None:
            x = F.gelu(self.fc1(x), approximate="tanh")
        x = self.proj(x)                                                                          # (S, D)
        return self.norm(x) if self.norm is not None else x


class OfficialFinalLayer(MegatronModule):
    """RMSNorm (weight) -> modulate(shift_a + table[0], scale_a + table[1]) -> Linear(D, out_dim).

    shift_a, scale_a are chunks 0 and 1 (the attention's) of adaLN-single's shared [nb, 6D]; the table holds
    the learned offsets in this library's ``x * (1 + scale) + shift`` convention (release scale - 1)."""

    def __init__(self, config, out_dim: int, norm_eps: float):
        super().__init__(config=config)
        D, dtype = config.hidden_size, config.params_dtype
        self.norm = torch.nn.RMSNorm(D, eps=norm_eps, dtype=dtype)
        self.table = torch.nn.Parameter(torch.zeros(2, D, dtype=dtype))
        self.linear = torch.nn.Linear(D, out_dim, dtype=dtype)
        with torch.no_grad():
            torch.nn.init.normal_(self.linear.weight, std=config.init_method_std)
            self.linear.bias.zero_()
        mark_sequence_parallel(self)

    def forward(self, x: torch.Tensor, shared: torch.Tensor, token_blocks: torch.Tensor) -> torch.Tensor:
        """x [S, 1, D], shared [nb, 6D], token_blocks [S] -> [S, 1, out_dim]."""
        D = x.shape[-1]
        mod = shared.reshape(shared.shape[0], 6, D)[:, :2] + self.table                   # (nb, 2, D)
        shift, scale = mod.index_select(0, token_blocks).unsqueeze(1).unbind(2)           # (S, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))                          # (S, 1, out_dim)


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------

class OfficialMMDiT(MMDiT):
    """MMDiT with the released models' input, text, RoPE and final layer (blocks come from ``specs.py``)."""

    def __init__(self, cfg, config=None, tp_group=None, device=None, recompute: bool = False):
        super().__init__(cfg, config=config, tp_group=tp_group, device=device, recompute=recompute)
        config, D, std = self.config, cfg.hidden_size, cfg.init_method_std
        dtype = config.params_dtype
        self.in_dim = cfg.image_in_dim or cfg.patch_dim
        self.img_embedder = torch.nn.Linear(self.in_dim, D, dtype=dtype)
        with torch.no_grad():
            torch.nn.init.normal_(self.img_embedder.weight, std=std)
            self.img_embedder.bias.zero_()
        self.txt_embedder = OfficialTextEmbedder(cfg.text_dim, D, cfg.max_turns, cfg.text_proj, cfg.norm_eps,
                                                 std).to(dtype)
        self.final_layer = OfficialFinalLayer(config, cfg.patch_dim, cfg.norm_eps)

    def _check(self, x_img: torch.Tensor, batch: PackedBatch) -> None:
        if x_img.dim() != 2 or x_img.shape[1] != self.in_dim:
            raise ValueError(f"x_img: expected [S_img, image_in_dim={self.in_dim}] ([x_t | clean latent | flag] "
                             f"per pixel), got {tuple(x_img.shape)}")
        super()._check(x_img[:, : self.cfg.patch_dim], batch)

    def rope(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [S_joint, head_dim/2]: text (j, j, j), images as the batch places them, over the three
        axes of rope_axes_dim; the channels after them are not rotated (cos 1, sin 0)."""
        cfg = self.cfg
        tpos = batch.txt_pos if batch.txt_pos.dim() == 2 else batch.txt_pos[:, None].expand(-1, 3)
        ct, st = rope_cos_sin(tpos, cfg.rope_axes_dim, cfg.rope_theta)
        ci, si = rope_cos_sin(batch.img_pos, cfg.rope_axes_dim, cfg.rope_theta)
        cos, sin = torch.cat([ct, ci]), torch.cat([st, si])                               # (S, rotated/2)
        free = cfg.head_dim // 2 - cos.shape[1]
        if free:
            cos = torch.cat([cos, cos.new_ones(cos.shape[0], free)], 1)
            sin = torch.cat([sin, sin.new_zeros(sin.shape[0], free)], 1)
        return cos, sin

    def _final_layer(self, x, c, shared, token_blocks):
        return self.final_layer(x, shared, token_blocks)

    def kv_cache_support(self) -> str | None:
        return ("kv_cache: the official variant attends over every frame of a session under one t (full mask); "
                "there is no clean context to cache")


# ----------------------------------------------------------------------------
# Sampling as the release does it (its input layout and prompts: packed/official.py)
# ----------------------------------------------------------------------------

def official_timesteps(steps: int, shift: float) -> torch.Tensor:
    """The release's trailing times (``UniformTrailingSamplingTimesteps``): 1, 1 - 1/n, ..., 1/n, SD3-shifted,
    then 0 (its Euler sampler's endpoint step)."""
    t = torch.arange(1.0, 0.0, -1.0 / steps)
    return torch.cat([shift * t / (1 + (shift - 1) * t), t.new_zeros(1)])


@torch.no_grad()
def official_sample(model: OfficialMMDiT, sessions: list[dict], negative: torch.Tensor, noise: list[torch.Tensor],
                    p: int, steps: int = 50, shift: float = 12.0, guidance: float = 7.5) -> list[torch.Tensor]:
    """Euler sampling of every frame of each session, as the release's ``generate.py`` runs it.

    sessions: as ``official_session_batch`` (``latents``' last frame is a placeholder, never read; ``t``
    ignored); negative: [L, text_dim] text-encoder rows of the negative prompt, the unconditional branch's
    whole text (one turn, ``<TURN>_0``); noise: per session [T, C, H, W]. Velocity prediction, x_s = x_t +
    (s - t) v, CFG v = v_neg + guidance (v_pos - v_neg) (guidance 1: the conditional branch only).
    Returns per session all frames [T, C, H, W]; the edit is the last one. Defaults: the 3B's (official_7b:
    shift 10, guidance 10)."""
    from dataclasses import replace
    cfg = model.cfg
    dev = noise[0].device                                   # the batches' index tensors are built on the CPU
    pos = official_session_batch(sessions, cfg, p).to(dev)
    neg = official_session_batch([dict(s, texts=[negative]) for s in sessions], cfg, p).to(dev)
    x = [n.clone() for n in noise]
    ts = official_timesteps(steps, shift)
    for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
        tokens = torch.cat([official_image_tokens(xi, sess["latents"], p) for xi, sess in zip(x, sessions)])
        run = lambda b: model(tokens, replace(b, block_t=torch.full_like(b.block_t, t)))   # (S_img, patch_dim)
        v = run(pos)
        if guidance != 1.0:
            v_neg = run(neg)
            v = v_neg + guidance * (v - v_neg)
        x = [xi + (s - t) * vi for xi, vi in zip(x, official_frames(v, sessions, p))]
    return x
