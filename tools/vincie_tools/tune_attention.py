"""Time a small grid of masked-attention kernel configs on the GPU and print the best (JSON).

    vincie-tune-attention --out benchmarks/out/tune_attention.json
    vincie-tune-attention --smoke          # CPU: Triton interpreter dry run, tiny shapes

Cases a, c, then b of ``vincie-bench-attention`` while the budget lasts; the candidates, the
correctness check against the fp64 dense reference and how ``best`` and ``overall_best`` are
picked are described in ``kernels/vincie_kernels/tune.py``. Time the pick against the baselines with
``vincie-bench-attention --configs tuned=<this JSON>``. The JSON is rewritten after every case; the last line
printed is the JSON. Without a GPU (and without --smoke) it prints ``{"skipped": ...}`` and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys

from vincie_kernels.bench import CASES, start   # imports neither torch nor triton
from vincie_kernels.tune import tune_attention


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/tune_attention.json")
    p.add_argument("--cases", default="a,c,b", help="comma list of a, b, c (run in this order)")
    p.add_argument("--budget-s", type=float, default=60.0, help="stop starting measurements after this")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="Triton interpreter on CPU, tiny layouts, fp32")
    p.add_argument("--no-tma", action="store_true",
                   help="leave out the candidates with TMA kernels (e.g. after a failed TMA check)")
    p.add_argument("--deterministic", action="store_true",
                   help="leave out the atomic-dQ candidates (dq=atomic), whose dQ varies in its last bits run to run")
    p.add_argument("--heads", type=int, default=24,
                   help="attention heads per rank: the model's heads / tensor-parallel size (3B: 20 heads, so "
                        "5 at TP 4); the grids scale with it")
    args = p.parse_args(argv)
    bad = [c for c in args.cases.split(",") if c not in CASES]
    if bad:
        p.error(f"--cases: unknown case(s) {bad}; choose from a, b, c")
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.heads < 1:
        p.error(f"--heads must be >= 1, got {args.heads}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    header = start("tune_attention", args.out, args.smoke, "tuning runs on GPU only (--smoke for a dry run)")
    if "skipped" in header:
        print("tune_attention: no CUDA device, skipping", file=sys.stderr)
        print(json.dumps(header))
        return 0
    result = tune_attention(args.cases.split(","), args.out, header, args.budget_s, args.reps, args.smoke,
                            tma=not args.no_tma, atomic=not args.deterministic, heads=args.heads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
