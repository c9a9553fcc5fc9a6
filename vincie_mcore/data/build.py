"""Videos -> sessions: sample frames, annotate, segment, encode, store.

``build_sessions`` walks a folder of videos; each video either becomes one
session or one line in ``failures.jsonl`` (corrupt or truncated file, a
sampled frame that does not decode, a malformed annotation, ...), and the rest
go on. Re-running skips videos already stored or already failed. Workers
(processes) do the per-video work; the main process alone writes the store.
A video's session depends only on (seed, video id), never on ``workers``.
Each video is made in a worker under a time and an address-space limit
(``decode_timeout_s``, ``decode_max_mb``): a file that makes the decoder spin
or allocate without end becomes a failure line too, and its worker is replaced.
An in-process segmenter's work on one video has the same time limit (``time_limit``), and so has a
video whose job (labelers) cannot be pickled to a worker: it is made in this process, never in a fork of it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import resource
import signal
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .annotate import Annotator, GroundTruthAnnotator, notes_of
from .sampling import SamplingConfig, drop_static, sample_frames
from .segment import DeferredSegmenter, GroundTruthSegmenter, Segmenter, check_masks
from .store import RawSession, SessionWriter, read_failures
from .video import VIDEO_EXTS, VideoError, probe_video, read_video
from ..signals import become_helper, helper_context

log = logging.getLogger(__name__)

# Per-video limits (build_sessions, --decode-timeout-s, --decode-max-mb): a clip takes well under a
# second to make; the limits only stop a file that makes the decoder spin or allocate without end.
DECODE_TIMEOUT_S = 120.0
DECODE_MAX_MB = 2048


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
    check_masks(segmenter.name, masks, len(idx), frames.shape[1:3])
    return RawSession(
        video_id=video_id,
        frames=[encode_png(f) for f in frames],
        roe_src=[encode_png(m.astype(np.uint8)) for m, _ in masks],
        roe_tgt=[encode_png(m.astype(np.uint8)) for _, m in masks],
        texts=[t.text for t in trans], cameras=[t.camera for t in trans], notes=notes_of(trans),
        meta={"video_path": str(path), "frame_indices": [int(i) for i in idx], "sampling": strategy,
              "annotator": annotator.name, "segmenter": segmenter.name, "fps": info.fps,
              "height": int(frames.shape[1]), "width": int(frames.shape[2])},
        states=annotator.states(idx, meta), captions=annotator.captions(trans, idx, meta))


# The per-process job context, set once per worker (at its start) instead of pickled per video:
# {"make": make(video_id, source, **kwargs) -> result, "kwargs": {...}}.
_CTX: dict = {}


class Deferred:
    """A video's result whose sessions still need the in-process segmenter: ``pending`` maps each
    session id to (frame indices, transitions, meta) (``DeferredSegmenter``)."""

    def __init__(self, result, pending: dict):
        self.result, self.pending = result, pending


def _error_line(e: Exception) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if isinstance(e, (VideoError, ValueError)) else f"{type(e).__name__}: {msg}"


def _job(item, max_mb=None):
    video_id, path = item
    seg = _CTX["kwargs"].get("segmenter")
    try:
        out = _CTX["make"](video_id, path, **_CTX["kwargs"])
        return video_id, (Deferred(out, seg.take()) if isinstance(seg, DeferredSegmenter) else out), None
    except MemoryError:
        # under the worker's address-space limit (numpy, or libav's ENOMEM: av.error.MemoryError)
        return video_id, None, (f"decode exceeded {max_mb} MiB" if max_mb else "out of memory (MemoryError)")
    except Exception as e:  # noqa: BLE001 - every failure becomes a manifest line, the build goes on
        return video_id, None, _error_line(e)
    finally:
        if isinstance(seg, DeferredSegmenter):
            seg.take()                          # a failed video's records go with it


def _init(ctx):
    _CTX.clear()
    _CTX.update(ctx)


# ----------------------------------------------------------------------------- limited workers
def _address_space() -> int | None:
    """This process's virtual size in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _worker_main(conn, ctx, max_mb, owner):
    """One worker: an address-space limit, then one video per message until None (or its pipe closes)."""
    become_helper(owner)                        # a build run as a Slurm job: scancel's SIGTERM is the builder's
    _init(ctx)
    if max_mb:
        # the limit is on growth: a fork of a big parent (torch imported) starts with GBs of mappings
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = (_address_space() or 0) + max_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        out = _job(item, max_mb)
        conn.send(out)
        if out[2] is not None and out[2].startswith("decode exceeded"):
            return                              # a failed allocation may leave libav's state half-freed: start afresh


# what a worker's fork server imports once, so that a worker starts without importing them
_WORKER_PRELOAD = ["numpy", "av", "vincie_mcore.data.build", "vincie_mcore.data.real"]


def _unpicklable(ctx) -> str | None:
    """Why the job context cannot be pickled to a worker, or None when it can."""
    import pickle

    try:
        pickle.dumps(ctx)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


