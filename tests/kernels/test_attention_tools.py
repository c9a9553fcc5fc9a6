"""The attention tools on a machine without CUDA: a "skipped" JSON record, written and printed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path only")
@pytest.mark.parametrize("tool", ["bench_attention", "tune_attention"])
def test_without_cuda_the_tool_records_why_it_skipped(tool, tmp_path):
    out = tmp_path / "sub" / f"{tool}.json"
    r = subprocess.run([str(Path(sys.executable).parent / f"vincie-{tool.replace('_', '-')}"), "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    written = json.loads(out.read_text())
    assert written == json.loads(r.stdout.strip().splitlines()[-1])
    assert written["tool"] == tool and written["skipped"].startswith("no CUDA device")


def test_a_case_is_valid_only_with_a_passing_check_and_a_rate_under_the_peak():
    """The bench's verdict (vincie_kernels.bench.summarize_case) on planted records."""
    from vincie_kernels.bench import flex_flash_unavailable, rel_errors, summarize_case
    assert flex_flash_unavailable("cpu") == "needs CUDA"
    ok = {"max_rel_err": {"out": 1e-3, "dq": 2e-3, "dk": 1e-3, "dv": 1e-3}, "tol": 3e-2, "ok": True}
    case = {"check": {"flex": ok, "sdpa_dense_mask": ok},
            "ours": {"fwd_bwd_ms": 10.0, "fwd_bwd_tflops": 300.0, "fwd_tflops": 350.0},
            "flex": {"fwd_bwd_ms": 15.0},
            "dense_flash_no_mask": {"computed_fwd_bwd_tflops": 500.0}}
    s = summarize_case(case, peak_tflops=780.0)
    assert s["valid"] and s["ours"]["frac_of_dense_rate"] == pytest.approx(0.6)
    assert s["ours"]["x_flex"] == pytest.approx(1.5)

    fast = {**case, "ours": {"fwd_bwd_ms": 3.0, "fwd_bwd_tflops": 1065.0, "fwd_tflops": 898.0}}
    s = summarize_case(fast, peak_tflops=780.0)            # the H200 case-b figure: above the chip's peak
    assert not s["valid"] and "ours" not in s and any("above the measured matmul peak" in r for r in s["invalid_reasons"])

    bad = {**case, "check": {"flex": {**ok, "max_rel_err": {**ok["max_rel_err"], "dk": 0.4}, "ok": False}}}
    s = summarize_case(bad, peak_tflops=780.0)
    assert not s["valid"] and s["invalid_reasons"] == ["disagrees with flex: dk max rel err 0.4 > 0.03"]
    assert not summarize_case({"ours": case["ours"]}, 780.0)["valid"]      # nothing checked: no speed

    # FlexAttention's FA4 backend: a ratio where it ran, its reason where it could not
    fa4 = {**case, "flex_flash": {"fwd_bwd_ms": 8.0, "fwd_bwd_tflops": 375.0}}
    s = summarize_case(fa4, peak_tflops=780.0)
    assert s["ours"]["x_flex_flash"] == pytest.approx(0.8) and s["flex_flash"]["frac_of_dense_rate"] == pytest.approx(0.75)
    s = summarize_case({**case, "flex_flash": {"unavailable": "needs CUDA"}}, peak_tflops=780.0)
    assert s["flex_flash"] == {"unavailable": "needs CUDA"} and "x_flex_flash" not in s["ours"]

    x = torch.randn(8, 2, 4)
    y = x.clone()
    y[3] += 0.5 * x.abs().max()                                            # one skipped key's worth of error
    errs = rel_errors((x, x, x, x), (y, x, x, x))
    assert errs["out"] == pytest.approx(0.5 * float(x.abs().max() / y.abs().max()), rel=1e-6) and errs["dq"] == 0.0
