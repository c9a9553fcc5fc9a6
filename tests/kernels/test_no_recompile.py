"""No kernel recompiles at a new sequence length: every launch's JIT specialisation, computed on CPU.

Triton compiles a kernel once per *specialisation* of its arguments: each pointer's 16-byte alignment,
each integer's divisibility by 16 (and whether it equals 1), the dtypes and the constexprs. A value
that moves between classes as the length changes costs a compile (seconds) at that length: the H200
run's 3.7 s first call at a new length (docs/measured.md). Here the real launch path runs without the
interpreter, with ``JITFunction.run`` replaced by a recorder that asks Triton's own binder for the
specialisation an sm_90 launch would get, and launches nothing. Over 48 consecutive lengths (every
residue mod 16) and 40 more up to 2.7k tokens (tile counts and run-list widths crossing multiples of 16)
of a block-causal and a full layout, a context-parallel slice, both work-list builds, a TMA tiling and
one with atomic dQ, and the fused element-wise ops (``vincie_kernels.fused``) at 56 row counts, each
kernel must show one specialisation per call site (its constexprs).
"""
import json
import os

import pytest
import torch
from jit_script import run_as_script, script_main

if torch.cuda.is_available():
    pytest.skip("a GPU is present: bench_attention times the first call at a new length for real",
                allow_module_level=True)


def _record() -> dict:
    """Run in a fresh process without TRITON_INTERPRET (real JITFunctions): {kernel: {constexprs: [keys]}}."""
    import triton.runtime.jit as jit
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", 90, 32))
    seen: dict = {}

    def record(self, *args, grid, warmup, **kwargs):
        if not hasattr(self, "_vincie_binder"):
            self._vincie_binder = jit.create_function_from_signature(self.signature, self.params, backend)
        _, spec, options = self._vincie_binder(*args, **kwargs)
        const = [v for kind, v in spec if kind == "constexpr"]
        rest = [[kind, v] for kind, v in spec if kind != "constexpr"]
        site = json.dumps([const, sorted((k, str(v)) for k, v in options.items())])
        seen.setdefault(self.fn.__name__, {}).setdefault(site, set()).add(json.dumps(rest))

    jit.JITFunction.run = record
    import vincie_kernels.masked_attention as ma
    from vincie_kernels import fused
    from vincie_kernels.bench import case_blocks
    from vincie_kernels.reference import spec_from_blocks
    from vincie_kernels.tilings import attention_configs, parse_tilings

    # after triton's import (the kernels stay JITFunctions): lets CPU tensors through our launch checks
    os.environ["TRITON_INTERPRET"] = "1"
    tilings = {"default": ma.default_configs(128, torch.bfloat16, torch.device("cuda")),
               "tma": attention_configs(parse_tilings("fwd=128x64x8x3+tma,dkdv=32x128x8x2+tma,dq=128x64x8x2+tma")),
               "atomic_dq": attention_configs(parse_tilings("fwd=128x64x8x3,dkdv=32x128x8x2,dq=atomic"))}
    H, D = 2, 128
    for case in ("a", "c"):
        blocks, mask_type = case_blocks(case, small=True)
        # every residue of S mod 16, then lengths whose tile counts and run-list widths cross multiples of 16
        for extra in [*range(48), *range(71, 2600, 64)]:
            spec = spec_from_blocks(blocks[:-1] + [(blocks[-1][0] + extra, *blocks[-1][1:])])
            S = int(spec[0][-1])
            for tiling, cfgs in tilings.items():
                for build in ("torch", "triton"):
                    if tiling != "default" and build == "torch" and extra % 3:
                        continue                        # the pointer path above covers the torch build
                    # the whole sequence, and a context-parallel slice of queries (keys whole)
                    for q_start, q_len in ((0, S), (S // 3, S - S // 3)):
                        plan = ma.plan_masked_attention(*spec, mask_type, q_start, q_len, 0, S, D, torch.float32,
                                                        configs=cfgs, worklist_backend=build)
                        q = torch.zeros(q_len, H, D, requires_grad=True)
                        k, v = (torch.zeros(S, H, D, requires_grad=True) for _ in range(2))
                        ma.masked_attention(q, k, v, *spec, mask_type, q_start=q_start, plan=plan).sum().backward()
    # the fused element-wise ops around a block, as the model calls them (vincie_mcore/model/fused_ops.py):
    # rows of one stream, q/k split from a fused projection, the stream's rows of the joint RoPE tables
    Dm, Dh = 64, 32
    for S in [*range(1, 40), *range(45, 700, 37)]:
        text = 5 + S % 7                             # the text stream's rows before this (image) stream's
        x = torch.zeros(S, Dm, requires_grad=True)
        mods = torch.zeros(3, 6, Dm, requires_grad=True)
        blk = torch.arange(S, dtype=torch.int32) * 3 // max(S, 1)
        y = fused.norm_modulate(x, mods, blk, 0, 1, 1e-6)
        fused.gated_residual(x, y, mods, blk, 2).sum().backward()
        qkv = torch.zeros(S, 3, H, Dh, requires_grad=True)
        cos, sin = (torch.zeros(text + S, Dh // 2) for _ in range(2))
        w = torch.ones(Dh, requires_grad=True)
        for i in (0, 1):
            fused.qk_norm_rope(qkv[:, i], w, cos[text:], sin[text:], 1e-6).sum().backward()
    return {name: {site: sorted(keys) for site, keys in sites.items()} for name, sites in seen.items()}


def test_every_kernel_keeps_one_specialisation_across_lengths():
    pytest.importorskip("triton.compiler")
    seen = run_as_script(__file__, "this Triton has no create_function_from_signature/make_backend to ask", 600)
    # every kernel of both builds and of the attention, forward and backward, was launched
    assert set(seen) >= {"_tile_attr_kernel", "_runs_kernel", "_fwd_kernel", "_bwd_delta_kernel",
                         "_bwd_dkdv_kernel", "_bwd_dq_kernel", "_norm_modulate_fwd", "_norm_modulate_bwd",
                         "_gated_residual_fwd", "_gated_residual_bwd", "_qk_norm_rope_fwd", "_qk_norm_rope_bwd"}, \
        sorted(seen)
    assert len(seen["_fwd_kernel"]) == 2          # two call sites: the pointer and the TMA forward
    # three dK/dV call sites: pointer loads, TMA, and pointer loads adding dQ up atomically
    assert len(seen["_bwd_dkdv_kernel"]) == 3, list(seen["_bwd_dkdv_kernel"])
    for name, sites in seen.items():
        for site, keys in sites.items():
            assert len(keys) == 1, f"{name} {site}: {len(keys)} specialisations across lengths, e.g. " + \
                str([(i, a, b) for i, (a, b) in enumerate(zip(json.loads(keys[0]), json.loads(keys[1]))) if a != b])


if __name__ == "__main__":
    script_main(_record, "triton.compiler:make_backend", "triton.runtime.jit:create_function_from_signature")
