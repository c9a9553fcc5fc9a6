"""The data-scaling sweep, from a YAML to a fitted Fig. 5 (docs/sweep.md).

    vincie-sweep plan --config sweep.yaml --sweep sweeps/tiny    # runs.jsonl, nested data, budget
    vincie-sweep launch --sweep sweeps/tiny                      # Slurm: [base array,] train array (%N), eval per run, collect
    vincie-sweep status --sweep sweeps/tiny                      # state, step, last loss, eval per run
    vincie-sweep collect --sweep sweeps/tiny                     # results.json / results.csv
    vincie-sweep report --sweep sweeps/tiny                      # fit + plots + report.md (fit, plot: parts of it)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser():
    p = argparse.ArgumentParser(prog="vincie-sweep", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("plan", help="resolve every run; build the shared synthetic data")
    pl.add_argument("--config", required=True)
    pl.add_argument("--sweep", required=True)
    pl.add_argument("--quiet", action="store_true")
    for name, what in (("launch", "submit what is not done"), ("status", "a table of the runs"),
                       ("collect", "gather evaluated runs"), ("fit", "fit success and loss against data"),
                       ("plot", "Fig. 5-style PNGs"), ("report", "fit, plots and report.md")):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("--sweep", required=True)
    for name in ("run-train", "run-eval"):                      # what a Slurm task runs
        sp = sub.add_parser(name, help=argparse.SUPPRESS)
        sp.add_argument("--sweep", required=True)
        sp.add_argument("--index", type=int, required=True)
        if name == "run-train":
            sp.add_argument("--pretrain", action="store_true", help="a base run of pretrain.jsonl")
    return p


def _fit(sweep: Path) -> dict:
    from vincie_mcore.sweep import fit

    table = json.loads((sweep / "results.json").read_text())["runs"] if (sweep / "results.json").is_file() else []
    if not table:
        raise ValueError(f"{sweep}: no evaluated runs in results.json (run `vincie-sweep collect`)")
    res = {"success": fit.fit_success(table), "loss": fit.fit_loss(table)}
    (sweep / "fit.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def _plot(sweep: Path, res: dict) -> list[str]:
    from vincie_mcore.sweep import plots

    table = json.loads((sweep / "results.json").read_text())["runs"]
    out = [plots.plot_success(table, res["success"], sweep / "success_vs_data.png"),
           plots.plot_loss(table, res["loss"], sweep / "loss_vs_data.png")]
    return [str(p) for p in out]


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    from vincie_mcore.sweep import launch as L
    from vincie_mcore.sweep import plan as P

    sweep = Path(a.sweep)
    try:
        if a.cmd == "plan":
            s = P.plan(a.config, sweep, progress=not a.quiet)
            b = s["budget"]
            print(f"plan: {s['runs']} runs" + (f" and {b['pretrain_runs']} base runs" if b["pretrain_runs"] else "") +
                  f", {b['steps']} steps, GPU-hours "
                  f"{b['gpu_hours'] if b['gpu_hours'] is not None else 'n/a (' + b['why_none'] + ')'} -> {s['sweep']}")
        elif a.cmd == "launch":
            r = L.launch(sweep)
            print(L.format_launch(r))
        elif a.cmd == "status":
            print(L.format_status(L.status(sweep)))
        elif a.cmd == "collect":
            t = L.collect(sweep)
            print(f"collect: {len(t)} evaluated runs -> {sweep / 'results.csv'}")
        elif a.cmd == "run-train":
            return L.run_train(sweep, a.index, pretrain=a.pretrain)
        elif a.cmd == "run-eval":
            return L.run_eval(sweep, a.index)
        elif a.cmd == "fit":
            from vincie_mcore.sweep.fit import format_fit
            res = _fit(sweep)
            print(format_fit(res["success"]) + "\n\n" + format_fit(res["loss"]))
        elif a.cmd == "plot":
            print("\n".join(_plot(sweep, json.loads((sweep / "fit.json").read_text()) if (sweep / "fit.json").is_file()
                                  else _fit(sweep))))
        elif a.cmd == "report":
            from vincie_mcore.sweep.report import write_report
            res = _fit(sweep)
            pngs = _plot(sweep, res)
            print(write_report(sweep, res, pngs))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
