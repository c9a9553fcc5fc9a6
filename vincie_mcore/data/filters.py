"""Filters for real videos: what is not worth a session, each threshold named, each drop counted.

Three levels, applied in this order by ``data/real.py``:

* video: shorter than ``min_duration_s``, or smaller than ``min_height`` x ``min_width`` (as
  displayed, after rotation) -> no session from it ("short_video", "low_resolution");
* shot: shorter than ``min_shot_s`` -> not sampled ("short_shot"); its sampled frames all
  within ``static_max_change`` of its first frame -> dropped as near-static ("static_shot");
* frame (the sampled ones): mean luma <= ``black_max_luma`` ("black_frame"), luma standard
  deviation <= ``blank_max_std`` (one flat colour: "blank_frame"), or within
  ``duplicate_max_change`` of the last kept frame ("duplicate_frame"). A shot left with
  fewer than 2 frames gives no session ("too_few_frames").

Frame differences are ``sampling.patch_change``: the largest 8x8-patch mean |difference|
(0-255), so a small object moving in a big frame counts as change, codec noise does not.
The static test compares each sampled frame with the shot's first (slow drifts add up);
the duplicate test compares neighbours (a frozen or repeated frame). A threshold of 0
turns its filter off. The learned filters (aesthetic score, logo detection) are in ``data/quality.py``
and count into the same table.

Black borders (letterbox and pillarbox bars, the paper's "black border detection") are cropped, not
dropped, when ``border_max_luma`` is set: the edge rows and columns whose mean luma stays <= it in
every sampled frame of a session go before the frames are fitted ("black_border" counts the
sessions cropped).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .sampling import patch_change

COUNTS = ("short_video", "low_resolution", "short_shot", "static_shot", "black_frame", "blank_frame",
          "duplicate_frame", "too_few_frames", "black_border", "low_aesthetic", "logo",   # these two: data/quality.py
          "multi_shot_scene")      # not a drop: sessions made across the cuts of one scene (shots.scene_max_shots)


@dataclass
class FilterConfig:
    """Thresholds (``build.filters``); 0 turns a filter off."""
    min_duration_s: float = 1.0          # video: at least this long
    min_height: int = 64                 # video: at least this tall and wide, as displayed
    min_width: int = 64
    min_shot_s: float = 0.5              # shot: first to last frame at least this long
    static_max_change: float = 5.0       # shot: static when no sampled frame differs from its first by more
    black_max_luma: float = 16.0         # frame: black when its mean luma (BT.601, 0-255) is <= this
    blank_max_std: float = 3.0           # frame: blank when its luma standard deviation is <= this
    duplicate_max_change: float = 3.0    # frame: a duplicate when within this of the last kept frame (codec noise on a held frame: ~1.5)
    border_max_luma: float = 0.0         # session: crop edge rows / columns whose mean luma is <= this in every
                                         # sampled frame (letterbox, pillarbox; 0: off; 16 suits most footage)

    def __post_init__(self):
        for k in ("min_duration_s", "min_shot_s", "static_max_change", "black_max_luma", "blank_max_std",
                  "duplicate_max_change", "border_max_luma"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"build.filters.{k}: must be a number >= 0, got {v!r}")
        for k in ("min_height", "min_width"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"build.filters.{k}: must be an int >= 0, got {v!r}")


def check_video(duration_s: float, height: int, width: int, cfg: FilterConfig) -> tuple[str, str] | None:
    """(count key, one-line reason) when the whole video is filtered out, else None."""
    if cfg.min_duration_s and duration_s < cfg.min_duration_s:
        return "short_video", f"video lasts {duration_s:.2f}s < min_duration_s={cfg.min_duration_s:g}"
    if height < cfg.min_height or width < cfg.min_width:
        return "low_resolution", f"video is {width}x{height} < min {cfg.min_width}x{cfg.min_height}"
    return None


def short_shot(start_s: float, end_s: float, cfg: FilterConfig) -> bool:
    return bool(cfg.min_shot_s) and end_s - start_s < cfg.min_shot_s


def luma(frame: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB [H, W, 3], float32 [H, W]."""
    f = frame.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def frame_defect(frame: np.ndarray, cfg: FilterConfig) -> str | None:
    """"black_frame", "blank_frame" or None."""
    y = luma(frame)
    if cfg.black_max_luma and y.mean() <= cfg.black_max_luma:
        return "black_frame"
    if cfg.blank_max_std and y.std() <= cfg.blank_max_std:
        return "blank_frame"
    return None


def is_static(frames, cfg: FilterConfig) -> bool:
    """No frame differs from the first by more than ``static_max_change``."""
    if not cfg.static_max_change or len(frames) < 2:
        return False
    return max(patch_change(frames[0], f) for f in frames[1:]) <= cfg.static_max_change


def filter_frames(frames, cfg: FilterConfig, counts: Counter) -> list[int] | None:
    """Positions of the frames to keep (black/blank dropped, then the static-shot test, then
    duplicates), counting each drop in ``counts``; None when the shot is dropped."""
    keep = []
    for i, f in enumerate(frames):
        why = frame_defect(f, cfg)
        if why:
            counts[why] += 1
        else:
            keep.append(i)
    if len(keep) >= 2 and is_static([frames[i] for i in keep], cfg):
        counts["static_shot"] += 1
        return None
    out = keep[:1]
    for i in keep[1:]:
        if cfg.duplicate_max_change and patch_change(frames[out[-1]], frames[i]) <= cfg.duplicate_max_change:
            counts["duplicate_frame"] += 1
        else:
            out.append(i)
    if len(out) < 2:
        counts["too_few_frames"] += 1
        return None
    return out


def black_borders(frames: list[np.ndarray], max_luma: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): how many edge rows / columns are black in every frame (their mean luma
    <= ``max_luma`` in the brightest of the frames at each pixel). A picture black through and through
    gives (0, 0, 0, 0): dropping it is the black-frame filter's work, not a crop's."""
    y = np.max(np.stack([luma(f) for f in frames]), axis=0)                      # [H, W]
    rows, cols = y.mean(1) <= max_luma, y.mean(0) <= max_luma

    def run(flags) -> int:                       # leading True values
        return int(np.argmin(flags)) if not flags.all() else len(flags)
    top, bottom, left, right = run(rows), run(rows[::-1]), run(cols), run(cols[::-1])
    if top + bottom >= len(rows) or left + right >= len(cols):
        return 0, 0, 0, 0
    return top, bottom, left, right
