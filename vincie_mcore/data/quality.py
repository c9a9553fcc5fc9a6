"""Learned quality filters for real videos: the paper's "logo detection ... and aesthetic estimation"
(App. C.1; its black border detection is ``filters.black_borders``).

Both score a session's sampled frames after the rule filters and before the annotator, whose VLM calls
are the build's dearest step, and drop the session under their threshold, counted like the other
filters (``filter_counts.jsonl``). Both are off unless their section is given (``build.quality``).

* ``aesthetic``: the LAION aesthetic predictor (improved-aesthetic-predictor): a frame's CLIP image
  embedding (``get_image_features``, L2-normalised) through a stack of linear layers (the published
  ``*-linearMSE`` weights have no activation between them; ``relu: true`` for the ``reluMSE`` ones) gives
  a score of about 1-10. A session's score is the mean over ``frames`` evenly spaced frames; below
  ``min_score`` it is dropped (``low_aesthetic``). The score is kept in ``meta.aesthetic``.
* ``logo``: GroundingDINO, loaded as the segmenter loads it, asked for ``prompt`` in each of ``frames``
  evenly spaced frames. A frame shows a logo when a box scores at least ``box_threshold`` with its centre
  in a corner region (``corner_frac`` of the width and of the height from a corner; 0: anywhere). The
  session is dropped (``logo``) when every checked frame shows one: a burnt-in logo or watermark stays
  through a shot, a logo in the scene moves or leaves. ``meta.logo_frames``: the frames that showed one.

Models load once per worker process from local folders (``local_files_only``), on ``device``; the head
from a ``.safetensors`` file or a ``.pth``/``.pt`` state dict read with ``weights_only=True`` (a pickle
that runs code is refused).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import model_folder

HEAD_SUFFIXES = (".safetensors", ".pth", ".pt")


def _frames(n: int, key: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{key}: must be an int >= 1, got {n!r}")


@dataclass
class AestheticConfig:
    """``build.quality.aesthetic``: the LAION predictor (see the module docstring)."""
    clip_path: str = ""       # local CLIP folder (CLIPModel + image processor): openai/clip-vit-large-patch14 for LAION's
    head_path: str = ""       # the head's weights: layers.N.weight / .bias (or weight / bias), .safetensors or .pth
    min_score: float = 4.5    # a session whose mean frame score is below this is dropped
    relu: bool = False        # a ReLU between the head's layers (the reluMSE weights)
    frames: int = 3           # frames scored per session, evenly spaced, first and last included
    device: str = "cpu"

    def __post_init__(self):
        model_folder(self.clip_path, "build.quality.aesthetic.clip_path", "clip")
        if not self.head_path or not Path(self.head_path).is_file() or \
                not self.head_path.endswith(HEAD_SUFFIXES):
            raise ValueError(f"build.quality.aesthetic.head_path: no {'/'.join(HEAD_SUFFIXES)} file at "
                             f"{self.head_path!r}")
        _frames(self.frames, "build.quality.aesthetic.frames")


@dataclass
class LogoConfig:
    """``build.quality.logo``: GroundingDINO looking for overlays (see the module docstring)."""
    grounding_dino_path: str = ""              # local folder: model + processor, as the segmenter's
    prompt: str = "logo. watermark."           # GroundingDINO phrases, lower case, each ending in "."
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    corner_frac: float = 0.25                  # a box counts when its centre is this near a corner (0: anywhere)
    frames: int = 3
    device: str = "cpu"

    def __post_init__(self):
        model_folder(self.grounding_dino_path, "build.quality.logo.grounding_dino_path", "grounding-dino")
        if not self.prompt.strip():
            raise ValueError("build.quality.logo.prompt: empty")
        for k in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"build.quality.logo.{k}: must be in [0, 1], got {getattr(self, k)}")
        if not 0.0 <= self.corner_frac <= 0.5:
            raise ValueError(f"build.quality.logo.corner_frac: must be in [0, 0.5], got {self.corner_frac}")
        _frames(self.frames, "build.quality.logo.frames")


@dataclass
class QualityConfig:
    """``build.quality``: each filter on when its section is given."""
    aesthetic: AestheticConfig | None = None
    logo: LogoConfig | None = None


def pick(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced indices of ``n`` frames, the first and last included (all of them if k >= n)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


# ----------------------------------------------------------------------------- the aesthetic predictor

def read_head(path) -> list:
    """A head's linear layers in order, ``[(weight [out, in], bias [out])]``, from ``layers.N.weight`` /
    ``layers.N.bias`` (any prefix, N ascending) or a single ``weight`` / ``bias``; each layer's input the
    last one's output, the last giving one number. A file that is not that is one line naming it."""
    import torch                       # here, not at the top: the build's workers import this module

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file, or a pickle that is more than tensors
        raise ValueError(f"build.quality.aesthetic.head_path: cannot read {path} ({' '.join(str(e).split())[:200]})") \
            from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"build.quality.aesthetic.head_path: {path} is not a state dict of tensors")
    idx = {}
    for k in sd:
        m = re.fullmatch(r"(?:.*\.)?(\d+)\.(weight|bias)", k)
        if m:
            idx.setdefault(int(m.group(1)), {})[m.group(2)] = sd[k]
    if not idx and {"weight", "bias"} <= set(sd):
        idx = {0: {"weight": sd["weight"], "bias": sd["bias"]}}
    layers = [(d.get("weight"), d.get("bias")) for _, d in sorted(idx.items())]
    if not layers or any(w is None or b is None or w.dim() != 2 or b.shape != w.shape[:1] for w, b in layers):
        raise ValueError(f"build.quality.aesthetic.head_path: {path} holds no linear layers "
                         f"(layers.N.weight [out, in] and layers.N.bias [out])")
    for (w0, _), (w1, _) in zip(layers, layers[1:]):
        if w1.shape[1] != w0.shape[0]:
            raise ValueError(f"build.quality.aesthetic.head_path: {path}: a layer of {w0.shape[0]} outputs "
                             f"feeds one of {w1.shape[1]} inputs")
    if layers[-1][0].shape[0] != 1:
        raise ValueError(f"build.quality.aesthetic.head_path: {path}: the last layer gives "
                         f"{layers[-1][0].shape[0]} numbers, not one score")
    return [(w.float(), b.float()) for w, b in layers]


