"""Edit an image turn after turn with a trained run.

    vincie-edit --run runs/demo --image start.png \
        --prompt "add a red square at the top left" --prompt "make the red square blue" --out strip.png

Each prompt is one turn; every turn sees the whole history (images and texts).
Writes each turn's image next to --out and the edit strip as --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="training run folder (config.yaml + checkpoints/)")
    ap.add_argument("--image", required=True, help="starting image (PNG/JPEG)")
    ap.add_argument("--prompt", action="append", required=True, help="one edit instruction per turn (repeat)")
    ap.add_argument("--out", default="edit_strip.png", help="edit strip PNG")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. sampler.steps=30 sampler.guidance=3")
    a = ap.parse_args(argv)

    from vincie_mcore.data.media import MediaError, load_image

    try:
        image = load_image(a.image, name=a.image)   # size limits, modes, animation: vincie_mcore/data/media.py
    except MediaError as e:
        print(f"error: --image: {e}", file=sys.stderr)
        return 2

    from PIL import Image                        # after the image check: a bad image fails before torch loads

    from vincie_mcore.build import load_run, make_editor
    from vincie_mcore.infer.editor import save_strip
    try:
        cfg, model, text, img = load_run(a.run, a.set)
        editor = make_editor(cfg, model, text, img)
        sess = editor.start(image)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(a.prompt, 1):
        result = sess.edit(p)
        Image.fromarray(result).save(out.with_name(f"{out.stem}_turn{i}.png"))
        print(f"turn {i}: {p!r} -> {out.with_name(f'{out.stem}_turn{i}.png')}")
    save_strip(sess, out)
    print(f"edit strip: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
