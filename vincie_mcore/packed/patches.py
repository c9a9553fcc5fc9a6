"""Latents <-> image-stream tokens: the patch layout every producer and consumer of the image
stream agrees on (the packer patchifies, the sampler's caller unpatchifies the result).

Token order is row-major over patches; features are ordered (c, py, px).
"""
from __future__ import annotations

import torch


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """[C, H, W] -> [H/p * W/p, C*p*p], patches row-major, features ordered (c, py, px)."""
    if latents.dim() != 3:
        raise ValueError(f"patchify: latents must be [C, H, W], got shape {tuple(latents.shape)}")
    C, H, W = latents.shape
    if p < 1 or H % p or W % p:
        raise ValueError(f"patchify: H={H} and W={W} must be multiples of the patch size p={p}")
    x = latents.reshape(C, H // p, p, W // p, p)          # (C, h, py, w, px)
    x = x.permute(1, 3, 0, 2, 4)                          # (h, w, C, py, px)
    return x.reshape((H // p) * (W // p), C * p * p)      # (h*w, C*p*p)


def unpatchify(tokens: torch.Tensor, h_tok: int, w_tok: int, p: int) -> torch.Tensor:
    """[h_tok * w_tok, C*p*p] -> [C, h_tok*p, w_tok*p]; the inverse of ``patchify``."""
    if tokens.dim() != 2 or tokens.shape[0] != h_tok * w_tok or tokens.shape[1] % (p * p):
        raise ValueError(f"unpatchify: tokens must be [h_tok*w_tok={h_tok * w_tok}, C*p*p] with p={p}, "
                         f"got shape {tuple(tokens.shape)}")
    C = tokens.shape[1] // (p * p)
    x = tokens.reshape(h_tok, w_tok, C, p, p)             # (h, w, C, py, px)
    x = x.permute(2, 0, 3, 1, 4)                          # (C, h, py, w, px)
    return x.reshape(C, h_tok * p, w_tok * p)             # (C, H, W)
