"""The released VINCIE VAEs on single images: the 3B's (``vae.pth``) as a diffusers ``AutoencoderKL``,
the 7B's (``ema_vae.pth``) as ``T4S16VAE2D`` (ours, from diffusers' resnet blocks).

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

The 7B's VAE (official ``models/ae/modules/video_vae.py`` at c6ee69b, ``t4_s16_c48.yaml``: 48
channels, x16) is another causal design that diffusers does not ship (no attention, a "final block" of
resnets in place of a mid block, 4x4 stride-2 down-sampling convs, up-sampling by a causal 3x3x3 conv
to ``(z, x, y, c)`` channels + shuffle, GroupNorm(32) everywhere). The same first-frame padding makes
it 2-D on one frame; its ``z = 0`` rows are the first 4C (``z`` is outermost in its channel order).

``load_official_vae`` converts the official state dict tensor by tensor (safe loading only) and
loads it strictly. Videos (T > 1) are not supported: image editing needs single frames.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# models/vae/s8_c16_t4_inflation_sd3.yaml and configs/generate.yaml (vae.scaling_factor)
VAE_3B = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
              norm_num_groups=32, in_channels=3, out_channels=3, act_fn="silu")
# models/ae/t4_s16_c48.yaml and configs/generate_7b.yaml (vae.scaling_factor, vae.shifting_factor)
VAE_7B = dict(enc_block_out_channels=(128, 256, 384, 512, 768), dec_block_out_channels=(768, 512, 384, 256, 128),
              enc_layers_per_block=2, dec_layers_per_block=3, latent_channels=48, in_channels=3, out_channels=3)
VARIANTS = {"3b": dict(arch=VAE_3B, scaling=0.9152, shift=0.0),
            "7b": dict(arch=VAE_7B, scaling=0.9045, shift=-0.0025)}

_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class ShuffleUpsample2D(nn.Module):
    """x2 up-sampling: conv to 4C channels ordered (x, y, c), sub-pixel shuffle, 3x3 conv.

    forward: (N, C, h, w) -> (N, C, 2h, 2w). Matches the official ``Upsample3D`` (3B: 1x1 upscale
    conv; 7B: 3x3) on one frame once its ``upscale_conv`` rows are restricted to ``z = 0``
    (``fold_official_vae_state_dict``)."""

    def __init__(self, channels: int, upscale_kernel: int = 1):
        super().__init__()
        self.channels = channels
        self.upscale_conv = nn.Conv2d(channels, 4 * channels, upscale_kernel, padding=upscale_kernel // 2)
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


# ------------------------------------------------------------------------------------------- 7B

def _resnet(cin: int, cout: int):
    from diffusers.models.resnet import ResnetBlock2D

    # the official ResnetBlock2D: GroupNorm(32, eps 1e-6)-SiLU-conv3x3, twice, 1x1 shortcut when widths differ
    return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=None, groups=32, eps=1e-6,
                         non_linearity="silu")


class _Resnets(nn.Module):
    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.resnets = nn.ModuleList(_resnet(cin if i == 0 else cout, cout) for i in range(n))

    def forward(self, x):
        for r in self.resnets:
            x = r(x, None)
        return x


class _Down(_Resnets):
    def __init__(self, cin, cout, n):
        super().__init__(cin, cout, n)
        self.downsampler = nn.Module()
        self.downsampler.conv = nn.Conv2d(cout, cout, kernel_size=4, stride=2, padding=1)

    def forward(self, x):
        return self.downsampler.conv(super().forward(x))                  # (N, C, h/2, w/2)


class _Up(_Resnets):
    def __init__(self, cin, cout, n):
        super().__init__(cin, cout, n)
        self.upsampler = ShuffleUpsample2D(cout, upscale_kernel=3)

    def forward(self, x):
        return self.upsampler(super().forward(x))                         # (N, C, 2h, 2w)


class _Coder(nn.Module):
    """conv_in -> blocks -> final_block -> GroupNorm/SiLU -> conv_out; block i maps widths[i-1] -> widths[i]
    (block 0: widths[0] -> widths[0]), the final block widths[-2] -> widths[-1], as the official code."""

    def __init__(self, cin: int, cout: int, widths, layers: int, block):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, widths[0], 3, padding=1)
        self._blocks = "down_blocks" if block is _Down else "up_blocks"      # the official names
        setattr(self, self._blocks, nn.ModuleList(block(widths[max(i - 1, 0)], widths[i], layers)
                                                  for i in range(len(widths) - 1)))
        self.final_block = _Resnets(widths[-2], widths[-1], layers)
        self.conv_norm_out = nn.GroupNorm(32, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], cout, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for b in getattr(self, self._blocks):
            x = b(x)
        x = self.final_block(x)
        return self.conv_out(nn.functional.silu(self.conv_norm_out(x)))


class T4S16VAE2D(nn.Module):
    """The 7B's VAE on single frames. ``encode(x (N, 3, H, W)).latent_dist`` (diffusers'
    DiagonalGaussianDistribution over (N, 2 * latent, H/16, W/16)); ``decode(z).sample`` (N, 3, H, W)."""

    def __init__(self, enc_block_out_channels, dec_block_out_channels, enc_layers_per_block: int,
                 dec_layers_per_block: int, latent_channels: int, in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        if len(enc_block_out_channels) != len(dec_block_out_channels):
            raise ValueError("image_encoder.arch: enc_block_out_channels and dec_block_out_channels differ in length")
        self.encoder = _Coder(in_channels, 2 * latent_channels, enc_block_out_channels, enc_layers_per_block, _Down)
        self.decoder = _Coder(latent_channels, out_channels, dec_block_out_channels, dec_layers_per_block, _Up)
        self.latent_channels = latent_channels
        self.downsample = 2 ** (len(enc_block_out_channels) - 1)

    @property
    def device(self):
        return self.encoder.conv_in.weight.device

    def encode(self, x):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.models.modeling_outputs import AutoencoderKLOutput

        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(self.encoder(x)))

    def decode(self, z):
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=self.decoder(z))


def fold_official_vae_state_dict(sd: dict, z_outer: bool = False) -> dict:
    """Official causal-3D tensors -> the 2-D model's, one tensor at a time (see the module docstring).
    ``z_outer``: the up-sampling channel order is (z, x, y, c) (7B) rather than (x, y, z, c) (3B)."""
    out = {}
    for key, t in sd.items():
        t = t.float()                    # fold in fp32: bf16 sums of the temporal taps would round
        parts = key.split(".")
        if parts[-2] in _DEPRECATED_ATTN and "attentions" in parts:      # pre-0.14 diffusers attention names
            key = ".".join(parts[:-2] + [_DEPRECATED_ATTN[parts[-2]], parts[-1]])
        if ".upscale_conv." in key:
            c = t.shape[1] if t.ndim == 5 else sd[key.replace(".bias", ".weight")].shape[1]
            z = t.shape[0] // (4 * c)                                     # 2 where the block also up-samples time
            # keep z = 0, the frame that survives dropping the duplicated head frames
            if z_outer:                                                   # 7B rows (z, x, y, c)
                t = t[: 4 * c]
            else:                                                         # 3B rows (x, y, z, c)
                t = t.reshape(2, 2, z, c, *t.shape[1:])[:, :, 0].reshape(4 * c, *t.shape[1:])
            if t.ndim == 5:
                t = t.sum(dim=2)                                          # causal taps all see frame 0
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
        raise ValueError(f"image_encoder.variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
    a = {**VARIANTS[variant]["arch"], **(arch or {})}
    unknown_arch = sorted(set(a) - set(VARIANTS[variant]["arch"]))
    if unknown_arch:
        raise ValueError(f"image_encoder.arch: unknown keys for variant {variant!r}: {', '.join(unknown_arch)}")
    vae = build_2d_vae(a) if variant == "3b" else T4S16VAE2D(**a)
    folded = fold_official_vae_state_dict(sd if sd is not None else _load_state_dict_file(path),
                                          z_outer=variant == "7b")
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
