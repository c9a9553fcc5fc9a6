"""Real videos -> session store: inputs -> probe -> shots -> sampling -> decode -> filters ->
quality -> annotate -> segment -> store (docs/real_videos.md).

One video gives one session per shot that survives the filters, with id
``<video id>/shot_NNNN`` (with ``sampling.windows``, a long shot's later windows ``..._wWWW``; with
``shots.scene_max_shots`` > 1, a multi-shot scene's ``<video id>/shot_NNNN_to_MMMM``, shots N to M); all of a video's sessions go to one shard together, so a rerun
after a crash finds a video either whole or absent and skips it only when whole. A video
that cannot be used (empty, no video stream, unsupported codec, corrupt or truncated, past
the time or memory limit, an annotator or segmenter error) is one line in the store's
``failures.jsonl``, as is one whose every shot was filtered out (reason ``filtered: ...``)
and an input row that was never opened (``inputs: ...``). Per-video filter counts go to
``filter_counts.jsonl``; ``read_stats`` adds them up. The per-video work runs in
``build.run_videos``'s workers under the same limits as the synthetic build.
"""
from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .annotate import Annotator, notes_of
from .build import encode_png, run_videos
from .filters import COUNTS, FilterConfig, black_borders, check_video, filter_frames, short_shot
from .inputs import InputList, InputsConfig, VideoInput
from .quality import QualityConfig, check_models, check_session
from .sampling import SamplingConfig, sample_shot_windows
from .segment import Segmenter, check_masks
from .shots import Shot, ShotConfig, check_scene_model, scan_video, scenes
from .store import RawSession, SessionWriter, read_failures
from .video import DecodeConfig, fit_frame, probe_stream, read_at_times

SHOT_SEP = "/shot_"
SCENE_SEP = "_to_"        # a multi-shot scene (shots.scene_max_shots): <video>/shot_NNNN_to_MMMM
WINDOW_SEP = "_w"         # a long shot's later windows (sampling.windows): <video>/shot_NNNN_wWWW


@dataclass
class RealBuildConfig:
    """Everything that decides a real-video build (the ``build:`` section of configs/data/real.yaml)."""
    inputs: InputsConfig = field(default_factory=InputsConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    shots: ShotConfig = field(default_factory=ShotConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(interval_s=3.0))   # paper: e.g. 3 s
    filters: FilterConfig = field(default_factory=FilterConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)    # learned filters (data/quality.py); off by default
    seed: int = 0                     # a video's sessions depend only on (seed, video id)
    workers: int = 1                  # processes making videos
    shard_size: int = 256             # sessions per store shard
    timeout_s: float = 600.0          # seconds one video may take in a worker, and in an in-process segmenter (0: no limit)
    max_mb: int = 4096                # MiB a worker's address space may grow by for one video (0: no limit)

    def __post_init__(self):
        if self.decode.backend == "dali" and self.shots.detector == "none":
            raise ValueError("build.decode.backend: dali takes frame indices from the shot scan; "
                             "set build.shots.detector (content or adaptive), or use backend pyav")
        if self.sampling.min_change:
            raise ValueError("build.sampling.min_change: not used for real videos; set build.filters.duplicate_max_change")
        for k in ("workers", "shard_size"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"build.{k}: must be an int >= 1, got {getattr(self, k)!r}")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s >= 0):
            raise ValueError(f"build.timeout_s: must be a number >= 0, got {self.timeout_s!r}")
        if not (isinstance(self.max_mb, int) and self.max_mb >= 0):
            raise ValueError(f"build.max_mb: must be an int >= 0, got {self.max_mb!r}")

    def recipe(self) -> dict:
        """What a stored session depends on (a resumed store must have been made the same way)."""
        d = dataclasses.asdict(self)
        for k in ("workers", "shard_size", "timeout_s", "max_mb", "inputs"):
            d.pop(k)
        d["decode"].pop("threads")
        d["decode"].pop("seek_gap_s")
        for group, key, off in (("sampling", "windows", False), ("filters", "border_max_luma", 0.0)):
            if d[group][key] == off:         # added later: recorded only when on, so older stores still resume
                d[group].pop(key)
        sh = d["shots"]
        if sh["scene_max_shots"] == 1 or sh["scene_features"] == "colour":    # added later: recorded only when used
            for k in ("scene_features", "scene_clip_path", "scene_fps"):
                sh.pop(k)
        # later still: only the model folder in use (colour has neither, and popped scene_clip_path above)
        sh.pop("scene_clip_path" if sh.get("scene_features") == "dino" else "scene_dino_path")
        sh.pop("scene_device")                                               # where the model runs changes no session
        if sh["scene_max_shots"] == 1:
            del sh["scene_max_shots"], sh["scene_min_similarity"]
        q = {k: {f: v for f, v in sec.items() if f != "device"} for k, sec in d.pop("quality").items() if sec}
        if q:                                # the same (where the models run does not change a session)
            d["quality"] = q
        return d


@dataclass
class VideoSessions:
    """One video's outcome in a worker: its sessions and what the filters dropped."""
    sessions: list
    counts: dict
    filtered: str | None = None       # why no session came out, when none did


