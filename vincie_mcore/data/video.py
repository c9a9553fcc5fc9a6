"""Video files: write (PyAV), probe and read them, plus the synthetic world's
ground-truth sidecar and a corpus writer.

Codec choice: NVIDIA DALI's CPU video decoder reads VP9, VP8 and MJPEG only.
PyAV's bundled ffmpeg has libvpx, and VP9 in lossless mode over planar RGB
(``gbrp``) round-trips our frames bit-exactly (through PyAV and DALI alike), so
that is the default; MJPEG at the top quality is the fallback (lossy, a few
levels of error per pixel).

Sidecar (``<video>.json``, written next to a synthetic video): the world
config, fps, frame count, keyframe scenes, per frame the keyframe index and
camera offset (together: every frame's exact scene), and the events (cut frame,
edit kind, text, camera label).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .world import Event, Scene, SyntheticVideo, WorldConfig, generate_video

VIDEO_EXTS = (".webm", ".mkv", ".avi", ".mp4", ".mov")
SIDECAR_FORMAT = "vincie-synthetic-video/1"


class VideoError(RuntimeError):
    """A video that cannot be used; the message is one line naming the problem."""


# ----------------------------------------------------------------------------- writing
def write_video(path, frames: np.ndarray, fps: int, codec: str = "vp9", pts=None) -> None:
    """Write uint8 [T, H, W, 3] RGB frames. ``codec``: "vp9" (lossless) or "mjpeg".

    ``pts`` (optional, increasing ints in frame units) gives each frame's
    timestamp, e.g. to make a variable-frame-rate file with gaps.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    if codec not in ("vp9", "mjpeg"):
        raise ValueError(f"codec must be 'vp9' or 'mjpeg', got {codec!r}")
    T, H, W, _ = frames.shape
    with av.open(str(path), "w") as out:
        if codec == "vp9":
            st = out.add_stream("libvpx-vp9", rate=fps)
            st.pix_fmt = "gbrp"                              # planar RGB: lossless end to end, no YUV rounding
            st.options = {"lossless": "1", "deadline": "realtime", "cpu-used": "8", "threads": "1"}
        else:
            st = out.add_stream("mjpeg", rate=fps)
            st.pix_fmt = "yuvj444p"
            st.options = {"qmin": "1", "qmax": "1", "q": "1"}
        st.width, st.height = W, H
        st.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = i if pts is None else int(pts[i])
            vf.time_base = Fraction(1, fps)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int    # from the container's duration (what sampling plans with); may exceed what decodes
    height: int
    width: int
    codec: str


def _open(path):
    try:
        return av.open(str(path))
    except Exception as e:  # noqa: BLE001 - any libav failure is "cannot open"
        raise VideoError(f"cannot open video {Path(path).name}: {type(e).__name__}: {_one_line(e)}") from None


def _one_line(e) -> str:
    return " ".join(str(e).split())[:200]


def probe_video(path) -> VideoInfo:
    """Container metadata only (no decoding)."""
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"no video stream in {Path(path).name}")
        st = c.streams.video[0]
        fps = float(st.average_rate or st.guessed_rate or 0)
        if fps <= 0:
            raise VideoError(f"unknown frame rate in {Path(path).name}")
        n = st.frames or (round(c.duration / av.time_base * fps) if c.duration else 0)
        return VideoInfo(fps, int(n), st.codec_context.height, st.codec_context.width, st.codec_context.name)


