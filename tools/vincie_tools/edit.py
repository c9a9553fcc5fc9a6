"""Edit an image turn after turn with a trained run.

    vincie-edit --run runs/demo --image start.png \
        --prompt "add a red square at the top left" --prompt "make the red square blue" --out strip.png
    vincie-edit --export exports/demo --image start.png --prompt "add a red square"    # an export folder

Each prompt is one turn; every turn sees the whole history (images and texts).
Writes each turn's image next to --out and the edit strip as --out.

The paper's applications are subcommands (docs/applications.md), each writing an edit strip:

    vincie-edit chain --run runs/demo --image start.png --prompt "add a red square" --out chain.png
    vincie-edit drag --run runs/demo --image start.png --mask region.png --dx 8 --dy -4 --out drag.png
    vincie-edit compose --run runs/demo --ref a.png --ref b.png --prompt "the two together" --out compose.png
    vincie-edit story --run runs/demo --image start.png --prompt "a red square appears" --prompt "it turns blue"

Draw the starting image from a caption instead (a run trained with data.recipe.t2i_prob > 0,
docs/text_to_image.md), then edit it turn after turn when prompts are given:

    vincie-edit t2i --run runs/t2i --caption "a large red square at the top left" --prompt "make the red square blue"

Or a whole clip, generated at once: its first frame from a caption, one frame per --text (a run trained
with data.recipe.t2v_prob > 0):

    vincie-edit t2v --run runs/t2v --caption "a large red square at the top left" --text "make the red square blue"

Many images, each turn after turn, N sessions per model pass, resumable (docs/applications.md, "Many images"):

    vincie-edit batch --run runs/3b --jobs jobs.jsonl --out edits/ --batch 8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


APPLICATIONS = ("chain", "drag", "compose", "story")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in APPLICATIONS:
        return application(argv[0], argv[1:])
    if argv and argv[0] == "batch":
        return batch(argv[1:])
    if argv and argv[0] == "t2i":
        return text_to_image(argv[1:])
    if argv and argv[0] == "t2v":
        return text_to_video(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog=f"applications: vincie-edit {{{','.join(APPLICATIONS)}}} --help")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run folder (config.yaml + checkpoints/)")
    src.add_argument("--export", help="export folder (vincie-convert export)")
    ap.add_argument("--image", required=True, help="starting image (PNG/JPEG)")
    ap.add_argument("--prompt", action="append", required=True, help="one edit instruction per turn (repeat)")
    ap.add_argument("--out", default="edit_strip.png", help="edit strip PNG")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. sampler.steps=30 sampler.guidance=3 (with --export: "
                         "sampler.steps/guidance/seed/shift/release_io only)")
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
        if a.export:
            from vincie_mcore.hf.pipeline import VincieEditPipeline
            from vincie_tools.benchmark import export_sampler
            sampler = export_sampler(a.set)
            editor = VincieEditPipeline.from_pretrained(a.export).editor(**sampler)
        else:
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


# ----------------------------------------------------------------------------- text to image

def text_to_image(argv) -> int:
    """``vincie-edit t2i``: an image per ``--caption`` (one model pass for all of them), each then edited turn
    after turn by the ``--prompt``s, if any; writes ``<out>_<i>.png`` per caption, its turns as
    ``<out>_<i>_turn<t>.png``, and a strip per caption as ``<out>_<i>_strip.png``."""
    ap = _text_parser("t2i", text_to_image.__doc__, "what to draw (repeat for several images)")
    ap.add_argument("--prompt", action="append", default=[], help="then an edit instruction per turn (repeat)")
    a = ap.parse_args(argv)
    if any(not c.strip() for c in a.caption) or any(not p.strip() for p in a.prompt):
        print("error: --caption and --prompt must not be empty", file=sys.stderr)
        return 2
    from PIL import Image

    from vincie_mcore.infer.editor import save_strip
    from vincie_tools.benchmark import input_size

    try:
        editor, cfg = _text_editor(a, "t2i_prob", "text_to_image")
        images = editor.text_to_image(a.caption, input_size(a, cfg))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, (caption, image) in enumerate(zip(a.caption, images)):
        first = out.with_name(f"{out.stem}_{i}.png")
        Image.fromarray(image).save(first)
        print(f"{caption!r} -> {first}")
        sess = editor.start(image)
        for t, p in enumerate(a.prompt, 1):
            Image.fromarray(sess.edit(p)).save(out.with_name(f"{out.stem}_{i}_turn{t}.png"))
            print(f"   turn {t}: {p!r} -> {out.with_name(f'{out.stem}_{i}_turn{t}.png')}")
        save_strip(sess.images, out.with_name(f"{out.stem}_{i}_strip.png"),
                   labels=[caption] + [f"{t}: {p}" for t, p in enumerate(a.prompt, 1)])
    print(f"strips: {out.with_name(out.stem + '_<i>_strip.png')}")
    return 0


def _text_parser(task: str, doc: str, caption_help: str) -> argparse.ArgumentParser:
    """The arguments ``vincie-edit t2i`` and ``t2v`` share (the model, captions, size, output, overrides)."""
    ap = argparse.ArgumentParser(prog=f"vincie-edit {task}", description=doc.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help=f"training run folder (trained with data.recipe.{task}_prob > 0)")
    src.add_argument("--export", help="export folder (vincie-convert export) of such a run")
    ap.add_argument("--caption", action="append", required=True, help=caption_help)
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="image size (default: a run's data.world.image_px, or 512 512)")
    ap.add_argument("--out", default=f"{task}.png", help="output PNG name; each caption adds _<i>")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. sampler.steps=30 (with --export: sampler keys only)")
    return ap


def _text_editor(a, key: str, method: str):
    """(editor, run config or None) of ``--run`` / ``--export`` for ``vincie-edit t2i|t2v``: a warning when
    the run trained without the samples ``data.recipe.<key>`` draws, an error when the editor lacks ``method``."""
    if a.export:
        from vincie_mcore.hf.pipeline import VincieEditPipeline
        from vincie_tools.benchmark import export_sampler
        editor, cfg = VincieEditPipeline.from_pretrained(a.export).editor(**export_sampler(a.set)), None
    else:
        from vincie_mcore.build import load_run, make_editor
        cfg, model, text, img = load_run(a.run, a.set)
        editor = make_editor(cfg, model, text, img)
        if not cfg.data.recipe.get(key, 0):
            print(f"warning: this run trained without {method.replace('_', '-')} samples (data.recipe.{key}=0)",
                  file=sys.stderr)
    if not hasattr(editor, method):
        raise ValueError(f"{type(editor).__name__}: this model's editor has no {method.replace('_', '-')} (a "
                         f"released model's layout has none)")
    return editor, cfg


def text_to_video(argv) -> int:
    """``vincie-edit t2v``: a clip per ``--caption`` (all in one model pass), its first frame from the caption and
    one more frame per ``--text`` (the transitions, shared by every clip), generated together; writes each frame
    as ``<out>_<i>_frame<j>.png`` and the clip as a strip, ``<out>_<i>_strip.png``."""
    ap = _text_parser("t2v", text_to_video.__doc__, "the first frame (repeat for several clips)")
    ap.add_argument("--text", action="append", required=True, help="what happens next: one frame each (repeat)")
    a = ap.parse_args(argv)
    if any(not c.strip() for c in a.caption) or any(not t.strip() for t in a.text):
        print("error: --caption and --text must not be empty", file=sys.stderr)
        return 2
    from PIL import Image

    from vincie_mcore.infer.editor import save_strip
    from vincie_tools.benchmark import input_size

    try:
        editor, cfg = _text_editor(a, "t2v_prob", "text_to_video")
        clips = editor.text_to_video(a.caption, [list(a.text)] * len(a.caption), input_size(a, cfg))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, (caption, clip) in enumerate(zip(a.caption, clips)):
        for j, frame in enumerate(clip):
            Image.fromarray(frame).save(out.with_name(f"{out.stem}_{i}_frame{j}.png"))
        strip = out.with_name(f"{out.stem}_{i}_strip.png")
        save_strip(clip, strip, labels=[caption] + [f"{t}: {x}" for t, x in enumerate(a.text, 1)])
        print(f"{caption!r} -> {strip} ({len(clip)} frames)")
    return 0


# ----------------------------------------------------------------------------- many images

def batch(argv) -> int:
    """``vincie-edit batch``: every job of a JSONL file, ``--batch`` sessions per model pass, each edit written
    as it is made (a rerun into the same --out makes only what is missing, the same images), then a strip per
    job. An image that cannot be read skips its job (``failures.jsonl``), the rest go on. ``--coe``: each turn
    by chain-of-editing, its RoE maps first (saved beside its image, shown in the strip)."""
    ap = argparse.ArgumentParser(prog="vincie-edit batch", description=batch.__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run folder to edit with")
    src.add_argument("--export", help="export folder (vincie-convert export) to edit with")
    ap.add_argument("--jobs", required=True,
                    help='JSONL, a row per image: {"id": ..., "image": file under the JSONL\'s folder, "prompts": [...]}')
    ap.add_argument("--out", required=True, help="folder: <id>/turn_<t>.png, <id>/strip.png, editor.json, failures.jsonl")
    from vincie_tools.benchmark import COE_CHOICES, positive_int

    ap.add_argument("--batch", type=positive_int, default=1, metavar="N", help="sessions per model pass (default 1)")
    ap.add_argument("--coe", choices=COE_CHOICES, default="none",
                    help="each turn by chain-of-editing: its current (cs), next (ns) or both RoE maps predicted "
                         "first, saved beside its image as turn_<t>_roe_src.png / _roe_tgt.png")
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="the model's input size, sources centre-cropped to it (default: a run's "
                         "data.world.image_px, or 512 512)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for --run; with --export, sampler.steps/guidance/seed/shift/release_io only")
    ap.add_argument("--shard", default=None, metavar="i/N",
                    help="edit only jobs i, i+N, ... (one GPU of N: VINCIE_BIN=vincie-edit bash slurm/benchmark.sh N -- "
                         "batch ...); the same command without --shard then reads them back and writes index.html")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    import json

    from vincie_mcore.eval import edit_runs
    from vincie_mcore.paths import safe_name

    out = Path(a.out)
    try:
        jobs = edit_runs.read_jobs(a.jobs)                   # before the model loads: a bad file costs nothing
        if a.shard is not None:
            from vincie_mcore.data.sharded import parse_shard

            jobs = edit_runs.shard_of(jobs, parse_shard(a.shard))
        from vincie_tools.benchmark import coe_recipe, input_size, load_editor

        editor, cfg, weights = load_editor(a)
        recipe = coe_recipe(a, cfg)                          # the run's mask prompts; refused for a release
        maps, info = edit_runs.coe_setup(a.coe, dict(run=str(Path(a.run or a.export).resolve()), set=list(a.set),
                                                     **weights))
        size = input_size(a, cfg)
        edit_runs.claim(out, editor, size=list(size), **info)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from vincie_mcore.data.media import load_image
    from vincie_mcore.data.video import fit_frame
    from vincie_mcore.infer.applications import MAP_NAMES
    from vincie_mcore.infer.editor import save_strip

    def load_source(job):                                     # the benchmarks' policy: centre-cropped to --size
        return fit_frame(load_image(job["image"], name=str(job["image"])), size, "center_crop")

    failed = {}

    def skip(chain, error):
        failed[chain.key] = " ".join(str(error).split())
        print(f"skipped job {chain.key!r}: {failed[chain.key]}", file=sys.stderr)

    def paths(j):
        return [out / safe_name(j["id"], "id") / f"turn_{t + 1}.png" for t in range(len(j["prompts"]))]
    if maps:                                                  # the image read when its chain starts
        chains = [edit_runs.coe_chain(editor, j["id"], j, j["prompts"], paths(j), load_source, maps, recipe)
                  for j in jobs]
    else:
        chains = [edit_runs.source_chain(editor, j["id"], j, j["prompts"], paths(j), load_source) for j in jobs]
    try:
        outs, made = edit_runs.run_chains(editor, chains, a.batch, progress=None if a.quiet else "vincie-edit batch",
                                          on_error=skip)
    except edit_runs.EditorLoadError as e:                   # loaded at the first edit: every job needs it
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = 0
    for chain, j, images in zip(chains, jobs, outs):
        if j["id"] in failed or len(images) < len(j["prompts"]):
            continue
        try:                                                  # read again: a fully resumed job never loaded it
            first = load_source(j)
        except (ValueError, OSError) as e:
            skip(chain, e)
            continue
        panels, labels = [first], ["start"]
        for t, (image, prompt) in enumerate(zip(images, j["prompts"]), 1):
            for kind in maps:                                 # chain-of-editing: the turn's maps before its image
                m = edit_runs.map_path(paths(j)[t - 1], kind)
                panels.append(edit_runs.load_png(m, f"job {j['id']!r} turn {t} {kind} map"))
                labels.append(f"{t}: {MAP_NAMES[kind]}")
            panels.append(image)
            labels.append(f"{t}: {prompt}")
        save_strip(panels, out / safe_name(j["id"], "id") / "strip.png", labels=labels)
        done += 1
    # this run's failures (a rerun after a fix clears them); a shard's apart, and no gallery: the full run's
    name = "failures.jsonl" if a.shard is None else f"failures_shard_{a.shard.replace('/', 'of')}.jsonl"
    with open(out / name, "w") as fh:
        for k, v in failed.items():
            fh.write(json.dumps({"id": k, "error": v}) + "\n")
    if a.shard is None:
        _gallery(out / "index.html", jobs, failed)
    total = sum(len(j["prompts"]) for j in jobs if j["id"] not in failed)
    print(f"vincie-edit batch{'' if a.shard is None else ' shard ' + a.shard}: {done} of {len(jobs)} jobs edited "
          f"({made} edits made now, {total - made} read back), {len(failed)} skipped; strips under {out}")
    return 0 if done else 2


def _gallery(path: Path, jobs: list, failed: dict) -> None:
    """index.html beside the edits: each job's strip (linked, not embedded: a batch may hold thousands) with
    its prompts, or why it was skipped."""
    import html

    from vincie_mcore.paths import safe_name

    rows = []
    for j in jobs:
        name = safe_name(j["id"], "id")
        prompts = "".join(f"<li>{html.escape(p)}</li>" for p in j["prompts"])
        if j["id"] in failed:
            cell = f"<i>skipped: {html.escape(failed[j['id']])}</i>"
        elif (path.parent / name / "strip.png").is_file():
            cell = f"<img src='{html.escape(name)}/strip.png' loading='lazy'>"
        else:
            cell = "<i>not finished</i>"
        rows.append(f"<tr><td>{html.escape(j['id'])}<ol>{prompts}</ol></td><td>{cell}</td></tr>")
    path.write_text("<html><head><meta charset='utf-8'><title>vincie-edit batch</title><style>td{vertical-align:top;"
                    "font:12px sans-serif;padding:4px}img{image-rendering:pixelated;max-width:100%}</style></head><body>"
                    f"<h2>vincie-edit batch: {len(jobs)} jobs</h2><table border=1>{''.join(rows)}</table></body></html>")


# ----------------------------------------------------------------------------- applications

def _parser(name: str) -> argparse.ArgumentParser:
    """One subcommand's arguments (the inputs are checked by hand: each bad one is one line, exit 2)."""
    ap = argparse.ArgumentParser(prog=f"vincie-edit {name}", description={
        "chain": "chain-of-editing: per turn predict the RoE mask(s), then the edited frame",
        "drag": "drag editing: move a marked region by (dx, dy) pixels, scale it, rotate it",
        "compose": "multi-concept composition: one image from several reference images and a prompt",
        "story": "story generation: one frame per transition prompt, each the next turn's context",
    }[name])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run folder (config.yaml + checkpoints/)")
    src.add_argument("--export", help="export folder (vincie-convert export; --set: its sampler settings only)")
    if name == "compose":
        ap.add_argument("--ref", action="append", default=[], help="reference image (repeat, in order)")
        ap.add_argument("--caption", action="append", default=None,
                        help="text between two references (repeat; one fewer than --ref; the released "
                             "models' default: <IMG1>: , <IMG2>: , ...)")
        ap.add_argument("--prompt", required=True,
                        help="what to generate from the references (released models: may name them "
                             "<IMG0>, <IMG1>, ...; without any, it is written 'Based on <IMG0>, ..., {prompt}. "
                             "Output <IMGk>: ')")
    else:
        ap.add_argument("--image", required=True, help="starting image (PNG/JPEG)")
    if name in ("chain", "story"):
        ap.add_argument("--prompt", action="append", required=True, help="one instruction per turn (repeat)")
    if name == "chain":
        ap.add_argument("--maps", default="src,tgt",
                        help="RoE maps predicted per turn before the frame: src, tgt or src,tgt (default)")
    if name == "drag":
        ap.add_argument("--mask", default=None,
                        help="region to move: white (> 127) on black, the image's size (without: the model "
                             "locates it from --prompt)")
        ap.add_argument("--dx", type=int, default=0, help="pixels to the right (negative: left)")
        ap.add_argument("--dy", type=int, default=0, help="pixels down (negative: up)")
        ap.add_argument("--scale", type=float, default=1.0, help="scale the region by this factor (about its centre)")
        ap.add_argument("--angle", type=float, default=0.0,
                        help="rotate the region by this many degrees, counter-clockwise (negative: clockwise)")
        ap.add_argument("--prompt", default=None,
                        help="instruction (default: made from the drag); without --mask it also locates the region")
    ap.add_argument("--out", default=f"{name}_strip.png", help="edit strip PNG")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. sampler.steps=30 sampler.guidance=3")
    return ap


