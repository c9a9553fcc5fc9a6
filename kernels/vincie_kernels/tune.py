"""Time a small grid of masked-attention kernel configs on the GPU and pick the best.

For each case of ``bench.py`` (24 heads x 128 unless told, bf16, plan prebuilt) and each candidate
``AttentionConfigs`` (8, or 9 with few heads; every one fits sm_90's 227 KiB of shared memory, see
tests/kernels/test_compile_sm90.py):

  * fwd+bwd through autograd, and each kernel alone (forward, dK/dV, dQ): CUDA-event medians
    of ``reps`` runs after 2 warm-ups;
  * out, dq, dk, dv against an independent reference computed once per case: the fp64 dense-mask
    attention of ``reference.py`` (plain torch autograd), in groups of heads and query rows so that its S x S
    scores fit. A config off by more than the bench's tolerance for the dtype (max |diff| / max |ref|,
    ``bench.CHECK_TOL``) is flagged ``"ok": false`` and never chosen. (The first tune run compared
    with the then-default config instead; when that default was the wrong one, every correct config
    read as wrong: docs/measured.md.)

Because the three kernels are independent, ``best`` combines the fastest correct forward,
dK/dV and dQ configs of a case (an atomic-dQ config, whose dK/dV kernel does dQ's work, only as a
whole backward: ``pick_kernels``); it is then timed end to end too. ``overall_best`` does the same
across cases (the least summed time per kernel among configs correct in every case checked):
one tiling for all, which ``vincie-bench-attention --configs tuned=<this json>`` then checks
against FlexAttention and SDPA and times (tools/gpu_check.sh runs both). Plan (work-list) build
times are measured for the fused Triton build and the torch build. A budget guard (``budget_s``,
including compiles) stops before the next measurement once spent; what was measured is
kept. The CLI is ``vincie-tune-attention``.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import replace

from vincie_kernels.bench import CHECK_TOL, allowed_pairs, case_blocks, event_median_ms, write_json
from vincie_kernels.tilings import configs_lists, tilings_text

KERNELS = ("fwd", "dkdv", "dq")


FEW_HEADS = 8       # at most this many heads per rank: the tuner also tries finer tiles (fuller waves)


def candidates(smoke: bool, tma: bool = True, atomic: bool = True, heads: int = 24):
    """-> [(name, AttentionConfigs)], today's default first, no tiling twice (a preset equal to the
    default is dropped). Tilings are (block_m queries, block_n keys). ``tma=False`` leaves out the
    tilings with a TMA kernel (tools/gpu_check.sh does when its TMA check failed: a kernel fault there
    could poison the CUDA context for every later candidate); ``atomic=False`` those with atomic dQ.
    With ``FEW_HEADS`` heads or fewer (a tensor-parallel rank) one more: 64-row forward and dQ tiles
    and 64-key dK/dV tiles, twice the programs of the others."""
    import torch
    from vincie_kernels.masked_attention import FA2_CONFIGS_BF16_D128, LEGACY_CONFIGS_BF16_D128
    from vincie_kernels.masked_attention import AttentionConfigs, KernelConfig as K, default_configs
    if smoke:
        d = default_configs(16, torch.float32, torch.device("cpu"))
        named = [("default", d), ("bwd16x16", AttentionConfigs(d.fwd, K(16, 16), K(16, 16))),
                 ("fwd16x32", AttentionConfigs(K(16, 32), d.dkdv, K(32, 16))),
                 ("default_tma", AttentionConfigs(*(replace(c, tma=True) for c in (d.fwd, d.dkdv, d.dq)))),
                 ("atomic_dq", AttentionConfigs(d.fwd, d.dkdv, None))]
    else:
        d = default_configs(128, torch.bfloat16, torch.device("cuda"))
        f = d.fwd
        # sm_90 compile on CPU (Triton 3.9, cuobjdump): shared KiB / registers / stack (spill) B per thread
        # TMA variants next to the pointer-load tilings they share shapes with; the two slowest of the
        # last run (dK/dV 32x64 at 4 warps, 128x64 with shared lists: 8.7 and 10.4 ms on case a against
        # 5.9) made room, so a run still checks every candidate in every case within its budget
        named = [
            ("default", d),
            ("fa2", FA2_CONFIGS_BF16_D128),                                        # dkdv 97/250/0, dq 129/209/0
            ("fa2_tma", AttentionConfigs(*(replace(c, tma=True) for c in              # fwd 130/205/0, dkdv 97/231/0,
                                           (f, FA2_CONFIGS_BF16_D128.dkdv, FA2_CONFIGS_BF16_D128.dq)))),  # dq 129/180/0
            ("legacy_64x64", LEGACY_CONFIGS_BF16_D128),                            # dkdv 98/255/16, dq 97/220/0
            ("dkdv32x128_s3_dq_s3", AttentionConfigs(f, K(32, 128, 8, 3), K(128, 64, 8, 3))),     # 113/248/0
            ("s4_s3_tma", AttentionConfigs(K(128, 64, 8, 4, True), K(32, 128, 8, 3, True),
                                           K(128, 64, 8, 3, True))),   # fwd 163/205/0, dkdv 113/231/0, dq 162/176/0
            ("fwd_s4", AttentionConfigs(K(128, 64, 8, 4), FA2_CONFIGS_BF16_D128.dkdv, FA2_CONFIGS_BF16_D128.dq)),  # fwd 162/224/0
            # dQ added up atomically by the dK/dV kernel (5 matmuls a pair, not 7), in place of the two
            # 64x128 dK/dV tilings, which spill 112-176 B (288 with atomic dQ); 32-query tiles take the
            # dS^T K product on mma.sync (wgmma needs 64 rows) and 4 red.v4.f32 per thread per pair
            ("fa2_atomic", AttentionConfigs(f, FA2_CONFIGS_BF16_D128.dkdv, None)),           # dkdv 137/248/0
            ("fa2_atomic_tma", AttentionConfigs(f, replace(FA2_CONFIGS_BF16_D128.dkdv, tma=True), None)),  # 137/242/0
        ]
        if heads <= FEW_HEADS:
            # grids are heads x tiles: at 5 heads case c's forward is 305 programs of 128 rows on 132 SMs,
            # 2.3 waves; 64-row tiles at 4 warps fit two programs an SM (81 KiB, 228 registers each)
            named.append(("few_heads", AttentionConfigs(K(64, 64, 4, 2), K(32, 64, 8, 2), K(64, 64, 4, 2))))
            # fwd 81/228/0, dkdv 65/199/0, dq 97/223/0
    out, seen = [], set()
    for name, cfgs in named:
        key = tilings_text(configs_lists(cfgs))
        if (not tma and "+tma" in key) or (not atomic and cfgs.dq_atomic):
            continue
        if key not in seen:
            seen.add(key)
            out.append((name, cfgs))
    return out


def _time(fn, reps: int) -> float:
    """Median ms: CUDA events after 2 warm-ups; one wall-clock run on CPU (--smoke checks paths only)."""
    import torch
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    for _ in range(2):
        fn()
    return event_median_ms(fn, reps)


class _LaunchCounter:
    """Wraps a Triton kernel object: counts grid launches (kernel[grid](...)); ``inside`` is set during
    one, so the interpreter's own torch ops are not counted as the build's."""
    inside = False

    def __init__(self, kern):
        self.kern, self.n = kern, 0

    def __getitem__(self, grid):
        self.n += 1
        launch = self.kern[grid]

        def run(*a, **kw):
            _LaunchCounter.inside = True
            try:
                return launch(*a, **kw)
            finally:
                _LaunchCounter.inside = False
        return run


def count_build_ops(spec, mask_type, S, D, dtype, cfgs) -> dict:
    """Ops of one plan build per backend: non-view aten ops (~1 kernel launch each on a GPU) + Triton launches."""
    from torch.utils._python_dispatch import TorchDispatchMode
    import vincie_kernels.worklist as wl

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # views (select, slice, view) launch nothing on a GPU; neither does the interpreter's work
            self.n += not (_LaunchCounter.inside or getattr(func, "is_view", False))
            return func(*args, **(kwargs or {}))

    out = {}
    tilings = sorted({(c.block_m, c.block_n) for c in (cfgs.fwd, cfgs.dkdv, cfgs.dq) if c is not None})
    for backend in ("torch", "triton"):
        ka, kr = _LaunchCounter(wl._tile_attr_kernel), _LaunchCounter(wl._runs_kernel)
        wl._tile_attr_kernel, wl._runs_kernel = ka, kr
        try:
            with Count() as c:
                attrs = None
                for bm, bn in tilings:
                    attrs, _ = wl.build_worklists(*spec, mask_type, 0, S, 0, S, bm, bn, attrs=attrs, backend=backend)
        finally:
            wl._tile_attr_kernel, wl._runs_kernel = ka.kern, kr.kern
        out[backend] = {"aten_ops": c.n, "triton_launches": ka.n + kr.n, "tilings": [list(t) for t in tilings]}
    return out


def run_case(name: str, smoke: bool, reps: int, cands, record, deadline: float, count_ops: bool = False,
             heads: int = 24) -> None:
    """Time every candidate on case ``name`` (until ``deadline``, a ``time.time()``), pick the best
    per kernel; ``count_ops``: also count the plan build's ops; ``heads``: per rank (GPU only; the
    smoke run keeps 2). Results go through ``record``."""
    import torch

    import vincie_kernels.masked_attention as ma
    from vincie_kernels.bench import rel_errors
    from vincie_kernels.reference import attention_reference_grads, dense_mask, spec_from_blocks
    from vincie_kernels.worklist import build_worklists

    if smoke:
        dev, dtype, H, D = "cpu", torch.float32, 2, 16
    else:
        dev, dtype, H, D = "cuda", torch.bfloat16, heads, 128
    blocks, mask_type = case_blocks(name, small=smoke)
    spec = [t.to(dev) for t in spec_from_blocks(blocks)]
    S = int(spec[0][-1])
    pairs = allowed_pairs(spec, mask_type)
    fl = 4.0 * D * H * pairs * 3.5            # fwd+bwd effective FLOPs (bench.py's convention)
    record(name, {"S": S, "mask_type": mask_type, "density": pairs / S ** 2, "heads": H, "head_dim": D})
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, do = (torch.randn(S, H, D, device=dev, generator=g).to(dtype) for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    scale = 1.0 / D ** 0.5

    # plan build: fused Triton lists vs torch ops, default tilings
    d = cands[0][1]
    build = {}
    for backend in ("triton", "torch"):
        try:
            build[f"worklists_fwd_tiling_{backend}_ms"] = _time(lambda: build_worklists(
                *spec, mask_type, 0, S, 0, S, d.fwd.block_m, d.fwd.block_n, backend=backend), reps)
        except Exception as e:
            build[f"worklists_fwd_tiling_{backend}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    build["plan_default_ms"] = _time(lambda: ma.plan_masked_attention(
        *spec, mask_type, 0, S, 0, S, D, dtype, configs=d), reps)
    record(name, {"plan_build": build})

    # the independent answer every candidate is checked against (fp64, plain torch)
    if time.time() > deadline:
        record(name, {"reference": {"skipped": "budget spent"}})
        return
    tol = CHECK_TOL[str(dtype).replace("torch.", "")]
    t0 = time.time()
    try:
        ref = attention_reference_grads(q, k, v, do, dense_mask(*spec, mask_type), scale)
    except Exception as e:                         # e.g. out of memory: no check, so no timings either
        record(name, {"reference": {"error": f"{type(e).__name__}: {str(e)[:300]}"}})
        return
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    record(name, {"reference": {"what": "fp64 dense-mask attention, plain torch autograd (reference.py)",
                                "seconds": round(time.time() - t0, 2), "tol": tol}})
    results = {}
    for cname, cfgs in cands:
        if time.time() > deadline:
            results[cname] = {"skipped": "budget spent"}
            continue
        r = {"config": configs_lists(cfgs)}
        try:
            t0 = time.time()
            plan = ma.plan_masked_attention(*spec, mask_type, 0, S, 0, S, D, dtype, configs=cfgs)

            def fwd_bwd():
                qg.grad = kg.grad = vg.grad = None
                ma.masked_attention(qg, kg, vg, *spec, mask_type, plan=plan).backward(do)
            fwd_bwd()                                                      # compiles; result for the check
            got = [t.detach().clone() for t in (ma.masked_attention(q, k, v, *spec, mask_type, plan=plan),
                                                qg.grad, kg.grad, vg.grad)]
            r["first_call_s"] = round(time.time() - t0, 2)
            errs = rel_errors(got, ref)
            r["rel_err_vs_reference"] = errs
            r["ok"] = all(e <= tol for e in errs.values())
            r["tma_active"] = ma.tma_active(cfgs, q, k, v)
            out, lse = ma._fwd(q, k, v, plan.attrs, plan.wl_fwd, scale, cfgs.fwd)
            delta = ma._bwd_delta_for(out, do, cfgs)
            r["fwd_bwd_ms"] = _time(fwd_bwd, reps)
            r["fwd_bwd_tflops"] = fl / (r["fwd_bwd_ms"] * 1e-3) / 1e12
            r["fwd_ms"] = _time(lambda: ma._fwd(q, k, v, plan.attrs, plan.wl_fwd, scale, cfgs.fwd), reps)
            # with atomic dQ the dK/dV time holds dQ's work too (and its fp32 buffer's zeroing and cast)
            r["dkdv_ms"] = _time(lambda: ma._bwd_dkdv(do, q, k, v, lse, delta, plan.attrs, plan.wl_dkdv, scale,
                                                      cfgs.dkdv, atomic_dq=cfgs.dq_atomic), reps)
            r["dq_ms"] = 0.0 if cfgs.dq_atomic else _time(
                lambda: ma._bwd_dq(do, q, k, v, lse, delta, plan.attrs, plan.wl_dq, scale, cfgs.dq), reps)
        except Exception as e:                     # e.g. out of shared memory: record, go on
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            r["ok"] = False
        results[cname] = r
        record(name, {"configs": results})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # best per kernel among correct configs, then the combination end to end
    good = {n: r for n, r in results.items() if r.get("ok") and "dq_ms" in r}
    if good:
        pick = pick_kernels({n: {kern: good[n][f"{kern}_ms"] for kern in KERNELS} for n in good},
                            {n for n in good if good[n]["config"]["dq"] == "atomic"})
        by_name = dict(cands)
        best = ma.AttentionConfigs(by_name[pick["fwd"]].fwd, by_name[pick["dkdv"]].dkdv, by_name[pick["dq"]].dq)
        entry = {"from": pick, "config": configs_lists(best)}
        if time.time() <= deadline:
            plan = ma.plan_masked_attention(*spec, mask_type, 0, S, 0, S, D, dtype, configs=best)

            def fwd_bwd_best():
                qg.grad = kg.grad = vg.grad = None
                ma.masked_attention(qg, kg, vg, *spec, mask_type, plan=plan).backward(do)
            entry["fwd_bwd_ms"] = _time(fwd_bwd_best, reps)
            entry["fwd_bwd_tflops"] = fl / (entry["fwd_bwd_ms"] * 1e-3) / 1e12
        record(name, {"best": entry, "fastest_fwd_bwd": min(good, key=lambda n: good[n]["fwd_bwd_ms"])})
    if count_ops:
        record(name, {"build_op_counts": count_build_ops(spec, mask_type, S, D, dtype, d)})


def pick_kernels(times: dict, atomic: set) -> dict:
    """{config name: {kernel: ms}} -> {kernel: config name}: the fastest forward, and the fastest backward
    among the split ones (the best dK/dV with the best dQ, each of any split config) and each atomic-dQ
    one (its dK/dV kernel does dQ's work, so it is never paired with another config's dQ kernel)."""
    fwd = min(times, key=lambda n: times[n]["fwd"])
    split = [n for n in times if n not in atomic]
    options = [({"dkdv": n, "dq": n}, times[n]["dkdv"]) for n in sorted(atomic & set(times))]
    if split:
        best = {kern: min(split, key=lambda n: times[n][kern]) for kern in ("dkdv", "dq")}
        options.append((best, times[best["dkdv"]]["dkdv"] + times[best["dq"]]["dq"]))
    bwd = min(options, key=lambda o: o[1])[0]
    return {"fwd": fwd, **bwd}


def pick_overall(cases: dict) -> dict:
    """One tiling for every case: per kernel, the config with the least time summed over the cases
    where any config was checked, among configs checked correct and timed in every one of them (a
    config the budget cut off in a case was not checked there, so it is not eligible; a case where
    every checked config was wrong leaves nothing to pick)."""
    checked = {c: rec["configs"] for c, rec in cases.items()
               if any("ok" in r for r in rec.get("configs", {}).values())}
    if not checked:
        return {"none": "no config was checked in any case"}
    per_case = {c: {n: r for n, r in cfgs.items() if r.get("ok") and "dq_ms" in r} for c, cfgs in checked.items()}
    names = sorted(set.intersection(*(set(good) for good in per_case.values())))
    if not names:
        return {"none": f"no config was checked correct and timed in every one of cases {sorted(per_case)}"}
    total = {kern: {n: sum(good[n][f"{kern}_ms"] for good in per_case.values()) for n in names} for kern in KERNELS}
    any_case = next(iter(per_case.values()))
    pick = pick_kernels({n: {kern: total[kern][n] for kern in KERNELS} for n in names},
                        {n for n in names if any_case[n]["config"]["dq"] == "atomic"})
    return {"from": pick, "config": {kern: any_case[pick[kern]]["config"][kern] for kern in KERNELS},
            "cases": sorted(per_case), "summed_ms": {kern: total[kern][pick[kern]] for kern in KERNELS},
            "default_summed_ms": ({kern: total[kern]["default"] for kern in KERNELS} if "default" in names else None)}


def tune_attention(cases, out: str, header: dict, budget_s: float, reps: int, smoke: bool,
                   tma: bool = True, atomic: bool = True, heads: int = 24) -> dict:
    """Every case of ``cases`` in turn while ``budget_s`` lasts; the result (``header`` + per-case
    records) is rewritten to ``out`` after each measurement. ``tma=False``: no TMA candidates;
    ``atomic=False``: no atomic-dQ ones (the pick is then bitwise reproducible). ``heads``: attention
    heads per rank (a model's heads / its tensor-parallel size): the grids are heads x tiles, so with
    few heads a tiling's last wave of programs weighs more."""
    t_start = time.time()
    deadline = t_start + budget_s
    cands = candidates(smoke, tma, atomic, heads)
    result = {**header, "budget_s": budget_s, "tma_candidates": tma, "atomic_dq_candidates": atomic,
              "candidates": {n: configs_lists(c) for n, c in cands}, "cases": {}}

    def record(case, entries):
        result["cases"].setdefault(case, {}).update(entries)
        result["overall_best"] = pick_overall(result["cases"])      # kept current: a killed run still has its pick
        write_json(out, result)

    for name in cases:
        if time.time() > deadline:
            record(name, {"skipped": "budget spent"})
            continue
        try:
            run_case(name, smoke, reps, cands, record, deadline, count_ops=name == cases[0], heads=heads)
        except Exception as e:
            traceback.print_exc()
            record(name, {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        print(f"case {name}: {json.dumps(result['cases'].get(name, {}))}", file=sys.stderr)
    result["seconds"] = round(time.time() - t_start, 1)
    write_json(out, result)
    return result
