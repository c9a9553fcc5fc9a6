"""Build a session store from a folder of videos (or from synthetic videos).

    vincie-build-sessions --videos VIDEOS --out STORE [--sampling mixed] [--workers 2]
    vincie-build-sessions --synthetic 2000 --videos VIDEOS --out STORE --world demo

With ``--synthetic N`` it first writes N synthetic videos (+ ground-truth
sidecars) into ``--videos``, then builds from them with the ground-truth
annotator and segmenter. Re-running resumes: finished videos are skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from vincie_mcore.data.build import DECODE_MAX_MB, DECODE_TIMEOUT_S, build_sessions, format_summary
from vincie_mcore.data.sampling import SamplingConfig
from vincie_mcore.data.video import write_synthetic_corpus
from vincie_mcore.data.world import WorldConfig, demo_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True, help="folder of videos (written first with --synthetic)")
    p.add_argument("--out", required=True, help="session store root (zarr v3)")
    p.add_argument("--sampling", choices=("equal", "fixed", "mixed"), default="mixed")
    p.add_argument("--interval-s", type=float, default=1.0, help="equal-interval sampling period in seconds")
    p.add_argument("--n-frames", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"),
                   help="fixed-frame sampling: frames per session, drawn in [MIN, MAX]")
    p.add_argument("--p-equal", type=float, default=0.5, help="mixed sampling: probability of equal-interval")
    p.add_argument("--min-change", type=float, default=0.0,
                   help="drop a sampled frame whose largest 8x8-patch mean |change| from the last kept frame "
                        "is <= this (0-255 scale); 0 keeps every frame")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode-timeout-s", type=float, default=DECODE_TIMEOUT_S,
                   help="seconds one video may take (a worker past it is killed, the video recorded as failed); 0: no limit")
    p.add_argument("--decode-max-mb", type=int, default=DECODE_MAX_MB,
                   help="MiB a worker's address space may grow by while making one video (RLIMIT_AS); 0: no limit")
    p.add_argument("--retry-failed", action="store_true", help="retry videos listed in failures.jsonl")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="first write N synthetic videos")
    p.add_argument("--world", default="demo",
                   help="synthetic world: 'demo' (24 px, 3x3 grid, 1-3 objects), 'default', or a JSON object of WorldConfig fields")
    p.add_argument("--codec", choices=("vp9", "mjpeg"), default="vp9", help="synthetic video codec")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def world_from_arg(s: str) -> WorldConfig:
    if s == "demo":
        return demo_config()
    if s == "default":
        return WorldConfig()
    try:
        return WorldConfig(**json.loads(s))
    except json.JSONDecodeError:
        raise SystemExit(f"--world: expected 'demo', 'default' or a JSON object, got {s!r}") from None


def main(argv=None) -> dict:
    a = parse_args(argv)
    try:
        sampling = SamplingConfig(strategy=a.sampling, interval_s=a.interval_s, n_frames=tuple(a.n_frames),
                                  p_equal=a.p_equal, min_change=a.min_change)
        if a.synthetic:
            cfg = world_from_arg(a.world)
            t0 = time.perf_counter()
            write_synthetic_corpus(a.videos, a.synthetic, cfg, seed=a.seed, workers=a.workers, codec=a.codec,
                                   progress=not a.quiet)
            print(f"videos: {a.synthetic} synthetic videos in {time.perf_counter() - t0:.1f}s -> {a.videos}")
        summary = build_sessions(a.videos, a.out, sampling=sampling, workers=a.workers, shard_size=a.shard_size,
                                 seed=a.seed, retry_failed=a.retry_failed, progress=not a.quiet,
                                 decode_timeout_s=a.decode_timeout_s, decode_max_mb=a.decode_max_mb)
        if a.quiet:
            print(format_summary(summary))
        return summary
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
