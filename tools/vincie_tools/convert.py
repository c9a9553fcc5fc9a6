"""Export a training checkpoint as a Hugging Face-style folder, import one back, convert old trainer state.

    vincie-convert export --ckpt runs/demo --out exports/demo [--dtype fp32|bf16] [--max-shard-size 5GB]
    vincie-convert import --hf exports/demo --out runs/demo2/checkpoints experiment=demo parallel.tp=2
    vincie-convert trainer-state --in OLD.pt --out NEW.pt
    vincie-convert import-official --dit VINCIE-3B/dit.pth --preset official_3b --out runs/v3b/checkpoints [parallel.tp=2]

export: one JSON line {"tensors", "bytes", "shards", "peak_rss_mb", "seconds"}. import: Hydra overrides
compose the run's config (layout, optimizer, schedule); `vincie-train` with the same overrides and
train.ckpt_dir=OUT resumes from step 0 with the exported weights. Folder layout: docs/export.md.
import-official: the released DiT weights (dit.pth / ema.pth, weights-only torch or safetensors) -> a
training checkpoint of model.variant=official at the layout the overrides give (docs/official.md).
"""
from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vincie-convert", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="training checkpoint -> config.json + safetensors")
    e.add_argument("--ckpt", required=True, help="run folder, ckpt_dir (with 'latest') or step folder")
    e.add_argument("--out", required=True, help="export folder to write")
    e.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    e.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB, 200MB")
    e.add_argument("--config", default=None, help="config.yaml (or model group) when the checkpoint has none beside it")
    i = sub.add_parser("import", help="export folder -> training checkpoint (step 0) at a layout")
    i.add_argument("--hf", required=True, help="export folder")
    i.add_argument("--out", required=True, help="ckpt_dir to write (empty)")
    i.add_argument("overrides", nargs="*", help="Hydra overrides: experiment=..., parallel.tp=2, ...")
    o = sub.add_parser("import-official", help="released VINCIE dit.pth/ema.pth -> training checkpoint (step 0)")
    o.add_argument("--dit", required=True, help="the release's DiT weights (dit.pth, ema.pth or .safetensors)")
    g = o.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", choices=("official_3b", "official_7b"), help="model group of the release")
    g.add_argument("--model-config", default=None, help="a model-group YAML instead of a preset")
    o.add_argument("--out", required=True, help="ckpt_dir to write (empty)")
    o.add_argument("overrides", nargs="*", help="Hydra overrides: parallel.tp=2, parallel.cp=2, ...")
    t = sub.add_parser("trainer-state", help="rewrite an old trainer-state file you trust in the safe format")
    t.add_argument("--in", dest="src", required=True)
    t.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from vincie_mcore.config import ConfigError
    from vincie_mcore.convert import hf, official

    try:
        if args.cmd == "export":
            stats = hf.export_checkpoint(args.ckpt, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                                         config=args.config)
        elif args.cmd == "import":
            stats = hf.import_checkpoint(args.hf, args.out, args.overrides)
        elif args.cmd == "import-official":
            stats = official.import_official(args.dit, args.out, preset=args.preset, model_config=args.model_config,
                                             overrides=args.overrides)
        else:
            stats = hf.convert_trainer_state(args.src, args.out)
    except (hf.ExportError, ConfigError, official.OfficialImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
