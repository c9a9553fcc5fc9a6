"""Run a model on the paper's benchmarks, or judge images someone else generated.

    vincie-benchmark mse --data mse_bench/ --run runs/3b --judge judge.yaml --out results/mse
    vincie-benchmark mse --data mse_bench/ --generated published_results.parquet --judge judge.yaml --out results/ref
    vincie-benchmark magicbrush --data magicbrush_test/ --run runs/3b --clip models/clip-vit-base-patch32 \
        --dino models/dino-vits16 --out results/magicbrush

mse: MSE-Bench's 5-turn sessions. The editor runs them turn after turn, with every earlier turn in
context, unless --generated gives the images; a rerun into the same --out resumes the edits. A VLM judge
scores every turn (paper App. C.6): a turn
succeeds when both scores are > 6, and judging stops at a session's first failure. The step writes
results.json (success per turn, score means with bootstrap CIs, every verdict), report.html (strips
beside the judge's reasons) and the generated images (generated.parquet). judge.yaml holds the
judge's server: base_urls, model, cache_dir ... (its key in $VINCIE_JUDGE_API_KEY). docs/benchmarks.md.

magicbrush: L1, L2, CLIP-I, CLIP-T and DINO per turn against MagicBrush's ground truth (--data: the release's
test folder with edit_sessions.json, or a sessions.jsonl folder). --setting multi_turn (default; the paper's
Table 1: each turn edits the previous output, every earlier turn in context), independent (MagicBrush's
single-turn; Table 4 "w/o Context"), history or dummy (Table 4), or all four. A rerun into the same --out
resumes. --generated scores a folder made elsewhere, under MagicBrush's names (<id>/<id>_1.png,
<id>_iter_<t>.png, <id>_inde_<t>.png). docs/magicbrush.md.

Both: --coe cs|ns|cs_ns edits each turn by chain-of-editing (Table 3's inference rows: its RoE maps first,
saved beside its image; several sessions per model pass with --batch). --batch N edits N sessions per model
pass (the same images); --shard i/N edits every N-th session only, scoring nothing, for one GPU of N
(bash slurm/benchmark.sh N -- mse ... runs the array, then the scoring).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser():
    p = argparse.ArgumentParser(prog="vincie-benchmark", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="bench", required=True)
    m = sub.add_parser("mse", help="MSE-Bench, judged by a VLM")
    m.add_argument("--data", required=True, help="local copy: parquet (the release) or a folder with sessions.jsonl")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run folder to edit with")
    src.add_argument("--export", help="export folder (vincie-convert export) to edit with")
    src.add_argument("--generated", help="images generated elsewhere: index + turn_{i}_image columns")
    m.add_argument("--judge", default=None, help="YAML: the judge's base_urls, model, cache_dir, ... (not with --shard)")
    m.add_argument("--out", required=True)
    m.add_argument("--turns", type=int, default=5)
    m.add_argument("--threshold", type=float, default=6.0, help="a turn succeeds when both scores exceed this")
    m.add_argument("--limit", type=int, default=None, help="only the first N sessions")
    m.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="the model's input size (default: a run's data.world.image_px, or 512 512)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --run; with --export, sampler.steps/guidance/seed/shift/release_io only")
    m.add_argument("--batch", type=positive_int, default=1, metavar="N", help=BATCH_HELP)
    m.add_argument("--shard", default=None, metavar="i/N", help=SHARD_HELP)
    m.add_argument("--coe", choices=COE_CHOICES, default="none", help=COE_HELP)
    m.add_argument("--quiet", action="store_true")
    b = sub.add_parser("magicbrush", help="MagicBrush: L1, L2, CLIP-I, CLIP-T, DINO per turn")
    b.add_argument("--data", required=True,
                   help="the release's test folder (edit_sessions.json, images/), Hugging Face's parquet "
                        "(a split's .parquet files: no captions, CLIP-T null) or a folder with sessions.jsonl")
    b.add_argument("--captions", default=None,
                   help="the caption file for CLIP-T (release layout: default global_descriptions.json; parquet: none)")
    b.add_argument("--setting", default="multi_turn", choices=["multi_turn", "independent", "history", "dummy", "all"],
                   help="what each turn sees (docs/magicbrush.md, Settings); all: the four in turn")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run folder to edit with")
    src.add_argument("--export", help="export folder to edit with")
    src.add_argument("--generated", help="folder of images made elsewhere, MagicBrush's names (<id>/<id>_1.png, ...)")
    b.add_argument("--clip", default=None, help="local CLIP folder (openai/clip-vit-base-patch32; not with --shard)")
    b.add_argument("--dino", default=None, help="local DINO folder (facebook/dino-vits16; not with --shard)")
    b.add_argument("--edit-size", type=int, default=None, help="resize sources to this square before editing")
    b.add_argument("--out", required=True)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --run; with --export, sampler.steps/guidance/seed/shift/release_io only")
    b.add_argument("--batch", type=positive_int, default=1, metavar="N", help=BATCH_HELP)
    b.add_argument("--shard", default=None, metavar="i/N", help=SHARD_HELP)
    b.add_argument("--coe", choices=COE_CHOICES, default="none", help=COE_HELP)
    b.add_argument("--quiet", action="store_true")
    return p


def coe_recipe(a, cfg):
    """The recipe a ``--coe`` benchmark predicts its maps with (the run's mask prompts), checked before any
    model loads: a released model has no place for maps, an export written before the recipe was has none."""
    from vincie_mcore.config import build
    from vincie_mcore.data.recipe import RecipeConfig

    if a.coe == "none":
        return None
    if getattr(a, "setting", "multi_turn") != "multi_turn":
        raise ValueError(f"--coe: chain-of-editing runs --setting multi_turn (the model's own chain), not {a.setting}")
    if cfg is not None:
        from vincie_mcore.build import data_configs, is_official

        official = is_official(cfg)
        recipe = None if official else data_configs(cfg)["recipe"]
    else:
        from vincie_mcore.hf.files import read_config

        c = read_config(a.export)
        official = c["model"].get("variant", "paper") == "official"
        r = c.get("pipeline", {}).get("recipe")
        if r is None and not official:
            raise ValueError("--coe: this export has no recipe in config.json's pipeline section (exported before "
                             "the applications were): export it again")
        recipe = None if official else build(RecipeConfig, r, "pipeline.recipe")
    if official:
        raise ValueError("--coe: not for model.variant 'official' (chain-of-editing needs the RoE maps, which the "
                         "released models' inference layout has no place for)")
    return recipe


COE_CHOICES = ("none", "cs", "ns", "cs_ns")          # applications.COE's keys, without importing torch to parse
COE_HELP = ("each turn by chain-of-editing (Table 3's inference rows): its current (cs), next (ns) or both RoE "
            "maps predicted first, saved beside its image; MagicBrush: multi_turn only")
SHARD_HELP = ("edit only sessions i, i+N, ... into --out and score nothing (one GPU of N: slurm/benchmark.sh); "
              "the same command without --shard then reads every edit back and scores")


def _shard(a, need: list[str]) -> tuple[int, int] | None:
    """--shard parsed, and what the run needs checked: a shard edits (no --generated), a full run scores
    (``need``: the scoring flags)."""
    from vincie_mcore.data.sharded import parse_shard

    if a.shard is None:
        missing = [f for f in need if getattr(a, f.lstrip("-")) is None]
        if missing:
            raise ValueError(f"{missing[0]}: required to score (only a --shard run, which edits, goes without)")
        return None
    if a.generated:
        raise ValueError("--shard: edits one part of a run; --generated images are scored whole")
    return parse_shard(a.shard)


BATCH_HELP = ("sessions edited together, one turn each per model pass (default 1); the images do not depend "
              "on it beyond float reordering (docs/benchmarks.md, Batched editing)")


def positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v!r}")
    return n


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(value)
    return value.lower() == "true"


EXPORT_SAMPLER = {"steps": int, "guidance": float, "seed": int, "shift": float, "release_io": _bool}


def export_sampler(sets: list[str]) -> dict:
    """``--set sampler.KEY=VALUE`` for an export: only its sampler settings can change (the rest is its
    config.json) -> keyword arguments of ``VincieEditPipeline.editor``."""
    out = {}
    for kv in sets:
        key, eq, value = kv.partition("=")
        name = key[len("sampler."):] if key.startswith("sampler.") else None
        if not eq or name not in EXPORT_SAMPLER:
            raise ValueError(f"--set: {kv!r}: with --export only sampler.{{{','.join(EXPORT_SAMPLER)}}}=VALUE "
                             f"can be set")
        try:
            out[name] = EXPORT_SAMPLER[name](value)
        except ValueError:
            raise ValueError(f"--set: {key}: expected {'true or false' if name == 'release_io' else 'a number'}, "
                             f"got {value!r}") from None
    return out


def load_editor(a):
    """The editor of --run or --export, deferred (``edit_runs.Deferred``: loaded at its first edit, so a
    rerun or a scoring job whose edits all exist never loads the model), the run's config (None for an
    export), and what identifies its weights for a resumed benchmark folder (``editor.json``): the
    checkpoint step of a run (a run that trained on since is refused), the SHA-256 of an export's files.
    What can be checked without loading (the folder, its config, a checkpoint) is checked here."""
    from vincie_mcore.eval.edit_runs import Deferred

    if a.export:
        from vincie_mcore.hf.files import read_config

        read_config(a.export)                               # no folder or no config: one line before anything runs
        sampler = export_sampler(getattr(a, "set", None) or [])

        def load_export():                                  # Editor, or OfficialEditor for a release's export
            from vincie_mcore.hf.pipeline import VincieEditPipeline
            return VincieEditPipeline.from_pretrained(a.export).editor(**sampler)
        return Deferred(load_export), None, {"weights_sha256": _export_digest(Path(a.export))}
    from vincie_mcore.build import latest_run_step, load_run, make_editor, run_ckpt_dir, run_config

    cfg = run_config(a.run, a.set)
    step = latest_run_step(a.run, a.set)                     # pinned: a newer checkpoint written meanwhile is not mixed in
    if step is None:
        raise FileNotFoundError(f"run_dir: no complete checkpoint under {run_ckpt_dir(a.run, cfg)}")

    def load_checkpoint():
        _, model, text, image = load_run(a.run, a.set, step=step)
        return make_editor(cfg, model, text, image)
    return Deferred(load_checkpoint), cfg, {"step": step}


def _export_digest(folder: Path) -> str:
    """SHA-256 over an export's config.json and weights (a re-export in place is another model)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" or p.name == "config.json"):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def magicbrush_main(a) -> int:
    from vincie_mcore.eval.magicbrush import (SETTINGS, MagicBrushConfig, MagicBrushMetrics, generated_images,
                                              read_magicbrush, run_magicbrush, score_magicbrush, write_report)

    settings = list(SETTINGS) if a.setting == "all" else [a.setting]
    out = Path(a.out)
    try:
        shard = _shard(a, ["--clip", "--dino"])
        cfg = MagicBrushConfig(clip_path=a.clip, dino_path=a.dino, edit_size=a.edit_size)
        data = read_magicbrush(a.data, a.captions)
        if a.generated and a.coe != "none":
            raise ValueError("--coe: --generated scores images made elsewhere; nothing is edited here")
        if not a.generated:                             # cheap: the model loads at its first edit (Deferred)
            editor, run_cfg, weights = load_editor(a)
            recipe = coe_recipe(a, run_cfg)             # before CLIP and DINO load
        if shard is not None:                           # edits only: no CLIP/DINO, nothing scored
            info = {"run": str(Path(a.run or a.export).resolve()), "set": list(a.set), **weights}
            for st in settings:
                r = run_magicbrush(editor, data, cfg, out_dir=out, progress=not a.quiet, setting=st, run_info=info,
                                   batch=a.batch, shard=shard, coe=a.coe, recipe=recipe)
                print(f"MagicBrush {st} shard {a.shard}: {r['sessions']} sessions, {r['edits']['made']} edits made, "
                      f"{r['edits']['resumed']} read back ({out})")
            return 0
        for st in settings if a.generated else []:      # every image there before the models load
            generated_images(a.generated, data, st)
        metrics = MagicBrushMetrics(cfg)
        results = {}
        if a.generated:
            out.mkdir(parents=True, exist_ok=True)
            for st in settings:
                results[st] = score_magicbrush(a.generated, data, metrics=metrics, setting=st)
                (out / f"results_{st}.json").write_text(json.dumps(results[st], indent=1, default=str))
                write_report(out / f"report_{st}.html", results[st], data, a.generated)
        else:
            info = {"run": str(Path(a.run or a.export).resolve()), "set": list(a.set), **weights}
            for st in settings:
                results[st] = run_magicbrush(editor, data, metrics=metrics, out_dir=out, progress=not a.quiet,
                                             setting=st, run_info=info, batch=a.batch, coe=a.coe, recipe=recipe)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for st, res in results.items():
        how = f", chain-of-editing {res['coe']}" if res.get("coe", "none") != "none" else ""
        print(f"MagicBrush {st}{how}, {res['sessions']} sessions ({out / f'results_{st}.json'}, {out / f'report_{st}.html'}):")
        for row in res["per_turn"] + [dict(res["final_turn"], turn="final")]:
            print(f"  turn {row['turn']!s:>5}  n {row['n']:4d}  " +
                  "  ".join(f"{k} {'-' if row[k] is None else format(row[k], '.4f')}"     # CLIP-T: no captions
                            for k in ("l1", "l2", "clip_i", "clip_t", "dino")))
    return 0


