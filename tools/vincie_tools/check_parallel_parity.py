"""Does a parallel layout compute what one device computes? Train the tiny MM-DiT both ways.

    vincie-check-parallel-parity --tp 2 --cp 2 --mask block_causal --steps 2
    vincie-check-parallel-parity --dp 2 --dist-opt --mask full --steps 3
    vincie-check-parallel-parity --tp 2 --sp --steps 2

One process and the layout (spawned CPU ranks over gloo) train from the same weights on the
same global batches; losses, first-step gradients and final parameters are compared
(``vincie_mcore/parallel/parity.py`` describes the method). The last printed line is a JSON
object; exit status 1 when any relative diff exceeds ``--tol`` (fp32: 1e-5).
"""
from __future__ import annotations

import argparse
import json
import sys

from vincie_mcore.parallel.parity import ADAM_EPS, Layout, check_layouts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--cp", type=int, default=1)
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--sp", action="store_true", help="sequence parallel (needs --tp > 1)")
    ap.add_argument("--dist-opt", action="store_true", help="distributed optimizer (optimizer state sharded over DP)")
    ap.add_argument("--mask", choices=("full", "block_causal"), default="block_causal")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=400, help="tokens per global step (all DP ranks together)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--adam-eps", type=float, default=ADAM_EPS)
    ap.add_argument("--tol", type=float, default=1e-5)
    a = ap.parse_args(argv)
    if a.steps < 1 or a.tokens < 1:
        ap.error("--steps and --tokens must be >= 1")
    try:
        layout = Layout(a.tp, a.cp, a.dp, a.sp, a.dist_opt)
    except ValueError as e:
        ap.error(str(e))
    res = check_layouts([layout], a.mask, a.steps, tokens=a.tokens, seed=a.seed, lr=a.lr,
                        adam_eps=a.adam_eps, tol=a.tol)[0]
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
