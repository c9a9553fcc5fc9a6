"""Check the Triton masked attention against the dense oracle on random awkward layouts.

Each case draws a random packed layout (``reference.random_blocks``: several sessions,
single-token blocks, long text blocks, block lengths no multiple of the tile, joint
text-first or session-contiguous order, padding), a mask type, and a query/key slice (whole
sequence, a context-parallel query slice with q_start > 0 against all keys, or both sliced,
which leaves some queries with no visible key). Forward output and dq, dk, dv (autograd on
``attention_reference`` with ``dense_mask``, in fp32) are compared; on GPU torch SDPA with the
same dense mask is measured too, as a yardstick. The CLI is ``vincie-check-attention``.
"""
from __future__ import annotations

import os
import time

# tolerance per dtype: |err| <= atol + rtol * max|reference|
TOLERANCES = {"float32": (1e-4, 0.0), "bfloat16": (1e-2, 2e-2), "float16": (2e-3, 5e-3)}


def check_attention(cases: int, seed: int, device: str, dtype_name: str, max_tokens: int | None = None,
                    heads: int | None = None, tilings: str = "default") -> tuple[dict, list[dict]]:
    """Run ``cases`` random cases; -> (result record, failures: one dict per tensor over tolerance).

    ``device`` "cpu" runs Triton's interpreter (fp32 only: it computes half types wrongly), which
    must be chosen before triton's first import. Defaults: ``max_tokens`` 200 on cpu, 3000 on
    cuda; ``heads`` 2 on cpu, 8 on cuda. ``tilings``: the kernels' tilings as text
    (``tilings.py``; e.g. a ``+tma`` tiling, checked before the GPU tuner times it).
    """
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")      # must precede the first triton import
    import torch
    import torch.nn.functional as F

    from vincie_kernels.masked_attention import masked_attention, tma_active
    from vincie_kernels.tilings import attention_configs, parse_tilings
    from vincie_kernels.reference import MASK_TYPES, attention_reference, dense_mask, random_blocks, spec_from_blocks

    dtype = getattr(torch, dtype_name)
    max_tokens = max_tokens or (200 if device == "cpu" else 3000)
    heads = heads or (2 if device == "cpu" else 8)
    head_dims = (16, 32) if device == "cpu" else (64, 128)
    atol, rtol = TOLERANCES[dtype_name]
    configs = attention_configs(parse_tilings(tilings))
    tma_seen = set()

    gen = torch.Generator().manual_seed(seed)
    worst = {n: 0.0 for n in ("out", "dq", "dk", "dv")}
    worst_sdpa = {n: 0.0 for n in ("out", "dq", "dk", "dv")}
    failures, kinds, empty_rows, t0 = [], {}, 0, time.time()

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    for case in range(cases):
        # on GPU, images long enough to fill 128 x 64 tiles, so full tiles are exercised too
        blocks = random_blocks(gen, max_tokens=max_tokens, image_scale=1 if device == "cpu" else 12)
        spec = spec_from_blocks(blocks)
        S = int(spec[0][-1])
        mask_type = MASK_TYPES[case % 2]
        D = head_dims[(case // 2) % len(head_dims)]
        slicing = ("whole", "q_slice", "both")[case % 3]
        q_start, q_len, k_start, k_len = 0, S, 0, S
        if slicing != "whole":                                # context-parallel query slice
            q_start = rint(1, S - 1)
            q_len = rint(1, S - q_start)
        if slicing == "both":                                 # keys sliced too: may leave empty rows
            k_start = rint(0, S - 1)
            k_len = rint(1, S - k_start)
        mask = dense_mask(*spec, mask_type, q_start, q_len, k_start, k_len)
        empty_rows += int((~mask.any(1)).sum())
        kinds[f"{mask_type}/{slicing}"] = kinds.get(f"{mask_type}/{slicing}", 0) + 1

        q = (torch.randn(q_len, heads, D, generator=gen)).to(device, dtype).requires_grad_()
        k = (torch.randn(k_len, heads, D, generator=gen)).to(device, dtype).requires_grad_()
        v = (torch.randn(k_len, heads, D, generator=gen)).to(device, dtype).requires_grad_()
        g = torch.randn(q_len, heads, D, generator=gen).to(device, dtype)
        spec_dev = [t.to(device) for t in spec]
        mask = mask.to(device)

        out = masked_attention(q, k, v, *spec_dev, mask_type, q_start=q_start, k_start=k_start, configs=configs)
        if configs is not None:
            tma_seen.update(kern for kern, on in tma_active(configs, q, k, v).items() if on)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
        # the oracle, in fp32 from the same (rounded) inputs
        qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
        ref, _ = attention_reference(qr, kr, vr, mask)
        rdq, rdk, rdv = torch.autograd.grad(ref, (qr, kr, vr), g.float())

        desc = dict(case=case, S=S, mask_type=mask_type, D=D, q_start=q_start, q_len=q_len,
                    k_start=k_start, k_len=k_len)
        for name, ours, r in (("out", out, ref), ("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv)):
            err = float((ours.detach().float() - r.detach()).abs().max())
            if not err == err:                                 # NaN
                err = float("inf")
            worst[name] = max(worst[name], err)
            if err > atol + rtol * float(r.detach().abs().max()):
                failures.append({**desc, "tensor": name, "err": err})

        rows = mask.any(1)
        if device == "cuda" and bool(rows.all()):              # yardstick: SDPA, same mask, same dtype
            # (only without empty rows: SDPA gives NaN there, forward and backward)
            qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None],
                                               vs.transpose(0, 1)[None], attn_mask=mask)[0].transpose(0, 1)
            sdq, sdk, sdv = torch.autograd.grad(o, (qs, ks, vs), g)
            for name, theirs, r in (("out", o, ref), ("dq", sdq, rdq), ("dk", sdk, rdk), ("dv", sdv, rdv)):
                err = float((theirs.detach().float() - r.detach()).abs().max())
                worst_sdpa[name] = max(worst_sdpa[name], err)

    result = {"tool": "check_attention", "cases": cases, "seed": seed, "device": device,
              "dtype": dtype_name, "ok": not failures, "num_failures": len(failures),
              "max_err_out": worst["out"], "max_err_dq": worst["dq"], "max_err_dk": worst["dk"],
              "max_err_dv": worst["dv"], "tolerance": {"atol": atol, "rtol": rtol},
              "case_kinds": kinds, "empty_query_rows": empty_rows, "seconds": round(time.time() - t0, 2),
              "tilings": tilings, "tma_active": sorted(tma_seen)}
    if device == "cuda":
        result["sdpa_max_err"] = worst_sdpa
        result["gpu"] = torch.cuda.get_device_name()
    return result, failures
