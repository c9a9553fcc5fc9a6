"""Shots: where a real video cuts, so that a session crosses a cut only inside one scene (paper App. C.1:
"single-shot clips and multi-shot scene videos").

``scan_video`` decodes every frame once, shrunk to ``analysis_width`` pixels wide (colour
conversion and scaling at that size only), and feeds PySceneDetect's ``ContentDetector``
or ``AdaptiveDetector`` directly, so the frame times come from our own decoder (variable
frame rate included). A cut reported at frame i starts a new shot at i. The pass also
finds corrupt packets and truncated files: both raise ``VideoError``.

``detector: none`` skips the pass: the whole video is one shot (clips cut beforehand);
then only the sampled frames are ever decoded (``video.read_at_times``).

Scenes (``scene_max_shots`` > 1): the same pass keeps each frame's colour histogram (8 bins per channel
of the shrunk frame); neighbouring shots whose mean histograms overlap by at least
``scene_min_similarity`` (histogram intersection, 0-1: a cut to another angle of the same place keeps
the colours, a cut to another place does not) join one scene, up to ``scene_max_shots`` shots
(``scenes``). Each scene is sampled as one clip: a multi-shot scene gives a session across its cuts,
a single-shot scene the shot's own session. At 1 (the default) every shot is its own scene.

TransNetV2 would go behind ``detect`` on a GPU machine; not built here.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .video import StreamInfo, VideoError, _decode_error, _frame_time, _open, _open_video_stream

DETECTORS = ("content", "adaptive", "none")


@dataclass
class ShotConfig:
    """Cut detection (``build.shots``)."""
    detector: str = "content"        # content | adaptive (PySceneDetect) | none (the whole video is one shot)
    threshold: float = 27.0          # content: cut when the HSV change score >= this; adaptive: its adaptive_threshold
    min_content_val: float = 15.0    # adaptive: a cut also needs a change score >= this
    min_scene_s: float = 0.5         # no two cuts closer than this (seconds, as frames at the average rate)
    analysis_width: int = 256        # frames are shrunk to this width for detection (0: full size)
    scene_max_shots: int = 1         # > 1: up to this many neighbouring shots of one scene make one clip
    scene_min_similarity: float = 0.7   # neighbouring shots are one scene when their colour histograms overlap this much

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"build.shots.detector: must be one of {DETECTORS}, got {self.detector!r}")
        if not self.threshold > 0:
            raise ValueError(f"build.shots.threshold: must be > 0, got {self.threshold}")
        if not self.min_content_val >= 0:
            raise ValueError(f"build.shots.min_content_val: must be >= 0, got {self.min_content_val}")
        if not self.min_scene_s >= 0:
            raise ValueError(f"build.shots.min_scene_s: must be >= 0, got {self.min_scene_s}")
        if not isinstance(self.analysis_width, int) or self.analysis_width < 0:
            raise ValueError(f"build.shots.analysis_width: must be an int >= 0, got {self.analysis_width!r}")
        if not isinstance(self.scene_max_shots, int) or self.scene_max_shots < 1:
            raise ValueError(f"build.shots.scene_max_shots: must be an int >= 1, got {self.scene_max_shots!r}")
        if not 0.0 <= self.scene_min_similarity <= 1.0:
            raise ValueError(f"build.shots.scene_min_similarity: must be in [0, 1], got {self.scene_min_similarity}")


@dataclass(frozen=True)
class Shot:
    index: int
    start_s: float        # presentation time of its first frame
    end_s: float          # presentation time of its last frame
    num_frames: int       # frames decoded in it (0 when not scanned: detector none)


@dataclass
class Scan:
    shots: list                   # Shot, in order, covering the video
    times: np.ndarray | None      # presentation time of every frame (None: not scanned)
    cuts: list                    # frame indices where a new shot starts (after frame 0)
    hists: np.ndarray | None = None   # [shots, 24]: each shot's mean colour_hist (kept for scenes only)


HIST_BINS = 8


def colour_hist(img: np.ndarray) -> np.ndarray:
    """float32 [3 * HIST_BINS]: a uint8 [H, W, 3] image's histogram per channel, each channel's bins summing to 1."""
    q = (img.reshape(-1, 3) >> 5).astype(np.int64) + np.arange(3) * HIST_BINS      # 256 / 8 = 32 = 2 ** 5
    return (np.bincount(q.ravel(), minlength=3 * HIST_BINS) / q.shape[0]).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Histogram intersection of two ``colour_hist``s, 0 (no colour shared) to 1 (the same distribution)."""
    return float(np.minimum(a, b).sum() / 3)


