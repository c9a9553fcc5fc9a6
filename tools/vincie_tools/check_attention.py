"""Check the Triton masked attention against the dense oracle on random awkward layouts.

    vincie-check-attention --cases 12 --seed 0                 # CPU: Triton interpreter, fp32
    vincie-check-attention --cases 24 --device cuda --dtype bfloat16

The cases and what is compared: ``kernels/vincie_kernels/check.py``. The last printed line
is a JSON object; the exit status is 1 if any error exceeds the tolerance for the dtype
(fp32: 1e-4 absolute).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from vincie_kernels.check import TOLERANCES, check_attention   # imports neither torch nor triton


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--dtype", choices=sorted(TOLERANCES), default=None, help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--max-tokens", type=int, default=None, help="layout size (default 200 on cpu, 3000 on cuda)")
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--tilings", default="default",
                   help="kernel tilings as text (vincie_kernels/tilings.py), e.g. one with +tma kernels")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.cases < 1:
        p.error(f"--cases must be >= 1, got {args.cases}")
    from vincie_kernels.tilings import parse_tilings
    try:
        parse_tilings(args.tilings)
    except ValueError as e:
        p.error(f"--tilings: {e}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("check_attention: --device cuda but no GPU is available", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    if device == "cpu" and dtype_name != "float32":
        print(f"check_attention: the Triton interpreter computes {dtype_name} wrongly; use float32 on cpu",
              file=sys.stderr)
        return 2
    result, failures = check_attention(args.cases, args.seed, device, dtype_name, args.max_tokens, args.heads,
                                       args.tilings)
    for f in failures[:10]:
        print("FAIL", json.dumps(f))
    line = json.dumps(result)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(line + "\n")
    print(line)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
