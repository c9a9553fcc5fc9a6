"""Fig. 5-style plots of a data sweep: success per turn against sessions, and final loss against data.

Both take ``collect``'s table and the matching fit from ``fit.py``, draw with matplotlib's Agg
backend (no display on a cluster node) and write a PNG of exactly ``figsize × dpi`` pixels. A fit
that failed still gives a plot: the points, and the fit's error written on the axes.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fit import _finite, _pick_model, _size  # noqa: E402


def _rows(table: list[dict], fit: dict) -> list[dict]:
    """The rows the fit used (its model), so the points and the lines come from the same runs."""
    return _pick_model(table, fit.get("model"))[0]


def _jitter(d: float, i: int, n: int) -> float:
    """Spread n seeds at one size over ±3 % of the size, in log x, so that they do not overlap."""
    return d * 10 ** (0.013 * (i - (n - 1) / 2))


def _sessions_axis(ax, sizes: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{d / 1e6:g}M" if d >= 1e5 else f"{d:g}" for d in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training sessions (log scale)")
    ax.grid(alpha=0.3)


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)                           # no bbox_inches="tight": the pixel size stays as asked
    plt.close(fig)
    return str(path)


def plot_success(table: list[dict], fit: dict, path, figsize=(8.0, 5.0), dpi: int = 120) -> str:
    """Success per turn against sessions: seeds as small jittered points, the mean per size, the
    fitted line with its bootstrap band, and the prediction at the next size (clipped to [0, 1])."""
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi, layout="constrained")
    colors = plt.get_cmap("tab10").colors
    runs = [(_size(r), r.get("turn_success") or []) for r in _rows(table, fit) if _size(r) is not None]
    n_turns = max([len(v) for _, v in runs] + [len(fit.get("turns", []))])
    for t in range(n_turns):
        c = colors[t % len(colors)]
        by_size: dict[float, list[float]] = {}
        for d, vals in runs:
            v = _finite(vals[t]) if t < len(vals) else None
            if v is not None:
                by_size.setdefault(d, []).append(v)
        for d, vs in by_size.items():
            ax.scatter([_jitter(d, i, len(vs)) for i in range(len(vs))], vs, s=14, color=c, alpha=0.45, lw=0)
        sizes = sorted(by_size)
        ax.plot(sizes, [np.mean(by_size[d]) for d in sizes], "o", color=c, ms=7, mec="white",
                label=f"Turn-{t + 1}")
        ft = fit["turns"][t] if t < len(fit.get("turns", [])) else None
        if ft and not ft.get("error"):
            xs = np.array([sizes[0], fit["next_size"]])
            ax.plot(xs, ft["a"] + ft["b"] * np.log10(xs), "-", color=c, lw=1.5)
            if ft.get("band"):
                ax.fill_between(ft["band"]["sessions"], ft["band"]["lo"], ft["band"]["hi"], color=c, alpha=0.15, lw=0)
            if ft.get("pred_pi95"):
                p = min(max(ft["pred"], 0.0), 1.0)
                lo, hi = (min(max(v, 0.0), 1.0) for v in ft["pred_pi95"])
                ax.errorbar([fit["next_size"]], [p], yerr=[[p - lo], [hi - p]], fmt="D", color=c, ms=5,
                            mfc="white", capsize=3)
    ticks = sorted({d for d, _ in runs} | ({fit["next_size"]} if fit.get("next_size") else set()))
    _sessions_axis(ax, ticks)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("editing success rate")
    ax.set_title("Success per turn against training sessions (line: a + b·log10 D, band: 95 % bootstrap;"
                 " ◇ next size, one run's 95 % interval)", fontsize=8.5)
    if fit.get("error") or not runs:
        ax.text(0.5, 0.5, fit.get("error") or "no runs with success rates", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="crimson", wrap=True)
    if n_turns:
        ax.legend(loc="upper left", fontsize=8, ncol=min(n_turns, 5))
    return _save(fig, path)


def plot_loss(table: list[dict], fit: dict, path, figsize=(7.0, 4.5), dpi: int = 120) -> str:
    """Final loss against data: every run, the fitted E + B·D^-beta with its bootstrap band, E as a
    dotted floor, and the extrapolation to the next size."""
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi, layout="constrained")
    pts = [(_size(r), _finite(r.get("final_loss"))) for r in _rows(table, fit)]
    pts = [(d, v) for d, v in pts if d is not None and v is not None]
    if pts:
        ax.scatter([d for d, _ in pts], [v for _, v in pts], s=18, color="C0", alpha=0.7, label="runs")
    if not fit.get("error") and fit.get("E") is not None:
        band = fit.get("band")
        grid = np.geomspace(min(fit["sizes"]), fit["next_size"], 60)
        ax.plot(grid, fit["E"] + fit["B"] * grid ** -fit["beta"], "-", color="C1",
                label=f"E + B·D^-β: E={fit['E']:.3g}, β={fit['beta']:.3g}")
        if band:
            ax.fill_between(band["sessions"], band["lo"], band["hi"], color="C1", alpha=0.2, lw=0,
                            label="95 % bootstrap band")
        ax.axhline(fit["E"], ls=":", color="grey", lw=1)
        if fit.get("pred_pi95"):
            lo, hi = fit["pred_pi95"]
            ax.errorbar([fit["next_size"]], [fit["pred"]], yerr=[[fit["pred"] - lo], [hi - fit["pred"]]],
                        fmt="D", color="C1", mfc="white", capsize=3, label="next size (one run, 95 %)")
    ticks = sorted({d for d, _ in pts} | ({fit["next_size"]} if fit.get("next_size") else set()))
    _sessions_axis(ax, ticks)
    ax.set_xlabel("training data D, sessions (log scale)")
    ax.set_ylabel("final training loss")
    ax.set_title("Final loss against data", fontsize=10)
    if fit.get("error") or not pts:
        ax.text(0.5, 0.5, fit.get("error") or "no runs with a final loss", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="crimson", wrap=True)
    if pts:
        ax.legend(fontsize=8)
    return _save(fig, path)
