"""Encode a session store once into a latent store (docs/latent_store.md), in parts, resumably.

    vincie-precompute run --store STORE --out LATENTS [--shard 3/64] [--dtype bfloat16] [key=value ...]
    vincie-precompute finalize --out LATENTS        # after every part: check, write the row index
    vincie-precompute union --out ALL --from videos=LATENTS_A sft=LATENTS_B   # several as one, nothing re-encoded

``key=value``: Hydra overrides of configs/ (data=real data.text_encoder.path=..., ...): the encoders,
image size and recipe texts are read from the same keys training reads. ``--shard auto`` takes
torchrun's RANK/WORLD_SIZE. A rerun skips the blocks it finished. Slurm: slurm/precompute.sh.
"""
from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="vincie-precompute", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    r = sub.add_parser("run", help="encode this part's blocks")
    r.add_argument("--store", required=True, help="session store (vincie-build-sessions)")
    r.add_argument("--out", required=True, help="latent store root (zarr v3)")
    r.add_argument("--shard", default="0/1", help="i/N: this task's part (blocks i, i+N, ...); 'auto': torchrun ranks")
    r.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    r.add_argument("--block-rows", type=int, default=256, help="sessions per block (the unit of resume)")
    r.add_argument("--limit", type=int, default=None, help="encode only the store's first N sessions")
    r.add_argument("--device", default=None, help="encoders' device (default: cuda:LOCAL_RANK if a GPU, else cpu)")
    r.add_argument("--no-finalize", action="store_true", help="never write the index here (the check job does)")
    r.add_argument("--quiet", action="store_true")
    f = sub.add_parser("finalize", help="check every block is written, write the row index")
    f.add_argument("--out", required=True)
    u = sub.add_parser("union", help="several complete latent stores of one identity as one (hard links)")
    u.add_argument("--out", required=True, help="the new latent store")
    u.add_argument("--from", dest="sources", nargs="+", required=True, metavar="[NAME=]LATENTS",
                   help="two or more latent stores, each named by its folder or NAME= (what data.corpus.mix weighs)")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad or (rest and args.step != "run"):
        p.error(f"unrecognized arguments: {' '.join(bad or rest)}")
    args.overrides = rest
    return args


def main(argv=None):
    args = parse_args(argv)
    from vincie_mcore.config import ConfigError
    from vincie_mcore.build import precompute_with_config
    from vincie_mcore.data.latents import LatentMismatch, finalize, parse_shard, union

    try:
        if args.step == "run":
            out = precompute_with_config(args.store, args.out, args.overrides, dtype=args.dtype,
                                         shard=parse_shard(args.shard), block_rows=args.block_rows, limit=args.limit,
                                         device=args.device, progress=not args.quiet,
                                         finalize_when_done=not args.no_finalize)
        elif args.step == "union":
            out = union(args.out, args.sources)
        else:
            out = finalize(args.out)
    except (ConfigError, LatentMismatch, ValueError, RuntimeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
