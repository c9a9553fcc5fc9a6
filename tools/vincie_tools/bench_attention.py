"""Benchmark the Triton masked attention on the reference cases of docs/measured.md (GPU only).

    vincie-bench-attention --out benchmarks/bench_attention.json
    vincie-bench-attention --smoke          # CPU: Triton interpreter dry run, tiny layouts
    vincie-bench-attention --configs tuned=benchmarks/out/tune_attention.json   # the tuner's pick

The cases (a, b: block-causal 5-turn sessions at 512 / 1024 px; c: 4 packed "full" sessions),
the baselines (FlexAttention, SDPA with a dense mask, dense flash) and the FLOP convention are
described in ``kernels/vincie_kernels/bench.py``. The JSON is rewritten after every
measurement, so a timeout still leaves partial results; the last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

from vincie_kernels.bench import CASES, BenchOptions, bench_attention, start   # imports neither torch nor triton
from vincie_kernels.tilings import parse_tilings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/bench_attention.json")
    p.add_argument("--cases", default="a,b,c", help="comma list of a, b, c")
    p.add_argument("--skip", default="", help="comma list of: flex, sdpa_mask, dense, newlen")
    p.add_argument("--configs", default="default",
                   help="kernel tilings (vincie_kernels/tilings.py): default (today's), legacy (64x64 backward), "
                        "fa2 (FA2-shaped backward), tuned=<vincie-tune-attention JSON> (its overall_best), or "
                        "fwd=128x64x8x3,dkdv=32x128x8x2,dq=128x64x8x2 (block_m x block_n x warps x stages; "
                        "+tma after one streams that kernel's tiles through TMA on sm_90+; dq=atomic: dK/dV "
                        "adds dQ up with fp32 atomics, no dQ kernel)")
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--target-seconds", type=float, default=0.6, help="time budget per measurement")
    p.add_argument("--smoke", action="store_true",
                   help="tiny layouts, 2 heads x 16, fp32 on CPU (Triton interpreter): checks the script, not speed")
    args = p.parse_args(argv)
    bad = [c for c in args.cases.split(",") if c not in CASES]
    if bad:
        p.error(f"--cases: unknown case(s) {bad}; choose from {CASES}")
    try:
        parse_tilings(args.configs)
    except ValueError as e:
        p.error(f"--configs: {e}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    header = start("bench_attention", args.out, args.smoke, "the benchmark runs on GPU only")
    if "skipped" in header:
        print("bench_attention: no CUDA device, skipping", file=sys.stderr)
        print(json.dumps(header))
        return 0
    opts = BenchOptions(smoke=args.smoke, skip=tuple(s for s in args.skip.split(",") if s), configs=args.configs,
                        heads=args.heads, head_dim=args.head_dim, target_seconds=args.target_seconds)
    result = bench_attention(args.cases.split(","), args.out, header, opts)
    print(f"bench_attention: wrote {args.out}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
