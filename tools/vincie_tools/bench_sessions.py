"""Throughput of the real-video session build, stage by stage -> JSON.

    vincie-bench-sessions --out benchmarks/cpu/bench_sessions.json               # clips it writes, CPU stages
    vincie-bench-sessions --videos my_videos/ --config build.yaml \
        --vlm-pairs-per-gpu-s 4 --seg-pairs-per-gpu-s 20                          # your VLM server and models

Prints one JSON line: videos/s, sessions/s, decode ms per frame, seconds and share per stage, the
VLM's requests/s and tokens/s and the segmenter's seconds per pair when configured, and a projection
to --sessions (default 10M) from the measured CPU cost and the GPU throughputs given
(vincie_mcore/perf/bench_sessions.py; docs/real_videos.md, "Throughput").

    vincie-bench-sessions --edits 48 --workers 2      # `vincie-build-sessions edits` on a MagicBrush-layout parquet

With --edits N it writes N three-turn sessions of 512x512 PNGs in MagicBrush's parquet layout, builds them
into a store and prints sessions/s and turns/s beside a check of the same run (docs/edit_datasets.md).

    vincie-bench-sessions --quality --device cuda     # the learned filters (build.quality) per session

With --quality it times the aesthetic and logo filters at their published model sizes (random weights, no
hub) on sessions of 3 frames, beside a check of the scores by hand (vincie_mcore/perf/bench_quality.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vincie-bench-sessions", description=__doc__.splitlines()[0])
    ap.add_argument("--videos", default=None, help="folder of videos (default: write --clips clips here)")
    ap.add_argument("--clips", type=int, default=6, help="clips to write when --videos is not given (8 s, 640x360)")
    ap.add_argument("--config", default=None, help="YAML with build:, annotator:, segmenter: (as vincie-build-sessions)")
    ap.add_argument("--store-size", type=int, default=512, help="frame size without a build: section")
    ap.add_argument("--sessions", type=float, default=10e6, help="corpus size to project to")
    ap.add_argument("--vlm-pairs-per-gpu-s", type=float, default=None, help="your VLM server's pairs/s per GPU")
    ap.add_argument("--seg-pairs-per-gpu-s", type=float, default=None, help="GroundingDINO+SAM2 pairs/s per GPU")
    ap.add_argument("--edits", type=int, default=0, metavar="N",
                    help="benchmark the editing-dataset build on N sessions instead (3 turns, 512x512)")
    ap.add_argument("--workers", type=int, default=1, help="--edits: worker processes")
    ap.add_argument("--quality", action="store_true", help="time the learned filters (aesthetic, logo) instead")
    ap.add_argument("--device", default="cpu", help="--quality: where the models run (cpu, cuda)")
    ap.add_argument("--quality-sessions", type=int, default=2, help="--quality: sessions timed (after one warm-up)")
    ap.add_argument("--quality-scale", choices=("real", "tiny"), default="real",
                    help="--quality: the published model sizes, or toy ones (a dry run)")
    ap.add_argument("--out", default=None, help="write the JSON here as well")
    a = ap.parse_args(argv)
    from vincie_mcore.perf.bench_sessions import bench_edits, bench_sessions, project

    config = None
    if a.config:
        import yaml
        config = yaml.safe_load(open(a.config))
    try:
        if a.quality:
            from vincie_mcore.perf.bench_quality import bench_quality

            res = bench_quality(sessions=a.quality_sessions, size=a.store_size, device=a.device, scale=a.quality_scale)
        elif a.edits:
            res = bench_edits(a.edits, store_size=a.store_size, workers=a.workers)
        else:
            res = bench_sessions(a.videos, config, a.clips, a.store_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not (a.edits or a.quality):
        res["projection"] = project(res, a.sessions, a.vlm_pairs_per_gpu_s, a.seg_pairs_per_gpu_s)
    import platform
    import subprocess
    res["cpu"] = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
                      platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    res["cores"] = os.cpu_count()
    res["git_sha"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
