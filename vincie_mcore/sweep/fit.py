"""Scaling fits for a data sweep: success per turn against log10(sessions), and final loss against data.

The input is ``collect``'s table: one dict per finished run,
``{"run", "data_size" (training sessions), "model", "seed", "turn_success": [float per turn],
"final_loss": float | None}``. Rows missing what a fit needs are skipped and counted.

- ``fit_success``: per turn, least squares ``success_t = a + b·log10(sessions)`` over every run (seeds
  are repeated points), the paper's log-linear reading of Fig. 5.
- ``fit_loss``: ``L = E + B·D^-beta`` with a Huber loss on log residuals (Chinchilla's objective),
  from a grid of starting points, solved by a batched Levenberg-Marquardt IRLS in numpy.

Both bootstrap by resampling runs **within each data size** (so every replicate keeps every size),
with each size's deviations from its mean scaled by sqrt(n/(n-1)) so that 2 or 3 seeds do not
shrink the spread; with one run per size they fall back to resampling residuals. Both extrapolate to
the sweep's next size, ``last × (last / second-last)``.

Data problems never raise: the result carries ``error`` (one line) and None fields. The dicts hold
plain floats, ready for JSON. Success values are **not** clipped here; ``format_fit`` and the plots
clip them to [0, 1] when they report them.
"""
from __future__ import annotations

import math

import numpy as np

LEVEL = 95                                   # every interval here is a central 95 % percentile one


# ---------------------------------------------------------------- table rows

def _pick_model(table: list[dict], model: str | None) -> tuple[list[dict], str | None, str | None]:
    """The rows of one model; mixing model sizes in one line would be meaningless, so refuse it."""
    models = sorted({str(r.get("model")) for r in table if r.get("model") is not None})
    if model is None and len(models) > 1:
        return [], None, f"several models in the table ({', '.join(models)}); pass model="
    if model is None:
        return list(table), (models[0] if models else None), None
    return [r for r in table if str(r.get("model")) == model], model, None


def _size(row: dict) -> float | None:
    d = row.get("data_size")
    try:
        d = float(d)
    except (TypeError, ValueError):
        return None
    return d if math.isfinite(d) and d > 0 else None


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def next_size(sizes) -> float | None:
    """The sweep's next size: it continues the last step's ratio (0.25M, 0.5M, 1M → 2M)."""
    s = sorted(set(float(x) for x in sizes))
    return s[-1] * (s[-1] / s[-2]) if len(s) >= 2 else None


def _ci(samples: np.ndarray) -> list[float] | None:
    samples = samples[np.isfinite(samples)]
    if len(samples) < 2:
        return None
    lo, hi = np.percentile(samples, [(100 - LEVEL) / 2, (100 + LEVEL) / 2])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------- bootstrap of y at fixed x

def _boot_ys(groups: np.ndarray, y: np.ndarray, fitted: np.ndarray, n_params: int, n_boot: int,
             rng) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(n_boot, n) resampled responses at the same design, the noise pool, and the method's name.

    Within each size, runs are resampled with replacement; each size keeps its count, so the design
    (and hence which parameters are identifiable) is the same in every replicate. Deviations from
    the size mean are scaled by sqrt(n/(n-1)): plain resampling of n runs has variance (n-1)/n of
    the truth, half of it with 2 seeds.
    """
    if n_boot <= 0:
        return None, None, "n_boot=0"
    sizes, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.min() >= 2:
        means = np.bincount(inv, y) / counts
        scale = np.sqrt(counts / (counts - 1))[inv]
        dev = (y - means[inv]) * scale                             # (n,)
        pick = np.empty((n_boot, len(y)), int)
        for g in range(len(sizes)):
            members = np.flatnonzero(inv == g)
            pick[:, members] = rng.choice(members, (n_boot, len(members)))
        return means[inv][None, :] + dev[pick], dev, "runs within each data size"
    if len(y) > n_params:
        res = (y - fitted) * np.sqrt(len(y) / (len(y) - n_params))
        return fitted[None, :] + res[rng.integers(0, len(y), (n_boot, len(y)))], res, \
            "residuals (some data size has one run)"
    return None, None, f"no spread to resample: {len(y)} runs for {n_params} parameters"


# ---------------------------------------------------------------- success against log10(sessions)

def _ols(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intercept and slope of y on x for each row of Y (R, n), x shared."""
    xc = x - x.mean()
    b = (Y - Y.mean(-1, keepdims=True)) @ xc / (xc @ xc)
    return Y.mean(-1) - b * x.mean(), b