def _inputs(name: str, a, same_size: bool = True) -> dict:
    """Load and check every user input before the model loads; ValueError naming the flag. ``same_size``:
    compose's references must share one size (the paper layout; the release's resizes them to the first's)."""
    from vincie_mcore.data.media import MediaError, load_image
    from vincie_mcore.infer import applications as apps

    def image(flag, path):
        try:
            return load_image(path, name=path)
        except MediaError as e:
            raise ValueError(f"{flag}: {e}") from None

    def check(flag, fn, *args):
        try:
            return fn(*args)
        except ValueError as e:
            raise ValueError(f"{flag}: {str(e).split(': ', 1)[-1]}") from None

    if name == "compose":
        if not a.ref:
            raise ValueError("--ref: no reference images (give --ref at least once)")
        refs = [image("--ref", r) for r in a.ref]
        if a.caption is not None and len(a.caption) != len(refs) - 1:
            raise ValueError(f"--caption: {len(a.caption)} given, expected {len(refs) - 1} "
                             f"(one between each two --ref)")
        for r, p in zip(refs[1:], a.ref[1:]):
            if same_size and r.shape != refs[0].shape:
                raise ValueError(f"--ref: {p} is {r.shape[1]}x{r.shape[0]}, {a.ref[0]} is "
                                 f"{refs[0].shape[1]}x{refs[0].shape[0]} (all must share one size)")
        return dict(references=refs, prompt=a.prompt, captions=a.caption)
    start = image("--image", a.image)
    if name == "drag":
        import math
        if not (a.scale > 0 and math.isfinite(a.scale)):
            raise ValueError(f"--scale: must be a number > 0, got {a.scale}")
        if not math.isfinite(a.angle):
            raise ValueError(f"--angle: must be a number of degrees, got {a.angle}")
        geometry = dict(dx=a.dx, dy=a.dy, scale=a.scale, angle=a.angle)
        if a.mask is None:
            if a.prompt is None:
                raise ValueError("--mask: give --mask, or --prompt for the model to locate the region")
            check("--dx/--dy/--scale/--angle", apps.drag_instruction, *geometry.values())   # a no-op is refused
            return dict(image=start, mask=None, prompt=a.prompt, **geometry)
        region = apps.mask_from_image(image("--mask", a.mask))
        if region.shape != start.shape[:2]:
            raise ValueError(f"--mask: {a.mask} is {region.shape[1]}x{region.shape[0]}, the image is "
                             f"{start.shape[1]}x{start.shape[0]}")
        if not region.any():
            raise ValueError(f"--mask: {a.mask} marks no pixel (the region is white, > 127, on black)")
        check("--dx/--dy/--scale/--angle", apps.drag_instruction, *geometry.values())
        check("--dx/--dy/--scale/--angle", apps.transform_mask, region, *geometry.values())
        return dict(image=start, mask=region, prompt=a.prompt, **geometry)
    if name == "chain":
        maps = [m.strip() for m in a.maps.split(",")]
        if not maps or any(m not in ("src", "tgt") for m in maps) or len(set(maps)) != len(maps):
            raise ValueError(f"--maps: expected src, tgt or src,tgt, got {a.maps!r}")
        return dict(image=start, prompts=a.prompt, maps=tuple(f"roe_{m}" for m in maps))
    return dict(image=start, prompts=a.prompt)


