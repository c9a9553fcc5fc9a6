"""Frame sampling (paper §3.1, Fig. 8): which frames of a video form a session.

* equal-interval: a frame every ``interval_s`` seconds (at the video's fps),
  so a session follows the video's own pace (subtle, object-level changes);
* fixed-frame: ``n`` frames (2 <= n <= 6) spread uniformly over the whole
  video whatever its length (large, scene-level changes);
* mixed: equal-interval with probability ``p_equal``, else fixed-frame.

Both plan from the container's frame count; frames that then fail to decode
are the reader's error to raise ("missing frame").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("equal", "fixed", "mixed")


@dataclass
class SamplingConfig:
    strategy: str = "mixed"        # "equal" | "fixed" | "mixed"
    interval_s: float = 1.0        # equal-interval: seconds between sampled frames (paper: e.g. 3 s on real video)
    start_s: float = 0.0           # equal-interval: time of the first frame
    n_frames: tuple = (2, 6)       # fixed-frame: [min, max] frames, drawn uniformly per video (min == max: fixed n)
    p_equal: float = 0.5           # mixed: probability of equal-interval
    max_frames: int = 20           # cap on frames per session (paper: 2-20 images)
    windows: bool = False          # real videos, equal-interval: a shot longer than max_frames intervals gives
                                   # consecutive windows of max_frames frames, a session each (not its first only)
    min_change: float = 0.0        # static filter: drop a sampled frame whose largest 8x8-patch mean |change|
                                   # from the last kept frame is <= this (0-255 scale); 0 keeps every frame

    def __post_init__(self):
        self.n_frames = tuple(self.n_frames)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"SamplingConfig.strategy: must be one of {STRATEGIES}, got {self.strategy!r}")
        if not self.interval_s > 0:
            raise ValueError(f"SamplingConfig.interval_s: must be > 0, got {self.interval_s}")
        if self.start_s < 0:
            raise ValueError(f"SamplingConfig.start_s: must be >= 0, got {self.start_s}")
        lo, hi = self.n_frames if len(self.n_frames) == 2 else (0, -1)
        if not (2 <= lo <= hi):
            raise ValueError(f"SamplingConfig.n_frames: must be [min, max] with 2 <= min <= max, got {self.n_frames!r}")
        if not 0.0 <= self.p_equal <= 1.0:
            raise ValueError(f"SamplingConfig.p_equal: must be in [0, 1], got {self.p_equal}")
        if self.max_frames < 2:
            raise ValueError(f"SamplingConfig.max_frames: must be >= 2, got {self.max_frames}")
        if not self.min_change >= 0:
            raise ValueError(f"SamplingConfig.min_change: must be >= 0, got {self.min_change}")


def equal_interval(num_frames: int, fps: float, interval_s: float, start_s: float = 0.0,
                   max_frames: int | None = None) -> list[int]:
    """Frame at times start_s, start_s + interval_s, ... while inside the video."""
    if num_frames < 1 or fps <= 0 or interval_s <= 0:
        raise ValueError(f"need num_frames >= 1, fps > 0, interval_s > 0; got {num_frames}, {fps}, {interval_s}")
    out, k = [], 0
    while True:
        i = int(np.floor((start_s + k * interval_s) * fps + 0.5))    # nearest frame, ties up
        if i >= num_frames or (max_frames is not None and len(out) >= max_frames):
            break
        if not out or i != out[-1]:        # an interval under one frame must not repeat a frame
            out.append(i)
        k += 1
    return out


def fixed_frame(num_frames: int, n: int) -> list[int]:
    """``n`` frames uniformly over [0, num_frames - 1], both ends included
    (``round(k * (num_frames - 1) / (n - 1))``, ties up); fewer if the video is shorter than n."""
    if num_frames < 1 or n < 1:
        raise ValueError(f"need num_frames >= 1 and n >= 1; got {num_frames}, {n}")
    n = min(n, num_frames)
    if n == 1:
        return [0]
    return [(2 * k * (num_frames - 1) + (n - 1)) // (2 * (n - 1)) for k in range(n)]


def sample_frames(num_frames: int, fps: float, cfg: SamplingConfig, rng: np.random.Generator) -> tuple[list[int], str]:
    """(frame indices, strategy used: "equal" or "fixed")."""
    strategy = cfg.strategy
    if strategy == "mixed":
        strategy = "equal" if rng.random() < cfg.p_equal else "fixed"
    if strategy == "equal":
        idx = equal_interval(num_frames, fps, cfg.interval_s, cfg.start_s, cfg.max_frames)
    else:
        n = int(rng.integers(cfg.n_frames[0], cfg.n_frames[1] + 1))
        idx = fixed_frame(num_frames, min(n, cfg.max_frames))
    return idx, strategy


def patch_change(a: np.ndarray, b: np.ndarray, patch: int = 8) -> float:
    """The largest mean absolute difference of any ``patch`` x ``patch`` pixel patch between two
    [H, W, C] frames, on their own scale (0-255 for uint8). Local, so a small edit in a big frame
    still counts, while codec noise, spread thin, stays low. Edge pixels that do not fill a
    patch are left out."""
    if a.shape != b.shape:
        raise ValueError(f"patch_change: frames of {a.shape} and {b.shape}")
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1)
    h, w = (d.shape[0] // patch) * patch, (d.shape[1] // patch) * patch
    if h == 0 or w == 0:
        return float(d.mean())
    return float(d[:h, :w].reshape(h // patch, patch, w // patch, patch).mean((1, 3)).max())


def drop_static(frames: np.ndarray, min_change: float) -> list[int]:
    """Positions of the frames to keep: the first, then each frame that changed by more than
    ``min_change`` (``patch_change``) from the last kept one. A transition where nothing
    happened teaches only copying; the paper's sessions are of changes."""
    keep = [0]
    for i in range(1, len(frames)):
        if min_change <= 0 or patch_change(frames[keep[-1]], frames[i]) > min_change:
            keep.append(i)
    return keep