def video_rng(seed: int, video_id: str, shot: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(video_id.encode()), shot])


@contextmanager
def _stage(timings: dict | None, name: str):
    """Add this block's seconds to ``timings[name]`` (the throughput benchmark's per-stage split)."""
    if timings is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def make_video_sessions(video_id: str, inp: VideoInput, cfg: RealBuildConfig, annotator: Annotator,
                        segmenter: Segmenter, timings: dict | None = None) -> VideoSessions:
    """One video -> its sessions, one per usable shot. Raises (one line) when the video cannot be used.
    ``timings``: seconds per stage are added to it (probe, shots, decode, filters, annotate, segment, encode)."""
    counts: Counter = Counter()
    with _stage(timings, "probe"):
        info = probe_stream(inp.path)
    bad = check_video(info.duration_s, info.height, info.width, cfg.filters)
    if bad:
        counts[bad[0]] += 1
        return VideoSessions([], dict(counts), bad[1])
    with _stage(timings, "shots"):
        scan = scan_video(inp.path, cfg.shots, info)
    sessions = []
    for scene in scenes(scan, cfg.shots):                 # one shot each unless shots.scene_max_shots > 1
        shot, last = scene[0], scene[-1]
        name = f"{video_id}{SHOT_SEP}{shot.index:04d}"
        if len(scene) > 1:                                # the scene's span, cuts inside, as one clip
            shot = Shot(shot.index, shot.start_s, last.end_s, sum(s.num_frames for s in scene))
            name += f"{SCENE_SEP}{last.index:04d}"
        if short_shot(shot.start_s, shot.end_s, cfg.filters):
            counts["short_shot"] += 1
            continue
        ft = None
        if scan.times is not None:
            ft = scan.times[(scan.times >= shot.start_s) & (scan.times <= shot.end_s)]
        windows = sample_shot_windows(shot.start_s, shot.end_s, cfg.sampling,
                                      video_rng(cfg.seed, video_id, shot.index), ft)
        for w, (times, strategy) in enumerate(windows):   # one, or a long shot's windows (sampling.windows)
            sid = name + (f"{WINDOW_SEP}{w:03d}" if w else "")
            session = _window_session(video_id, sid, w, shot, times, strategy, inp, info, scan, cfg, annotator,
                                      segmenter, counts, timings)
            if session is not None:
                if len(scene) > 1:
                    session.meta["scene_shots"] = [scene[0].index, last.index]
                    counts["multi_shot_scene"] += 1
                sessions.append(session)
    filtered = None
    if not sessions:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or f"{len(scan.shots)} shot(s), none sampled"
        filtered = f"no shot left ({shown})"
    return VideoSessions(sessions, dict(counts), filtered)


def _window_session(video_id, sid, window, shot, times, strategy, inp, info, scan, cfg, annotator, segmenter,
                    counts, timings) -> RawSession | None:
    """One shot's (or shot window's) sampled times -> its session, or None when too few frames survive."""
    if len(times) < 2:
        counts["too_few_frames"] += 1
        return None
    with _stage(timings, "decode"):
        if cfg.decode.backend == "dali":                     # frame indices from the scan's times
            from .dali_video import read_at_times_dali
            native, got = read_at_times_dali(inp.path, times, scan.times, info.rotation, cfg.decode.dali_device)
        else:
            native, got = read_at_times(inp.path, times, cfg.decode)
    with _stage(timings, "filters"):
        keep = filter_frames(native, cfg.filters, counts)
    if keep is None:
        return None
    border = (0, 0, 0, 0)
    if cfg.filters.border_max_luma:
        with _stage(timings, "filters"):
            border = black_borders([native[k] for k in keep], cfg.filters.border_max_luma)
        if any(border):
            counts["black_border"] += 1
    top, bottom, left, right = border
    with _stage(timings, "decode"):
        frames = np.stack([fit_frame(native[k][top:native[k].shape[0] - bottom, left:native[k].shape[1] - right],
                                     cfg.decode.size, cfg.decode.aspect, cfg.decode.pad_value)
                           for k in keep])                                          # [K, H, W, 3]
    got = [got[k] for k in keep]
    quality = {}
    if cfg.quality.aesthetic is not None or cfg.quality.logo is not None:
        with _stage(timings, "quality"):                 # before the annotator: a dropped session costs no VLM call
            drop, quality = check_session(frames, cfg.quality)
        if drop:
            counts[drop] += 1
            return None
    idx = ([int(np.searchsorted(scan.times, t - 1e-6)) for t in got] if scan.times is not None
           else [int(round((t - info.start_s) * info.fps)) for t in got])          # decode order (estimate w/o scan)
    meta = {"path": str(inp.path), "video_id": sid, "source_video_id": video_id, "fps": info.fps,
            "num_frames": len(scan.times) if scan.times is not None else int(round(info.duration_s * info.fps)),
            "caption": inp.caption, "frame_times": [float(t) for t in got], "shot": shot.index}
    with _stage(timings, "annotate"):
        trans = annotator.annotate(frames, idx, meta)
    if len(trans) != len(idx) - 1:
        raise ValueError(f"annotator {annotator.name} gave {len(trans)} transitions for {len(idx)} frames")
    with _stage(timings, "segment"):
        masks = segmenter.segment(frames, idx, trans, meta)
    check_masks(segmenter.name, masks, len(idx), frames.shape[1:3])
    with _stage(timings, "encode"):
        pngs = ([encode_png(f) for f in frames], [encode_png(m.astype(np.uint8)) for m, _ in masks],
                [encode_png(m.astype(np.uint8)) for _, m in masks])
    return RawSession(
        video_id=sid, frames=pngs[0], roe_src=pngs[1], roe_tgt=pngs[2],
        texts=[t.text for t in trans], cameras=[t.camera for t in trans], notes=notes_of(trans),
        meta={"video_path": str(inp.path), "source_video_id": video_id, "shot": shot.index,
              "shot_span_s": [shot.start_s, shot.end_s], "frame_times": [float(t) for t in got],
              "frame_indices": idx, "sampling": strategy, "annotator": annotator.name,
              "segmenter": segmenter.name, "fps": info.fps, "rotation": info.rotation,
              "source_size": [info.height, info.width], "caption": inp.caption, "window": window,
              "border_cropped": list(border), **quality,
              "height": int(frames.shape[1]), "width": int(frames.shape[2])},
        states=annotator.states(idx, meta), captions=annotator.captions(trans, idx, meta))


