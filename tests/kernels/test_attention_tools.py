"""The attention tools on a machine without CUDA: a "skipped" JSON record, written and printed."""
import json
import os
import re
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

    # the fused work-list build: quoted only where its lists equal the default build's; above the peak invalidates
    fused = {**case, "ours_fused_build": {"fwd_bwd_ms": 7.5, "fwd_bwd_tflops": 400.0, "fwd_tflops": 420.0},
             "fused_build": {"matches_torch_build": True, "differences": {}, "build_ms": 0.5}}
    s = summarize_case(fused, peak_tflops=780.0)
    assert s["valid"] and s["ours_fused_build"]["x_flex"] == pytest.approx(2.0) and "fused_build_invalid" not in s
    s = summarize_case({**fused, "fused_build": {"matches_torch_build": False, "differences": {"dkdv": "k.part_end"}}},
                       peak_tflops=780.0)
    assert s["valid"] and "ours_fused_build" not in s and "k.part_end" in s["fused_build_invalid"]
    s = summarize_case({**fused, "ours_fused_build": {"fwd_bwd_ms": 2.0, "fwd_bwd_tflops": 1065.0}}, peak_tflops=780.0)
    assert not s["valid"] and "ours_fused_build fwd_bwd_tflops 1065 above the measured matmul peak 780" in s["invalid_reasons"]

    x = torch.randn(8, 2, 4)
    y = x.clone()
    y[3] += 0.5 * x.abs().max()                                            # one skipped key's worth of error
    errs = rel_errors((x, x, x, x), (y, x, x, x))
    assert errs["out"] == pytest.approx(0.5 * float(x.abs().max() / y.abs().max()), rel=1e-6) and errs["dq"] == 0.0


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the tuner's interpreter dry run (--smoke); on a GPU box tools/gpu_check.sh tunes for real")
def test_the_tuner_checks_every_tiling_against_the_dense_reference_and_never_picks_a_wrong_one(monkeypatch, tmp_path):
    """vincie_kernels.tune under the interpreter (tiny case a): a dK/dV kernel made 1 % wrong for one
    tiling is flagged by the fp64 reference and kept out of both picks; the bench then runs the
    overall pick (--configs tuned=<json>) and checks it against SDPA with the dense mask."""
    import vincie_kernels.masked_attention as ma
    from vincie_kernels.bench import BenchOptions, bench_attention
    from vincie_kernels.tilings import parse_tilings
    from vincie_kernels.tune import tune_attention

    real = ma._bwd_dkdv

    def dkdv_wrong_at_16x16(do, q, k, v, lse, delta, attrs, wl, scale, cfg, atomic_dq=False):
        dk, dv, dq = real(do, q, k, v, lse, delta, attrs, wl, scale, cfg, atomic_dq=atomic_dq)
        return (dk * 1.01 if (cfg.block_m, cfg.block_n) == (16, 16) else dk), dv, dq

    monkeypatch.setattr(ma, "_bwd_dkdv", dkdv_wrong_at_16x16)
    out = tmp_path / "tune.json"
    res = tune_attention(["a"], str(out), {"tool": "tune_attention"}, budget_s=600, reps=1, smoke=True)
    assert json.loads(out.read_text()) == res
    cfgs = res["cases"]["a"]["configs"]
    assert set(cfgs) == {"default", "bwd16x16", "fwd16x32", "default_tma", "atomic_dq"}
    # the TMA candidate ran its descriptor path (the interpreter has one) and was checked like the rest
    assert cfgs["default_tma"]["tma_active"] == {"fwd": True, "dkdv": True, "dq": True}
    assert cfgs["default"]["tma_active"] == {"fwd": False, "dkdv": False, "dq": False}
    # atomic dQ: checked like the rest, no dQ kernel to time (its dK/dV time holds dQ's work)
    at = cfgs["atomic_dq"]
    assert at["config"]["dq"] == "atomic" and at["dq_ms"] == 0.0 and at["tma_active"]["dq"] is None, at
    bad = cfgs.pop("bwd16x16")
    assert bad["ok"] is False and bad["config"]["dkdv"][:2] == [16, 16]
    assert bad["rel_err_vs_reference"]["dk"] == pytest.approx(0.01, rel=0.05)
    assert max(bad["rel_err_vs_reference"][n] for n in ("out", "dq", "dv")) < 1e-5, bad
    for r in cfgs.values():                                   # the others agree with the reference
        assert r["ok"] and max(r["rel_err_vs_reference"].values()) < 1e-5, r
    assert res["cases"]["a"]["best"]["from"]["dkdv"] != "bwd16x16"
    best = res["overall_best"]
    assert best["from"]["dkdv"] != "bwd16x16" and best["config"]["dkdv"][:2] != [16, 16] and best["cases"] == ["a"]
    assert parse_tilings(f"tuned={out}") == best["config"]

    bench_out = tmp_path / "bench.json"
    b = bench_attention(["a"], str(bench_out), {"tool": "bench_attention"},
                        BenchOptions(smoke=True, skip=("flex", "newlen"), configs=f"tuned={out}"))
    case = b["cases"]["a"]
    assert case["ours_configs"] == best["config"]
    assert case["check"]["sdpa_dense_mask"]["ok"] and case["summary"]["valid"], case["summary"]
    # the fused work-list build ran beside the default one, compared tensor by tensor, and was timed end to end
    assert case["fused_build"]["matches_torch_build"] and case["fused_build"]["differences"] == {}, case["fused_build"]
    assert case["fused_build"]["build_ms"] > 0 and "fwd_bwd_ms" in case["summary"]["ours_fused_build"]