# ----------------------------------------------------------------------------- real videos: by time, within a shot
# A real video is sampled shot by shot (data/shots.py) and in seconds, not frame indices: a
# variable-frame-rate file has no fixed index -> time map. The same two strategies as above.
def equal_interval_times(start_s: float, end_s: float, interval_s: float, offset_s: float = 0.0,
                         max_frames: int | None = None) -> list[float]:
    """start_s + offset_s + k * interval_s for k = 0, 1, ... while <= end_s."""
    if not interval_s > 0 or end_s < start_s:
        raise ValueError(f"need interval_s > 0 and end_s >= start_s; got {interval_s}, [{start_s}, {end_s}]")
    out, k = [], 0
    while max_frames is None or len(out) < max_frames:
        t = start_s + offset_s + k * interval_s
        if t > end_s + 1e-9:
            break
        out.append(t)
        k += 1
    return out


def fixed_frame_times(start_s: float, end_s: float, n: int) -> list[float]:
    """``n`` times uniformly over [start_s, end_s], both ends included."""
    if n < 2 or end_s < start_s:
        raise ValueError(f"need n >= 2 and end_s >= start_s; got {n}, [{start_s}, {end_s}]")
    return [start_s + k * (end_s - start_s) / (n - 1) for k in range(n)]


def snap_times(times, frame_times) -> list[float]:
    """Each time replaced by that of the frame on screen then (the last frame at or before it),
    repeats dropped: two wanted times inside one frame give one frame."""
    ft = np.asarray(frame_times)
    out = []
    for t in times:
        s = float(ft[max(0, int(np.searchsorted(ft, t + 1e-6, side="right")) - 1)])
        if not out or s != out[-1]:
            out.append(s)
    return out


def sample_shot_times(start_s: float, end_s: float, cfg: SamplingConfig, rng: np.random.Generator,
                      frame_times=None) -> tuple[list[float], str]:
    """(times in seconds, strategy used) for one shot spanning [start_s, end_s] (its first and last
    frame times). ``frame_times`` (the shot's frames, when known) snaps them to real frames."""
    strategy = cfg.strategy
    if strategy == "mixed":
        strategy = "equal" if rng.random() < cfg.p_equal else "fixed"
    if strategy == "equal":
        times = equal_interval_times(start_s, end_s, cfg.interval_s, cfg.start_s, cfg.max_frames)
    else:
        n = int(rng.integers(cfg.n_frames[0], cfg.n_frames[1] + 1))
        times = fixed_frame_times(start_s, end_s, min(n, cfg.max_frames))
    if frame_times is not None and len(frame_times):
        times = snap_times(times, frame_times)
    return times, strategy


def sample_shot_windows(start_s: float, end_s: float, cfg: SamplingConfig, rng: np.random.Generator,
                        frame_times=None) -> list[tuple[list[float], str]]:
    """``sample_shot_times`` as a list of one; with ``cfg.windows`` under equal-interval, every consecutive
    window of up to ``max_frames`` times over the whole shot (the first is ``sample_shot_times``' own, a
    last window of fewer than 2 frames is dropped), so a long shot gives several sessions."""
    times, strategy = sample_shot_times(start_s, end_s, cfg, rng, frame_times)
    if not (cfg.windows and strategy == "equal"):
        return [(times, strategy)]
    every = equal_interval_times(start_s, end_s, cfg.interval_s, cfg.start_s)
    out = []
    for a in range(0, len(every), cfg.max_frames):
        window = every[a:a + cfg.max_frames]
        if frame_times is not None and len(frame_times):
            window = snap_times(window, frame_times)
        if len(window) >= 2 or a == 0:
            out.append((window, strategy))
    return out
