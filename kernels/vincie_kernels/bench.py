"""Benchmark the Triton masked attention on the reference cases of docs/measured.md (GPU only).

Cases (24 heads x 128, bf16; text stream first, then the image stream, as in the joint layout):
    a  block-causal 5-turn session at 512 px: 6 clean images + 5 noisy targets of 1024 tokens,
       5 text turns of 57 tokens (S = 11 549)
    b  the same at 1024 px (4096 tokens per image, S = 45 341)
    c  4 packed sessions, "full" mask, 6 clean + 1 noisy image of 256 tokens and 135 text tokens
       each (S = 7 708, density 0.25)

For each case: ours (end to end with the default work-list build, with a prebuilt plan, and end to end with
the fused Triton build, whose lists are compared with the default build's tensor by tensor) vs
FlexAttention (torch.compile'd, block mask from a mask_mod doing per-token block-attribute
lookups) vs SDPA with the dense boolean mask vs dense SDPA with no mask (flash). Forward
and forward+backward medians (CUDA events), effective TFLOP/s counting only allowed
(q, k) pairs: forward = 4 * D * H * pairs, forward+backward = 3.5x forward (2 matmuls
forward, 5 backward; our backward recomputes QK^T once more, not counted). Also the
work-list build time, the block-mask build time, and the first call after a NEW sequence
length (ours must not recompile; FlexAttention does).

Every speed stands beside a correctness check of the same run (``check``): our output and
dQ/dK/dV against FlexAttention's and against SDPA with the dense mask, as max |diff| / max |ref|
per tensor. A case is ``valid`` only when every reference that ran agrees within the dtype's
tolerance and our rate stays under the bf16 matmul peak measured at the start of the run; the
``summary`` of an invalid case carries the reasons and no speed (docs/measured.md: a fused
work-list bug once made case b read above the chip's peak). The summary also gives ours as a
fraction of the dense rate (SDPA with no mask, all S^2 pairs counted) and the ratio to Flex.
Where the machine has the ``flash-attn-4`` package (``flash_attn.cute``), the same mask
also runs through FlexAttention's FlashAttention-4 backend (``kernel_options={"BACKEND": "FLASH"}``),
timed and checked like Flex (``flex_flash``, ``x_flex_flash``); elsewhere ``flex_flash`` says why not.
The JSON is rewritten after every
measurement, so a timeout still leaves partial results. ``tune.py`` reuses the cases and
the timing helpers; the CLIs are ``vincie-bench-attention`` and ``vincie-tune-attention``.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass

from vincie_kernels.tilings import attention_configs, configs_lists, parse_tilings

CASES = ("a", "b", "c")


@dataclass(frozen=True)
class BenchOptions:
    smoke: bool = False             # tiny layouts, 2 heads x 16, fp32 on CPU (Triton interpreter)
    skip: tuple = ()                # any of: flex, sdpa_mask, dense, newlen
    configs: str = "default"        # kernel tilings, as text: vincie_kernels/tilings.py
    heads: int = 24
    head_dim: int = 128
    target_seconds: float = 0.6     # time budget per measurement


def write_json(path, obj):
    """Write ``obj`` to ``path`` atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def start(tool: str, out: str, smoke: bool, gpu_only: str) -> dict:
    """The attention benchmarks' common start. ``smoke`` runs Triton's interpreter (set before
    triton's first import). Without CUDA and without smoke: a "skipped" record saying
    ``gpu_only``, written to ``out``. Otherwise: the result header (versions, GPU)."""
    if smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    if not torch.cuda.is_available() and not smoke:
        rec = {"tool": tool, "skipped": f"no CUDA device: {gpu_only}"}
        write_json(out, rec)
        return rec
    import triton
    return {"tool": tool, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (--smoke)"}


# ----------------------------------------------------------------------------- layouts

def session_blocks(img_tokens: int, n_images: int, text_lens, session: int, noisy_targets):
    """One session: images I0..I{n-1} (orders 0, 2, ...) and turns T0.. (orders 1, 3, ...).

    ``noisy_targets`` lists the image indices that also get a noisy copy (same order).
    Returns (text blocks, image blocks) as (length, order, kind, session) tuples.
    """
    from vincie_kernels.reference import KIND_CLEAN, KIND_NOISY, KIND_TEXT
    text = [(n, 2 * i + 1, KIND_TEXT, session) for i, n in enumerate(text_lens)]
    clean = [(img_tokens, 2 * i, KIND_CLEAN, session) for i in range(n_images)]
    noisy = [(img_tokens, 2 * i, KIND_NOISY, session) for i in noisy_targets]
    return text, clean + noisy


def case_blocks(name: str, small: bool = False):
    """-> (blocks in joint order: all text, then all images; mask type). ``small``: same shape, few tokens."""
    if name in ("a", "b"):
        tok = (1024 if name == "a" else 4096) if not small else (12 if name == "a" else 20)
        text, img = session_blocks(tok, 6, [57 if not small else 5] * 5, 0, range(1, 6))
        return text + img, "block_causal"
    from vincie_kernels.reference import KIND_NOISY
    tok, text_lens = (256, [23, 22, 23, 22, 23, 22]) if not small else (9, [3, 2, 3, 2, 3, 2])
    texts, imgs = [], []
    for s in range(4):       # full mask: the session is cut after its one noisy target (the last image)
        text, img = session_blocks(tok, 6, text_lens, s, [])
        img.append((tok, 12, KIND_NOISY, s))
        texts += text
        imgs += img
    return texts + imgs, "full"


def allowed_pairs(spec, mask_type) -> int:
    """Number of visible (q, k) pairs, from the block-level visibility (O(nb^2), no S x S)."""
    from vincie_kernels.reference import block_visibility
    off, order, kind, sess = (t.cpu() for t in spec)
    lens = (off[1:] - off[:-1]).double()
    vis = block_visibility(order, kind, sess, mask_type).double()
    return int(lens @ vis @ lens)


# ----------------------------------------------------------------------------- timing

def _sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_time(fn, target_s: float, warmup: int = 2):
    """Median milliseconds of fn() over enough runs to fill ~target_s (at least 3); CUDA events on GPU."""
    import torch
    if not torch.cuda.is_available():                         # --smoke on CPU: one run proves the path
        return wall_once(fn)
    for _ in range(warmup):
        fn()
    once = wall_once(fn) * 1e-3
    return event_median_ms(fn, max(3, min(50, int(target_s / max(once, 1e-6)))))


def event_median_ms(fn, reps: int) -> float:
    """Median of ``reps`` CUDA-event timings of fn() (the caller warms up)."""
    import torch
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def wall_once(fn):
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return (time.perf_counter() - t0) * 1e3


# ----------------------------------------------------------------------------- limits and checks

# ours, timed three ways: building the work lists every call (the default build), with a prebuilt plan (the
# per-layer cost in training), and building them every call with the fused Triton build
OURS_LABELS = ("ours", "ours_with_plan", "ours_fused_build")

# max |ours - ref| / max |ref| allowed per tensor (out, dq, dk, dv). bf16 keeps 8 bits of mantissa and
# two bf16 implementations differ by a few ulps of the largest values; a skipped key tile is O(1).
CHECK_TOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}


