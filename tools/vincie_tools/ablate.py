"""The paper's findings (Tables 3, 4, 5) as paired ablations on the synthetic world (docs/ablations.md).

    vincie-ablate plan --config ablation.yaml --sweep ablations/ctx   # the two arms as one sweep
    vincie-ablate launch --sweep ablations/ctx                        # Slurm, through vincie-sweep's launcher
    vincie-ablate status --sweep ablations/ctx
    vincie-ablate report --sweep ablations/ctx                        # ablation.json, ablation.md, ablation.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vincie_mcore.sweep.ablate import ABLATIONS


def _parser():
    p = argparse.ArgumentParser(prog="vincie-ablate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("plan", help="resolve the two arms x seeds; build the shared synthetic data")
    pl.add_argument("--config", required=True)
    pl.add_argument("--sweep", required=True)
    pl.add_argument("--ablation", choices=tuple(ABLATIONS), default=None,
                    help="overrides the YAML's ablation:")
    pl.add_argument("--quiet", action="store_true")
    for name, what in (("launch", "submit what is not done"), ("status", "a table of the runs"),
                       ("report", "paired differences per turn with CIs")):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("--sweep", required=True)
    sub.choices["report"].add_argument("--reps", type=int, default=2000, help="bootstrap replicates")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    from vincie_mcore.sweep import ablate as A
    from vincie_mcore.sweep import launch as L

    sweep = Path(a.sweep)
    try:
        if a.cmd == "plan":
            s = A.plan(a.config, sweep, ablation=a.ablation, progress=not a.quiet)
            print(f"plan: ablation {s['ablation']} (A {s['arms'][0]}, B {s['arms'][1]}), {s['runs']} runs, "
                  f"{s['budget']['steps']} steps" + (f" (with {s['budget']['pretrain_runs']} base runs)" if s['budget']['pretrain_runs']
                                                else "") + f" -> {s['sweep']}")
        elif a.cmd == "launch":
            r = L.launch(sweep)
            print(L.format_launch(r))
        elif a.cmd == "status":
            print(L.format_status(L.status(sweep)))
        elif a.cmd == "report":
            res = A.report(sweep, reps=a.reps)
            print(A.format_table(res))
            print(sweep / "ablation.md")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
