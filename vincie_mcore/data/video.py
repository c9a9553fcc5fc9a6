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

from ..config import build
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
        t = SyntheticTruth(build(WorldConfig, d["world"], "world"), int(d["fps"]), int(d["num_frames"]),
                           [build(Scene, k, "keyframes") for k in d["keyframes"]], [int(k) for k in d["frame_keyframe"]],
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
    from ..signals import become_helper, helper_context
    mpctx = helper_context(["numpy", "av", "vincie_mcore.data.video"])
    with mpctx.Pool(workers, initializer=become_helper, initargs=(os.getpid(),)) as pool:
        return list(tqdm(pool.imap(_corpus_job, jobs, chunksize=16), **bar))


# ----------------------------------------------------------------------------- real videos: probe, seek, fit
# Real videos (docs/real_videos.md) are read by time, never by frame index: a variable-frame-rate
# file has no fixed index -> time map. "The frame at time t" is the frame on screen at t: the last
# one whose presentation time is <= t (the first frame for a t before it).
ASPECT_POLICIES = ("center_crop", "pad", "resize")
_EPS_S = 1e-6                      # timestamps are rationals turned into floats: compare with a little slack


@dataclass
class DecodeConfig:
    """How real videos are decoded and brought to the store's frame size (``build.decode``)."""
    size: tuple = (512, 512)       # (height, width) of every stored frame
    aspect: str = "center_crop"    # center_crop: scale to cover, cut the middle | pad: scale to fit, pad | resize: stretch
    pad_value: int = 0             # pad: the grey level (0-255) of the bars
    seek_gap_s: float = 2.0        # decode on (no seek) to a wanted frame at most this many seconds ahead
    threads: int = 1               # decoder threads per video (workers already decode videos in parallel)
    backend: str = "pyav"          # pyav: seek + decode on CPU | dali: DALI (NVDEC on the GPU; data/dali_video.py)
    dali_device: str = "gpu"       # backend dali: gpu (the process's LOCAL_RANK device) | cpu (VP9 only here)

    def __post_init__(self):
        self.size = tuple(self.size)
        if self.backend not in ("pyav", "dali"):
            raise ValueError(f"build.decode.backend: must be 'pyav' or 'dali', got {self.backend!r}")
        if self.dali_device not in ("gpu", "cpu"):
            raise ValueError(f"build.decode.dali_device: must be 'gpu' or 'cpu', got {self.dali_device!r}")
        if len(self.size) != 2 or not all(isinstance(v, int) and v >= 8 for v in self.size):
            raise ValueError(f"build.decode.size: must be [height, width], ints >= 8, got {self.size!r}")
        if self.aspect not in ASPECT_POLICIES:
            raise ValueError(f"build.decode.aspect: must be one of {ASPECT_POLICIES}, got {self.aspect!r}")
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"build.decode.pad_value: must be in [0, 255], got {self.pad_value}")
        if not self.seek_gap_s >= 0:
            raise ValueError(f"build.decode.seek_gap_s: must be >= 0, got {self.seek_gap_s}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"build.decode.threads: must be an int >= 1, got {self.threads!r}")


@dataclass(frozen=True)
class StreamInfo:
    """A real video's first video stream, as it will be shown (sizes after rotation)."""
    duration_s: float          # container duration (0.0 when the container does not say)
    start_s: float             # presentation time of the first frame
    fps: float                 # average rate (a variable-rate file has no single one)
    height: int                # display size: coded size turned by ``rotation``
    width: int
    rotation: int              # degrees counter-clockwise to turn a decoded frame upright (0, 90, 180, 270)
    codec: str


def _open_video_stream(c, name):
    if not c.streams.video:
        raise VideoError(f"no video stream in {name}")
    st = c.streams.video[0]
    if st.codec_context is None:        # the container names a codec this ffmpeg cannot decode
        raise VideoError(f"unsupported codec in {name}: no decoder for its video stream")
    return st


def _rotation(frame, stream) -> int:
    """Counter-clockwise degrees that make ``frame`` upright: the display matrix (frame side data,
    which ffmpeg fills from the container), else an old-style ``rotate`` tag (clockwise degrees)."""
    r = frame.rotation or 0
    if not r:
        tag = stream.metadata.get("rotate")
        try:
            r = -int(float(tag)) if tag else 0
        except ValueError:
            r = 0
    return int(round(r / 90.0)) * 90 % 360     # a skewed matrix is rounded to the nearest quarter turn


def upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """[H, W, C] turned ``rotation`` degrees counter-clockwise (np.rot90 turns counter-clockwise)."""
    return np.ascontiguousarray(np.rot90(img, k=(rotation // 90) % 4)) if rotation % 360 else img


def _frame_time(f, index: int, fps: float) -> float:
    # a frame without pts (some AVI files) is placed by its decode order
    if f.pts is not None and f.time_base is not None:
        return float(f.pts * f.time_base)
    return index / fps


def probe_stream(path) -> StreamInfo:
    """Container metadata plus the first decoded frame (rotation is side data of frames).

    Raises VideoError (one line): empty file, cannot open, no video stream, unsupported codec,
    no frame decodes.
    """
    p = Path(path)
    name = p.name
    if p.is_file() and p.stat().st_size == 0:
        raise VideoError(f"empty file {name}: zero bytes")
    with _open(path) as c:
        st = _open_video_stream(c, name)
        st.codec_context.thread_count = 1
        fps = float(st.average_rate or st.guessed_rate or 0) or 25.0      # only a fallback for pts-less frames
        try:
            f = next(c.decode(st), None)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - libav raises many types for bad data
            raise VideoError(f"corrupt video {name}: {type(e).__name__}: {_one_line(e)}") from None
        if f is None:
            raise VideoError(f"corrupt video {name}: no frame decodes")
        rot = _rotation(f, st)
        h, w = (f.height, f.width) if rot % 180 == 0 else (f.width, f.height)
        # the video stream's own duration when the container has it (an audio track may run longer)
        dur = float(st.duration * st.time_base) if st.duration else float(c.duration / av.time_base) if c.duration else 0.0
        return StreamInfo(dur, _frame_time(f, 0, fps), fps, h, w, rot, st.codec_context.name)


def _decode_error(name, e):
    return VideoError(f"corrupt video {name}: {type(e).__name__}: {_one_line(e)}")


def read_all_timed(path) -> tuple[np.ndarray, np.ndarray]:
    """Reference reader: decode every frame. (times [N] seconds, upright uint8 frames [N, H, W, 3]).

    The seek reader (``read_at_times``) must agree with ``frames[frame_at(times, t)]``; tests hold
    it to that."""
    name = Path(path).name
    with _open(path) as c:
        st = _open_video_stream(c, name)
        st.codec_context.thread_count = 1
        fps = float(st.average_rate or st.guessed_rate or 0) or 25.0
        times, frames = [], []
        try:
            for i, f in enumerate(c.decode(st)):
                times.append(_frame_time(f, i, fps))
                frames.append(upright(f.to_ndarray(format="rgb24"), _rotation(f, st)))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _decode_error(name, e) from None
    if not frames:
        raise VideoError(f"corrupt video {name}: no frame decodes")
    return np.asarray(times), np.stack(frames)


def frame_at(times, t: float) -> int:
    """Index of the frame on screen at ``t`` among frames with presentation ``times`` (increasing)."""
    return max(0, int(np.searchsorted(np.asarray(times), t + _EPS_S, side="right")) - 1)


def read_at_times(path, times, cfg: DecodeConfig | None = None) -> tuple[list, list]:
    """The frames on screen at ``times`` (seconds, any order), decoding only what they need.

    For each wanted time (in increasing order): seek to the keyframe at or before it and
    decode forward to it, or, when it lies at most ``cfg.seek_gap_s`` ahead of the frame
    last decoded, decode on without seeking. Returns (upright uint8 [H, W, 3] frames, their
    presentation times), in the order of ``times``, at the video's own size (``fit_frame``
    brings them to the store's).

    Raises VideoError (one line) for a file that does not open or decode, or a seek that
    finds no frame.
    """
    cfg = cfg or DecodeConfig()
    name = Path(path).name
    want = sorted(set(float(t) for t in times))
    got: dict[float, tuple] = {}
    with _open(path) as c:
        st = _open_video_stream(c, name)
        st.codec_context.thread_count = cfg.threads
        fps = float(st.average_rate or st.guessed_rate or 0) or 25.0
        tb = st.time_base
        it = None             # decoder iterator since the last seek
        prev = None           # (time, frame) last decoded frame at or before the current target
        ahead = None          # a decoded frame past the last target, kept for the next one
        count = 0

        def seek(t, back_s=0.0):
            nonlocal it, prev, ahead
            c.seek(max(0, int((t - back_s) / tb)), stream=st, backward=True, any_frame=False)
            it, prev, ahead = c.decode(st), None, None

        def pull():
            nonlocal count
            if ahead is not None:
                return ahead
            f = next(it, None)
            count += 1
            return None if f is None else (_frame_time(f, count - 1, fps), f)

        try:
            for t in want:
                if it is None or (prev is not None and t < prev[0] - _EPS_S) or \
                        (prev is not None and t - prev[0] > cfg.seek_gap_s) or (prev is None and ahead is None):
                    seek(t)
                    first, back = pull(), 0.0
                    # a seek may land after t (a container with a coarse index): back off until it does not,
                    # at worst to the start (or t lies before the first frame)
                    while first is not None and first[0] > t + _EPS_S and t - back > 0:
                        back = max(1.0, 4 * back)
                        seek(t, back)
                        first = pull()
                    ahead = first
                while True:
                    nxt = pull()
                    if nxt is None or nxt[0] > t + _EPS_S:
                        ahead = nxt
                        break
                    ahead, prev = None, nxt
                pick = prev if prev is not None else ahead          # t before the first frame: the first frame
                if pick is None:
                    raise VideoError(f"missing frame in {name}: nothing decodes at {t:.3f}s")
                got[t] = pick
        except VideoError:
            raise
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - libav raises many types for bad data
            raise _decode_error(name, e) from None
        out = {t: (upright(f.to_ndarray(format="rgb24"), _rotation(f, st)), ft) for t, (ft, f) in got.items()}
    return [out[float(t)][0] for t in times], [out[float(t)][1] for t in times]


def fit_frame(img: np.ndarray, size, aspect: str = "center_crop", pad_value: int = 0) -> np.ndarray:
    """uint8 [H, W, 3] -> [size[0], size[1], 3] under an aspect-ratio policy (``ASPECT_POLICIES``).

    center_crop scales so the frame covers the target and cuts the middle; pad scales so it fits and
    centres it on ``pad_value`` bars; resize stretches. Bicubic, antialiased when shrinking (PIL)."""
    from PIL import Image

    th, tw = size
    h, w = img.shape[:2]
    if (h, w) == (th, tw):
        return img
    if aspect == "resize":
        return np.asarray(Image.fromarray(img).resize((tw, th), Image.BICUBIC))
    if aspect == "center_crop":                 # crop in the source first: nothing cut away bleeds in
        s = min(h / th, w / tw)
        ch, cw = min(h, max(1, round(th * s))), min(w, max(1, round(tw * s)))
        y, x = (h - ch) // 2, (w - cw) // 2
        return np.asarray(Image.fromarray(np.ascontiguousarray(img[y:y + ch, x:x + cw])).resize((tw, th), Image.BICUBIC))
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
    if aspect != "pad":
        raise ValueError(f"aspect: must be one of {ASPECT_POLICIES}, got {aspect!r}")
    canvas = np.full((th, tw, 3), pad_value, np.uint8)
    y, x = (th - nh) // 2, (tw - nw) // 2
    canvas[y:y + nh, x:x + nw] = out
    return canvas
