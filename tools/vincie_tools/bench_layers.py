"""Benchmark a 3B-width MM-DiT layer stack on one session-length packed sequence (GPU).

    vincie-bench-layers --out benchmarks/bench_layers.json
    vincie-bench-layers --smoke          # tiny CPU dry run of the same code path

The stack, the two packed sequences (block_causal, full) and the cases (torch / triton cores,
TE bf16, FP8) are described in ``vincie_mcore/perf/bench_layers.py``. Needs torch, triton and
megatron-core only. Without CUDA (and no --smoke) it prints ``{"skipped": ...}`` and exits 0.
The last printed line is the result JSON.
"""
from __future__ import annotations

import argparse
import json

import torch

from vincie_kernels.tilings import parse_tilings
from vincie_mcore.perf.bench_layers import bench_layers, write_json


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the result JSON here as well")
    ap.add_argument("--smoke", action="store_true", help="tiny widths on the CPU: a dry run of the code path")
    ap.add_argument("--layers", type=int, default=4, help="layers in the stack, half dual-stream (default 4)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--attention-tilings", default="default",
                    help="model.attention_tilings of the stacks: default | legacy | fa2 | "
                         "fwd=..,dkdv=..,dq=.. | tuned=<vincie-tune-attention JSON> (kernels/vincie_kernels/tilings.py)")
    args = ap.parse_args(argv)
    try:
        parse_tilings(args.attention_tilings)
    except ValueError as e:
        ap.error(f"--attention-tilings: {e}")
    if args.layers < 2 or args.warmup < 0 or args.iters < 1:
        ap.error("--layers must be >= 2, --warmup >= 0 and --iters >= 1")
    if not args.smoke and not torch.cuda.is_available():
        res = {"tool": "bench_layers", "skipped": "no CUDA device (use --smoke for a CPU dry run)"}
    else:
        res = bench_layers(args.smoke, args.layers, args.warmup, args.iters, args.out,
                           attention_tilings=args.attention_tilings)
    if args.out:
        write_json(args.out, res)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
