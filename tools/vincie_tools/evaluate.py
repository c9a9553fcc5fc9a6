"""Re-run the demo's multi-turn evaluation on a trained run, e.g. with other sampler settings.

    vincie-evaluate --run runs/demo sampler.guidance=3 sampler.steps=50

Loads ``<run>/config.yaml`` (overrides apply on top) and the latest checkpoint, edits the
held-out sessions of ``<run>/heldout/store`` (or ``--store``) turn after turn, judges every turn
exactly, and prints the summary JSON as the last line (also written to ``--out`` when given).
``--task t2i`` instead generates each held-out session's first frame from its exact caption and judges it
(``eval/synthetic.py`` ``evaluate_t2i``); ``--task t2v`` generates each one's first ``eval.turns + 1`` frames
as one clip from that caption and its transition texts and judges every frame (``evaluate_t2v``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="training run folder (config.yaml + checkpoints/)")
    ap.add_argument("--store", default=None, help="held-out session store (default: <run>/heldout/store)")
    ap.add_argument("--sessions", type=int, default=None, help="decode at most this many held-out sessions")
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    ap.add_argument("--context", choices=("full", "none"), default="full",
                    help="full: each turn sees every earlier turn; none: only the image it edits (Table 4)")
    ap.add_argument("--coe", choices=("none", "cs", "ns", "cs_ns"), default="none",
                    help="chain-of-editing (Table 3's inference): predict the current (cs), next (ns) or both RoE "
                         "maps of each turn before its frame; none: the frame directly (I)")
    ap.add_argument("--task", choices=("edit", "t2i", "t2v"), default="edit",
                    help="edit: multi-turn editing; t2i: text-to-image from each held-out session's first-frame "
                         "caption, judged exactly (a run trained with data.recipe.t2i_prob > 0); t2v: its clip "
                         "from that caption and its transitions, every frame judged (data.recipe.t2v_prob > 0)")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. sampler.guidance=3")
    a = ap.parse_args(argv)

    from vincie_mcore.build import data_configs, load_run, make_editor
    from vincie_mcore.data.corpus import decode_corpus
    from vincie_mcore.eval.synthetic import (evaluate, evaluate_t2i, evaluate_t2v, summarize_eval, summarize_t2i,
                                             summarize_t2v)
    from vincie_mcore.train.metrics import write_json

    t0 = time.time()
    store = Path(a.store or f"{a.run}/heldout/store")
    if not store.is_dir():                                     # before the slow model load
        print(f"error: --store: no session store at {store}", file=sys.stderr)
        return 2
    if a.task in ("t2i", "t2v"):                                # judged against exact scenes only
        from vincie_mcore.data.store import SessionStore
        if not any(rec.get("states") for _, _, rec in SessionStore(store).records()):
            print(f"error: --task {a.task}: the held-out store {store} has no scene states (the synthetic world's "
                  f"sessions have them)", file=sys.stderr)
            return 2
    try:
        cfg, model, text, image = load_run(a.run, a.overrides)
        dc = data_configs(cfg)
        editor = make_editor(cfg, model, text, image)
        held = decode_corpus(store, dc["corpus"], a.sessions)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.task in ("t2i", "t2v"):
        key, what = (("t2i_prob", "text-to-image") if a.task == "t2i" else ("t2v_prob", "text-to-video"))
        if not getattr(dc["recipe"], key):
            print(f"warning: --task {a.task}: this run trained without {what} samples (data.recipe.{key}=0)",
                  file=sys.stderr)
        if a.task == "t2i":
            results, baseline, _ = evaluate_t2i(editor, held, dc["world"], batch=int(cfg.eval.batch))
            summary = summarize_t2i(results, baseline)
            summary["session_success"] = [int(r["success"]) for r in results]
        else:
            results, baseline, _ = evaluate_t2v(editor, held, dc["world"], turns=int(cfg.eval.turns),
                                                batch=int(cfg.eval.batch))
            summary = summarize_t2v(results, baseline)
            summary["session_success"] = [[int(r["success"]) for r in rs] for rs in results]   # per frame
        summary |= {"task": a.task, "overrides": list(a.overrides), "minutes": round((time.time() - t0) / 60, 2)}
        if a.out:
            write_json(a.out, summary)
        print(json.dumps(summary), flush=True)
        return 0
    if a.coe != "none" and not dc["recipe"].roe_prob:
        print(f"warning: --coe {a.coe}: this run trained without RoE maps (data.recipe.roe_prob=0), so the maps "
              f"it predicts and reads mean nothing to it", file=sys.stderr)
    results, baseline, _ = evaluate(editor, held, dc["world"], turns=int(cfg.eval.turns), batch=int(cfg.eval.batch),
                                  context=a.context, coe=a.coe, recipe=dc["recipe"])
    summary = summarize_eval(results, baseline)
    summary["context"] = a.context
    summary["coe"] = a.coe
    # per turn, per held-out session (in store order): what vincie-ablate pairs across arms
    summary["session_success"] = [[int(r["success"]) for r in rs] for rs in results]
    summary["overrides"] = list(a.overrides)
    summary["minutes"] = round((time.time() - t0) / 60, 2)
    if a.out:
        write_json(a.out, summary)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
