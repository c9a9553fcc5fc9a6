"""Golden outputs of the official VINCIE VAE at tiny random sizes (docs/official_encoders.md).

    python tools/vincie_tools/official_golden_vae.py --official-repo PATH \
        --out tests/fixtures/official_vae/ [--commit HASH] [--variants 3b,7b]

PATH is an extracted copy of github.com/ByteDance-Seed/VINCIE (its code is only imported here, in
this tool, never by the library). Each variant is built on the CPU in fp32 at tiny widths, every
parameter random (the up-sampling convs would otherwise start as the identity, hiding how they are
read):

* ``3b``: ``models.vae.modules.video_vae.VideoAutoencoderKLWrapper`` (30fcf36) as
  ``models/vae/s8_c16_t4_inflation_sd3.yaml`` sets it up (causal 3D convolutions, ``pad`` inflation,
  two temporal down/up levels, no quant convs, mid-block attention, MAGVIT-style pixel-shuffle
  up-sampling);
* ``7b``: ``models.ae.modules.video_vae.VideoAutoencoderKL`` (c6ee69b) as ``models/ae/t4_s16_c48.yaml``
  (``tail`` inflation, full time receptive field, no quant convs, final blocks, 3x3x3 upscale convs);
  GroupNorm(32) is fixed there, so the widths stay 32 and one level (x2) keeps the fixture small.

One random 32x24 uint8 image, normalised as ``generate.py`` does, goes through the wrapper's own
``encode`` / ``decode`` the way the released ``generate.py`` calls them for a session image (one frame
at a time, 4-D in, T = 1 inside). Written: ``<variant>_weights.safetensors`` (official names, values
on the float8-e4m3 grid stored as float8, exact in fp32), ``<variant>_io.safetensors`` (uint8 pixels, the normalised image, posterior mean and
log-variance, decode(mean)), ``meta.json`` (config, the official commit, stand-ins, sha256 of every
official source imported).

Stand-ins, only when our lock lacks the package: ``einops`` (torch's ``functorch.einops.rearrange``),
``tabulate`` (reports only, imported by ``common/``); for 7b, ``models.ae.modules.distribution`` when
the checkout lacks it (only a type annotation in ``types.py``: diffusers' DiagonalGaussianDistribution).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

import torch

TINY = {
    # the released yamls' keys; widths, depth of each block, groups and latent channels shrunk
    "3b": dict(act_fn="silu", block_out_channels=[8, 8, 16, 16], down_block_types=["DownEncoderBlock3D"] * 4,
               up_block_types=["UpDecoderBlock3D"] * 4, in_channels=3, out_channels=3, latent_channels=4,
               layers_per_block=1, norm_num_groups=4, slicing_sample_min_size=4, temporal_scale_num=2,
               inflation_mode="pad", spatial_downsample_factor=8, temporal_downsample_factor=4,
               use_quant_conv=False, use_post_quant_conv=False),
    "7b": dict(enc_block_out_channels=[32, 32], dec_block_out_channels=[32, 32], enc_time_receptive_field="full",
               dec_time_receptive_field="full", enc_layers_per_block=1, dec_layers_per_block=1,
               slicing_sample_min_size=4, temporal_scale_num=1, inflation_mode="tail", in_channels=3,
               latent_channels=4, out_channels=3, use_quant_conv=False, use_post_quant_conv=False,
               spatial_downsample_factor=2, temporal_downsample_factor=2, freeze_encoder=False),
}
MODULES = {"3b": ("models.vae.modules.video_vae", "VideoAutoencoderKLWrapper"),
           "7b": ("models.ae.modules.video_vae", "VideoAutoencoderKL")}
IMAGE_HW = (32, 24)


def _module(name: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)   # torch._dynamo looks modules up by spec
    return m


def _install_standins() -> list[str]:
    used = []

    def missing(name):
        try:
            importlib.import_module(name)
            return False
        except ImportError:
            return True

    if missing("einops"):
        from functorch.einops import rearrange
        m = _module("einops")
        m.rearrange = rearrange
        sys.modules["einops"] = m
        used.append("einops: functorch.einops.rearrange")
    if missing("tabulate"):
        m = _module("tabulate")
        m.tabulate = lambda rows, *a, **k: "\n".join(map(str, rows))
        sys.modules["tabulate"] = m
        used.append("tabulate: plain rows (reports only)")
    return used


def _git_head(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def run(variant: str, seed: int = 0) -> tuple[dict, dict]:
    module, name = MODULES[variant]
    cls = getattr(importlib.import_module(module), name)
    g = torch.Generator().manual_seed(seed)
    vae = cls(**TINY[variant]).eval()
    with torch.no_grad():
        for pname, p in vae.named_parameters():
            # norms near 1, everything else small; float8-exact so the stored float8 copy is the weight
            base = 1.0 if ("norm" in pname and pname.endswith("weight")) else 0.0
            fan = p[0].numel() if p.ndim > 1 else 16
            p.copy_((base + torch.randn(p.shape, generator=g) / fan ** 0.5).to(torch.float8_e4m3fn).float())
    pixels = torch.randint(0, 256, (1, *IMAGE_HW, 3), generator=g, dtype=torch.uint8)   # (1, H, W, 3)
    # generate.py's ToTensor + Normalize(0.5, 0.5): [0, 255] -> [-1, 1]
    image = ((pixels.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5).contiguous()    # (1, 3, H, W)
    with torch.no_grad():
        post = vae.encode(image).posterior          # both wrappers: 4-D in, T = 1 inside
        mean, logvar = post.mean.squeeze(2), post.logvar.squeeze(2)                     # (1, C, h, w)
        recon = vae.decode(mean).sample.squeeze(2)                                       # (1, 3, H, W)
    sd = {k: v.contiguous().to(torch.float8_e4m3fn) for k, v in vae.state_dict().items()}
    io = {"pixels": pixels, "image": image, "mean": mean.contiguous(), "logvar": logvar.contiguous(),
          "recon": recon.contiguous()}
    return sd, io


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official-repo", required=True, type=Path, help="extracted ByteDance-Seed/VINCIE checkout")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--commit", default=None, help="the checkout's commit when it has no .git")
    ap.add_argument("--variants", default="3b,7b", help="comma-separated subset of " + ",".join(TINY))
    args = ap.parse_args(argv)
    repo = args.official_repo.resolve()
    for v in [v for v in args.variants.split(",") if v in MODULES]:
        f = repo / (MODULES[v][0].replace(".", "/") + ".py")
        if not f.is_file():
            raise SystemExit(f"--official-repo: {repo} has no {f.relative_to(repo)} (variant {v})")
    from safetensors.torch import save_file

    standins = _install_standins()
    sys.path.insert(0, str(repo))
    torch.set_default_dtype(torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    for variant in [v for v in args.variants.split(",") if v]:
        if variant not in TINY:
            raise SystemExit(f"--variants: unknown variant {variant!r}; known: {sorted(TINY)}")
        used = list(standins)
        if variant == "7b" and not (repo / "models" / "ae" / "modules" / "distribution.py").is_file():
            from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

            m = _module("models.ae.modules.distribution")
            m.DiagonalGaussianDistribution = DiagonalGaussianDistribution
            sys.modules["models.ae.modules.distribution"] = m
            used.append("models.ae.modules.distribution: diffusers DiagonalGaussianDistribution (annotation only)")
        sd, io = run(variant)
        save_file(sd, str(args.out / f"{variant}_weights.safetensors"))
        save_file(io, str(args.out / f"{variant}_io.safetensors"))
        meta[variant] = {
            "config": TINY[variant], "module": ".".join(MODULES[variant]),
            "call": "encode(image 4-D).posterior (mean, logvar squeezed at T); decode(mean).sample",
            "official_commit": args.commit or _git_head(repo), "standins": used,
            "sources_sha256": dict(sorted(
                (str(Path(m.__file__).resolve().relative_to(repo)), hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest())
                for m in list(sys.modules.values())
                if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(repo))),
        }
        print(f"{variant}: {sum(v.numel() for v in sd.values())} weights, latent {tuple(io['mean'].shape)}, "
              f"recon {tuple(io['recon'].shape)}")
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