class _Worker:
    def __init__(self, mpctx, ctx, max_mb):
        self.conn, child = mpctx.Pipe()
        self.proc = mpctx.Process(target=_worker_main, args=(child, ctx, max_mb, os.getpid()), daemon=True)
        self.proc.start()
        child.close()                             # so that a dead worker reads as EOF here
        self.task = self.deadline = None

    def stop(self, kill: bool = False):
        if self.conn.closed:
            return
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _death_reason(proc, max_mb) -> str:
    code = proc.exitcode
    how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return f"decode process died ({how}{f', memory limit {max_mb} MiB' if max_mb else ''})"


def _limited_map(todo, ctx, workers, timeout_s, max_mb):
    """Like ``map(_job, todo)`` in input order, each video in a worker process under the limits.

    A video past ``timeout_s`` seconds gets its worker killed (and replaced) and the
    reason "decode timed out after N s"; one whose worker dies gets the exit signal.
    """
    from multiprocessing.connection import wait

    # Workers fork from a fork server, never from this process: it runs threads (tqdm's monitor, a VLM
    # client's request pool, zarr's I/O loop) whose locks a forked child inherits in whatever state they
    # are. Forked workers of a test process hung on every video that way (12 of 12 timed out, under load),
    # and the streaming loader's, forked from the trainer, died of SIGSEGV in CI.
    mpctx = helper_context(_WORKER_PRELOAD)
    pool = [_Worker(mpctx, ctx, max_mb) for _ in range(min(workers, len(todo)))]
    queue = list(enumerate(todo))[::-1]        # popped from the end: input order
    done, next_out = {}, 0
    try:
        while next_out < len(todo):
            for i, w in enumerate(pool):
                if w.task is None and queue:
                    w.task = queue.pop()
                    w.deadline = time.monotonic() + timeout_s if timeout_s else None
                    w.conn.send(w.task[1])
            busy = [w for w in pool if w.task is not None]
            deadlines = [w.deadline for w in busy if w.deadline is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = wait([w.conn for w in busy], wait_s)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                k, (video_id, _) = w.task
                if w.conn in ready:
                    try:
                        done[k] = w.conn.recv()
                        w.task = None
                        if done[k][2] is None or not done[k][2].startswith("decode exceeded"):
                            continue
                        w.stop()                    # it retires after a failed allocation (_worker_main)
                    except Exception:  # noqa: BLE001 - EOF, or a message cut short by the worker's death
                        w.proc.join()
                        done[k] = (video_id, None, _death_reason(w.proc, max_mb))
                        w.stop(kill=True)
                elif w.deadline is not None and time.monotonic() >= w.deadline:
                    done[k] = (video_id, None, f"decode timed out after {timeout_s:g} s")
                    w.stop(kill=True)
                else:
                    continue
                w.task = None
                if queue:
                    pool[i] = _Worker(mpctx, ctx, max_mb)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)         # a video still running: no need to wait for it


def run_videos(todo, make, kwargs: dict, workers: int = 1, timeout_s: float | None = DECODE_TIMEOUT_S,
               max_mb: int | None = DECODE_MAX_MB):
    """``(video_id, make(video_id, source, **kwargs) or None, failure reason or None)`` for each
    ``(video_id, source)`` of ``todo``, in order; under the per-video limits (see
    ``build_sessions``) unless both are off and ``workers == 1``. Close the iterator to stop
    the workers. A job that does not pickle is made here instead, one video at a time, under the
    time limit only (``_in_process``): the build process is never forked.

    An ``in_process`` segmenter (``kwargs["segmenter"]``) stays here: the workers get a
    ``DeferredSegmenter``, and each result is segmented in this process as it arrives
    (``resolve_deferred``), while the workers decode the next videos."""
    ctx = {"make": make, "kwargs": kwargs}
    if workers == 1 and not timeout_s and not max_mb:
        _init(ctx)
        return map(_job, todo)
    seg = kwargs.get("segmenter")
    deferred = seg is not None and seg.in_process
    wctx = {"make": make, "kwargs": dict(kwargs, segmenter=DeferredSegmenter(seg.name))} if deferred else ctx
    why = _unpicklable(wctx)
    if why is not None:
        log.warning("the build's job does not pickle (%s): its videos are made in this process, one at a time, "
                    "under the time limit only; a labeler that pickles gets worker processes", why)
        return _in_process(todo, ctx, timeout_s)
    results = _limited_map(todo, wctx, workers, timeout_s, max_mb)
    return _resolved(results, seg, timeout_s) if deferred else results


def _in_process(todo, ctx, timeout_s):
    """``_job`` on each video here, in order: a job that cannot go to a worker (a labeler holding something
    that cannot leave this process) is not forked either (see ``_limited_map``). The time limit holds as for
    the in-process segmenter (``time_limit``); the memory limit, a worker's, does not."""
    _init(ctx)
    for item in todo:
        try:
            with time_limit(timeout_s, "decode"):
                out = _job(item)
        except SegmentTimeout as e:
            out = (item[0], None, str(e))
        yield out


