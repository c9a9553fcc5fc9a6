"""Everything that turns inputs into per-token vectors: timesteps, text, RoPE.

(Image tokens arrive patchified: ``packed/patches.py`` owns the patch layout.)

* ``TimestepEmbedder``: t of every *block* -> [nb, D] (never one MLP per token).
* ``TextEmbedder``: text-encoder rows -> D, with ``<TURN>_i`` rows replaced by learned vectors.
* RoPE: ``rope_cos_sin(pos, axes_dim, theta)`` -> tables, ``apply_rope(x, cos, sin)``. Text uses
  1D positions over the whole head dim; image tokens 3D (turn, h, w) over a split of it.
"""
from __future__ import annotations

import math

import torch
from torch import nn


# ----------------------------------------------------------------------------
# Timesteps and text
# ----------------------------------------------------------------------------

def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[n] float -> [n, dim] sinusoidal features (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                                  # (n, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)              # (n, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Block timesteps [nb] in [0, 1] -> conditioning vectors c [nb, D] (sinusoid -> MLP)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int, timestep_scale: float, std: float):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.timestep_scale = timestep_scale
        self.linear_1 = nn.Linear(frequency_embedding_size, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        for lin in (self.linear_1, self.linear_2):
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = timestep_features(t * self.timestep_scale, self.frequency_embedding_size)
        f = f.to(self.linear_1.weight.dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(f)))          # (nb, D)


class TextEmbedder(nn.Module):
    """Text-encoder rows [S_txt, text_dim] -> [S_txt, D]; rows with turn >= 0 take ``<TURN>_turn``."""

    def __init__(self, text_dim: int, hidden_size: int, max_turns: int, std: float):
        super().__init__()
        self.max_turns = max_turns
        self.proj = nn.Linear(text_dim, hidden_size)
        self.turn_embedding = nn.Embedding(max_turns, hidden_size)
        nn.init.normal_(self.proj.weight, std=std)
        nn.init.zeros_(self.proj.bias)
        nn.init.normal_(self.turn_embedding.weight, std=std)

    def forward(self, txt_emb: torch.Tensor, txt_turn: torch.Tensor) -> torch.Tensor:
        if txt_turn.numel() and int(txt_turn.max()) >= self.max_turns:
            raise ValueError(f"txt_turn: turn index {int(txt_turn.max())} >= max_turns={self.max_turns}")
        h = self.proj(txt_emb.to(self.proj.weight.dtype))                     # (S_txt, D)
        is_turn = (txt_turn >= 0)[:, None]
        turn = self.turn_embedding(txt_turn.clamp(min=0))                    # (S_txt, D)
        return torch.where(is_turn, turn, h)


# ----------------------------------------------------------------------------
# RoPE
# ----------------------------------------------------------------------------

def rope_cos_sin(pos: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [S] or [S, n_axes] (long) -> cos, sin [S, sum(axes_dim)/2] float32.

    Axis a rotates its own ``axes_dim[a]`` channels (consecutive pairs) with frequencies
    theta^(-2i/axes_dim[a]).
    """
    if pos.dim() == 1:
        pos = pos[:, None]                                                   # (S, 1)
    if pos.shape[1] != len(axes_dim):
        raise ValueError(f"rope: positions have {pos.shape[1]} axes but axes_dim={axes_dim}")
    angles = []
    for a, d in enumerate(axes_dim):
        if d == 0:
            continue
        inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d)
        angles.append(pos[:, a].double()[:, None] * inv[None])               # (S, d/2)
    ang = torch.cat(angles, dim=-1).float()                                  # (S, head_dim/2)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [S, H, Dh], cos/sin [S, Dh/2] -> x rotated pairwise ((x0, x1) by angle), same dtype."""
    S, H, Dh = x.shape
    xf = x.float().reshape(S, H, Dh // 2, 2)                                 # (S, H, Dh/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, None], sin[:, None]                                        # (S, 1, Dh/2)
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)            # (S, H, Dh/2, 2)
    return out.reshape(S, H, Dh).to(x.dtype)