def matmul_peak(dev: str, dtype, n: int, target_s: float) -> dict:
    """Measured dense matmul rate (n^3, ``dtype``): the ceiling no attention figure may exceed."""
    import torch
    a, b = (torch.randn(n, n, device=dev).to(dtype) for _ in range(2))
    ms = cuda_time(lambda: a @ b, target_s)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "ms": ms, "tflops": 2.0 * n**3 / (ms * 1e-3) / 1e12}


def rel_errors(ours, ref) -> dict:
    """{out, dq, dk, dv: max |ours - ref| / max |ref|} for two (out, dq, dk, dv) tuples of [S, H, D]."""
    return {n: float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))
            for n, a, b in zip(("out", "dq", "dk", "dv"), ours, ref)}


def flex_flash_unavailable(dev: str) -> str | None:
    """Why FlexAttention's FlashAttention-4 backend (``kernel_options={"BACKEND": "FLASH"}``) cannot run
    here, or None. Torch's inductor generates it through CuteDSL from the ``flash-attn-4`` package
    (``flash_attn.cute``), whose CUDA libraries (~92 MB) are too large to carry to the GPU check: it is
    timed only where the machine already has it."""
    import importlib.util

    if dev != "cuda":
        return "needs CUDA"
    try:
        found = importlib.util.find_spec("flash_attn.cute") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else "flash_attn.cute not importable (pip install flash-attn-4)"


