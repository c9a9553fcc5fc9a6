"""The sweep's fits on planted data: known slopes and exponents come back inside their intervals;
degenerate tables give one-line errors, not crashes; the plots write PNGs of the asked size."""
import math
import struct

import numpy as np
import pytest

from vincie_mcore.sweep import fit, plots

SIZES = [250, 500, 1000, 2000]


def _success_table(a, b, noise=0.03, seeds=3, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [{"run": f"d{d}-s{s}", "data_size": d, "model": "tiny", "seed": s, "final_loss": None,
             "turn_success": [ai + bi * math.log10(d) + rng.normal(0, noise) for ai, bi in zip(a, b)]}
            for d in sizes for s in range(seeds)]


def _loss_table(E, B, beta, noise=0.005, seeds=3, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [{"run": f"d{d}-s{s}", "data_size": d, "model": "tiny", "seed": s, "turn_success": [],
             "final_loss": (E + B * d ** -beta) * math.exp(rng.normal(0, noise))}
            for d in sizes for s in range(seeds)]


def _inside(v, ci):
    return ci is not None and ci[0] <= v <= ci[1]


# ---------------------------------------------------------------- success

def test_success_slopes_recovered_inside_their_cis():
    a, b = [0.2, -0.1, -0.4], [0.2, 0.12, 0.15]
    f = fit.fit_success(_success_table(a, b), n_boot=500)
    assert f["error"] is None and f["n_runs"] == 12 and f["next_size"] == 4000
    for t, ai, bi in zip(f["turns"], a, b):
        assert _inside(bi, t["b_ci95"]) and _inside(ai, t["a_ci95"]), t
        assert not _inside(-bi, t["b_ci95"])              # a flipped sign would not pass
        assert t["bootstrap"] == "runs within each data size"
        truth = ai + bi * math.log10(4000)
        assert _inside(truth, t["pred_ci95"])
        assert t["pred_pi95"][0] < t["pred_ci95"][0] and t["pred_ci95"][1] < t["pred_pi95"][1]
        assert 0.5 < t["r2"] <= 1


def test_success_ci_coverage_is_near_nominal():
    # With 3 seeds a plain within-size bootstrap covers ~80 %; the sqrt(n/(n-1)) scaling brings it
    # back near 95 %. 40 planted sweeps: require >= 33 covered (a plain bootstrap fails this often).
    hits = 0
    for s in range(40):
        f = fit.fit_success(_success_table([0.1], [0.2], noise=0.05, seed=100 + s), n_boot=300, seed=s)
        hits += _inside(0.2, f["turns"][0]["b_ci95"])
    assert hits >= 33, hits


def test_success_deterministic_given_seed():
    table = _success_table([0.1], [0.2])
    assert fit.fit_success(table, n_boot=100, seed=3) == fit.fit_success(table, n_boot=100, seed=3)
    assert fit.fit_success(table, n_boot=100, seed=3) != fit.fit_success(table, n_boot=100, seed=4)


def test_next_size_continues_the_progression():
    assert fit.next_size([250_000, 500_000, 1e6, 2.5e6, 5e6, 10e6]) == 20e6
    assert fit.next_size([250, 500, 1000, 2000]) == 4000
    assert fit.next_size([1000]) is None


def test_format_success_clips_predictions_only_in_the_report():
    f = fit.fit_success(_success_table([0.5], [0.3], noise=0.01), n_boot=100)
    assert f["turns"][0]["pred"] > 1                        # the fit keeps the raw line
    md = fit.format_fit(f)
    row = [l for l in md.splitlines() if l.startswith("| 1 |")][0]
    assert "| 1.000 [" in row and "1.0" in row.split("|")[-2]
    assert "clipped to [0, 1]" in md


# ---------------------------------------------------------------- loss

@pytest.mark.parametrize("E,B,beta", [(0.3, 4.0, 0.5), (1.0, 30.0, 0.8)])
def test_loss_exponent_recovered_inside_its_ci(E, B, beta):
    f = fit.fit_loss(_loss_table(E, B, beta), n_boot=200)
    assert f["error"] is None, f["error"]
    assert _inside(beta, f["beta_ci95"]) and _inside(E, f["E_ci95"]), (f["beta"], f["beta_ci95"], f["E_ci95"])
    assert abs(f["beta"] - beta) < 0.15 and f["beta"] > 0   # D^+beta would give a negative beta
    assert f["n_near"] >= 5
    assert f["spread"]["beta"][1] - f["spread"]["beta"][0] < 0.01
    assert f["spread"]["E"][1] - f["spread"]["E"][0] < 0.01 * E
    truth = E + B * 4000 ** -beta
    assert _inside(truth, f["pred_pi95"])
    assert f["band"]["sessions"][0] == 250 and f["band"]["sessions"][-1] == pytest.approx(4000)
    assert "| β |" in fit.format_fit(f)


def test_loss_fit_beats_every_start_and_is_deterministic():
    table = _loss_table(0.3, 4.0, 0.5)
    f = fit.fit_loss(table, n_boot=50, seed=1)
    assert f == fit.fit_loss(table, n_boot=50, seed=1)
    assert f["n_starts"] == 36 and f["boot_failed"] == 0


def test_loss_one_run_per_size_falls_back_to_residuals():
    f = fit.fit_loss(_loss_table(0.3, 4.0, 0.5, seeds=1, sizes=[250, 500, 1000, 2000, 4000]), n_boot=100)
    assert f["error"] is None and f["bootstrap"].startswith("residuals")
    f = fit.fit_loss(_loss_table(0.3, 4.0, 0.5, seeds=1, sizes=[250, 500, 1000]), n_boot=100)
    assert f["beta"] is not None and f["beta_ci95"] is None and "no spread" in f["bootstrap"]


# ---------------------------------------------------------------- degenerate tables

def test_one_size_gives_one_line_errors():
    table = _success_table([0.1], [0.2], sizes=[1000]) + _loss_table(0.3, 4.0, 0.5, sizes=[1000])
    for f in (fit.fit_success(table), fit.fit_loss(table)):
        assert f["error"] and "\n" not in f["error"] and "got 1" in f["error"]
        assert f["error"] in fit.format_fit(f)
    assert fit.fit_success(table)["turns"] == [] and fit.fit_loss(table)["beta"] is None
    assert fit.fit_success([])["error"] and fit.fit_loss([])["error"]


def test_missing_values_are_skipped_and_counted():
    table = _loss_table(0.3, 4.0, 0.5)
    table[0]["final_loss"] = None
    table[1]["final_loss"] = float("nan")
    table[2]["final_loss"] = -1.0
    table[3]["data_size"] = None
    f = fit.fit_loss(table, n_boot=50)
    assert f["error"] is None and f["n_runs"] == 8 and f["skipped"] == 4
    assert any("final_loss <= 0" in s for s in f["skipped_runs"])
    no_loss = [dict(r, final_loss=None) for r in table]
    g = fit.fit_loss(no_loss)
    assert g["error"] and g["skipped"] == 12 and g["E"] is None
    s = fit.fit_success(no_loss)                              # turn_success is [] in these rows
    assert s["error"] and s["skipped"] == 12


def test_models_must_not_be_mixed():
    table = _success_table([0.1], [0.2]) + [dict(r, model="big") for r in _success_table([0.3], [0.1])]
    assert "several models" in fit.fit_success(table)["error"]
    f = fit.fit_success(table, model="big", n_boot=100)
    assert f["error"] is None and f["n_runs"] == 12 and _inside(0.1, f["turns"][0]["b_ci95"])


def test_n_boot_zero_gives_no_intervals_and_bad_args_raise():
    f = fit.fit_success(_success_table([0.1], [0.2]), n_boot=0)
    assert f["turns"][0]["b"] is not None and f["turns"][0]["b_ci95"] is None
    assert f["turns"][0]["bootstrap"] == "n_boot=0"
    with pytest.raises(ValueError, match="delta"):
        fit.fit_loss([], delta=0)


# ---------------------------------------------------------------- plots

def _png_size(path):
    head = open(path, "rb").read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plots_write_pngs_of_the_asked_size(tmp_path):
    table = [dict(r, final_loss=l["final_loss"]) for r, l in
             zip(_success_table([0.2, -0.1], [0.2, 0.1]), _loss_table(0.3, 4.0, 0.5))]
    p = plots.plot_success(table, fit.fit_success(table, n_boot=100), tmp_path / "a" / "success.png",
                           figsize=(8, 5), dpi=100)
    assert _png_size(p) == (800, 500) and (tmp_path / "a" / "success.png").stat().st_size > 10_000
    p = plots.plot_loss(table, fit.fit_loss(table, n_boot=50), tmp_path / "loss.png", figsize=(7, 4.5), dpi=100)
    assert _png_size(p) == (700, 450)


def test_plots_survive_failed_fits(tmp_path):
    table = _success_table([0.1], [0.2], sizes=[1000])
    for plot, f in ((plots.plot_success, fit.fit_success(table)), (plots.plot_loss, fit.fit_loss(table))):
        p = plot(table, f, tmp_path / f"{f['kind']}.png")
        assert _png_size(p) == (round(plot.__defaults__[0][0] * 120), round(plot.__defaults__[0][1] * 120))