def read_video(path, indices=None) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB: all frames, or those at ``indices`` (decode order).

    Raises VideoError (one line) for a file that does not open or decode, one
    whose frames stop before the container's declared duration (truncated),
    or an index beyond the frames that decode (missing frame).
    """
    name = Path(path).name
    want = None if indices is None else [int(i) for i in indices]
    keep = None if want is None else set(want)
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"no video stream in {name}")
        st = c.streams.video[0]
        st.codec_context.thread_count = 1        # tiny frames: decoder threads only add contention
        frames, count, end = {}, 0, 0.0
        try:
            # decode everything (a truncated file shows only at its end); convert just the frames asked for
            for f in c.decode(st):
                if keep is None or count in keep:
                    frames[count] = f.to_ndarray(format="rgb24")
                count += 1
                if f.pts is not None:
                    dur = f.duration if f.duration else (1 / float(st.average_rate) / float(f.time_base))
                    end = max(end, float((f.pts + dur) * f.time_base))
        except MemoryError:
            raise                                # out of memory is not corrupt data (build.py's worker limit)
        except Exception as e:  # noqa: BLE001 - libav raises many types for bad data
            raise VideoError(f"corrupt video {name}: {type(e).__name__}: {_one_line(e)}") from None
        if not count:
            raise VideoError(f"corrupt video {name}: no frame decodes")
        declared = c.duration / av.time_base if c.duration else None
        fps = float(st.average_rate or 1)
        if declared is not None and end > 0 and end < declared - 0.5 / fps:
            raise VideoError(f"truncated video {name}: frames end at {end:.3f}s of a declared {declared:.3f}s")
    if want is None:
        return np.stack([frames[i] for i in range(count)])
    bad = [i for i in want if not 0 <= i < count]
    if bad:
        raise VideoError(f"missing frame in {name}: index {bad[0]} but only {count} frames decode")
    return np.stack([frames[i] for i in want])


# ----------------------------------------------------------------------------- ground-truth sidecar
@dataclass
class SyntheticTruth:
    """The exact scene of every frame of a synthetic video, and its events."""
    cfg: WorldConfig
    fps: int
    num_frames: int
    keyframes: list           # Scene per keyframe
    frame_keyframe: list      # int per frame
    frame_camera: list        # (cy, cx) per frame
    events: list              # Event per keyframe transition

    def state(self, frame: int) -> Scene:
        if not 0 <= frame < self.num_frames:
            raise IndexError(f"frame {frame} outside the {self.num_frames} frames of the ground truth")
        return replace(self.keyframes[self.frame_keyframe[frame]], camera=tuple(self.frame_camera[frame]))


def sidecar_path(video_path) -> Path:
    return Path(video_path).with_suffix(".json")


def truth_of(video: SyntheticVideo) -> SyntheticTruth:
    return SyntheticTruth(video.cfg, video.fps, len(video.frames), list(video.keyframes), list(video.frame_keyframe),
                          [tuple(s.camera) for s in video.states], list(video.events))


def write_sidecar(path, truth: SyntheticTruth) -> None:
    d = {"format": SIDECAR_FORMAT, "world": truth.cfg.to_dict(), "fps": truth.fps, "num_frames": truth.num_frames,
         "keyframes": [k.to_dict() for k in truth.keyframes], "frame_keyframe": list(truth.frame_keyframe),
         "frame_camera": [list(c) for c in truth.frame_camera], "events": [e.to_dict() for e in truth.events]}
    Path(path).write_text(json.dumps(d, separators=(",", ":")))


def load_sidecar(path) -> SyntheticTruth:
    """Parse and check a sidecar; ValueError (one line) if it is malformed."""
    name = Path(path).name
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"no ground-truth sidecar {name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed sidecar {name}: not JSON ({_one_line(e)})") from None
    try:
        if d.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, expected {SIDECAR_FORMAT!r}")
        t = SyntheticTruth(WorldConfig.from_dict(d["world"]), int(d["fps"]), int(d["num_frames"]),
                           [Scene.from_dict(k) for k in d["keyframes"]], [int(k) for k in d["frame_keyframe"]],
                           [tuple(int(v) for v in c) for c in d["frame_camera"]], [Event(**e) for e in d["events"]])
        if len(t.frame_keyframe) != t.num_frames or len(t.frame_camera) != t.num_frames:
            raise ValueError(f"per-frame lists have {len(t.frame_keyframe)}/{len(t.frame_camera)} entries for {t.num_frames} frames")
        if any(not 0 <= k < len(t.keyframes) for k in t.frame_keyframe):
            raise ValueError("frame_keyframe refers to a missing keyframe")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        msg = f"missing key {e}" if isinstance(e, KeyError) else _one_line(e)
        raise ValueError(f"malformed sidecar {name}: {msg}") from None
    return t


# ----------------------------------------------------------------------------- synthetic corpus
def write_synthetic_video(path, video: SyntheticVideo, codec: str = "vp9") -> None:
    write_video(path, video.frames, video.fps, codec)
    write_sidecar(sidecar_path(path), truth_of(video))


def _corpus_job(args):
    out_dir, i, cfg, seed, codec = args
    path = Path(out_dir) / f"vid_{i:06d}{'.webm' if codec == 'vp9' else '.avi'}"
    if not (path.exists() and sidecar_path(path).exists()):
        video = generate_video(np.random.default_rng([seed, i]), cfg)
        tmp = path.with_name(path.stem + ".tmp" + path.suffix)
        write_video(tmp, video.frames, video.fps, codec)
        write_sidecar(sidecar_path(path), truth_of(video))
        os.replace(tmp, path)                      # the video appears only once complete
    return str(path)


def write_synthetic_corpus(out_dir, n_videos: int, cfg: WorldConfig, seed: int = 0, workers: int = 1,
                           codec: str = "vp9", progress: bool = False) -> list[str]:
    """Write ``n_videos`` videos (+ sidecars) as ``vid_000000.webm`` ...; existing ones are kept.

    Video ``i`` depends only on (seed, i), never on ``workers``.
    """
    if n_videos < 0 or workers < 1:
        raise ValueError(f"n_videos must be >= 0 and workers >= 1, got {n_videos}, {workers}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_dir), i, cfg, seed, codec) for i in range(n_videos)]
    from tqdm import tqdm
    bar = dict(total=n_videos, desc="videos", disable=not progress, unit="vid")
    if workers == 1:
        return [_corpus_job(j) for j in tqdm(jobs, **bar)]
    import multiprocessing as mp
    with mp.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(_corpus_job, jobs, chunksize=16), **bar))
