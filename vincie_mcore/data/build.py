"""Videos -> sessions: sample frames, annotate, segment, encode, store.

``build_sessions`` walks a folder of videos; each video either becomes one
session or one line in ``failures.jsonl`` (corrupt or truncated file, a
sampled frame that does not decode, a malformed annotation, ...), and the rest
go on. Re-running skips videos already stored or already failed. Workers
(processes) do the per-video work; the main process alone writes the store.
A video's session depends only on (seed, video id), never on ``workers``.
"""
from __future__ import annotations

import dataclasses

import io
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .annotate import Annotator, GroundTruthAnnotator
from .sampling import SamplingConfig, drop_static, sample_frames
from .segment import GroundTruthSegmenter, Segmenter
from .store import RawSession, SessionWriter, read_failures
from .video import VIDEO_EXTS, VideoError, probe_video, read_video


def encode_png(img: np.ndarray) -> bytes:
    """Lossless PNG of uint8 [H, W, 3] (RGB) or [H, W] (grayscale)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def list_videos(video_dir) -> list[tuple[str, Path]]:
    """(video id, path) for every video under ``video_dir``; the id is the relative path without suffix."""
    root = Path(video_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no video folder {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and ".tmp." not in p.name)
    return [(p.relative_to(root).with_suffix("").as_posix(), p) for p in paths]


def video_rng(seed: int, video_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(video_id.encode())])


def make_session(video_id: str, path, sampling: SamplingConfig, annotator: Annotator, segmenter: Segmenter,
                 seed: int = 0) -> RawSession:
    """One video -> one session. Raises (one-line message) when the video cannot be used."""
    info = probe_video(path)
    idx, strategy = sample_frames(info.num_frames, info.fps, sampling, video_rng(seed, video_id))
    if len(idx) < 2:
        raise VideoError(f"video too short: sampling gave {len(idx)} frame(s) of {info.num_frames}")
    frames = read_video(path, idx)                                      # [K, H, W, 3]
    if sampling.min_change > 0:
        keep = drop_static(frames, sampling.min_change)
        if len(keep) < 2:
            raise VideoError(f"static video: no sampled frame changed by more than min_change={sampling.min_change}")
        idx, frames = [idx[k] for k in keep], frames[keep]
    meta = {"path": str(path), "video_id": video_id, "fps": info.fps, "num_frames": info.num_frames}
    trans = annotator.annotate(frames, idx, meta)
    if len(trans) != len(idx) - 1:
        raise ValueError(f"annotator {annotator.name} gave {len(trans)} transitions for {len(idx)} frames")
    masks = segmenter.segment(frames, idx, trans, meta)
    if len(masks) != len(idx) - 1:
        raise ValueError(f"segmenter {segmenter.name} gave {len(masks)} mask pairs for {len(idx)} frames")
    for src, tgt in masks:
        if src.shape != frames.shape[1:3] or tgt.shape != frames.shape[1:3]:
            raise ValueError(f"segmenter {segmenter.name} gave masks of {src.shape}/{tgt.shape} for frames of {frames.shape[1:3]}")
    return RawSession(
        video_id=video_id,
        frames=[encode_png(f) for f in frames],
        roe_src=[encode_png(m.astype(np.uint8)) for m, _ in masks],
        roe_tgt=[encode_png(m.astype(np.uint8)) for _, m in masks],
        texts=[t.text for t in trans], cameras=[t.camera for t in trans],
        meta={"video_path": str(path), "frame_indices": [int(i) for i in idx], "sampling": strategy,
              "annotator": annotator.name, "segmenter": segmenter.name, "fps": info.fps,
              "height": int(frames.shape[1]), "width": int(frames.shape[2])},
        states=annotator.states(idx, meta))


# The per-process job context, set once per worker (fork) instead of pickled per video.
_CTX: dict = {}


def _job(item):
    video_id, path = item
    try:
        return video_id, make_session(video_id, path, **_CTX), None
    except Exception as e:  # noqa: BLE001 - every failure becomes a manifest line, the build goes on
        msg = " ".join(str(e).split()) or type(e).__name__
        return video_id, None, msg if isinstance(e, (VideoError, ValueError)) else f"{type(e).__name__}: {msg}"


def _init(ctx):
    _CTX.clear()
    _CTX.update(ctx)


def build_sessions(video_dir, store_root, sampling: str | SamplingConfig = "mixed", workers: int = 1,
                   shard_size: int = 256, seed: int = 0, annotator: Annotator | None = None,
                   segmenter: Segmenter | None = None, retry_failed: bool = False, progress: bool = True) -> dict:
    """Build (or resume) a session store from a folder of videos.

    Returns {"written", "skipped", "failed", "total", "seconds", "store"}:
    sessions written now, videos skipped as already done (stored, or failed
    before unless ``retry_failed``), videos that failed now.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cfg = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(strategy=sampling)
    ctx = dict(sampling=cfg, annotator=annotator or GroundTruthAnnotator(),
               segmenter=segmenter or GroundTruthSegmenter(), seed=seed)
    t0 = time.perf_counter()
    videos = list_videos(video_dir)
    written = failed = 0
    build = {"sampling": dataclasses.asdict(cfg), "seed": seed, "annotator": ctx["annotator"].name,
             "segmenter": ctx["segmenter"].name}
    with SessionWriter(store_root, shard_size, build=build) as w:
        done = w.done_video_ids() | (set() if retry_failed else set(read_failures(store_root)))
        todo = [(v, p) for v, p in videos if v not in done]
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="sessions", unit="vid", disable=not progress)
        if workers == 1 or len(todo) < 2:
            _init(ctx)
            results = map(_job, todo)
            pool = None
        else:
            import multiprocessing as mp
            pool = mp.get_context("fork").Pool(workers, initializer=_init, initargs=(ctx,))
            results = pool.imap(_job, todo, chunksize=max(1, min(32, len(todo) // (4 * workers))))
        try:
            for video_id, session, reason in results:
                if session is not None:
                    w.add(session)
                    written += 1
                else:
                    w.fail(video_id, reason)
                    failed += 1
                bar.update()
        except BaseException:
            if pool is not None:
                pool.terminate()
            raise
        finally:
            bar.close()
            if pool is not None:
                pool.close()
                pool.join()
    summary = {"written": written, "skipped": len(videos) - len(todo), "failed": failed, "total": len(videos),
               "seconds": round(time.perf_counter() - t0, 3), "store": str(store_root)}
    if progress:
        print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    return (f"sessions: {s['written']} written, {s['skipped']} skipped, {s['failed']} failed "
            f"of {s['total']} videos in {s['seconds']:.1f}s -> {s['store']}")