def scenes(scan: Scan, cfg: ShotConfig) -> list[list[Shot]]:
    """The shots grouped into scenes, in order: each shot joins the scene before it when that has fewer
    than ``scene_max_shots`` shots and the two shots' histograms overlap >= ``scene_min_similarity``."""
    if cfg.scene_max_shots <= 1 or scan.hists is None:
        return [[shot] for shot in scan.shots]
    out = [[scan.shots[0]]]
    for k in range(1, len(scan.shots)):
        if len(out[-1]) < cfg.scene_max_shots and \
                similarity(scan.hists[k - 1], scan.hists[k]) >= cfg.scene_min_similarity:
            out[-1].append(scan.shots[k])
        else:
            out.append([scan.shots[k]])
    return out


def _detector(cfg: ShotConfig, fps: float):
    from scenedetect import AdaptiveDetector, ContentDetector

    min_len = max(1, int(round(cfg.min_scene_s * fps)))
    if cfg.detector == "content":
        return ContentDetector(threshold=cfg.threshold, min_scene_len=min_len)
    return AdaptiveDetector(adaptive_threshold=cfg.threshold, min_scene_len=min_len,
                            min_content_val=cfg.min_content_val)


def shots_from_cuts(times, cuts) -> list[Shot]:
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(times))), len(times)]
    return [Shot(k, float(times[a]), float(times[b - 1]), b - a) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def scan_video(path, cfg: ShotConfig, info: StreamInfo) -> Scan:
    """Shots of a video (see the module docstring). Raises VideoError (one line) on corrupt data
    or when the frames stop before the container's declared duration (truncated)."""
    name = Path(path).name
    if cfg.detector == "none":
        end = info.start_s + max(info.duration_s - 1.0 / info.fps, 0.0)
        return Scan([Shot(0, info.start_s, end, 0)], None, [])
    from scenedetect import FrameTimecode

    rate = Fraction(info.fps).limit_denominator(1001)
    det = _detector(cfg, info.fps)
    times, cuts, hists = [], [], [] if cfg.scene_max_shots > 1 else None
    with _open(path) as c:
        st = _open_video_stream(c, name)
        st.thread_type = "AUTO"                  # one pass over every frame: let the decoder use its threads
        try:
            for i, f in enumerate(c.decode(st)):
                times.append(_frame_time(f, i, info.fps))
                if cfg.analysis_width and f.width > cfg.analysis_width:
                    h = max(2, round(f.height * cfg.analysis_width / f.width))
                    img = f.reformat(width=cfg.analysis_width, height=h, format="bgr24").to_ndarray()
                else:
                    img = f.to_ndarray(format="bgr24")          # PySceneDetect works on OpenCV's BGR
                cuts += [tc.frame_num for tc in det.process_frame(FrameTimecode(i, rate), img)]
                if hists is not None:
                    hists.append(colour_hist(img))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - libav raises many types for bad data
            raise _decode_error(name, e) from None
        if not times:
            raise VideoError(f"corrupt video {name}: no frame decodes")
        cuts += [tc.frame_num for tc in det.post_process(FrameTimecode(len(times) - 1, rate))]
    t = np.asarray(times)
    if np.any(np.diff(t) <= 0):
        raise VideoError(f"corrupt video {name}: frame times do not increase")
    # more than about two frames short of the declared end: the file was cut (the last frame's own
    # length is unknown under a variable rate, hence the slack)
    if info.duration_s and t[-1] < info.start_s + info.duration_s - 2.0 / info.fps - 0.1:
        raise VideoError(f"truncated video {name}: frames end at {t[-1]:.3f}s of a declared {info.duration_s:.3f}s")
    shots = shots_from_cuts(t, cuts)
    per_shot = None
    if hists is not None:
        h, bounds = np.stack(hists), np.cumsum([0] + [sh.num_frames for sh in shots])
        per_shot = np.stack([h[a:b].mean(0) for a, b in zip(bounds, bounds[1:])])
    return Scan(shots, t, sorted(set(cuts)), per_shot)
