"""Throughput of the real-video session build, stage by stage (``vincie-bench-sessions``).

Runs ``data/real.make_video_sessions`` in this process over a folder of videos, or over clips it
writes itself. For each stage it adds up the seconds: probe, shot scan, decode (seek + fit), filters,
quality (the learned filters, when ``build.quality`` sets them), annotate, segment, PNG encode. Then it reports:
- videos/s and sessions/s;
- decode time per frame;
- each stage's share;
- the VLM's requests/s and tokens/s, when a VLM annotator is configured (``--config``);
- the segmenter's seconds per pair, when one is configured.

Without an annotator, the transitions get an empty text, and the annotate stage is reported as not
measured rather than as 0. The projection to a corpus (``project``) multiplies the measured CPU cost
per session, and takes GPU throughputs you give it (measured on your servers, or published) for the
VLM and the segmenter. It invents none.
"""
from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data.annotate import Annotator, Transition
from ..data.segment import EmptySegmenter

STAGES = ("probe", "shots", "decode", "filters", "quality", "annotate", "segment", "encode")


class _NoText(Annotator):
    """Benchmark scaffolding: no annotator configured, so the CPU stages are measured alone."""
    name = "none"

    def annotate(self, frames, frame_indices, video_meta):
        return [Transition("", "None") for _ in range(len(frame_indices) - 1)]


