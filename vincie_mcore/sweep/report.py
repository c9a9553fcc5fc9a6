"""``vincie-sweep report``: SWEEP/report.md with the runs table, the fits and the plots."""
from __future__ import annotations

import json
from pathlib import Path


def write_report(sweep_dir, fit_res: dict, pngs: list[str]) -> Path:
    from .fit import format_fit

    sweep_dir = Path(sweep_dir)
    res = json.loads((sweep_dir / "results.json").read_text())
    runs = sorted(res["runs"], key=lambda r: (r["model"], r["data_size"], r["seed"]))
    turns = max((len(r["turn_success"]) for r in runs), default=0)
    lines = [f"# Sweep report: {sweep_dir.name}", "",
             f"{len(runs)} evaluated runs" + (f"; missing: {', '.join(res['missing'])}" if res["missing"] else "") + ".", "",
             "| run | sessions | model | seed | steps | final loss | " + " | ".join(f"turn {t}" for t in range(1, turns + 1)) + " |",
             "|---|---|---|---|---|---|" + "---|" * turns]
    for r in runs:
        loss = "" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        lines.append(f"| {r['run']} | {r['data_size']} | {r['model']} | {r['seed']} | {r['steps']} | {loss} | "
                     + " | ".join(f"{x:.3f}" for x in r["turn_success"]) + " |")
    lines += ["", "## Fit", "", format_fit(fit_res["success"]), "", format_fit(fit_res["loss"]), "", "## Plots", ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in pngs]
    out = sweep_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