def _fit_turn(x: np.ndarray, y: np.ndarray, x_next: float, n_boot: int, rng) -> dict:
    a, b = (float(v[0]) for v in _ols(x, y[None, :]))
    fitted = a + b * x
    ss_tot = float(((y - y.mean()) ** 2).sum())
    out = {"n": len(y), "a": a, "b": b, "r2": 1 - float(((y - fitted) ** 2).sum()) / ss_tot if ss_tot > 0 else None,
           "pred": a + b * x_next, "a_ci95": None, "b_ci95": None, "pred_ci95": None, "pred_pi95": None,
           "band": None}
    Y, pool, out["bootstrap"] = _boot_ys(x, y, fitted, 2, n_boot, rng)
    if Y is None:
        return out
    A, B = _ols(x, Y)
    pred = A + B * x_next
    grid = np.linspace(x.min(), x_next, 60)
    lines = A[:, None] + B[:, None] * grid[None, :]                   # (R, 60)
    out.update(a_ci95=_ci(A), b_ci95=_ci(B), pred_ci95=_ci(pred),
               pred_pi95=_ci(pred + rng.choice(pool, len(pred))),     # one new run, not the mean
               band={"sessions": (10 ** grid).tolist(),
                     "lo": np.percentile(lines, (100 - LEVEL) / 2, 0).tolist(),
                     "hi": np.percentile(lines, (100 + LEVEL) / 2, 0).tolist()})
    return out


