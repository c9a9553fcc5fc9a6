"""Build a session store from videos: synthetic in one go, real ones in parts (a Slurm array).

    vincie-build-sessions --synthetic 2000 --videos VIDEOS --out STORE --world demo
    vincie-build-sessions --videos VIDEOS --out STORE [--sampling mixed] [--workers 2]   # synthetic sidecars

Real videos (docs/real_videos.md), each step resumable:

    vincie-build-sessions build --videos VIDEOS --store STORE --config build.yaml   # all of it, on this machine
    vincie-build-sessions plan --manifest videos.jsonl --store STORE --shards 64 --config build.yaml
    vincie-build-sessions run --store STORE --shard 3/64        # one part (slurm/sessions.sh: an array)
    vincie-build-sessions merge --store STORE                   # index the parts, no frame copied
    vincie-build-sessions stats --store STORE                   # numbers; STORE/stats.json
    vincie-build-sessions preview --store STORE --out previews --sessions 8

Image-editing datasets (the fine-tuning data; docs/edit_datasets.md), resumable:

    vincie-build-sessions edits --data MagicBrush/data/train-*.parquet --store STORE --size 512 512
    vincie-build-sessions edits --format instructpix2pix --data ip2p/data --store STORE --workers 8
    vincie-build-sessions edits --data ultra/data --format pairs --columns ... --store STORE --shards 16   # a plan:
    bash slurm/sessions.sh STORE                  # then 16 array tasks (`run --shard i/16`) and the merge
    vincie-build-sessions union --store ALL --from a=STORE_A b=STORE_B  # several stores as one (hard links)

With ``--synthetic N`` it first writes N synthetic videos (+ ground-truth
sidecars) into ``--videos``, then builds from them with the ground-truth
annotator and segmenter. Re-running resumes: finished videos are skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vincie_mcore.config import build
from vincie_mcore.data.build import DECODE_MAX_MB, DECODE_TIMEOUT_S, build_sessions, format_summary
from vincie_mcore.data.sampling import SamplingConfig
from vincie_mcore.data.video import write_synthetic_corpus
from vincie_mcore.data.world import WorldConfig, demo_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True, help="folder of videos (written first with --synthetic)")
    p.add_argument("--out", required=True, help="session store root (zarr v3)")
    p.add_argument("--sampling", choices=("equal", "fixed", "mixed"), default="mixed")
    p.add_argument("--interval-s", type=float, default=1.0, help="equal-interval sampling period in seconds")
    p.add_argument("--n-frames", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"),
                   help="fixed-frame sampling: frames per session, drawn in [MIN, MAX]")
    p.add_argument("--p-equal", type=float, default=0.5, help="mixed sampling: probability of equal-interval")
    p.add_argument("--min-change", type=float, default=0.0,
                   help="drop a sampled frame whose largest 8x8-patch mean |change| from the last kept frame "
                        "is <= this (0-255 scale); 0 keeps every frame")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode-timeout-s", type=float, default=DECODE_TIMEOUT_S,
                   help="seconds one video may take (a worker past it is killed, the video recorded as failed); 0: no limit")
    p.add_argument("--decode-max-mb", type=int, default=DECODE_MAX_MB,
                   help="MiB a worker's address space may grow by while making one video (RLIMIT_AS); 0: no limit")
    p.add_argument("--retry-failed", action="store_true", help="retry videos listed in failures.jsonl")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="first write N synthetic videos")
    p.add_argument("--world", default="demo",
                   help="synthetic world: 'demo' (24 px, 3x3 grid, 1-3 objects), 'default', or a JSON object of WorldConfig fields")
    p.add_argument("--codec", choices=("vp9", "mjpeg"), default="vp9", help="synthetic video codec")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def world_from_arg(s: str) -> WorldConfig:
    if s == "demo":
        return demo_config()
    if s == "default":
        return WorldConfig()
    try:
        return WorldConfig(**json.loads(s))
    except json.JSONDecodeError:
        raise SystemExit(f"--world: expected 'demo', 'default' or a JSON object, got {s!r}") from None


STEPS = ("build", "plan", "run", "merge", "stats", "preview", "edits", "union")


def _steps_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vincie-build-sessions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    for name, what in (("build", "plan, run every part here, merge: one machine"),
                       ("plan", "list the inputs and split them into parts")):
        pl = sub.add_parser(name, help=what)
        src = pl.add_mutually_exclusive_group(required=True)
        src.add_argument("--videos", help="folder of videos (recursive)")
        src.add_argument("--manifest", help="JSONL or CSV: path, optional caption, optional id")
        pl.add_argument("--root", default=None, help="manifest: folder its relative paths start from (default: its own)")
        pl.add_argument("--store", required=True)
        pl.add_argument("--shards", type=int, required=(name == "plan"), default=1,
                        help="number of parts (array tasks)")
        pl.add_argument("--config", required=True, help="YAML with build:, annotator:, segmenter: (docs/real_videos.md)")
        pl.add_argument("--quiet", action="store_true", help="no progress bars")
    r = sub.add_parser("run", help="build one part, with the plan's config")
    r.add_argument("--store", required=True)
    r.add_argument("--shard", required=True, help="i/N (a Slurm array: $SLURM_ARRAY_TASK_ID/N)")
    r.add_argument("--retry-failed", action="store_true")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    m = sub.add_parser("merge", help="index every part's shards at the store root")
    m.add_argument("--store", required=True)
    un = sub.add_parser("union", help="one store reading every session of several (hard links, no frame copied)")
    un.add_argument("--store", required=True, help="the new store")
    un.add_argument("--from", dest="sources", nargs="+", required=True, metavar="[NAME=]STORE",
                    help="two or more stores, each named by its folder or NAME= (the names data.corpus.mix weighs)")
    st = sub.add_parser("stats", help="sessions, frames, texts, edit types, cameras, RoE coverage, failures")
    st.add_argument("--store", required=True)
    st.add_argument("--json", default=None, help="where to write them (default: STORE/stats.json)")
    st.add_argument("--coverage-sessions", type=int, default=None,
                    help="sessions the RoE coverage is measured on, drawn at random (default 1000; every other "
                         "number reads every session's record); 0: all")
    st.add_argument("--seed", type=int, default=0, help="the coverage sample's seed")
    pv = sub.add_parser("preview", help="contact sheets of random sessions, or over the aesthetic ranking (PNG)")
    pv.add_argument("--store", required=True)
    pv.add_argument("--out", required=True)
    pv.add_argument("--sessions", type=int, default=8)
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--by", choices=("random", "aesthetic"), default="random",
                    help="aesthetic: sessions spread over the score ranking, lowest first (to pick min_score)")
    from vincie_mcore.data.edits import FORMATS, MASK_MODES, EditsConfig

    ed = sub.add_parser("edits", help="sessions from an image-editing dataset (parquet or JSONL)")
    ed.add_argument("--data", nargs="+", required=True, help=".parquet / .jsonl files or folders of them")
    ed.add_argument("--store", required=True)
    ed.add_argument("--format", choices=tuple(FORMATS), default="magicbrush",
                    help="which columns hold what (docs/edit_datasets.md)")
    ed.add_argument("--columns", default="", metavar="ROLE=COLUMN,...",
                    help="override the format's columns: session, turn, id, source, instruction, target, mask, visual")
    ed.add_argument("--name", default="", help="prefix of the session ids (default: the format)")
    ed.add_argument("--size", type=int, nargs=2, default=EditsConfig.size, metavar=("H", "W"))
    ed.add_argument("--aspect", choices=("center_crop", "pad", "resize"), default="center_crop")
    ed.add_argument("--masks", choices=MASK_MODES, default="dataset",
                    help="RoE maps: the mask column (changed pixels where a row has none), changed pixels, or none")
    ed.add_argument("--keep", action="append", default=[], metavar="COND",
                    help="keep only sessions whose rows meet COND: COLUMN OP VALUE, OP one of >= <= == != > < "
                         "(== / != take a|b|c), e.g. 'o_score>=8' or 'edit_type!=visual_reference'; repeatable")
    ed.add_argument("--images", default=None, metavar="DIR",
                    help="the folder image file names are under (default: each data file's folder), e.g. "
                         "SEED-Data-Edit's extracted multi_turn_editing/images/data")
    ed.add_argument("--workers", type=int, default=1)
    ed.add_argument("--shard-size", type=int, default=256)
    ed.add_argument("--limit", type=int, default=0, help="the first N dataset sessions only (0: all)")
    ed.add_argument("--shards", type=int, default=1,
                    help="> 1: only plan N parts (each a share of the row groups) for `run --shard i/N` / slurm/sessions.sh")
    ed.add_argument("--retry-failed", action="store_true")
    ed.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _columns(arg: str) -> dict:
    out = {}
    for item in filter(None, (x.strip() for x in arg.split(","))):
        role, sep, col = item.partition("=")
        if not sep:
            raise ValueError(f"--columns: expected ROLE=COLUMN, got {item!r}")
        out[role.strip()] = col.strip()
    return out


def _load_yaml(path) -> dict:
    import yaml

    try:
        d = yaml.safe_load(open(path))
    except OSError as e:
        raise FileNotFoundError(f"--config {path}: cannot read it: {e.strerror}") from None
    if not isinstance(d, dict):
        raise ValueError(f"--config {path}: expected a mapping with build:, annotator:, segmenter:")
    bad = sorted(set(d) - {"build", "annotator", "segmenter"})
    if bad:
        raise ValueError(f"{bad[0]}: unknown section (known: annotator, build, segmenter)")
    return d


def steps_main(argv) -> dict:
    """plan / run / merge / stats / preview; see the module docstring."""
    a = _steps_parser().parse_args(argv)
    from vincie_mcore.data import sharded
    from vincie_mcore.data.real import RealBuildConfig

    if a.step == "build":                                       # the three steps, here, in order
        base = ["--store", a.store, "--config", a.config, "--shards", str(a.shards)]
        base += ["--manifest", a.manifest] if a.manifest else ["--videos", a.videos]
        base += ["--root", a.root] if a.root else []
        steps_main(["plan", *base])
        runs = [steps_main(["run", "--store", a.store, "--shard", f"{i}/{a.shards}"] + (["--quiet"] if a.quiet else []))
                for i in range(a.shards)]
        return {**steps_main(["merge", "--store", a.store]), "runs": runs}
    if a.step == "plan":
        from vincie_mcore.data.inputs import from_directory, from_manifest
        from vincie_mcore.data.labelers import make_annotator, make_segmenter

        conf = _load_yaml(a.config)
        cfg = build(RealBuildConfig, conf.get("build"), "build")     # every section checked now, not in 64 tasks
        make_segmenter({"kind": "none"} if (conf.get("segmenter") or {}).get("kind") == "gsam"
                       else conf.get("segmenter"))             # gsam: its folders are checked in run
        if (conf.get("annotator") or {}).get("kind") != "vlm":
            make_annotator(conf.get("annotator"))
        inputs = (from_manifest(a.manifest, a.root, cfg.inputs) if a.manifest
                  else from_directory(a.videos, cfg.inputs))
        info = sharded.plan(inputs, a.store, a.shards, conf)
        print(f"plan: {info['videos']} videos in {a.shards} parts, {len(info['skipped'])} inputs refused -> {a.store}/plan")
        return info
    if a.step == "run":
        from vincie_mcore.data.labelers import make_annotator, make_segmenter
        from vincie_mcore.data.real import build_real_sessions, format_real_summary

        i, n = sharded.parse_shard(a.shard)
        info, conf = sharded.read_plan(a.store)
        if "edits" in conf:                                    # a planned editing-dataset build
            from vincie_mcore.data.edits import format_edits_summary, run_edits_part

            if info["parts"] != n:
                raise ValueError(f"--shard {i}/{n}: the plan of {a.store} has {info['parts']} parts")
            summary = run_edits_part(a.store, i, n, conf["edits"], a.retry_failed, progress=not a.quiet)
            print(f"part {i}/{n}: " + format_edits_summary(summary))
            return summary
        inputs = sharded.part_inputs(a.store, i, n)
        cfg = build(RealBuildConfig, conf.get("build"), "build")
        annotator, segmenter = make_annotator(conf.get("annotator")), make_segmenter(conf.get("segmenter"))
        if hasattr(annotator, "check"):
            annotator.check()                                   # a server down: one line now, not 1000 failures
        # an in-process segmenter (GroundingDINO + SAM2) segments here while the workers decode
        summary = build_real_sessions(inputs, sharded.part_root(a.store, i), cfg, annotator, segmenter,
                                      retry_failed=a.retry_failed, progress=not a.quiet)
        in_here = cfg.workers == 1 and not cfg.timeout_s and not cfg.max_mb
        for key, part in (("annotator", annotator), ("segmenter", segmenter)):
            if hasattr(part, "stats") and (in_here or getattr(part, "in_process", False)):   # counted here
                summary[key] = part.stats()
        print(f"part {i}/{n}: " + format_real_summary(summary))
        return summary
    if a.step == "edits":
        from vincie_mcore.data.edits import EditsConfig, build_edit_sessions, format_edits_summary, plan_edits

        cfg = EditsConfig(format=a.format, columns=_columns(a.columns), name=a.name, size=tuple(a.size),
                          aspect=a.aspect, masks=a.masks, workers=a.workers, shard_size=a.shard_size,
                          keep=tuple(a.keep), images=str(Path(a.images).resolve()) if a.images else None)
        if a.shards > 1:
            if a.limit:
                raise ValueError("--limit: builds here only; not with --shards")
            info = plan_edits(a.data, a.store, a.shards, cfg)
            print(f"plan: {info['files']} files in {a.shards} parts -> {a.store}/plan; "
                  f"run them with: bash slurm/sessions.sh {a.store}")
            return info
        s = build_edit_sessions(a.data, a.store, cfg, retry_failed=a.retry_failed, limit=a.limit,
                                progress=not a.quiet)
        if a.quiet:
            print(format_edits_summary(s))
        return s
    if a.step == "union":
        s = sharded.union(a.store, a.sources)
        print(f"union: {s['sessions']} sessions in {s['shards']} shards of {s['sources']} stores "
              f"({s['files_linked']} files linked, {s['files_copied']} copied) -> {s['store']}")
        print("   sources: " + ", ".join(f"{n} ({b - a} sessions)" for n, a, b in s["named"]))
        return s
    if a.step == "merge":
        s = sharded.merge(a.store)
        print(f"merge: {s['parts']} parts, {s['shards']} shards, {s['sessions']} sessions, "
              f"{s['failed']} failed inputs -> {s['store']}")
        return s
    from vincie_mcore.data.report import format_stats, preview, write_stats

    if a.step == "stats":
        from vincie_mcore.data.report import COVERAGE_SESSIONS
        if a.coverage_sessions is not None and a.coverage_sessions < 0:
            raise ValueError(f"--coverage-sessions: must be >= 0 (0: every session), got {a.coverage_sessions}")
        n = COVERAGE_SESSIONS if a.coverage_sessions is None else (a.coverage_sessions or None)
        s = write_stats(a.store, a.json, coverage_sessions=n, seed=a.seed, progress=True)
        print(format_stats(s))
        return s
    paths = preview(a.store, a.out, sessions=a.sessions, seed=a.seed, by=a.by)
    print(f"preview: {len(paths)} sheets -> {a.out}")
    return {"sheets": [str(p) for p in paths]}


def main(argv=None) -> int:
    """The console script: 0 when done (errors exit 2 with one line)."""
    run_cli(argv)
    return 0


def run_cli(argv=None) -> dict:
    """Parse ``argv`` and do it -> the summary (what ``main`` prints, as data)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in STEPS:
        try:
            return steps_main(argv)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            raise SystemExit(2) from None
    a = parse_args(argv)
    try:
        sampling = SamplingConfig(strategy=a.sampling, interval_s=a.interval_s, n_frames=tuple(a.n_frames),
                                  p_equal=a.p_equal, min_change=a.min_change)
        if a.synthetic:
            cfg = world_from_arg(a.world)
            t0 = time.perf_counter()
            write_synthetic_corpus(a.videos, a.synthetic, cfg, seed=a.seed, workers=a.workers, codec=a.codec,
                                   progress=not a.quiet)
            print(f"videos: {a.synthetic} synthetic videos in {time.perf_counter() - t0:.1f}s -> {a.videos}")
        summary = build_sessions(a.videos, a.out, sampling=sampling, workers=a.workers, shard_size=a.shard_size,
                                 seed=a.seed, retry_failed=a.retry_failed, progress=not a.quiet,
                                 decode_timeout_s=a.decode_timeout_s, decode_max_mb=a.decode_max_mb)
        if a.quiet:
            print(format_summary(summary))
        return summary
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