def summarize_case(c: dict, peak_tflops: float | None) -> dict:
    """``valid`` (+ reasons) from the case's checks and the run's matmul peak; the speed figures to
    quote (fractions of the dense rate, ratios to Flex) only when valid."""
    reasons = []
    checks = c.get("check", {})
    ran = {k: v for k, v in checks.items() if isinstance(v, dict) and "max_rel_err" in v}
    if not ran:
        reasons.append("no reference output to check against")
    for ref, v in ran.items():
        if not v["ok"]:
            worst = max(v["max_rel_err"], key=v["max_rel_err"].get)
            reasons.append(f"disagrees with {ref}: {worst} max rel err {v['max_rel_err'][worst]:.3g} > {v['tol']}")
    for label in OURS_LABELS:
        r = c.get(label, {})
        for key in ("fwd_tflops", "fwd_bwd_tflops"):
            if peak_tflops and r.get(key, 0) > peak_tflops:
                reasons.append(f"{label} {key} {r[key]:.0f} above the measured matmul peak {peak_tflops:.0f}")
    out = {"valid": not reasons, "invalid_reasons": reasons}
    if reasons:
        return out
    dense = c.get("dense_flash_no_mask", {}).get("computed_fwd_bwd_tflops")
    flex = c.get("flex", {}).get("fwd_bwd_ms")
    fused = c.get("fused_build", {})
    if fused and not fused.get("matches_torch_build"):     # its speed would be of other work lists
        out["fused_build_invalid"] = fused.get("error") or f"differs from the torch build: {fused.get('differences')}"
    for label in OURS_LABELS:
        r = c.get(label, {})
        if "fwd_bwd_ms" not in r or (label == "ours_fused_build" and "fused_build_invalid" in out):
            continue
        out[label] = {"fwd_bwd_ms": r["fwd_bwd_ms"], "fwd_bwd_tflops": r["fwd_bwd_tflops"],
                      "frac_of_dense_rate": r["fwd_bwd_tflops"] / dense if dense else None,
                      "x_flex": flex / r["fwd_bwd_ms"] if flex else None}
    ff = c.get("flex_flash", {})
    if "fwd_bwd_ms" in ff:               # FlexAttention's FA4 backend, where the machine has it
        for label in OURS_LABELS:
            if label in out:
                out[label]["x_flex_flash"] = ff["fwd_bwd_ms"] / out[label]["fwd_bwd_ms"]
        out["flex_flash"] = {"fwd_bwd_ms": ff["fwd_bwd_ms"], "fwd_bwd_tflops": ff.get("fwd_bwd_tflops"),
                             "frac_of_dense_rate": ff["fwd_bwd_tflops"] / dense if dense and ff.get("fwd_bwd_tflops") else None}
    elif ff:
        out["flex_flash"] = {k: v for k, v in ff.items() if k in ("unavailable", "error")}
    if dense:
        out["dense_rate_fwd_bwd_tflops"] = dense
    if peak_tflops:
        out["frac_of_matmul_peak"] = c.get("ours", {}).get("fwd_bwd_tflops", 0.0) / peak_tflops
    return out


