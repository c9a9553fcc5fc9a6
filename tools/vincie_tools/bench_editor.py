"""Time a multi-turn edit session with and without the KV cache, or sessions edited one or N per model pass.

    vincie-bench-editor --out benchmarks/cpu/bench_editor.json
    vincie-bench-editor --hidden 128 --layers 2 --steps 4 --turns 3      # a quick look
    vincie-bench-editor --batch 8 --sessions 16 --turns 3 --out benchmarks/cpu/bench_editor_batched.json
    vincie-bench-editor --app chain --turns 3 --out benchmarks/cpu/bench_editor_chain.json

Prints one JSON line: seconds per turn on both paths, their ratio, the cache's bytes, and the
largest difference between the two paths' model outputs and samples in the same run
(``vincie_mcore/perf/bench_editor.py``; docs/kv_cache.md); --device cuda --baseline-backend triton: bf16 on a
GPU, the cache (torch core) against the Triton kernel without it. With --batch: benchmark chains under the full
mask at one session per pass and at N, edits per second each way and the largest pixel difference
between the two runs (docs/benchmarks.md, "Batched editing"); --device cuda runs it in bf16 on a GPU.
With --app chain: chain-of-editing with and without the KV cache, every generate call's latent compared.
"""
from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--image-tokens", type=int, default=16, help="image side in tokens (8-px patches)")
    ap.add_argument("--steps", type=int, default=10, help="sampling steps per turn")
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=None, help="benchmark batched editing: sessions per model pass")
    ap.add_argument("--sessions", type=int, default=8, help="with --batch: chains to edit")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16); not with --app")
    ap.add_argument("--baseline-backend", choices=["torch", "triton"], default="torch",
                    help="the KV-cache benchmark: the attention core of the no-cache path (triton: what auto "
                         "picks on a GPU; the cache runs on the torch core)")
    ap.add_argument("--app", choices=["chain"], help="benchmark an application's calls instead of editing turns")
    ap.add_argument("--out", help="write the JSON here as well")
    args = ap.parse_args(argv)
    from vincie_mcore.perf.bench_editor import bench_batched, bench_chain, bench_editor

    try:
        if args.app == "chain":
            res = bench_chain(args.hidden, args.layers, args.heads, args.image_tokens, args.steps, args.turns,
                              args.guidance, args.seed)
        elif args.batch is not None:
            res = bench_batched(args.batch, args.sessions, args.hidden, args.layers, args.heads, args.image_tokens,
                                args.steps, args.turns, args.guidance, args.seed, args.device)
        else:
            res = bench_editor(args.hidden, args.layers, args.heads, args.image_tokens, args.steps, args.turns,
                               args.guidance, args.seed, args.device, args.baseline_backend)
    except ValueError as e:
        ap.error(str(e))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