def test_tilings_in_text_name_what_is_wrong(tmp_path):
    from vincie_kernels.tilings import attention_configs, configs_lists, parse_tilings, tilings_text
    from vincie_kernels.masked_attention import FA2_CONFIGS_BF16_D128, AttentionConfigs, KernelConfig
    assert attention_configs(parse_tilings("default")) is None
    assert attention_configs(parse_tilings("fa2")) == FA2_CONFIGS_BF16_D128
    assert attention_configs(parse_tilings("fwd=128x64x8x3,dkdv=32x128x8x2,dq=128x64x8x2")) == AttentionConfigs(
        KernelConfig(128, 64, 8, 3), KernelConfig(32, 128, 8, 2), KernelConfig(128, 64, 8, 2))
    for text, says in [("fwd=128x64x8x3", "no tiling for dkdv, dq"), ("fwd=96x64x8x3,dkdv=32x128x8x2,dq=128x64x8x2",
                       "bad part 'fwd=96x64x8x3'"), ("nope", "bad part 'nope'")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_tilings(text)
    text = "fwd=128x64x8x3,dkdv=32x128x8x2,dq=128x64x8x2"
    assert tilings_text(parse_tilings(text)) == text and tilings_text(parse_tilings("fa2")) == "fa2"
    # "+tma" per kernel: kept through text, the tune JSON's lists and AttentionConfigs
    text = "fwd=128x64x8x3+tma,dkdv=32x128x8x2,dq=128x64x8x2+tma"
    parsed = parse_tilings(text)
    assert parsed["fwd"] == [128, 64, 8, 3, 1] and parsed["dkdv"] == [32, 128, 8, 2]
    assert tilings_text(parsed) == text
    cfgs = attention_configs(parsed)
    assert cfgs.fwd == KernelConfig(128, 64, 8, 3, tma=True) and not cfgs.dkdv.tma and cfgs.dq.tma
    assert configs_lists(cfgs) == parsed
    # dq=atomic: no dQ kernel (AttentionConfigs.dq is None); only dQ can be atomic
    text = "fwd=128x64x8x3,dkdv=32x128x8x2+tma,dq=atomic"
    parsed = parse_tilings(text)
    assert parsed["dq"] == "atomic" and tilings_text(parsed) == text and configs_lists(attention_configs(parsed)) == parsed
    assert attention_configs(parsed) == AttentionConfigs(KernelConfig(128, 64, 8, 3), KernelConfig(32, 128, 8, 2, tma=True),
                                                         None)
    with pytest.raises(ValueError, match=re.escape("bad part 'dkdv=atomic'")):
        parse_tilings("fwd=128x64x8x3,dkdv=atomic,dq=atomic")
    for bad in ("fwd=128x64x8x3+tmx,dkdv=32x128x8x2,dq=128x64x8x2", "fwd=128x64x8x3+,dkdv=32x128x8x2,dq=128x64x8x2"):
        with pytest.raises(ValueError, match=re.escape(f"bad part {bad.split(',')[0]!r}")):
            parse_tilings(bad)
    unfinished = tmp_path / "tune.json"
    unfinished.write_text(json.dumps({"overall_best": {"none": "no config was checked correct and timed in any case"}}))
    with pytest.raises(ValueError, match="no overall_best config in it \\(no config was checked correct"):
        parse_tilings(f"tuned={unfinished}")
    unfinished.write_text(json.dumps({"overall_best": {"config": {"fwd": [128, 64, 8, 3]}}}))
    with pytest.raises(ValueError, match="overall_best config is malformed \\(KeyError"):
        parse_tilings(f"tuned={unfinished}")
    unfinished.write_text("[1, 2]")
    with pytest.raises(ValueError, match="cannot read the tune JSON"):
        parse_tilings(f"tuned={unfinished}")


def test_the_overall_pick_needs_a_tiling_checked_in_every_case():
    from vincie_kernels.tune import pick_overall

    def rec(ok, fwd, dkdv, dq, cfg):
        return {"ok": ok, "fwd_ms": fwd, "dkdv_ms": dkdv, "dq_ms": dq, "config": cfg}
    cfg = {n: {"fwd": [i, 0, 0, 0], "dkdv": [i, 1, 0, 0], "dq": [i, 2, 0, 0]} for i, n in enumerate("xyz")}
    cases = {"a": {"configs": {"x": rec(True, 1, 5, 3, cfg["x"]), "y": rec(True, 2, 1, 4, cfg["y"]),
                               "z": rec(True, 0.1, 0.1, 0.1, cfg["z"])}},
             "b": {"configs": {"x": rec(True, 1, 5, 1, cfg["x"]), "y": rec(True, 2, 1, 1, cfg["y"]),
                               "z": {"skipped": "budget spent"}}},                  # z unchecked at b
             "c": {"reference": {"error": "OutOfMemoryError"}}}                     # nothing ran: ignored
    best = pick_overall(cases)
    assert best["from"] == {"fwd": "x", "dkdv": "y", "dq": "x"} and best["cases"] == ["a", "b"]
    assert best["config"] == {"fwd": [0, 0, 0, 0], "dkdv": [1, 1, 0, 0], "dq": [0, 2, 0, 0]}
    assert best["summed_ms"] == {"fwd": 2, "dkdv": 2, "dq": 4} and best["default_summed_ms"] is None
    # an atomic-dQ config's dK/dV kernel does dQ's work: it competes with the best split pair as a whole
    cases["a"]["configs"]["w"] = rec(True, 3, 3.9, 0.0, {"fwd": [9, 0, 0, 0], "dkdv": [9, 1, 0, 0], "dq": "atomic"})
    cases["b"]["configs"]["w"] = rec(True, 3, 3.9, 0.0, {"fwd": [9, 0, 0, 0], "dkdv": [9, 1, 0, 0], "dq": "atomic"})
    best = pick_overall(cases)                      # split: dK/dV y (2) + dQ x (4) = 6 > atomic w: 7.8
    assert best["from"] == {"fwd": "x", "dkdv": "y", "dq": "x"}
    cases["a"]["configs"]["w"]["dkdv_ms"] = cases["b"]["configs"]["w"]["dkdv_ms"] = 2.9
    best = pick_overall(cases)                      # atomic w: 5.8 < 6, and never paired with x's dQ kernel
    assert best["from"] == {"fwd": "x", "dkdv": "w", "dq": "w"}
    assert best["config"] == {"fwd": [0, 0, 0, 0], "dkdv": [9, 1, 0, 0], "dq": "atomic"}
    assert best["summed_ms"] == {"fwd": 2, "dkdv": 5.8, "dq": 0.0}
    cases["b"]["configs"]["x"]["ok"] = cases["b"]["configs"]["y"]["ok"] = cases["b"]["configs"]["w"]["ok"] = False
    assert "none" in pick_overall(cases)


def test_the_chunked_fp64_reference_equals_one_dense_pass():
    """reference.attention_reference_grads (the tuner's answer at S = 45k): split over heads and query
    rows, it gives what one autograd pass over the whole dense mask gives."""
    from vincie_kernels.reference import (attention_reference, attention_reference_grads, dense_mask,
                                          random_blocks, spec_from_blocks)
    g = torch.Generator().manual_seed(0)
    spec = spec_from_blocks(random_blocks(g, max_tokens=200))
    S = int(spec[0][-1])
    mask = dense_mask(*spec, "block_causal")
    q, k, v, do = (torch.randn(S, 3, 16, dtype=torch.float64, generator=g) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, _ = attention_reference(*leaves, mask)
    out.backward(do)
    whole = (out.detach(), *(t.grad for t in leaves))
    for budget in (2**30, S * 8 * 7 + 1, 1):        # all at once; 7 rows of one head; one row of one head
        got = attention_reference_grads(q, k, v, do, mask, max_scores_bytes=budget)
        for a, b in zip(got, whole):
            assert a.dtype == torch.float64 and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_triton_core_takes_its_tilings_for_bf16_on_cuda_only():
    """model.attention_tilings as the core sees it (the CUDA half runs in gpu_check's pytest_kernels)."""
    from vincie_kernels.masked_attention import FA2_CONFIGS_BF16_D128
    from vincie_mcore.model.attention import TritonMaskedAttention
    core = TritonMaskedAttention(tilings="fa2")
    assert core._configs(torch.zeros(4, 2, 16)) is None                    # the interpreter keeps its tiles
    with pytest.raises(ValueError, match="bad part 'fwd=1'"):
        TritonMaskedAttention(tilings="fwd=1")
    if torch.cuda.is_available():
        x = torch.zeros(4, 2, 16, device="cuda", dtype=torch.bfloat16)
        assert core._configs(x) == FA2_CONFIGS_BF16_D128 and core._configs(x) is core._configs(x)
        assert core._configs(x.half()) == FA2_CONFIGS_BF16_D128
        assert core._configs(x.float()) is None                           # fp32: twice the shared memory
        assert TritonMaskedAttention()._configs(x) is None
        atomic = TritonMaskedAttention(tilings="fwd=128x64x8x3,dkdv=32x128x8x2,dq=atomic")._configs(x)
        assert atomic.dq is None and atomic.dkdv == FA2_CONFIGS_BF16_D128.dkdv


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's half; gpu_check runs it on the GPU")
def test_the_check_runs_given_tilings_and_the_tuner_can_leave_tma_out(monkeypatch):
    """tools/gpu_check.sh checks the TMA tilings in a process of their own before the tuner (and tunes
    with --no-tma if that check fails); here the same check under the interpreter, against the oracle."""
    import vincie_kernels.masked_attention as ma
    from vincie_kernels.check import check_attention
    from vincie_kernels.tilings import configs_lists, tilings_text
    from vincie_kernels.tune import candidates
    launched = set()                                                  # (kernel, tma) of every launch

    def spy(kern, fn):
        def run(*a, **kw):
            launched.add((kern, a[-1].tma))                          # the KernelConfig is the last positional
            return fn(*a, **kw)
        return run
    for kern, name in (("fwd", "_fwd"), ("dkdv", "_bwd_dkdv"), ("dq", "_bwd_dq")):
        monkeypatch.setattr(ma, name, spy(kern, getattr(ma, name)))
    tma = "fwd=32x16x4x2+tma,dkdv=16x32x4x2+tma,dq=16x32x4x2+tma"
    res, failures = check_attention(1, 1, "cpu", "float32", tilings=tma)
    assert not failures and res["ok"] and res["tilings"] == tma
    assert launched == {("fwd", True), ("dkdv", True), ("dq", True)}  # the tilings reached the kernels
    assert res["tma_active"] == ["dkdv", "dq", "fwd"]
    assert check_attention(1, 1, "cpu", "float32")[0]["tma_active"] == []
    names = lambda cands: [tilings_text(configs_lists(c)) for _, c in cands]  # noqa: E731
    assert sum("+tma" in t for t in names(candidates(smoke=False))) >= 2
    assert not any("+tma" in t for t in names(candidates(smoke=False, tma=False)))
    assert sum("dq=atomic" in t for t in names(candidates(smoke=False))) == 2
    assert not any("dq=atomic" in t for t in names(candidates(smoke=False, atomic=False)))
    # a tensor-parallel rank's few heads: one more candidate, with finer tiles in every kernel
    many, few = names(candidates(smoke=False)), names(candidates(smoke=False, heads=5))
    assert len(many) == 8 and few[:8] == many and few[8] == "fwd=64x64x4x2,dkdv=32x64x8x2,dq=64x64x4x2"
    r = subprocess.run([sys.executable, "-m", "vincie_tools.check_attention", "--device", "cpu", "--tilings",
                        "fwd=32x16x4x2+tmx"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--tilings: bad part 'fwd=32x16x4x2+tmx'" in r.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter run; a GPU box runs it in seconds")
def test_check_worklists_compares_the_builds_at_a_benchmark_size(monkeypatch, tmp_path, capsys):
    """vincie_tools.check_worklists on case c (S = 7,708) at one tiling: equal builds pass; a fused build
    with one run end moved is named and fails the exit status; bad arguments are refused in one line."""
    import dataclasses
    import vincie_kernels.worklist as wlmod
    from vincie_tools.check_worklists import main

    out = tmp_path / "cw.json"
    assert main(["--cases", "c", "--tilings", "128x64", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["all_equal"] and [p["tiling"] for p in rec["pairs"]] == [[128, 64]]
    assert rec["pairs"][0]["S"] == 7708 and rec["pairs"][0]["tiles"]["partial"] > 0

    real = wlmod._build_fused

    def one_end_off(*a, **k):
        attrs, wl = real(*a, **k)
        end = wl.k.full_end.clone()
        end.view(-1)[0] += 1
        return attrs, dataclasses.replace(wl, k=dataclasses.replace(wl.k, full_end=end))

    monkeypatch.setattr(wlmod, "_build_fused", one_end_off)
    assert main(["--cases", "c", "--tilings", "128x64", "--out", str(out)]) == 1
    assert json.loads(out.read_text())["pairs"][0]["first_difference"] == "k.full_end"
    capsys.readouterr()
    # the default tilings hold every tiling the tuner may pick (a few-heads rank's too)
    from vincie_kernels.tune import candidates
    from vincie_tools.check_worklists import TILINGS
    tuner = {f"{c.block_m}x{c.block_n}" for _, cfgs in candidates(smoke=False, heads=1)
             for c in (cfgs.fwd, cfgs.dkdv, cfgs.dq) if c is not None}
    assert tuner <= set(TILINGS.split(",")), tuner - set(TILINGS.split(","))
    for bad, says in ((["--tilings", "24x64"], "--tilings: want power-of-two tiles >= 16"),
                      (["--tilings", "128x64x8"], "--tilings: want power-of-two tiles >= 16"),
                      (["--cases", "a,d"], "--cases: unknown case(s) ['d']"),
                      (["--skip", "b16x16"], "--skip: want case:tiling pairs like b:16x16, got b16x16")):
        with pytest.raises(SystemExit):
            main(bad)
        assert says in capsys.readouterr().err


def test_the_tuner_cli_takes_per_rank_heads_and_names_a_bad_option(capsys):
    """vincie-tune-attention --heads (a model's heads / its TP size), --deterministic, --no-tma; bad values
    are refused in one line naming the option."""
    from vincie_tools.tune_attention import parse_args
    a = parse_args(["--heads", "5", "--deterministic", "--no-tma", "--cases", "c,a"])
    assert (a.heads, a.deterministic, a.no_tma, a.cases) == (5, True, True, "c,a")
    assert parse_args([]).heads == 24 and not parse_args([]).deterministic
    for argv, says in ((["--heads", "0"], "--heads must be >= 1, got 0"), (["--cases", "a,d"], "unknown case(s) ['d']"),
                       (["--reps", "0"], "--reps must be >= 1")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert says in capsys.readouterr().err.strip().splitlines()[-1]