def application(name: str, argv: list[str]) -> int:
    """``vincie-edit chain|drag|compose|story ...``: one application, its edit strip as --out."""
    a = _parser(name).parse_args(argv)
    from vincie_mcore.build import data_configs, is_official, load_run, make_editor, run_config
    from vincie_mcore.infer import applications as apps
    try:
        if a.export:
            from vincie_mcore.hf.files import read_config
            official = read_config(a.export)["model"].get("variant", "paper") == "official"
            from vincie_tools.benchmark import export_sampler
            sampler = export_sampler(a.set)
        else:
            official = is_official(run_config(a.run, a.set))
        if official and name in ("chain", "drag"):     # the release's layout has no RoE maps to predict or give
            raise ValueError(f"vincie-edit {name}: not for model.variant 'official' (it needs the RoE maps, which "
                             f"the released models' inference layout has no place for; they compose, tell a "
                             f"story and edit turn by turn)")
        inputs = _inputs(name, a, same_size=not official)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        if a.export:                 # the plain model of an export folder (VincieEditPipeline, docs/export.md)
            from vincie_mcore.hf.pipeline import VincieEditPipeline
            pipe = VincieEditPipeline.from_pretrained(a.export)
            result = apps.story(pipe.editor(**sampler), **inputs) if name == "story" else \
                getattr(pipe, name)(**inputs, **sampler)
            return _save(name, a, result)
        cfg, model, text, img = load_run(a.run, a.set)
        editor = make_editor(cfg, model, text, img)
        recipe = data_configs(cfg)["recipe"]
        if name == "chain":
            result = apps.chain_of_editing(editor, recipe=recipe, **inputs)
        elif name == "drag":
            result = apps.drag(editor, recipe=recipe, **inputs)
        elif name == "compose":
            result = apps.compose(editor, **inputs)
        else:
            result = apps.story(editor, **inputs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _save(name, a, result)


def _save(name: str, a, result) -> int:
    from vincie_mcore.infer import applications as apps

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    apps.save(result, out)
    print(f"{name} strip ({len(result.panels)} panels): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