# ----------------------------------------------------------------------------- one case

def run_case(name: str, opts: BenchOptions, record) -> None:
    """Measure case ``name``; every result goes through ``record(case, entries)`` as soon as it exists."""
    import torch
    import torch.nn.functional as F
    from vincie_kernels.masked_attention import (masked_attention, masked_attention_forward, plan_masked_attention,
                                                 tma_active)
    from vincie_kernels.reference import spec_from_blocks, token_block_ids
    from vincie_kernels.worklist import first_difference

    if opts.smoke:
        dev, dtype, H, D = "cpu", torch.float32, 2, 16
    else:
        dev, dtype, H, D = "cuda", torch.bfloat16, opts.heads, opts.head_dim
    skip = set(opts.skip)
    blocks, mask_type = case_blocks(name, small=opts.smoke)
    spec = [t.to(dev) for t in spec_from_blocks(blocks)]
    S = int(spec[0][-1])
    pairs = allowed_pairs(spec, mask_type)
    fl_fwd = 4.0 * D * H * pairs
    res = record(name, {"mask_type": mask_type, "S": S, "heads": H, "head_dim": D, "dtype": str(dtype).replace("torch.", ""),
                        "density": pairs / S**2, "allowed_pairs": pairs, "flop_convention":
                        "fwd 4*D*H*pairs, fwd+bwd 3.5x fwd, pairs = allowed (q,k) pairs"})

    def tflops(ms, flops):
        return flops / (ms * 1e-3) / 1e12

    def measure(label, fwd_fn, fwdbwd_fn, flops_fwd):
        try:
            f = cuda_time(fwd_fn, opts.target_seconds)
            fb = cuda_time(fwdbwd_fn, opts.target_seconds)
            record(name, {label: {"fwd_ms": f, "fwd_bwd_ms": fb, "fwd_tflops": tflops(f, flops_fwd),
                                  "fwd_bwd_tflops": tflops(fb, 3.5 * flops_fwd)}})
        except Exception as e:     # record, keep going
            record(name, {label: {"error": f"{type(e).__name__}: {str(e)[:300]}"}})
        torch.cuda.empty_cache()

    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, do = (torch.randn(S, H, D, device=dev, generator=g).to(dtype) for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    # --- ours: end to end (builds the work lists every call) and with a prebuilt plan (per-layer cost)
    configs = attention_configs(parse_tilings(opts.configs))

    def build():
        return plan_masked_attention(*spec, mask_type, 0, S, 0, S, D, dtype, need_bwd=True, configs=configs)

    t_first = wall_once(lambda: masked_attention(qg, kg, vg, *spec, mask_type, configs=configs).backward(do))
    record(name, {"ours_first_call_ms_incl_compile": t_first})
    record(name, {"ours_worklist_build_ms": cuda_time(build, 0.2)})
    plan = build()
    # kernels with lists of their own: no dQ kernel (so no dQ lists) when dQ is atomic
    listed = ("fwd", "dkdv") if plan.cfgs.dq_atomic else ("fwd", "dkdv", "dq")
    record(name, {f"ours_tiles_{kern}": {**wl.counts(), "block_m": wl.block_m, "block_n": wl.block_n}
                  for kern in listed for wl in [getattr(plan, f"wl_{kern}")]})
    record(name, {"ours_configs": configs_lists(plan.cfgs),
                  "ours_tma_active": tma_active(plan.cfgs, qg, kg, vg)})

    def ours_bwd(fn):
        def run():
            qg.grad = kg.grad = vg.grad = None
            fn().backward(do)
        return run

    measure("ours", lambda: masked_attention(q, k, v, *spec, mask_type, configs=configs),
            ours_bwd(lambda: masked_attention(qg, kg, vg, *spec, mask_type, configs=configs)), fl_fwd)
    measure("ours_with_plan", lambda: masked_attention_forward(q, k, v, *spec, mask_type, plan=plan),
            ours_bwd(lambda: masked_attention(qg, kg, vg, *spec, mask_type, plan=plan)), fl_fwd)

    # --- the fused work-list build (build_worklists' "triton" backend): "auto" keeps the torch build until a
    # GPU run shows the two equal at these sizes, so this run records both, compared tensor by tensor
    def built_plan(backend="triton", sp=spec, n=S, need_bwd=True):
        return plan_masked_attention(*sp, mask_type, 0, n, 0, n, D, dtype, need_bwd=need_bwd, configs=configs,
                                     worklist_backend=backend)

    try:
        pf, pt = built_plan(), built_plan("torch")                  # the torch build whatever "auto" picks
        diff = {kern: first_difference(getattr(pt, f"wl_{kern}"), getattr(pf, f"wl_{kern}"), pt.attrs, pf.attrs)
                for kern in listed}
        record(name, {"fused_build": {"matches_torch_build": not any(diff.values()),
                                      "differences": {k: v for k, v in diff.items() if v},
                                      "build_ms": cuda_time(built_plan, 0.2)}})
        del pf, pt
        measure("ours_fused_build", lambda: masked_attention_forward(q, k, v, *spec, mask_type,
                                                                     plan=built_plan(need_bwd=False)),
                ours_bwd(lambda: masked_attention(qg, kg, vg, *spec, mask_type, plan=built_plan())), fl_fwd)
    except Exception as e:
        record(name, {"fused_build": {"error": f"{type(e).__name__}: {str(e)[:300]}"}})

    # --- correctness of the same inputs at the same size: (out, dq, dk, dv) against each reference
    def grads(fn, to_shd=lambda t: t):
        qg.grad = kg.grad = vg.grad = None
        o = fn()
        o.backward(do if o.dim() == 3 else do.transpose(0, 1)[None])
        return (to_shd(o.detach()), qg.grad, kg.grad, vg.grad)       # grads of the (S, H, D) leaves

    ours_ref = grads(lambda: masked_attention(qg, kg, vg, *spec, mask_type, configs=configs))
    tol = CHECK_TOL.get(str(dtype).replace("torch.", ""), 3e-2)

    def check(ref_name, fn, to_shd):
        try:
            errs = rel_errors(ours_ref, grads(fn, to_shd))
            record(name, {"check": {**res.get("check", {}), ref_name: {
                "max_rel_err": errs, "tol": tol, "ok": all(e <= tol for e in errs.values())}}})
        except Exception as e:
            record(name, {"check": {**res.get("check", {}), ref_name: {"error": f"{type(e).__name__}: {str(e)[:300]}"}}})
        qg.grad = kg.grad = vg.grad = None
        torch.cuda.empty_cache()

    def bhsd(t):                                   # (S, H, D) leaf -> (1, H, S, D) view that keeps the graph
        return t.transpose(0, 1)[None]

    def shd(t):                                    # (1, H, S, D) -> (S, H, D)
        return t[0].transpose(0, 1)

    # a NEW sequence length: the last image grows by 37 tokens
    blocks2 = blocks[:-1] + [(blocks[-1][0] + 37, *blocks[-1][1:])]
    spec2 = [t.to(dev) for t in spec_from_blocks(blocks2)]
    S2 = S + 37
    q2, k2, v2, do2 = (torch.randn(S2, H, D, device=dev, dtype=dtype) for _ in range(4))
    q2g, k2g, v2g = (t.clone().requires_grad_() for t in (q2, k2, v2))
    if "newlen" not in skip:
        try:
            record(name, {"ours_new_len_first_fwd_bwd_ms": wall_once(
                lambda: masked_attention(q2g, k2g, v2g, *spec2, mask_type, configs=configs).backward(do2))})
            record(name, {"ours_new_len_second_fwd_bwd_ms": wall_once(
                lambda: masked_attention(q2g, k2g, v2g, *spec2, mask_type, configs=configs).backward(do2))})
        except Exception as e:
            record(name, {"ours_new_len_error": f"{type(e).__name__}: {str(e)[:300]}"})
        if "matches_torch_build" in res.get("fused_build", {}):
            try:           # the fused build at a third length: its own kernels must not recompile either
                S3 = S + 2 * 37
                spec3 = [t.to(dev) for t in spec_from_blocks(blocks[:-1] + [(blocks[-1][0] + 74, *blocks[-1][1:])])]
                x3 = [torch.randn(S3, H, D, device=dev, dtype=dtype).requires_grad_() for _ in range(3)]
                do3 = torch.randn(S3, H, D, device=dev, dtype=dtype)
                for which in ("first", "second"):
                    record(name, {f"ours_fused_build_new_len_{which}_fwd_bwd_ms": wall_once(
                        lambda: masked_attention(*x3, *spec3, mask_type, plan=built_plan("triton", spec3, S3)).backward(do3))})
                del x3, do3
            except Exception as e:
                record(name, {"ours_fused_build_new_len_error": f"{type(e).__name__}: {str(e)[:300]}"})

    # --- FlexAttention
    if "flex" not in skip:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            from vincie_kernels.reference import KIND_NOISY

            def make_mask_mod(sp):
                off, order, kind, sess = sp
                tb = token_block_ids(off)                      # per-token block attribute lookups
                t_order, t_sess, t_blk = order[tb], sess[tb], tb.to(torch.int32)
                t_noisy = kind[tb] == KIND_NOISY
                if mask_type == "full":
                    return lambda b, h, qi, ki: t_sess[qi] == t_sess[ki]

                def mask_mod(b, h, qi, ki):
                    causal = torch.where(t_noisy[qi], t_order[ki] < t_order[qi], t_order[ki] <= t_order[qi])
                    return (t_sess[qi] == t_sess[ki]) & ((t_blk[qi] == t_blk[ki]) | (~t_noisy[ki] & causal))
                return mask_mod

            mm = make_mask_mod(spec)
            bm_first = wall_once(lambda: create_block_mask(mm, None, None, S, S, device=dev))
            bm_ms = cuda_time(lambda: create_block_mask(mm, None, None, S, S, device=dev), 0.3, warmup=1)
            bmask = create_block_mask(mm, None, None, S, S, device=dev)
            record(name, {"flex_block_mask_first_ms": bm_first, "flex_block_mask_ms": bm_ms})
            flex = torch.compile(flex_attention) if dev == "cuda" else flex_attention
            fq, fk, fv, fdo = (t.transpose(0, 1)[None].contiguous() for t in (q, k, v, do))   # (1, H, S, D)
            fqg, fkg, fvg = (t.clone().requires_grad_() for t in (fq, fk, fv))

            def time_flex(label, fn):
                """First call (compile), fwd / fwd+bwd medians and the check of one Flex backend ``fn``."""
                record(name, {f"{label}_first_fwd_bwd_ms_incl_compile": wall_once(
                    lambda: fn(fqg, fkg, fvg, block_mask=bmask).backward(fdo))})

                def fb():
                    fqg.grad = fkg.grad = fvg.grad = None
                    fn(fqg, fkg, fvg, block_mask=bmask).backward(fdo)
                measure(label, lambda: fn(fq, fk, fv, block_mask=bmask), fb, fl_fwd)
                check(label, lambda: fn(bhsd(qg), bhsd(kg), bhsd(vg), block_mask=bmask), shd)

            time_flex("flex", flex)
            why = flex_flash_unavailable(dev)
            if why:
                record(name, {"flex_flash": {"unavailable": why}})
            else:                            # the same mask through the FA4 (CuteDSL) backend
                try:
                    time_flex("flex_flash", torch.compile(
                        functools.partial(flex_attention, kernel_options={"BACKEND": "FLASH"})))
                except Exception as e:
                    record(name, {"flex_flash": {"error": f"{type(e).__name__}: {str(e)[:300]}"}})
            if "newlen" not in skip:
                mm2 = make_mask_mod(spec2)
                bmask2 = create_block_mask(mm2, None, None, S2, S2, device=dev)
                f2 = [t.transpose(0, 1)[None].contiguous().requires_grad_() for t in (q2, k2, v2)]
                fdo2 = do2.transpose(0, 1)[None].contiguous()
                record(name, {"flex_new_len_first_fwd_bwd_ms": wall_once(
                    lambda: flex(*f2, block_mask=bmask2).backward(fdo2))})
            del bmask
        except Exception as e:
            record(name, {"flex": {"error": f"{type(e).__name__}: {str(e)[:300]}"}})
        torch.cuda.empty_cache()

    # --- SDPA: dense boolean mask, then no mask at all
    sq, sk, sv, sdo = (t.transpose(0, 1)[None].contiguous() for t in (q, k, v, do))  # (1, H, S, D)
    sqg, skg, svg = (t.clone().requires_grad_() for t in (sq, sk, sv))

    def sdpa_fb(**kw):
        def run():
            sqg.grad = skg.grad = svg.grad = None
            F.scaled_dot_product_attention(sqg, skg, svg, **kw).backward(sdo)
        return run

    if "sdpa_mask" not in skip:
        try:
            from vincie_kernels.reference import dense_mask
            mask = dense_mask(*spec, mask_type)                                       # (S, S) bool, 2 GB at S=45k
            measure("sdpa_dense_mask", lambda: F.scaled_dot_product_attention(sq, sk, sv, attn_mask=mask),
                    sdpa_fb(attn_mask=mask), fl_fwd)
            check("sdpa_dense_mask", lambda: F.scaled_dot_product_attention(
                bhsd(qg), bhsd(kg), bhsd(vg), attn_mask=mask), shd)
            del mask
        except Exception as e:
            record(name, {"sdpa_dense_mask": {"error": f"{type(e).__name__}: {str(e)[:300]}"}})
        torch.cuda.empty_cache()
    if "dense" not in skip:
        measure("dense_flash_no_mask", lambda: F.scaled_dot_product_attention(sq, sk, sv),
                sdpa_fb(), fl_fwd)
        r = res.get("dense_flash_no_mask", {})
        if "fwd_ms" in r:   # its own rate, counting every computed pair
            r["computed_fwd_bwd_tflops"] = r["fwd_bwd_tflops"] / res["density"]
            r["note"] = "tflops fields count allowed pairs only; computed_* counts all S^2 pairs"
            record(name, {})


def bench_attention(cases, out: str, header: dict, opts: BenchOptions) -> dict:
    """Every case of ``cases`` in turn; the result (``header`` + per-case records) is rewritten to
    ``out`` after each measurement. A failing case is recorded and the next one runs."""
    import torch
    result = {**header, "configs_option": opts.configs, "cases": {}}
    try:
        dev, dtype, n = ("cpu", torch.float32, 256) if opts.smoke else ("cuda", torch.bfloat16, 8192)
        result["matmul_peak"] = matmul_peak(dev, dtype, n, 1.0)
    except Exception as e:
        result["matmul_peak"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    peak = result["matmul_peak"].get("tflops")

    def record(case, entries):
        c = result["cases"].setdefault(case, {})
        c.update(entries)
        write_json(out, result)
        return c

    for name in cases:
        t0 = time.time()
        try:
            run_case(name, opts, record)
        except Exception as e:
            traceback.print_exc()
            record(name, {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        record(name, {"bench_seconds": round(time.time() - t0, 1)})
        record(name, {"summary": summarize_case(result["cases"][name], peak)})
        print(f"case {name}: {json.dumps(result['cases'][name])}", file=sys.stderr)
        torch.cuda.empty_cache()
    write_json(out, result)
    return result
