"""Image encoders: pixels <-> latents.

* ``pixel``: identity up to scaling to [-1, 1]; the synthetic world trains in
  pixel space (latent = RGB, 3 channels, no down-sampling).
* ``vae``: a ``diffusers`` AutoencoderKL (16 latent channels in the real
  presets) loaded from a local folder; tests build a tiny random one.
* ``official_vae``: a released VINCIE VAE checkpoint (``vae.pth`` of VINCIE-3B, ``ema_vae.pth`` of
  VINCIE-7B) on single images, with its scaling and shift (``official_vae.py``,
  docs/official_encoders.md).

RoE masks go through the same encoder as RGB images (paper §3.3 footnote).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageEncoderConfig:
    kind: str = "pixel"          # "pixel" | "vae" | "official_vae"
    path: str | None = None      # local AutoencoderKL folder (kind="vae"); the released checkpoint file,
                                 # e.g. VINCIE-3B/vae.pth (kind="official_vae")
    tiny_random: bool = False    # kind="vae" without weights: a tiny random AutoencoderKL (tests)
    variant: str = "3b"          # kind="official_vae": which released VAE (architecture, scaling, shift)
    arch: dict | None = None     # kind="official_vae": architecture keys overriding the variant's (tests)

    def __post_init__(self):
        if self.kind not in ("pixel", "vae", "official_vae"):
            raise ValueError(f"image_encoder.kind: expected 'pixel', 'vae' or 'official_vae', got {self.kind!r}")
        if self.kind == "vae" and not (self.path or self.tiny_random):
            raise ValueError("image_encoder.path: required when image_encoder.kind='vae'")
        if self.kind == "official_vae" and not self.path:
            raise ValueError("image_encoder.path: required when image_encoder.kind='official_vae'")


class PixelEncoder:
    channels = 3
    downsample = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
        return self.encode_float(to_float(images))

    def encode_float(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as floats [N, 3, H, W] (-1..1, a resampled image may overshoot) -> latents."""
        return x.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float [N, 3, H, W] -> uint8 [N, H, W, 3]."""
        return to_uint8(self.decode_float(latents))

    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels as floats [N, 3, H, W] in [-1, 1]."""
        return latents.clamp(-1, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1] (the release's ToTensor then Normalize(0.5, 0.5))."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor, truncate: bool = False) -> torch.Tensor:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3], rounded; ``truncate``: as the release saves its
    images (``clip(-1, 1) * 0.5 + 0.5``, ``* 255``, cast: the fraction dropped)."""
    x = x.clamp(-1, 1)
    u = x.mul(0.5).add(0.5).mul(255) if truncate else ((x + 1) * 127.5).round()
    return u.to(torch.uint8).permute(0, 2, 3, 1)


class VAEEncoder:
    def __init__(self, cfg: ImageEncoderConfig, device="cpu"):
        from diffusers import AutoencoderKL

        if cfg.kind == "official_vae":
            from .official_vae import VARIANTS, load_official_vae

            self.vae = load_official_vae(cfg.path, cfg.variant, cfg.arch)
            self.vae.to(device).eval().requires_grad_(False)
            arch = {**VARIANTS[cfg.variant]["arch"], **(cfg.arch or {})}
            self.channels = arch["latent_channels"]
            self.downsample = 2 ** (len(arch.get("block_out_channels") or arch["enc_block_out_channels"]) - 1)
            # the released generate.py: latent = (z - shift) * scale, decoded from latent / scale + shift
            self.scale, self.shift = VARIANTS[cfg.variant]["scaling"], VARIANTS[cfg.variant]["shift"]
            return
        if cfg.path:
            self.vae = AutoencoderKL.from_pretrained(cfg.path, local_files_only=True)
        else:
            self.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                     block_out_channels=(16, 32), layers_per_block=1,
                                     down_block_types=("DownEncoderBlock2D",) * 2,
                                     up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)
        self.vae.to(device).eval().requires_grad_(False)
        c = self.vae.config
        self.channels = c.latent_channels
        self.downsample = 2 ** (len(c.block_out_channels) - 1)
        self.scale = getattr(c, "scaling_factor", 1.0) or 1.0
        self.shift = getattr(c, "shift_factor", 0.0) or 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> latents [N, C, h, w]."""
        return self.encode_float(to_float(images))

    @torch.no_grad()
    def encode_float(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as floats [N, 3, H, W] (-1..1) -> latents [N, C, h, w] (the posterior's mode)."""
        z = self.vae.encode(x.float().to(self.vae.device)).latent_dist.mode()     # (N, C, h, w)
        return ((z - self.shift) * self.scale).cpu()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> uint8 [N, H, W, 3]."""
        return to_uint8(self.decode_float(latents))

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> pixels as floats [N, 3, H, W] in [-1, 1] (CPU)."""
        return self.vae.decode(latents.to(self.vae.device) / self.scale + self.shift).sample.clamp(-1, 1).cpu()


def build_image_encoder(cfg: ImageEncoderConfig, device="cpu"):
    return PixelEncoder() if cfg.kind == "pixel" else VAEEncoder(cfg, device)   # "vae" and "official_vae"
