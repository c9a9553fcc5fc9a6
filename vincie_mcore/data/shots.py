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
(``scenes``). With ``scene_features: clip`` the pass embeds ``scene_fps`` frames a second with a local CLIP
(``scene_clip_path``; the aesthetic filter's will do) instead, and two shots are compared by the cosine of
their mean embeddings: what is shown, not only its colours (a cut to the same place in other light, or to
another place in the same colours). ``scene_features: dino`` does the same with a local DINO ViT
(``scene_dino_path``, its CLS token): features made to tell instances apart rather than to match captions. Each scene is sampled as one clip: a multi-shot scene gives a session across its cuts,
a single-shot scene the shot's own session. At 1 (the default) every shot is its own scene.

TransNetV2 would go behind ``detect`` on a GPU machine; not built here.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .quality import ClipImages, DinoImages, model_for
from .video import StreamInfo, VideoError, _decode_error, _frame_time, _open, _open_video_stream

DETECTORS = ("content", "adaptive", "none")
SCENE_FEATURES = ("colour", "clip", "dino")
# features from a model: its class, the config key of its folder, and the model_type that folder must hold
EMBEDDERS = {"clip": (ClipImages, "scene_clip_path", "clip"), "dino": (DinoImages, "scene_dino_path", "vit")}


@dataclass
class ShotConfig:
    """Cut detection (``build.shots``)."""
    detector: str = "content"        # content | adaptive (PySceneDetect) | none (the whole video is one shot)
    threshold: float = 27.0          # content: cut when the HSV change score >= this; adaptive: its adaptive_threshold
    min_content_val: float = 15.0    # adaptive: a cut also needs a change score >= this
    min_scene_s: float = 0.5         # no two cuts closer than this (seconds, as frames at the average rate)
    analysis_width: int = 256        # frames are shrunk to this width for detection (0: full size)
    scene_max_shots: int = 1         # > 1: up to this many neighbouring shots of one scene make one clip
    scene_min_similarity: float = 0.7   # neighbouring shots are one scene when their features are this similar
    scene_features: str = "colour"      # colour: histogram intersection; clip / dino: cosine of mean image embeddings
    scene_clip_path: str = ""           # clip: a local CLIP folder (CLIPModel + image processor)
    scene_dino_path: str = ""           # dino: a local DINO ViT folder (ViTModel + image processor), e.g. dino-vits16
    scene_fps: float = 2.0              # clip / dino: frames embedded per second of video (each shot gets at least one)
    scene_device: str = "cpu"           # clip / dino: where the model runs

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
        if self.scene_features not in SCENE_FEATURES:
            raise ValueError(f"build.shots.scene_features: must be one of {SCENE_FEATURES}, got {self.scene_features!r}")
        if self.scene_features in EMBEDDERS:
            from ..paths import model_folder

            _, key, model_type = EMBEDDERS[self.scene_features]
            model_folder(getattr(self, key), f"build.shots.{key}", model_type)
            if not (isinstance(self.scene_fps, (int, float)) and self.scene_fps > 0):
                raise ValueError(f"build.shots.scene_fps: must be a number > 0, got {self.scene_fps!r}")


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
    embeds: np.ndarray | None = None  # [shots, D]: each shot's mean embedding, unit length (scene_features: clip / dino;
    #                                   a zero row for a shot no embedded frame fell in: it joins no scene)


HIST_BINS = 8


def colour_hist(img: np.ndarray) -> np.ndarray:
    """float32 [3 * HIST_BINS]: a uint8 [H, W, 3] image's histogram per channel, each channel's bins summing to 1."""
    q = (img.reshape(-1, 3) >> 5).astype(np.int64) + np.arange(3) * HIST_BINS      # 256 / 8 = 32 = 2 ** 5
    return (np.bincount(q.ravel(), minlength=3 * HIST_BINS) / q.shape[0]).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Histogram intersection of two ``colour_hist``s, 0 (no colour shared) to 1 (the same distribution)."""
    return float(np.minimum(a, b).sum() / 3)


def shot_similarity(scan: Scan, j: int, k: int) -> float:
    """How alike shots j and k are, by the features the scan kept: the cosine of their mean CLIP or DINO embeddings
    (0 when either has none), else their colour histograms' intersection."""
    if scan.embeds is not None:
        return float(np.dot(scan.embeds[j], scan.embeds[k]))
    return similarity(scan.hists[j], scan.hists[k])


def scenes(scan: Scan, cfg: ShotConfig) -> list[list[Shot]]:
    """The shots grouped into scenes, in order: each shot joins the scene before it when that has fewer
    than ``scene_max_shots`` shots and the two shots are at least ``scene_min_similarity`` alike
    (``shot_similarity``)."""
    if cfg.scene_max_shots <= 1 or (scan.hists is None and scan.embeds is None):
        return [[shot] for shot in scan.shots]
    out = [[scan.shots[0]]]
    for k in range(1, len(scan.shots)):
        if len(out[-1]) < cfg.scene_max_shots and \
                shot_similarity(scan, k - 1, k) >= cfg.scene_min_similarity:
            out[-1].append(scan.shots[k])
        else:
            out.append([scan.shots[k]])
    return out


def scene_embedder(cfg: ShotConfig):
    """The scan's image embedder (``ClipImages`` / ``DinoImages`` on ``scene_device``, one per process), or None
    when scenes are off or compared by colour."""
    if cfg.scene_max_shots <= 1 or cfg.scene_features not in EMBEDDERS:
        return None
    kind, key, _ = EMBEDDERS[cfg.scene_features]
    return model_for(kind, getattr(cfg, key), cfg.scene_device)


def check_scene_model(cfg: ShotConfig) -> None:
    """With CLIP or DINO scenes on: load the model here, on the CPU, and embed one small frame, so a folder that
    does not hold a working model (or a CUDA device that is not there) is one line before any video is read."""
    if cfg.scene_max_shots <= 1 or cfg.scene_features not in EMBEDDERS:
        return
    kind, key, _ = EMBEDDERS[cfg.scene_features]
    if cfg.scene_device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"build.shots.scene_device: {cfg.scene_device!r}, but no CUDA device is available here")
    try:
        kind(getattr(cfg, key), "cpu")([np.full((32, 32, 3), 128, np.uint8)])
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a broken folder
        raise ValueError(f"build.shots.{key}: cannot load or run its model "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None


def embed_stride(cfg: ShotConfig, fps: float) -> int:
    """Every how many frames the scene pass embeds one: ``scene_fps`` a second, and never fewer than one per
    ``min_scene_s`` (no two cuts are closer), so every shot but a too-short last one holds an embedded frame."""
    return max(1, min(int(round(fps / cfg.scene_fps)), int(round(cfg.min_scene_s * fps)) or 1))


def shot_means(rows: np.ndarray, index: np.ndarray, shots: list) -> np.ndarray:
    """Per shot, the unit-length mean of the unit rows whose frame ``index`` falls in it (a zero row if none)."""
    out = np.zeros((len(shots), rows.shape[1]), np.float32)
    bounds = np.cumsum([0] + [sh.num_frames for sh in shots])
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        sel = (index >= a) & (index < b)
        if sel.any():
            m = rows[sel].mean(0)
            out[k] = m / max(float(np.linalg.norm(m)), 1e-12)
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
    scene = cfg.scene_max_shots > 1
    times, cuts = [], []
    hists = [] if scene and cfg.scene_features == "colour" else None
    embed = scene_embedder(cfg)
    stride, batch, rows, index = embed_stride(cfg, info.fps), [], [], []
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
                if embed is not None and i % stride == 0:
                    batch.append(np.ascontiguousarray(img[..., ::-1]))     # BGR -> RGB
                    index.append(i)
                    if len(batch) == 32:                                    # bounded memory: embed as we go
                        rows.append(embed(batch).cpu().numpy())
                        batch = []
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
    embeds = None
    if embed is not None:
        if batch:
            rows.append(embed(batch).cpu().numpy())
        embeds = shot_means(np.concatenate(rows), np.asarray(index), shots)
    return Scan(shots, t, sorted(set(cuts)), per_shot, embeds)