class ClipImages:
    """A local CLIP's image embeddings (``get_image_features``, L2-normalised): the aesthetic filter's input, and
    the shot scan's scene feature (``shots.scene_features: clip``). Loaded from a local folder, on ``device``."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from transformers import CLIPImageProcessor, CLIPModel

        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.proc = CLIPImageProcessor.from_pretrained(path, local_files_only=True)   # no tokenizer needed

    def __call__(self, frames):
        """uint8 RGB [N, H, W, 3] (or a list of [H, W, 3]) -> float [N, D] on ``device``, each row of unit length."""
        import torch

        px = self.proc(images=list(np.asarray(f) for f in frames), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=px.to(self.device))
            x = (out if isinstance(out, torch.Tensor) else out.pooler_output).float()   # transformers 4 / 5
        return x / x.norm(dim=-1, keepdim=True)


class DinoImages:
    """A local DINO ViT's image embeddings (the CLS token after the final LayerNorm, L2-normalised; no pooler):
    the shot scan's scene feature under ``shots.scene_features: dino``. DINO was trained to tell instances
    apart, CLIP to match captions: two angles of one room are closer under DINO. Loaded from a local folder
    (``ViTModel`` + its image processor), on ``device``."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, ViTModel

        self.device = torch.device(device)
        self.model = ViTModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True).to(self.device).eval()
        self.proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)

    def __call__(self, frames):
        """uint8 RGB [N, H, W, 3] (or a list of [H, W, 3]) -> float [N, D] on ``device``, each row of unit length."""
        import torch

        px = self.proc(images=list(np.asarray(f) for f in frames), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            x = self.model(pixel_values=px.to(self.device)).last_hidden_state[:, 0].float()
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class AestheticScorer:
    def __init__(self, cfg: AestheticConfig):
        import torch

        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.clip = ClipImages(cfg.clip_path, cfg.device)
        self.head = [(w.to(self.device), b.to(self.device)) for w, b in read_head(cfg.head_path)]
        dim = self.clip.model.config.projection_dim
        if self.head[0][0].shape[1] != dim:
            raise ValueError(f"build.quality.aesthetic.head_path: the head takes {self.head[0][0].shape[1]} "
                             f"numbers, {cfg.clip_path}'s CLIP embeds in {dim}")

    def score(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float [N]: each frame's predicted aesthetic score."""
        import torch

        x = self.clip(frames)
        with torch.no_grad():
            for i, (w, b) in enumerate(self.head):
                x = x @ w.T + b
                if self.cfg.relu and i < len(self.head) - 1:
                    x = x.relu()
        return x[:, 0].cpu().numpy()


# ----------------------------------------------------------------------------- logo detection

def in_corner(boxes: np.ndarray, h: int, w: int, frac: float) -> np.ndarray:
    """Which boxes ``[N, 4]`` (x0, y0, x1, y1 in pixels) have their centre within ``frac`` of the width
    and of the height from one of the frame's corners (all of them when ``frac`` is 0)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not frac:
        return np.ones(len(boxes), bool)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    near_x = (cx <= frac * w) | (cx >= (1 - frac) * w)
    near_y = (cy <= frac * h) | (cy >= (1 - frac) * h)
    return near_x & near_y


class LogoDetector:
    def __init__(self, cfg: LogoConfig):
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.proc = AutoProcessor.from_pretrained(cfg.grounding_dino_path, local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
            cfg.grounding_dino_path, local_files_only=True).to(self.device).eval()
        self.prompt = " ".join(cfg.prompt.lower().split())

    def detect(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """uint8 [N, H, W, 3] -> per frame the boxes [K, 4] scoring at least ``box_threshold``, and their scores [K]."""
        from .grounded_sam import grounding_boxes

        return grounding_boxes(self.proc, self.model, list(np.asarray(frames)), [self.prompt] * len(frames),
                               self.cfg.box_threshold, self.cfg.text_threshold, self.device)

    def frames_with_logo(self, frames: np.ndarray) -> np.ndarray:
        """bool [N]: which frames show a box in a corner region (``corner_frac``)."""
        h, w = np.asarray(frames).shape[1:3]
        return np.array([bool(in_corner(b, h, w, self.cfg.corner_frac).any()) for b, _ in self.detect(frames)])


# ----------------------------------------------------------------------------- checked before a build

def check_models(cfg: QualityConfig) -> None:
    """Load each configured model here, once, on the CPU, and run it on one small frame: a folder that
    does not hold what its key says (or a CUDA device that is not there) is one line before any video
    is read, not the same failure line for every video. The models are dropped after."""
    frame = np.full((1, 32, 32, 3), 128, np.uint8)
    for key, kind, sub in (("aesthetic", AestheticScorer, cfg.aesthetic), ("logo", LogoDetector, cfg.logo)):
        if sub is None:
            continue
        if sub.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"build.quality.{key}.device: {sub.device!r}, but no CUDA device is available here")
        try:
            model = kind(dataclasses.replace(sub, device="cpu"))
            model.score(frame) if kind is AestheticScorer else model.detect(frame)
        except Exception as e:  # noqa: BLE001 - transformers raises many types for a folder of another model
            if isinstance(e, ValueError) and str(e).startswith("build.quality."):
                raise                                    # ours: one line naming the key already
            raise ValueError(f"build.quality.{key}: cannot load or run its model "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
        del model


# ----------------------------------------------------------------------------- one session

_LOADED: dict = {}      # this process's models, by their config: a worker loads each once


def model_for(kind, *args):
    """This process's ``kind(*args)`` (``AestheticScorer``, ``LogoDetector``, the scene pass's ``ClipImages``),
    made on first use."""
    key = (kind, repr(args))
    if key not in _LOADED:
        _LOADED[key] = kind(*args)
    return _LOADED[key]


def check_session(frames: np.ndarray, cfg: QualityConfig) -> tuple[str | None, dict]:
    """A session's frames (uint8 [K, H, W, 3], as stored) -> (the count key that drops it, or None; what
    to add to its meta)."""
    meta = {}
    if cfg.aesthetic is not None:
        scores = model_for(AestheticScorer, cfg.aesthetic).score(frames[pick(len(frames), cfg.aesthetic.frames)])
        meta["aesthetic"] = round(float(scores.mean()), 4)
        if meta["aesthetic"] < cfg.aesthetic.min_score:
            return "low_aesthetic", meta
    if cfg.logo is not None:
        hits = model_for(LogoDetector, cfg.logo).frames_with_logo(frames[pick(len(frames), cfg.logo.frames)])
        meta["logo_frames"] = f"{int(hits.sum())}/{len(hits)}"
        if hits.all():
            return "logo", meta
    return None, meta