def input_size(a, cfg) -> tuple[int, int]:
    """The model's input size: --size, else a run's data.world.image_px, else 512 x 512."""
    px = cfg.data.get("world", {}).get("image_px") if cfg is not None and "data" in cfg else None
    return tuple(a.size or ((px, px) if px else (512, 512)))


def _save_generated(path: Path, generated: dict) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    turns = len(next(iter(generated.values())))
    cols = {"index": list(generated)}
    for t in range(turns):
        cols[f"turn_{t + 1}_image"] = [png(v[t]) for v in generated.values()]
    pq.write_table(pa.table(cols), path)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    if a.bench == "magicbrush":
        return magicbrush_main(a)
    import yaml

    from vincie_mcore.config import ConfigError, build
    from vincie_mcore.eval import mse_bench
    from vincie_mcore.eval.vlm_judge import JudgeConfig, VLMJudge

    try:
        shard = _shard(a, ["--judge"])
        if a.generated and a.coe != "none":
            raise ValueError("--coe: --generated judges images made elsewhere; nothing is edited here")
        if not a.generated:                                  # cheap: the model loads at its first edit (Deferred)
            editor, cfg, weights = load_editor(a)
            recipe = coe_recipe(a, cfg)                      # before the judge is asked
        if shard is not None:                                # edits only: no judge, nothing scored
            sessions = mse_bench.load_sessions(a.data, a.limit)
            size = input_size(a, cfg)
            info = {"run": str(Path(a.run or a.export).resolve()), "set": list(a.set), **weights}
            done = mse_bench.generate(editor, sessions, size, a.turns, progress=not a.quiet, out_dir=a.out,
                                      run_info=info, batch=a.batch, shard=shard, coe=a.coe, recipe=recipe)
            print(f"MSE-Bench shard {a.shard}: {len(done)} sessions edited into {a.out}; score with the same "
                  f"command without --shard")
            return 0
        judge_cfg = yaml.safe_load(open(a.judge))
        judge = VLMJudge(build(JudgeConfig, judge_cfg, "judge"))
        judge.chat.check()                                   # a judge that is down: one line, before any editing
        sessions = mse_bench.load_sessions(a.data, a.limit)
        if a.generated:
            generated = mse_bench.load_generated(a.generated, a.turns)
        else:
            size = input_size(a, cfg)
            info = {"run": str(Path(a.run or a.export).resolve()), "set": list(a.set), **weights}
            generated = mse_bench.generate(editor, sessions, size, a.turns, progress=not a.quiet, out_dir=a.out,
                                           run_info=info, batch=a.batch, coe=a.coe, recipe=recipe)
        res = mse_bench.score(judge, sessions, generated, a.threshold, a.turns, progress=not a.quiet)
    except (ValueError, FileNotFoundError, RuntimeError, ConfigError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res["source"] = {"run": a.run, "export": a.export, "generated": a.generated, "data": a.data}
    res["coe"] = a.coe
    (out / "results.json").write_text(json.dumps(res, indent=1))
    if not a.generated:
        _save_generated(out / "generated.parquet", generated)
    mse_bench.write_report(out / "report.html", res, sessions, generated)
    print("MSE-Bench turn success: " + " ".join(f"{x:.3f}" for x in res["turn_success"]) +
          f" ({res['sessions']} sessions; {out / 'results.json'}, {out / 'report.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
