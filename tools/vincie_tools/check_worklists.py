"""Compare the fused Triton work-list build with the torch build at the benchmark's own sizes.

    vincie-check-worklists --out benchmarks/cpu/worklists_fused_vs_torch.json   # CPU: the interpreter
    vincie-check-worklists --cases a,c --tilings 128x64,32x128                  # a GPU: seconds

For each case of ``vincie_kernels.bench`` (a: S = 11,549, b: 45,341, c: 7,708) and each tiling (block_m x
block_n), both builds run on the whole sequence and ``worklist.first_difference`` compares every list
and attribute tensor. ``build_worklists(backend="auto")`` keeps the torch build until the fused one is
shown equal at these sizes (docs/measured.md). On CPU the fused build runs under the Triton interpreter
(minutes for case b; ``--skip`` leaves pairs out). The JSON is rewritten after every pair; the exit status
is 1 if any pair differs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# every (block_m, block_n) of the tuner's candidates (a test keeps it so), plus 16x16: many tiles a row
TILINGS = "128x64,64x64,64x128,64x32,32x64,32x128,16x16"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="a,b,c")
    p.add_argument("--tilings", default=TILINGS, help=f"block_m x block_n, comma-separated (default {TILINGS})")
    p.add_argument("--skip", default="b:16x16", help="case:tiling pairs to leave out (default b:16x16, an hour "
                                                       "under the interpreter)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from vincie_kernels.bench import CASES
    args.cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in args.cases if c not in CASES]
    if bad or not args.cases:
        p.error(f"--cases: unknown case(s) {bad} (known: {','.join(CASES)})")
    text = args.tilings
    try:
        args.tilings = [tuple(int(x) for x in t.split("x")) for t in text.split(",") if t]
    except ValueError:
        args.tilings = []
    # an explicit check, not an assert (python -O would drop it)
    if not args.tilings or not all(len(t) == 2 and min(t) >= 16 and not t[0] & (t[0] - 1) and not t[1] & (t[1] - 1)
                                   for t in args.tilings):
        p.error(f"--tilings: want power-of-two tiles >= 16 like 128x64,32x128, got {text!r}")
    args.skip = {s for s in args.skip.split(",") if s}
    bad = [s for s in args.skip if s.count(":") != 1 or s.split(":")[0] not in CASES]
    if bad:
        p.error(f"--skip: want case:tiling pairs like b:16x16, got {','.join(sorted(bad))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")       # before triton's first import
    from vincie_kernels.bench import case_blocks, write_json
    from vincie_kernels.reference import spec_from_blocks
    from vincie_kernels.worklist import build_worklists, first_difference
    import triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res = {"tool": "check_worklists", "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)",
           "torch": torch.__version__, "triton": triton.__version__, "pairs": []}
    for case in args.cases:
        blocks, mask_type = case_blocks(case)
        spec = [t.to(dev) for t in spec_from_blocks(blocks)]
        S = int(spec[0][-1])
        for bm, bn in args.tilings:
            if f"{case}:{bm}x{bn}" in args.skip:
                continue
            t0 = time.perf_counter()
            a1, w1 = build_worklists(*spec, mask_type, 0, S, 0, S, bm, bn, backend="torch")
            t1 = time.perf_counter()
            a2, w2 = build_worklists(*spec, mask_type, 0, S, 0, S, bm, bn, backend="triton")
            t2 = time.perf_counter()
            rec = {"case": case, "S": S, "mask": mask_type, "tiling": [bm, bn],
                   "first_difference": first_difference(w1, w2, a1, a2), "tiles": w1.counts(),
                   "seconds": {"torch": round(t1 - t0, 3), "triton": round(t2 - t1, 3)}}
            res["pairs"].append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
            if args.out:
                write_json(args.out, res)
    res["all_equal"] = all(r["first_difference"] is None for r in res["pairs"])
    if args.out:
        write_json(args.out, res)
    print(json.dumps(res))
    return 0 if res["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