# ----------------------------------------------------------------------------- the build
def read_stats(store_root) -> dict:
    """Filter counts summed over the store's videos (the last line of a video wins on reruns)."""
    p = Path(store_root) / "filter_counts.jsonl"
    last = {}
    if p.exists():
        for line in p.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                last[d["video_id"]] = d["counts"]
    total = Counter({k: 0 for k in COUNTS})
    for c in last.values():
        total.update(c)
    return dict(total)


def source_of(session_id: str) -> str:
    return session_id.rsplit(SHOT_SEP, 1)[0]


def build_real_sessions(inputs: InputList, store_root, cfg: RealBuildConfig, annotator: Annotator,
                        segmenter: Segmenter, retry_failed: bool = False, progress: bool = True) -> dict:
    """Build (or resume) a session store from real videos. Returns {"videos", "written_videos",
    "sessions", "skipped", "failed", "filtered", "inputs_skipped", "filters", "seconds", "store"}:
    counts of this run except ``filters`` (the whole store's, ``read_stats``)."""
    t0 = time.perf_counter()
    root = Path(store_root)
    check_models(cfg.quality)                                 # a wrong model folder: one line, before any video
    check_scene_model(cfg.shots)
    build = {"real": cfg.recipe(), "annotator": annotator.name, "segmenter": segmenter.name}
    written_videos = sessions_n = failed = filtered = 0
    with SessionWriter(root, cfg.shard_size, build=build) as w:
        failures = read_failures(root)
        for label, reason in inputs.skipped:                  # never opened; recorded once
            if failures.get(f"inputs:{label}") is None:
                w.fail(f"inputs:{label}", f"inputs: {reason}")
        done = {source_of(v) for v in w.done_video_ids()} | (set() if retry_failed else set(failures))
        todo = [(v.video_id, v) for v in inputs.videos if v.video_id not in done]
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="videos", unit="vid", disable=not progress)
        kwargs = dict(cfg=cfg, annotator=annotator, segmenter=segmenter)
        results = run_videos(todo, make_video_sessions, kwargs, cfg.workers, cfg.timeout_s or None, cfg.max_mb or None)
        try:
            with open(root / "filter_counts.jsonl", "a") as fc:
                for video_id, out, reason in results:
                    if out is None:
                        w.fail(video_id, reason)
                        failed += 1
                    else:
                        fc.write(json.dumps({"video_id": video_id, "counts": out.counts}) + "\n")
                        fc.flush()
                        if out.filtered is not None:
                            w.fail(video_id, f"filtered: {out.filtered}")
                            filtered += 1
                        elif w.add_group(out.sessions):
                            written_videos += 1
                            sessions_n += len(out.sessions)
                        else:
                            failed += 1
                    bar.update()
        finally:
            bar.close()
            if hasattr(results, "close"):
                results.close()
    summary = {"videos": len(inputs.videos), "written_videos": written_videos, "sessions": sessions_n,
               "skipped": len(inputs.videos) - len(todo), "failed": failed, "filtered": filtered,
               "inputs_skipped": len(inputs.skipped), "filters": read_stats(root),
               "seconds": round(time.perf_counter() - t0, 3), "store": str(root)}
    if progress:
        print(format_real_summary(summary))
    return summary


def format_real_summary(s: dict) -> str:
    drops = ", ".join(f"{k} {v}" for k, v in s["filters"].items() if v) or "none"
    return (f"sessions: {s['sessions']} written from {s['written_videos']} videos, {s['skipped']} skipped, "
            f"{s['failed']} failed, {s['filtered']} filtered out of {s['videos']} videos "
            f"({s['inputs_skipped']} input rows refused) in {s['seconds']:.1f}s -> {s['store']}; filters: {drops}")
