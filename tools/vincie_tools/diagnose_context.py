"""Does a trained run use its context and its instruction? x0 error at fixed t, taken apart.

For held-out first turns (I0, T0 -> I1): the model's x0 error against copying I0
(``copy_source``), with another session's context image (``shuffled_context``) or instruction
(``shuffled_text``), split over unchanged and changed tokens (``vincie_mcore/eval/diagnose.py``).

    vincie-diagnose-context --run runs/demo --sessions 40 --t 0.5 0.8 0.95

Prints a JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="training run folder (config.yaml + checkpoints/)")
    ap.add_argument("--store", default=None, help="session store (default: <run>/heldout/store)")
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--t", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    a = ap.parse_args(argv)

    from vincie_mcore.build import data_configs, load_run
    from vincie_mcore.data.corpus import decode_corpus
    from vincie_mcore.eval.diagnose import diagnose_context

    try:
        cfg, model, text, image = load_run(a.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dc = data_configs(cfg)
    held = decode_corpus(a.store or f"{a.run}/heldout/store", dc["corpus"], a.sessions)
    if len(held) < 2:
        print("error: --store: need at least 2 sessions", file=sys.stderr)
        return 2

    def show(t, r):
        print(f"t={t}: " + "  ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)
    out = diagnose_context(model, text, image, held, dc["recipe"], dc["pack"], a.t, on_t=show)
    print(json.dumps({"run": a.run, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
