"""Which annotator and segmenter a real-video build uses, from the ``annotator:`` / ``segmenter:``
sections of its config (``kind`` plus that kind's fields):

    annotator: {kind: vlm, base_urls: [http://gpu1:8000/v1], model: Qwen/Qwen2.5-VL-7B-Instruct, cache_dir: ...}
    segmenter: {kind: gsam, grounding_dino_path: /models/gdino, sam2_path: /models/sam2, device: cuda}
    segmenter: {kind: none}        # no RoE maps (train with recipe.roe_prob 0)

Errors name the key (``annotator.kind``, ``segmenter.sam2_path``, ...).
"""
from __future__ import annotations

from ..config import ConfigError, build
from .annotate import Annotator, GroundTruthAnnotator
from .segment import EmptySegmenter, GroundTruthSegmenter, Segmenter

ANNOTATORS = ("vlm", "ground_truth")
SEGMENTERS = ("gsam", "none", "ground_truth")


def _split(section: dict | None, group: str, kinds: tuple) -> tuple[str, dict]:
    d = dict(section or {})
    kind = d.pop("kind", None)
    if kind not in kinds:
        raise ConfigError(f"{group}.kind: expected one of {', '.join(kinds)}, got {kind!r}")
    return kind, d


def make_annotator(section: dict | None) -> Annotator:
    kind, d = _split(section, "annotator", ANNOTATORS)
    if kind == "ground_truth":                       # the synthetic world's sidecars
        if d:
            raise ConfigError(f"annotator.{next(iter(d))}: unknown key for kind ground_truth")
        return GroundTruthAnnotator()
    from .vlm import VLMAnnotator, VLMConfig

    return VLMAnnotator(build(VLMConfig, d, "annotator"))


def make_segmenter(section: dict | None) -> Segmenter:
    kind, d = _split(section, "segmenter", SEGMENTERS)
    if kind in ("none", "ground_truth"):
        if d:
            raise ConfigError(f"segmenter.{next(iter(d))}: unknown key for kind {kind}")
        return EmptySegmenter() if kind == "none" else GroundTruthSegmenter()
    from .grounded_sam import GroundedSAMConfig, GroundedSAMSegmenter

    return GroundedSAMSegmenter(build(GroundedSAMConfig, d, "segmenter"))