class SegmentTimeout(BaseException):
    """Work done in this process (the in-process segmenter, or a video whose job cannot go to a worker) ran
    past the per-video limit (not an ``Exception``: a labeler's own ``except Exception`` must not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str = "segmentation"):
    """Raise ``SegmentTimeout`` ("<what> timed out after N s") in this block once ``seconds`` have passed
    (SIGALRM; the main thread only, elsewhere no limit). It lands at the next Python step: a GPU model
    returns to Python between its kernels, one long CPU op finishes first."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise SegmentTimeout(f"{what} timed out after {seconds:g} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _resolved(results, segmenter: Segmenter, timeout_s: float | None = None):
    """The workers' results, each deferred one segmented here under the same per-video limit."""
    try:
        for video_id, out, reason in results:
            if isinstance(out, Deferred):
                try:
                    with time_limit(timeout_s):
                        out = resolve_deferred(out, segmenter)
                except SegmentTimeout as e:
                    out, reason = None, str(e)
                except Exception as e:  # noqa: BLE001 - as in a worker: the video fails in one line
                    out, reason = None, _error_line(e)
            yield video_id, out, reason
    finally:
        if hasattr(results, "close"):
            results.close()


def resolve_deferred(d: Deferred, segmenter: Segmenter):
    """Segment, in this process, each session a worker left pending: its frames back from the PNGs the
    worker wrote (lossless), the worker's frame indices, transitions and meta, the masks checked and
    written into the session as the worker would have."""
    sessions = d.result.sessions if hasattr(d.result, "sessions") else [d.result]
    for sess in sessions:
        idx, trans, meta = d.pending[sess.video_id]
        frames = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in sess.frames])
        masks = segmenter.segment(frames, idx, trans, meta)
        check_masks(segmenter.name, masks, len(idx), frames.shape[1:3])
        sess.roe_src = [encode_png(m.astype(np.uint8)) for m, _ in masks]
        sess.roe_tgt = [encode_png(m.astype(np.uint8)) for _, m in masks]
    return d.result


def build_sessions(video_dir, store_root, sampling: str | SamplingConfig = "mixed", workers: int = 1,
                   shard_size: int = 256, seed: int = 0, annotator: Annotator | None = None,
                   segmenter: Segmenter | None = None, retry_failed: bool = False, progress: bool = True,
                   decode_timeout_s: float | None = DECODE_TIMEOUT_S, decode_max_mb: int | None = DECODE_MAX_MB) -> dict:
    """Build (or resume) a session store from a folder of videos.

    Each video is made in a worker process whose address space may grow by at
    most ``decode_max_mb`` MiB (RLIMIT_AS) and which is killed after
    ``decode_timeout_s`` seconds on one video; such a video becomes a failure
    ("decode exceeded N MiB", "decode timed out after N s") and the build goes
    on. None (or 0) turns a limit off; with both off and ``workers=1`` the
    videos are made in this process.

    Returns {"written", "skipped", "failed", "total", "seconds", "store"}:
    sessions written now, videos skipped as already done (stored, or failed
    before unless ``retry_failed``), videos that failed now.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if (decode_timeout_s or 0) < 0 or (decode_max_mb or 0) < 0:
        raise ValueError(f"decode_timeout_s and decode_max_mb must be >= 0, got {decode_timeout_s}, {decode_max_mb}")
    cfg = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(strategy=sampling)
    kwargs = dict(sampling=cfg, annotator=annotator or GroundTruthAnnotator(),
                  segmenter=segmenter or GroundTruthSegmenter(), seed=seed)
    t0 = time.perf_counter()
    videos = list_videos(video_dir)
    written = failed = 0
    build = {"sampling": dataclasses.asdict(cfg), "seed": seed, "annotator": kwargs["annotator"].name,
             "segmenter": kwargs["segmenter"].name}
    with SessionWriter(store_root, shard_size, build=build) as w:
        done = w.done_video_ids() | (set() if retry_failed else set(read_failures(store_root)))
        todo = [(v, p) for v, p in videos if v not in done]
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="sessions", unit="vid", disable=not progress)
        results = run_videos(todo, make_session, kwargs, workers, decode_timeout_s, decode_max_mb)
        try:
            for video_id, session, reason in results:
                if session is None:
                    w.fail(video_id, reason)
                    failed += 1
                elif w.add(session) is False:           # the writer refused it and recorded why
                    failed += 1
                else:
                    written += 1
                bar.update()
        finally:
            bar.close()
            if hasattr(results, "close"):
                results.close()                   # stops the workers (the generator's finally)
    summary = {"written": written, "skipped": len(videos) - len(todo), "failed": failed, "total": len(videos),
               "seconds": round(time.perf_counter() - t0, 3), "store": str(store_root)}
    if progress:
        print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    return (f"sessions: {s['written']} written, {s['skipped']} skipped, {s['failed']} failed "
            f"of {s['total']} videos in {s['seconds']:.1f}s -> {s['store']}")
