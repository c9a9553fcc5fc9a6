"""Human evaluation (the paper's App. D.1-D.3): a rating page, then the report.

    vincie-human-eval rate --method ours=results/mse --method gpt4o=results/ref --ratings ratings.jsonl
    vincie-human-eval report --method ours=results/mse --method gpt4o=results/ref --ratings ratings.jsonl \\
        --clip-path models/clip-vit-base-patch32 --dino-path models/dino-vits16 --out results/human
    vincie-human-eval rate --store sessions/ --sample 500 --ratings annotations.jsonl      # the annotator's texts
    vincie-human-eval report --store sessions/ --sample 500 --ratings annotations.jsonl --out results/human

Each --method is a `vincie-benchmark mse --out` folder. `rate` serves a page where raters answer success or
failure for every turn of every method, blind to which method made it; it prints
"vincie-human-eval: open URL" and serves 127.0.0.1 only unless given a login (--auth-file). `report` writes
human_eval.json (success per turn by the raters beside the judge's, rater agreement, and the correlation
of the judge's and the CLIP/DINO scores with the raters) and human_eval.png. With --store, transitions drawn
from a session store are rated on their two frames and text (accurate? complete?; regions? where a segmenter
made RoE maps), and `report` writes
human_eval_annotations.json (Table 8). docs/human_eval.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vincie_tools.app import add_exposure_args


def _methods(specs: list[str]) -> dict:
    out = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--method {spec!r}: expected NAME=RESULT_FOLDER")
        if name in out:
            raise ValueError(f"--method {name}: given twice")
        out[name] = folder
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vincie-human-eval", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, help_ in (("rate", "serve the rating page"), ("report", "success rates, agreement, correlations")):
        p = sub.add_parser(cmd, help=help_)
        what = p.add_mutually_exclusive_group(required=True)
        what.add_argument("--method", action="append", metavar="NAME=RESULT_FOLDER",
                          help="MSE-Bench turns: a vincie-benchmark mse --out folder under a name (repeat)")
        what.add_argument("--store", default=None,
                          help="annotations: a session store (vincie-build-sessions --out) to draw transitions from")
        p.add_argument("--data", default=None, help="the MSE-Bench copy (default: the one the results name)")
        p.add_argument("--sample", type=int, default=500, help="--store: transitions to rate (the paper: 500)")
        p.add_argument("--sample-seed", type=int, default=0,
                       help="--store: which transitions (rate and report must agree on it and on --sample)")
        p.add_argument("--ratings", required=True, help="the ratings file (JSONL; appended to by rate)")
        p.add_argument("--seed", type=int, default=0, help="rate: the raters' orders; report: the bootstrap")
    r = sub.choices["rate"]
    add_exposure_args(r, 7861, "; the login is the rater")
    r.add_argument("--protocol", choices=["all", "judge"], default="all",
                   help="all: every turn is asked; judge: a session's later turns only after the rater said "
                        "success to the earlier ones, as the judge stops at a failure (fewer answers)")
    p = sub.choices["report"]
    p.add_argument("--out", required=True, help="folder for human_eval.json and human_eval.png")
    p.add_argument("--clip-path", default=None, help="a local CLIP folder: CLIP-T and CLIP-I against the raters")
    p.add_argument("--dino-path", default=None, help="a local DINO ViT folder (with --clip-path): DINO too")
    p.add_argument("--device", default="cpu")
    return ap


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    from vincie_mcore.eval import human

    try:                                            # every refusal is one line (the app's AppError too)
        if a.cmd == "rate":                         # exposure first: refuse before reading any images
            from vincie_mcore.app.serve import ServeConfig, check_exposure, read_auth, serve_rating

            cfg = ServeConfig(host=a.host, port=a.port, auth_file=a.auth_file, share=a.share)
            check_exposure(cfg, read_auth(cfg.auth_file))
        elif (a.clip_path is None) != (a.dino_path is None):
            raise ValueError("--clip-path and --dino-path: give both (CLIP-T, CLIP-I and DINO) or neither")
        elif a.store and a.clip_path:
            raise ValueError("--clip-path: scores MSE-Bench turns (--method), not annotations")
        study = (human.AnnotationStudy(a.store, a.sample, a.sample_seed) if a.store else
                 human.Study(_methods(a.method), a.data))
        ratings = human.Ratings(a.ratings)
        if a.cmd == "rate":
            if a.protocol == "judge" and a.store:
                raise ValueError("--protocol judge: for MSE-Bench turns (--method), not annotations")
            serve_rating(study, ratings, cfg, a.seed, a.protocol, announce=lambda line: print(line, flush=True))
            return 0
        metrics = None
        if a.clip_path:
            from vincie_mcore.eval.magicbrush import MagicBrushConfig, MagicBrushMetrics

            metrics = MagicBrushMetrics(MagicBrushConfig(clip_path=a.clip_path, dino_path=a.dino_path,
                                                         device=a.device))
    except (ValueError, OSError) as e:              # FileNotFoundError is an OSError
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.store:
        res = human.annotation_report(study, ratings, a.seed)
        (out / "human_eval_annotations.json").write_text(json.dumps(res, indent=1))
        for q, r in res["questions"].items():
            if not r["items_asked"]:
                print(f"{q}: not asked (no session drawn has RoE maps from a segmenter)")
                continue
            share = "-" if r["share_yes"] is None else f"{r['share_yes']:.3f} (95% CI {r['ci95']})"
            print(f"{q}: {share} over {r['items_rated']} rated transitions")
        print(f"{len(res['raters'])} raters; {out / 'human_eval_annotations.json'}")
        return 0
    res = human.report(study, ratings, metrics, a.seed, progress=True)
    (out / "human_eval.json").write_text(json.dumps(res, indent=1))
    human.plot(res, out / "human_eval.png")
    for name, h in res["human"].items():
        fmt = lambda xs: " ".join("-" if x is None else f"{x:.3f}" for x in xs)   # noqa: E731
        print(f"{name}: raters {fmt(h['turn_success'])} | judge {fmt(h['judge_turn_success'])} "
              f"(sessions counted per turn: {[p['sessions_counted'] for p in h['per_turn']]})")
    for k, c in res["correlation"].items():
        if c["pearson"] is not None:
            print(f"{k} vs raters (n={c['n']}): pearson {c['pearson']['r']:.3f} (p={c['pearson']['p']:.2g}), "
                  f"spearman {c['spearman']['r']:.3f}, kendall {c['kendall']['r']:.3f}")
        else:
            print(f"{k} vs raters (n={c['n']}): undefined (fewer than 3 items, or one side constant)")
    print(f"{res['items_rated']} of {res['items']} items rated by {len(res['raters'])} raters; "
          f"{out / 'human_eval.json'}, {out / 'human_eval.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
