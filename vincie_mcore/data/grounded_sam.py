"""The GroundingDINO + SAM2 segmenter: the RoE masks of real videos (paper §3.1, App. C.3).

For each transition, the annotator names the changed characters and objects (``Transition.entities``,
their descriptions from the VLM's frame captions). In frame i and in frame i+1:
- GroundingDINO grounds each entity alone, one text per image of a batch, so every box belongs to
  one entity;
- SAM2 segments every kept box;
- the union of the masks is the RoE map of that frame (M_i, M_{i+1}).

An entity found in neither frame is counted in ``stats()``, not fatal. A transition whose entities
are all unfound, or that has none, gets two empty masks, which the recipe handles like "no change".

Both models come through transformers from local folders (``local_files_only``, no hub at run time):
``AutoModelForZeroShotObjectDetection`` + ``AutoProcessor`` for GroundingDINO, ``Sam2Model`` for SAM2.
SAM2's input steps are written here: resize to the model's square input (bilinear), ImageNet
mean/std, boxes scaled to it, masks resized back (bilinear) and thresholded. That is what
``Sam2Processor`` does, but the processor needs torchvision, which the CPU lock cannot hold. The GPU
check compares the two where torchvision exists.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..paths import model_folder
from .segment import Segmenter

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class GroundedSAMConfig:
    grounding_dino_path: str = ""     # local folder: GroundingDINO model + processor (save_pretrained)
    sam2_path: str = ""               # local folder: Sam2Model
    box_threshold: float = 0.35       # GroundingDINO box score
    text_threshold: float = 0.25      # GroundingDINO token score
    mask_threshold: float = 0.0       # SAM2 mask logit
    max_boxes_per_entity: int = 3     # the highest-scoring boxes of one entity in one frame
    device: str = "cpu"

    def __post_init__(self):
        for name, kind in (("grounding_dino_path", "grounding-dino"), ("sam2_path", "sam2")):
            model_folder(getattr(self, name), f"segmenter.{name}", kind)
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"segmenter.{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.max_boxes_per_entity < 1:
            raise ValueError(f"segmenter.max_boxes_per_entity: must be >= 1, got {self.max_boxes_per_entity}")


@dataclass
class _Stats:
    transitions: int = 0
    entities: int = 0
    unfound: int = 0                  # entities grounded in neither frame
    boxes: int = 0
    empty_transitions: int = 0        # both masks empty (no entities, or none found)
    seconds_ground: float = 0.0
    seconds_segment: float = 0.0
    unfound_examples: list = field(default_factory=list)


class GroundedSAMSegmenter(Segmenter):
    """``Segmenter`` over GroundingDINO + SAM2 (see the module docstring)."""
    name = "gdino+sam2"
    in_process = True         # torch models (on a GPU) do not survive fork: segments in the build's main process

    def __init__(self, cfg: GroundedSAMConfig):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, Sam2Model

        self.cfg = cfg
        dev = torch.device(cfg.device)
        self.gd_proc = AutoProcessor.from_pretrained(cfg.grounding_dino_path, local_files_only=True)
        self.gd = AutoModelForZeroShotObjectDetection.from_pretrained(cfg.grounding_dino_path,
                                                                      local_files_only=True).to(dev).eval()
        self.sam = Sam2Model.from_pretrained(cfg.sam2_path, local_files_only=True).to(dev).eval()
        size = self.sam.config.prompt_encoder_config.image_size
        self.sam_size = (size, size) if isinstance(size, int) else tuple(size)
        self.device = dev
        self._stats = _Stats()

    # -- the contract --------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, frames, frame_indices, transitions, video_meta):
        import time

        frames = np.asarray(frames)
        h, w = frames.shape[1:3]
        out = []
        for i, tr in enumerate(transitions):
            ents = [e for e in dict.fromkeys(getattr(tr, "entities", ()) or ()) if e and e.strip()]
            s = self._stats
            s.transitions += 1
            s.entities += len(ents)
            pair = []
            found = np.zeros(len(ents), bool)
            for frame in (frames[i], frames[i + 1]):
                t0 = time.perf_counter()
                boxes, hit = self.ground(frame, ents) if ents else (np.zeros((0, 4), np.float32), found.copy())
                t1 = time.perf_counter()
                found |= hit
                mask = self.masks(frame, boxes) if len(boxes) else np.zeros((h, w), bool)
                s.seconds_ground += t1 - t0
                s.seconds_segment += time.perf_counter() - t1
                s.boxes += len(boxes)
                pair.append(mask.astype(np.uint8) * 255)
            missing = [e for e, f in zip(ents, found) if not f]
            s.unfound += len(missing)
            if missing and len(s.unfound_examples) < 20:
                s.unfound_examples.append(f"{video_meta.get('video_id', '?')}: {missing[0]}")
            if not (pair[0].any() or pair[1].any()):
                s.empty_transitions += 1
            out.append((pair[0], pair[1]))
        return out

    def stats(self) -> dict:
        s = self._stats
        return {"transitions": s.transitions, "entities": s.entities, "unfound": s.unfound, "boxes": s.boxes,
                "empty_transitions": s.empty_transitions, "seconds_ground": round(s.seconds_ground, 3),
                "seconds_segment": round(s.seconds_segment, 3),
                "seconds_per_pair": round((s.seconds_ground + s.seconds_segment) / max(1, s.transitions), 4),
                "unfound_examples": list(s.unfound_examples)}

    # -- the two models ------------------------------------------------------------------------
    def ground(self, frame: np.ndarray, entities: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [N, 4] (x0, y0, x1, y1 in pixels) of every entity in ``frame``, and which entities had one."""
        h, w = frame.shape[:2]
        # one entity per image of the batch: each box is that entity's (GroundingDINO's prompt is "text.")
        found = grounding_boxes(self.gd_proc, self.gd, [frame] * len(entities), [_prompt(e) for e in entities],
                                self.cfg.box_threshold, self.cfg.text_threshold, self.device)
        boxes, hit = [], np.zeros(len(entities), bool)
        for k, (b, scores) in enumerate(found):
            if len(scores) == 0:
                continue
            b = b[np.argsort(-scores, kind="stable")[: self.cfg.max_boxes_per_entity]]
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
            b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]    # boxes with no area after clipping
            if len(b):
                boxes.append(b)
                hit[k] = True
        return (np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)), hit

    def masks(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The union of SAM2's masks for ``boxes`` in ``frame`` -> bool [H, W]."""
        pixel_values, scale = sam2_inputs(frame, self.sam_size)
        b = torch.as_tensor(boxes, dtype=torch.float32) * torch.tensor(scale * 2)   # (sx, sy, sx, sy)
        out = self.sam(pixel_values=pixel_values.to(self.device), input_boxes=b[None].to(self.device),
                       multimask_output=False)
        logits = out.pred_masks[0, :, 0].float()                                   # [N, h', w']
        up = torch.nn.functional.interpolate(logits[None], size=frame.shape[:2], mode="bilinear",
                                             align_corners=False)[0]
        return (up > self.cfg.mask_threshold).any(0).cpu().numpy()


def grounding_boxes(proc, model, images: list, texts: list[str], box_threshold: float, text_threshold: float,
                    device) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroundingDINO on ``images`` (uint8 [H, W, 3] each, one size), image i asked for ``texts[i]`` -> per image
    the boxes float32 [K, 4] (x0, y0, x1, y1 in pixels) scoring at least ``box_threshold``, and their scores
    [K]. The segmenter's grounding and the logo filter's (data/quality.py) both go through here."""
    from PIL import Image

    h, w = np.asarray(images[0]).shape[:2]
    ims = [Image.fromarray(np.ascontiguousarray(im, dtype=np.uint8)) for im in images]
    inputs = proc(images=ims, text=list(texts), return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        results = proc.post_process_grounded_object_detection(
            model(**inputs), inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
            target_sizes=[(h, w)] * len(ims))
    return [(r["boxes"].float().cpu().numpy().reshape(-1, 4), r["scores"].float().cpu().numpy().reshape(-1))
            for r in results]


def _prompt(entity: str) -> str:
    """GroundingDINO wants lower case phrases ending in "." (its processor's convention)."""
    e = " ".join(entity.lower().split()).rstrip(".")
    return e + "."


def sam2_inputs(frame: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[float, float]]:
    """uint8 [H, W, 3] -> (pixel_values [1, 3, S_h, S_w], (sx, sy) pixel -> model coordinates), as
    Sam2Processor prepares them: bilinear resize to the square input, rescale to [0, 1], ImageNet mean/std."""
    from PIL import Image

    h, w = frame.shape[:2]
    im = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x[None], (size[1] / w, size[0] / h)