def write_clips(folder, n: int = 6, seconds: float = 8.0, size=(360, 640), fps: int = 24, cut_every_s: float = 2.0,
                seed: int = 0) -> list[Path]:
    """``n`` H.264 clips of moving rectangles over textured backgrounds, a new scene every ``cut_every_s``
    (what a real build meets: an inter-frame codec with keyframes far apart, and cuts)."""
    import av

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    paths = []
    for v in range(n):
        frames = np.empty((int(seconds * fps), h, w, 3), np.uint8)
        for t in range(len(frames)):
            scene = int(t / (cut_every_s * fps))
            r = np.random.default_rng([seed, v, scene])
            bg = np.kron(r.integers(0, 200, (h // 40 + 1, w // 40 + 1, 3)), np.ones((40, 40, 1)))[:h, :w]
            frames[t] = bg.astype(np.uint8)
            k = t % int(cut_every_s * fps)
            x, y = (20 + 6 * k) % (w - 80), (h // 3 + 3 * k) % (h - 80)
            frames[t, y:y + 60, x:x + 80] = r.integers(120, 256, 3)
        p = folder / f"clip_{v:03d}.mp4"
        with av.open(str(p), "w") as out:
            st = out.add_stream("libx264", rate=fps)
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.options = {"g": str(4 * fps), "crf": "23", "preset": "veryfast"}   # a keyframe every 4 s
            for f in frames:
                for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(pkt)
            for pkt in st.encode():
                out.mux(pkt)
        paths.append(p)
    return paths


def _check_frames(made, cfg) -> dict:
    """The same run's stored frames against an independent decode: every frame of the video decoded in
    order (``read_all_timed``), the one on screen at each stored time, fitted the same way. The seek
    path is exact (tests/data/test_real_videos.py), so the PNG round trip leaves max |diff| 0."""
    import io

    from PIL import Image

    from ..data.video import fit_frame, frame_at, read_all_timed

    n, worst = 0, 0
    for path, sessions in made:
        times, ref = read_all_timed(path)
        for s in sessions:
            for png, t in zip(s.frames, s.meta["frame_times"]):
                want = fit_frame(ref[frame_at(times, t)], cfg.decode.size, cfg.decode.aspect, cfg.decode.pad_value)
                got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                worst = max(worst, int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max()))
                n += 1
    return {"frames_compared": n, "max_abs_diff": worst}


def bench_sessions(videos=None, config: dict | None = None, clips: int = 6, store_size: int = 512) -> dict:
    """Measure the build over ``videos`` (a folder) or ``clips`` written here -> the JSON dict."""
    from ..data.inputs import from_directory
    from ..data.labelers import make_annotator, make_segmenter
    from ..config import build as build_section
    from ..data.real import RealBuildConfig, make_video_sessions

    config = dict(config or {})
    build = config.get("build") or {"decode": {"size": [store_size, store_size]}}
    cfg = build_section(RealBuildConfig, build, "build")
    annotator = make_annotator(config["annotator"]) if config.get("annotator") else _NoText()
    segmenter = make_segmenter(config["segmenter"]) if config.get("segmenter") else EmptySegmenter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(videos) if videos else Path(tmp)
        if not videos:
            write_clips(folder, clips)
        inputs = from_directory(folder, cfg.inputs)
        timings: dict = {}
        sessions = pairs = frames = failed = 0
        made = []
        t0 = time.perf_counter()
        for v in inputs.videos:
            try:
                out = make_video_sessions(v.video_id, v, cfg, annotator, segmenter, timings=timings)
            except Exception:                              # a bad video costs its time, as in a build
                failed += 1
                continue
            sessions += len(out.sessions)
            pairs += sum(s.num_frames - 1 for s in out.sessions)
            frames += sum(s.num_frames for s in out.sessions)
            made.append((v.path, out.sessions))
        wall = time.perf_counter() - t0
        check = _check_frames(made, cfg) if cfg.decode.backend == "pyav" else None
    total = sum(timings.values()) or 1.0
    measured_annotator = not isinstance(annotator, _NoText)
    res = {
        "tool": "bench_sessions", "videos": len(inputs.videos), "failed": failed, "sessions": sessions,
        "pairs": pairs, "frames": frames, "seconds": round(wall, 3),
        "videos_per_s": round(len(inputs.videos) / wall, 3), "sessions_per_s": round(sessions / wall, 3),
        "decode_ms_per_frame": round(1000 * timings.get("decode", 0.0) / max(frames, 1), 2),
        "shot_scan_s_per_video": round(timings.get("shots", 0.0) / max(len(inputs.videos), 1), 3),
        "stage_seconds": {k: round(timings.get(k, 0.0), 3) for k in STAGES},
        "stage_share": {k: round(timings.get(k, 0.0) / total, 4) for k in STAGES},
        "annotate": "measured" if measured_annotator else "not measured (no annotator configured)",
        "segment": segmenter.name,
        "cpu_s_per_session_without_models": round(
            sum(timings.get(k, 0.0) for k in STAGES if k not in ("quality", "annotate", "segment")) / max(sessions, 1), 4),
        "check": check,
        "config": {"store_size": list(cfg.decode.size), "detector": cfg.shots.detector,
                   "sampling": cfg.sampling.strategy, "interval_s": cfg.sampling.interval_s},
    }
    if measured_annotator and hasattr(annotator, "stats"):
        st = annotator.stats()
        t = timings.get("annotate", 0.0) or 1.0
        res["vlm"] = {**st, "requests_per_s": round(st["requests"] / t, 3),
                      "tokens_per_s": round((st["prompt_tokens"] + st["completion_tokens"]) / t, 1)}
    if hasattr(segmenter, "stats"):
        res["segmenter_stats"] = segmenter.stats()
        res["segment_s_per_pair"] = round(timings.get("segment", 0.0) / max(pairs, 1), 4)
    return res


def project(res: dict, sessions: float = 10e6, vlm_pairs_per_gpu_s: float | None = None,
            seg_pairs_per_gpu_s: float | None = None) -> dict:
    """What a corpus of ``sessions`` costs at the measured pairs per session: CPU core-hours from
    this run, GPU-hours from the throughputs given (None: not projected)."""
    pairs_per_session = res["pairs"] / max(res["sessions"], 1)
    pairs = sessions * pairs_per_session
    out = {"sessions": sessions, "pairs_per_session": round(pairs_per_session, 3), "pairs": round(pairs),
           "cpu_core_hours": round(sessions * res["cpu_s_per_session_without_models"] / 3600, 1)}
    out["vlm_gpu_hours"] = round(pairs / vlm_pairs_per_gpu_s / 3600, 1) if vlm_pairs_per_gpu_s else None
    out["segment_gpu_hours"] = round(pairs / seg_pairs_per_gpu_s / 3600, 1) if seg_pairs_per_gpu_s else None
    return out


def dumps(res: dict) -> str:
    return json.dumps(res)


# ----------------------------------------------------------------------------- editing datasets
def write_magicbrush_parquet(path, rows: list[dict], row_group_size: int = 64) -> None:
    """Rows in the column layout of osunlp/MagicBrush (images as ``{bytes, path}`` structs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("img_id", pa.string()), ("turn_index", pa.int32()), ("source_img", img),
                        ("mask_img", img), ("instruction", pa.string()), ("target_img", img)])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)


def _photo(rng, size: int) -> np.ndarray:
    """A picture that compresses like a photo's PNG (smooth gradients plus grain), not like noise or a flat fill."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x + rng.random() * 6), np.cos(5 * y + rng.random() * 6), np.sin(4 * (x + y))], -1)
    return np.clip(127 + 100 * base + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)


def bench_edits(sessions: int = 48, turns: int = 3, source_size: int = 512, store_size: int = 512,
                workers: int = 1) -> dict:
    """``vincie-build-sessions edits`` over a MagicBrush-layout parquet it writes: sessions/s and
    turns/s, beside a check of the same run (every session stored, frames equal to PIL's resize)."""
    import subprocess
    import sys

    from PIL import Image

    from ..data.build import encode_png
    from ..data.store import SessionStore

    rng = np.random.default_rng(0)
    rows, sources = [], {}
    for s in range(sessions):
        img = _photo(rng, source_size)
        sources[f"{s:06d}"] = img
        for t in range(turns):
            m = np.zeros(img.shape[:2], bool)
            y, x = rng.integers(0, source_size // 2, 2)
            m[y:y + source_size // 4, x:x + source_size // 4] = True
            out = img.copy()
            out[m] = rng.integers(0, 255, 3)
            rows.append({"img_id": f"{s:06d}", "turn_index": t + 1, "source_img": {"bytes": encode_png(img), "path": None},
                         "mask_img": {"bytes": encode_png(m.astype(np.uint8) * 255), "path": None},
                         "instruction": f"paint box {t + 1}", "target_img": {"bytes": encode_png(out), "path": None}})
            img = out
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train-00000-of-00001.parquet"
        write_magicbrush_parquet(data, rows)
        mb = data.stat().st_size / 2**20
        # The build in a process of its own, its memory read from its own /proc status: VmHWM covers only
        # the program after exec (a child's ru_maxrss also keeps the high-water mark of the address space it
        # was started from, here this process with the whole dataset in RAM). Growth: from after the imports.
        code = ("import json, sys; from vincie_mcore.data.edits import EditsConfig, build_edit_sessions; "
                "kb = lambda k: int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(k + ':'))); "
                "r0 = kb('VmRSS'); "
                "s = build_edit_sessions([sys.argv[1]], sys.argv[2], EditsConfig(size=(int(sys.argv[3]),) * 2, "
                "workers=int(sys.argv[4])), progress=False); "
                "s.update(growth_mb=round((kb('VmHWM') - r0) / 1024, 1), hwm_mb=round(kb('VmHWM') / 1024, 1)); "
                "print(json.dumps(s))")
        del rows
        r = subprocess.run([sys.executable, "-c", code, str(data), str(Path(tmp) / "store"), str(store_size), str(workers)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"bench_edits: the build failed: {r.stderr.strip().splitlines()[-1:]}")
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        wall = summary["seconds"]
        store = SessionStore(Path(tmp) / "store")
        first = store[0]
        src = sources[first.video_id.split("/")[-1]]
        ref = np.asarray(Image.fromarray(src).resize((store_size, store_size), Image.BICUBIC)) \
            if store_size != source_size else src
        got = np.asarray(Image.open(io.BytesIO(first.frames[0])))
        check = {"stored": len(store), "expected": sessions, "failed": summary["failed"],
                 "first_frame_equals_pil_resize": bool(np.array_equal(got, ref))}
    return {"tool": "bench_edits", "sessions": sessions, "turns": sessions * turns, "workers": workers,
            # the main build process (reader, writer): workers make one session at a time under their limits
            "peak_rss_mb_build_process": summary["hwm_mb"], "growth_mb_build_process": summary["growth_mb"],
            "source_size": source_size, "store_size": store_size, "parquet_mb": round(mb, 1),
            "seconds": round(wall, 3), "sessions_per_s": round(sessions / wall, 2),
            "turns_per_s": round(sessions * turns / wall, 2), "mb_per_s": round(mb / wall, 1),
            "mask_rules": summary["mask_rules"], "check": check}
