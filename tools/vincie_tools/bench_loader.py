"""Speed and memory of the streaming loader over a latent store -> JSON.

    vincie-bench-loader --out benchmarks/cpu/bench_loader.json

Sessions/s and tokens/s with 0, 1 and 2 workers, RSS/USS against corpus size (1k, 10k, 100k
synthesized rows), time to the first batch after a resume (vincie_mcore/perf/bench_loader.py).

    vincie-bench-loader --epoch-order 10000000 --out benchmarks/cpu/bench_epoch_order.json

One epoch's order over 10M sessions, plain and with ``data.corpus.mix`` (3 sources, weighed 1:1:1).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vincie-bench-loader", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="where the synthesized stores go (default: a temp folder)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="corpus sizes for memory")
    ap.add_argument("--throughput-rows", type=int, default=400, help="rows of the VAE-like store")
    ap.add_argument("--batches", type=int, default=40, help="batches timed per worker count")
    ap.add_argument("--epoch-order", type=int, default=None, metavar="UNITS",
                    help="only time one epoch's order over UNITS sessions, plain and with data.corpus.mix")
    ap.add_argument("--out", default=None, help="write the JSON here as well")
    a = ap.parse_args(argv)
    from vincie_mcore.perf.bench_loader import bench_loader, epoch_order

    if a.epoch_order is not None:
        if a.epoch_order < 2:
            print(f"error: --epoch-order: needs at least 2 sessions, got {a.epoch_order}", file=sys.stderr)
            return 2
        import os
        import subprocess

        res = epoch_order(a.epoch_order)
        res["cores"] = os.cpu_count()
        res["git_sha"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            res = bench_loader(a.workdir or tmp, a.sizes, a.throughput_rows, a.batches)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
