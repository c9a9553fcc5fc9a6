"""Golden outputs of the official VINCIE VAE at tiny random sizes (docs/official_encoders.md).

    python tools/vincie_tools/official_golden_vae.py --official-repo PATH \
        --out tests/fixtures/official_vae/ [--commit HASH]

PATH is an extracted copy of github.com/ByteDance-Seed/VINCIE (its code is only imported here, in
this tool, never by the library). ``3b``: ``models.vae.modules.video_vae.VideoAutoencoderKLWrapper``
built as ``models/vae/s8_c16_t4_inflation_sd3.yaml`` sets it up (causal 3D convolutions, ``pad``
inflation, two temporal down/up levels, no quant convs, mid-block attention, MAGVIT-style
pixel-shuffle up-sampling), at tiny widths, on the CPU in fp32, every parameter random (the
up-sampling 1x1 convs would otherwise start as the identity, hiding how they are read).

One random 32x24 uint8 image, normalised as ``generate.py`` does, goes through the wrapper's own
``encode`` / ``decode`` the way the released ``generate.py`` calls them for a session image (one frame
at a time, 4-D in, T = 1 inside). Written: ``3b_weights.safetensors`` (official names, bf16-exact
values stored as bf16), ``3b_io.safetensors`` (uint8 pixels, the normalised image, posterior mean and
log-variance, decode(mean)), ``meta.json`` (config, the official commit, stand-ins, sha256 of every
official source imported).

Stand-ins, only when our lock lacks the package: ``einops`` (torch's ``functorch.einops.rearrange``),
``tabulate`` (reports only, imported by ``common/``).
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
    # the released yaml's keys; widths, depth of each block, groups and latent channels shrunk
    "3b": dict(act_fn="silu", block_out_channels=[8, 8, 16, 16], down_block_types=["DownEncoderBlock3D"] * 4,
               up_block_types=["UpDecoderBlock3D"] * 4, in_channels=3, out_channels=3, latent_channels=4,
               layers_per_block=1, norm_num_groups=4, slicing_sample_min_size=4, temporal_scale_num=2,
               inflation_mode="pad", spatial_downsample_factor=8, temporal_downsample_factor=4,
               use_quant_conv=False, use_post_quant_conv=False),
}
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


def run_3b(seed: int = 0) -> tuple[dict, dict]:
    from models.vae.modules.video_vae import VideoAutoencoderKLWrapper

    g = torch.Generator().manual_seed(seed)
    vae = VideoAutoencoderKLWrapper(**TINY["3b"]).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            # norms near 1, everything else small; bf16-exact so the stored bf16 copy is the weight
            base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
            fan = p[0].numel() if p.ndim > 1 else 16
            p.copy_((base + torch.randn(p.shape, generator=g) / fan ** 0.5).bfloat16().float())
    pixels = torch.randint(0, 256, (1, *IMAGE_HW, 3), generator=g, dtype=torch.uint8)   # (1, H, W, 3)
    # generate.py's ToTensor + Normalize(0.5, 0.5): [0, 255] -> [-1, 1]
    image = ((pixels.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5).contiguous()    # (1, 3, H, W)
    with torch.no_grad():
        post = vae.encode(image).posterior
        mean, logvar = post.mean.squeeze(2), post.logvar.squeeze(2)                     # (1, C, h, w)
        recon = vae.decode(mean).sample                                                  # (1, 3, H, W)
    sd = {k: v.contiguous().bfloat16() for k, v in vae.state_dict().items()}
    io = {"pixels": pixels, "image": image, "mean": mean.contiguous(), "logvar": logvar.contiguous(), "recon": recon.contiguous()}
    return sd, io


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official-repo", required=True, type=Path, help="extracted ByteDance-Seed/VINCIE checkout")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--commit", default=None, help="the checkout's commit when it has no .git")
    args = ap.parse_args(argv)
    repo = args.official_repo.resolve()
    if not (repo / "models" / "vae" / "modules" / "video_vae.py").is_file():
        raise SystemExit(f"--official-repo: {repo} has no models/vae/modules/video_vae.py")
    from safetensors.torch import save_file

    standins = _install_standins()
    sys.path.insert(0, str(repo))
    torch.set_default_dtype(torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    sd, io = run_3b()
    save_file(sd, str(args.out / "3b_weights.safetensors"))
    save_file(io, str(args.out / "3b_io.safetensors"))
    meta = {"3b": {
        "config": TINY["3b"], "module": "models.vae.modules.video_vae.VideoAutoencoderKLWrapper",
        "call": "encode(image 4-D).posterior (mean, logvar squeezed at T); decode(mean).sample",
        "official_commit": args.commit or _git_head(repo), "standins": standins,
        "sources_sha256": dict(sorted(
            (str(Path(m.__file__).resolve().relative_to(repo)), hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest())
            for m in list(sys.modules.values())
            if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(repo))),
    }}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"3b: {sum(v.numel() for v in sd.values())} weights, latent {tuple(io['mean'].shape)}, "
          f"recon {tuple(io['recon'].shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
