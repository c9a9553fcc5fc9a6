"""The released VINCIE-3B VAE (``vae.pth``) on single images, as a diffusers ``AutoencoderKL``.

The 3B's VAE is a causal video VAE inflated from SD3's (official ``models/vae/modules/video_vae.py``,
``s8_c16_t4_inflation_sd3.yaml``): 16 latent channels, x8 spatial, x4 temporal, no quant convs. For
one frame (how the released ``generate.py`` encodes and decodes session images: frame by frame, T = 1)
it reduces exactly to a 2-D autoencoder:

* every causal 3-D convolution pads the past by repeating the first frame, so with T = 1 each temporal
  tap sees the same frame and the kernel folds to ``weight.sum(dim=2)`` (the strided temporal
  down-sampling convs too: three copies in, one frame out);
* group norms run per frame, the mid-block attention per frame: the 2-D modules already;
* up-sampling is MAGVIT-style, not nearest: a learned 1x1 conv to ``(x, y, z, c)`` channels, a
  sub-pixel shuffle, the duplicate first frame of a temporal up-sampling dropped (so only the
  ``z = 0`` rows are used), then a 3x3 conv. diffusers has no such up-sampler: ``ShuffleUpsample2D``
  below replaces the decoder's ``Upsample2D``; everything else is diffusers' ``AutoencoderKL`` as is.

``load_official_3b_vae`` converts the official state dict tensor by tensor (safe loading only) and
loads it strictly. Videos (T > 1) are not supported: image editing needs single frames.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# models/vae/s8_c16_t4_inflation_sd3.yaml and configs/generate.yaml (vae.scaling_factor)
VAE_3B = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
              norm_num_groups=32, in_channels=3, out_channels=3, act_fn="silu")
VARIANTS = {"3b": dict(arch=VAE_3B, scaling=0.9152, shift=0.0)}

_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class ShuffleUpsample2D(nn.Module):
    """x2 up-sampling: 1x1 conv to 4C channels ordered (x, y, c), sub-pixel shuffle, 3x3 conv.

    forward: (N, C, h, w) -> (N, C, 2h, 2w). Matches the official ``Upsample3D`` on one frame once
    its ``upscale_conv`` rows are restricted to ``z = 0`` (``fold_official_vae_state_dict``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.upscale_conv = nn.Conv2d(channels, 4 * channels, kernel_size=1)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        n, c, h, w = x.shape
        x = self.upscale_conv(x).view(n, 2, 2, c, h, w)                   # (N, x, y, C, h, w)
        x = x.permute(0, 3, 4, 1, 5, 2).reshape(n, c, 2 * h, 2 * w)       # out[.., 2h+x, 2w+y]
        return self.conv(x)


def build_2d_vae(arch: dict):
    """diffusers AutoencoderKL with the decoder's up-samplers swapped for ``ShuffleUpsample2D``."""
    from diffusers import AutoencoderKL

    n = len(arch["block_out_channels"])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True, **arch)
    for block in vae.decoder.up_blocks:
        if block.upsamplers is not None:
            block.upsamplers[0] = ShuffleUpsample2D(block.upsamplers[0].channels)
    return vae


def fold_official_vae_state_dict(sd: dict) -> dict:
    """Official causal-3D tensors -> the 2-D model's, one tensor at a time (see the module docstring)."""
    out = {}
    for key, t in sd.items():
        t = t.float()                    # fold in fp32: bf16 sums of the temporal taps would round
        parts = key.split(".")
        if parts[-2] in _DEPRECATED_ATTN and "attentions" in parts:      # pre-0.14 diffusers attention names
            key = ".".join(parts[:-2] + [_DEPRECATED_ATTN[parts[-2]], parts[-1]])
        if ".upscale_conv." in key:
            c = t.shape[1] if t.ndim == 5 else sd[key.replace(".bias", ".weight")].shape[1]
            z = t.shape[0] // (4 * c)                                     # 2 where the block also up-samples time
            # rows ordered (x, y, z, c): keep z = 0, the frame that survives dropping the duplicate head
            t = t.reshape(2, 2, z, c, *t.shape[1:])[:, :, 0].reshape(4 * c, *t.shape[1:])
            if t.ndim == 5:
                t = t[:, :, 0]                                            # 1x1x1 kernel -> 1x1
        elif t.ndim == 5:
            t = t.sum(dim=2)                                              # causal taps all see frame 0
        out[key] = t
    return out


def _load_state_dict_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"image_encoder.path: {path!r} is not a file (expected the released vae.pth)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"image_encoder.path: {path!r} does not hold a flat state dict of tensors")
    return sd


def load_official_vae(path: str | None, variant: str = "3b", arch: dict | None = None, sd: dict | None = None):
    """The released VAE of ``variant`` as a 2-D diffusers model, weights from ``path`` (or ``sd``).

    ``arch`` overrides architecture keys (tests use tiny widths). Unknown, missing or mis-shaped
    tensors raise one line naming them."""
    if variant not in VARIANTS:
        raise ValueError(f"image_encoder.variant: expected one of {sorted(VARIANTS)}, got {variant!r} "
                         "(the 7B's 48-channel VAE is not implemented yet: docs/official_encoders.md)")
    vae = build_2d_vae({**VARIANTS[variant]["arch"], **(arch or {})})
    folded = fold_official_vae_state_dict(sd if sd is not None else _load_state_dict_file(path))
    own = vae.state_dict()
    where = path or "the state dict"
    unknown, missing = sorted(set(folded) - set(own)), sorted(set(own) - set(folded))
    if unknown:
        raise ValueError(f"image_encoder.path: {where}: {len(unknown)} unknown tensors: {', '.join(unknown[:8])}"
                         + (" ..." if len(unknown) > 8 else ""))
    if missing:
        raise ValueError(f"image_encoder.path: {where}: {len(missing)} missing tensors: {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
    bad = [f"{k} {tuple(folded[k].shape)} vs {tuple(own[k].shape)}" for k in own if folded[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"image_encoder.path: {where}: {len(bad)} tensors of the wrong shape "
                         f"(variant {variant!r}): {'; '.join(bad[:4])}")
    vae.load_state_dict(folded, strict=True)
    return vae