def fit_success(table: list[dict], model: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per turn, least squares ``success = a + b·log10(sessions)`` with bootstrap CIs.

    Returns ``{"kind": "success", "model", "error", "n_runs", "skipped", "skipped_runs", "sizes",
    "next_size", "n_boot", "seed", "turns": [{"turn", "n", "a", "b", "r2", "pred", "a_ci95",
    "b_ci95", "pred_ci95", "pred_pi95", "band", "bootstrap"}]}``. ``b`` is the gain per decade of
    sessions; ``pred`` the line at ``next_size``; ``pred_ci95`` the interval of the line there (a
    mean over many seeds), ``pred_pi95`` that of one new run; ``band`` = {"sessions", "lo", "hi"}
    is the line's pointwise interval from the smallest size to the next. Values are unclipped.
    """
    if n_boot < 0:
        raise ValueError(f"fit_success: n_boot must be >= 0, got {n_boot}")
    out = {"kind": "success", "model": model, "error": None, "n_runs": 0, "skipped": 0, "skipped_runs": [],
           "sizes": [], "next_size": None, "n_boot": n_boot, "seed": seed, "turns": []}
    rows, out["model"], out["error"] = _pick_model(table, model)
    if out["error"]:
        return out
    kept = []
    for r in rows:
        vals = r.get("turn_success")
        vals = [_finite(v) for v in vals] if isinstance(vals, (list, tuple)) else []
        reason = "no data_size" if _size(r) is None else None if any(v is not None for v in vals) else "no turn_success"
        if reason:
            out["skipped_runs"].append(f"{r.get('run', '?')}: {reason}")
        else:
            kept.append((_size(r), vals))
    out["skipped"], out["n_runs"] = len(out["skipped_runs"]), len(kept)
    out["sizes"] = sorted({d for d, _ in kept})
    if len(out["sizes"]) < 2:
        out["error"] = f"fit_success: needs runs at 2 or more data sizes, got {len(out['sizes'])}"
        return out
    out["next_size"] = next_size(out["sizes"])
    rng = np.random.default_rng(seed)
    for t in range(max(len(v) for _, v in kept)):
        pts = [(d, v[t]) for d, v in kept if t < len(v) and v[t] is not None]
        x, y = np.log10([d for d, _ in pts]), np.array([s for _, s in pts])
        if len(set(x)) < 2:
            out["turns"].append({"turn": t + 1, "n": len(pts), "error": "fewer than 2 data sizes at this turn"})
            continue
        out["turns"].append({"turn": t + 1, "error": None, **_fit_turn(x, y, math.log10(out["next_size"]), n_boot, rng)})
    return out


# ---------------------------------------------------------------- loss against data: L = E + B·D^-beta

def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _log_model(theta: np.ndarray, lnD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(E + B·D^-beta) for theta = (log E, log B, beta) rows (P, 3), and its Jacobian (P, n, 3).

    E and B enter through their logs so both stay positive, and the sum is a logaddexp so that
    neither term under- or overflows (Chinchilla's parametrisation).
    """
    t_e = theta[:, :1] + 0 * lnD                                      # (P, n)
    t_b = theta[:, 1:2] - theta[:, 2:3] * lnD                         # (P, n)
    m = np.logaddexp(t_e, t_b)
    p_e, p_b = np.exp(t_e - m), np.exp(t_b - m)
    return m, np.stack([p_e, p_b, -lnD * p_b], -1)


def _objective(theta, lnD, Y, delta):
    return _huber(_log_model(theta, lnD)[0] - Y, delta).sum(-1)


def _solve(theta: np.ndarray, lnD: np.ndarray, Y: np.ndarray, delta: float,
           iters: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise sum Huber(log model - log L) for each row: Levenberg-Marquardt on the IRLS weights.

    Huber's weights (1 inside delta, delta/|r| outside) make each step a weighted Gauss-Newton one;
    the damping only accepts steps that lower the objective, so every row descends monotonically.
    Deterministic: no randomness, a fixed iteration cap. Returns (theta, objective, converged).
    """
    theta = theta.astype(float).copy()
    lam = np.full(len(theta), 1e-2)
    f = _objective(theta, lnD, Y, delta)
    stalled = np.zeros(len(theta), int)
    for _ in range(iters):
        m, J = _log_model(theta, lnD)
        r = m - Y
        w = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), 1e-300))
        H = np.einsum("pni,pn,pnj->pij", J, w, J)
        g = np.einsum("pni,pn->pi", J, w * r)
        D = np.einsum("pii->pi", H)
        A = H + (lam[:, None] * D + 1e-10)[:, :, None] * np.eye(3)
        step = np.linalg.solve(A, -g[:, :, None])[:, :, 0]
        new = theta + step
        f_new = _objective(new, lnD, Y, delta)
        better = np.isfinite(f_new) & (f_new < f)
        gain = np.where(better, f - f_new, 0.0)
        stalled = np.where(gain <= 1e-13 * (1 + np.abs(f)), stalled + 1, 0)
        theta = np.where(better[:, None], new, theta)
        f = np.where(better, f_new, f)
        lam = np.clip(np.where(better, lam / 3, lam * 4), 1e-12, 1e12)
        if (stalled >= 12).all():                     # no row has gained anything in 12 tries
            break
    return theta, f, stalled >= 12


def _starts(lnD: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A grid over (E, log B, beta) scaled to the data: E as a fraction of the smallest loss, B so
    that B·D^-beta matches the mean excess loss at the median size, shifted by ±e^2."""
    L = np.exp(y)
    out = []
    for beta in (0.1, 0.3, 0.6, 1.0):
        for frac in (1e-3, 0.5, 0.9):
            E = frac * L.min()
            excess = max(float(np.mean(L - E)), 1e-6 * L.min())
            for shift in (-2.0, 0.0, 2.0):
                out.append([math.log(E), math.log(excess) + beta * float(np.median(lnD)) + shift, beta])
    return np.array(out)


def _params(theta: np.ndarray) -> dict:
    return {"E": float(np.exp(theta[0])), "B": float(np.exp(theta[1])), "beta": float(theta[2])}


def _curve(theta: np.ndarray, D) -> np.ndarray:
    """E + B·D^-beta for theta rows (P, 3) at sizes D (k,), computed in log space: (P, k)."""
    return np.exp(_log_model(np.atleast_2d(theta), np.log(np.asarray(D, float))[None, :])[0])


def fit_loss(table: list[dict], model: str | None = None, n_boot: int = 1000, seed: int = 0,
             delta: float = 1e-3, near: float = 1e-3) -> dict:
    """Fit ``final_loss = E + B·D^-beta`` (D in training sessions) with Huber(delta) on log residuals.

    Every start of the grid is run; the best objective wins. Starts whose objective is within
    ``near`` (relative) of the best count as converging near it, and the min/max of their (E, B,
    beta) is the spread: a wide spread means the data do not pin the parameters down.

    Returns ``{"kind": "loss", "model", "error", "n_runs", "skipped", "skipped_runs", "sizes",
    "next_size", "n_boot", "seed", "delta", "E", "B", "beta", "objective", "n_starts", "n_near",
    "spread": {"E": [lo, hi], "B": [..], "beta": [..]}, "E_ci95", "B_ci95", "beta_ci95",
    "pred", "pred_ci95", "pred_pi95", "band", "bootstrap", "boot_failed"}``; ``band`` =
    {"sessions", "lo", "hi"} is the curve's pointwise interval up to ``next_size``.
    """
    if n_boot < 0 or not delta > 0:
        raise ValueError(f"fit_loss: needs n_boot >= 0 and delta > 0, got n_boot={n_boot}, delta={delta}")
    out = {"kind": "loss", "model": model, "error": None, "n_runs": 0, "skipped": 0, "skipped_runs": [],
           "sizes": [], "next_size": None, "n_boot": n_boot, "seed": seed, "delta": delta,
           "E": None, "B": None, "beta": None, "objective": None, "n_starts": 0, "n_near": 0, "spread": None,
           "E_ci95": None, "B_ci95": None, "beta_ci95": None, "pred": None, "pred_ci95": None,
           "pred_pi95": None, "band": None, "bootstrap": None, "boot_failed": 0}
    rows, out["model"], out["error"] = _pick_model(table, model)
    if out["error"]:
        return out
    pts = []
    for r in rows:
        loss = _finite(r.get("final_loss"))
        reason = ("no data_size" if _size(r) is None else "no final_loss" if loss is None
                  else "final_loss <= 0 (the fit is in log space)" if loss <= 0 else None)
        if reason:
            out["skipped_runs"].append(f"{r.get('run', '?')}: {reason}")
        else:
            pts.append((_size(r), loss))
    out["skipped"], out["n_runs"] = len(out["skipped_runs"]), len(pts)
    out["sizes"] = sorted({d for d, _ in pts})
    if len(out["sizes"]) < 3:
        out["error"] = f"fit_loss: E, B and beta need runs at 3 or more data sizes, got {len(out['sizes'])}"
        return out
    out["next_size"] = next_size(out["sizes"])
    D = np.array([d for d, _ in pts])
    lnD, y = np.log(D), np.log([l for _, l in pts])

    # 1. Every start of the grid; the best objective is the fit.
    starts = _starts(lnD, y)
    theta, f, _ = _solve(starts, lnD, np.broadcast_to(y, (len(starts), len(y))), delta)
    best = int(np.nanargmin(f))
    near_ok = f <= f[best] * (1 + near) + 1e-12
    out.update(_params(theta[best]), objective=float(f[best]), n_starts=len(starts), n_near=int(near_ok.sum()))
    P = np.stack([np.exp(theta[near_ok, 0]), np.exp(theta[near_ok, 1]), theta[near_ok, 2]], 1)
    out["spread"] = {k: [float(P[:, i].min()), float(P[:, i].max())] for i, k in enumerate(("E", "B", "beta"))}
    out["pred"] = float(_curve(theta[best], [out["next_size"]])[0, 0])

    # 2. Bootstrap: refit every replicate from the best fit and a coarse part of the grid, so that a
    #    replicate can leave the original basin.
    rng = np.random.default_rng(seed)
    fitted = _log_model(theta[best:best + 1], lnD)[0][0]
    Y, pool, out["bootstrap"] = _boot_ys(D, y, fitted, 3, n_boot, rng)
    if Y is None:
        return out
    rs = np.concatenate([theta[best:best + 1], starts[1::4]])          # (S, 3)
    S = len(rs)
    th, fb, ok = _solve(np.tile(rs, (len(Y), 1)), lnD, np.repeat(Y, S, 0), delta)
    fb = np.where(np.isfinite(fb), fb, np.inf).reshape(len(Y), S)
    th = th.reshape(len(Y), S, 3)[np.arange(len(Y)), fb.argmin(1)]      # (R, 3): each replicate's best
    out["boot_failed"] = int((~ok.reshape(len(Y), S)[np.arange(len(Y)), fb.argmin(1)]).sum())
    grid = np.geomspace(min(out["sizes"]), out["next_size"], 60)
    curves = _curve(th, grid)                                           # (R, 60)
    pred = curves[:, -1]
    out.update(E_ci95=_ci(np.exp(th[:, 0])), B_ci95=_ci(np.exp(th[:, 1])), beta_ci95=_ci(th[:, 2]),
               pred_ci95=_ci(pred), pred_pi95=_ci(pred * np.exp(rng.choice(pool, len(pred)))),
               band={"sessions": grid.tolist(), "lo": np.percentile(curves, (100 - LEVEL) / 2, 0).tolist(),
                     "hi": np.percentile(curves, (100 + LEVEL) / 2, 0).tolist()})
    return out


# ---------------------------------------------------------------- report

def _num(v, fmt=".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _iv(ci, fmt=".3f", clip=False) -> str:
    if ci is None:
        return ""
    lo, hi = (min(max(c, 0.0), 1.0) for c in ci) if clip else ci
    return f" [{format(lo, fmt)}, {format(hi, fmt)}]"


def _sessions(d) -> str:
    return "–" if d is None else f"{d / 1e6:g}M" if d >= 1e5 else f"{d:g}"


def format_fit(fit: dict) -> str:
    """Markdown lines for the report: a table per fit, or one line with the fit's error.

    Success predictions and their intervals are clipped to [0, 1] here (the fit keeps raw values).
    """
    name = "fit_success" if fit.get("kind") == "success" else "fit_loss"
    head = (f"{name}: {fit['n_runs']} runs at {len(fit['sizes'])} sizes"
            f"{'' if fit.get('model') is None else ', model ' + str(fit['model'])}"
            f", {fit['skipped']} skipped; bootstrap n={fit['n_boot']}")
    if fit.get("error"):
        return f"{head}\n\n**{fit['error']}**"
    nxt = _sessions(fit["next_size"])
    if fit["kind"] == "success":
        lines = [head, "", f"success = a + b·log10(sessions); b is the gain per decade; prediction at {nxt} "
                 "clipped to [0, 1]; CI = the line's 95 % interval, PI = one new run's", "",
                 "| turn | n | a [95% CI] | b per decade [95% CI] | R² | at " + nxt + " [CI] [PI] |",
                 "|---|---|---|---|---|---|"]
        for t in fit["turns"]:
            if t.get("error"):
                lines.append(f"| {t['turn']} | {t['n']} | {t['error']} | | | |")
                continue
            lines.append(f"| {t['turn']} | {t['n']} | {_num(t['a'])}{_iv(t['a_ci95'])} | {_num(t['b'])}{_iv(t['b_ci95'])}"
                         f" | {_num(t['r2'])} | {_num(min(max(t['pred'], 0.0), 1.0))}{_iv(t['pred_ci95'], clip=True)}"
                         f"{_iv(t['pred_pi95'], clip=True)} |")
        return "\n".join(lines)
    sp = fit["spread"]
    lines = [head, "", f"final loss = E + B·D^-β, Huber(δ={fit['delta']:g}) on log residuals, "
             f"{fit['n_starts']} starts, {fit['n_near']} within the best objective; spread = min–max over those", "",
             "| param | fit | 95% CI | spread across starts |", "|---|---|---|---|",
             f"| E | {_num(fit['E'], '.4g')} |{_iv(fit['E_ci95'], '.4g')} | {_num(sp['E'][0], '.4g')}–{_num(sp['E'][1], '.4g')} |",
             f"| B | {_num(fit['B'], '.4g')} |{_iv(fit['B_ci95'], '.4g')} | {_num(sp['B'][0], '.4g')}–{_num(sp['B'][1], '.4g')} |",
             f"| β | {_num(fit['beta'], '.4g')} |{_iv(fit['beta_ci95'], '.4g')} | {_num(sp['beta'][0], '.4g')}–{_num(sp['beta'][1], '.4g')} |",
             f"| loss at {nxt} | {_num(fit['pred'], '.4g')} |{_iv(fit['pred_ci95'], '.4g')} (one run:{_iv(fit['pred_pi95'], '.4g')}) | |"]
    if fit.get("boot_failed"):
        lines.append(f"\n{fit['boot_failed']} bootstrap replicates did not converge")
    return "\n".join(lines)
