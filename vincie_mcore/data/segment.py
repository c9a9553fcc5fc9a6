"""Segmenters: the region of editing (RoE) of each transition.

Contract (every implementation):

    segment(frames, frame_indices, transitions, video_meta) -> list[(roe_src, roe_tgt)]

* inputs as for ``Annotator.annotate`` plus its K - 1 ``transitions``;
* returns K - 1 pairs of uint8 [H, W] masks (0 or 255): ``roe_src`` marks the
  changing objects as they appear in frame i, ``roe_tgt`` as they appear in
  frame i + 1 (paper §3.1: M_i and M_{i+1}). An object that appears has no
  pixels in the source mask, one that disappears none in the target mask; a
  transition with no change has two empty masks.
* Raises ValueError / RuntimeError (one line) when it cannot segment.

The GroundingDINO + SAM2 segmenter goes behind the same interface: ground the
objects named in each transition text in both frames, segment the boxes,
union the masks per frame. Its torch models do not survive a fork (and a GPU
context not at all), so it sets ``in_process``: a build's per-video workers
then get a ``DeferredSegmenter`` that records what each session needs, and the
build's main process segments the sessions as their videos come back
(``data/build.py``, ``resolve_deferred``).
"""
from __future__ import annotations

import abc

import numpy as np

from .annotate import ground_truth
from .world import changed_oids, object_mask


class Segmenter(abc.ABC):
    name: str = "segmenter"
    in_process: bool = False      # True: runs in the build's main process, never in a forked worker

    @abc.abstractmethod
    def segment(self, frames: np.ndarray, frame_indices, transitions, video_meta: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        ...


def check_masks(segmenter_name: str, masks, n_frames: int, hw) -> None:
    """The contract above, one line on a breach: K - 1 pairs, each mask frame-sized."""
    if len(masks) != n_frames - 1:
        raise ValueError(f"segmenter {segmenter_name} gave {len(masks)} mask pairs for {n_frames} frames")
    for src, tgt in masks:
        if src.shape != tuple(hw) or tgt.shape != tuple(hw):
            raise ValueError(f"segmenter {segmenter_name} gave masks of {src.shape}/{tgt.shape} for frames of {tuple(hw)}")


class DeferredSegmenter(Segmenter):
    """A worker's stand-in for an ``in_process`` segmenter: empty masks now (replaced later), and a
    record of each call's inputs but the frames (the session keeps those), keyed by the session id
    (``video_meta["video_id"]``), which ``take`` hands back with the video's result."""

    def __init__(self, name: str):
        self.name = name          # the real one's: it goes into the sessions' meta and the build record
        self._pending: dict = {}

    def segment(self, frames, frame_indices, transitions, video_meta):
        self._pending[video_meta["video_id"]] = ([int(i) for i in frame_indices], list(transitions), dict(video_meta))
        empty = np.zeros(frames.shape[1:3], np.uint8)
        return [(empty, empty)] * (len(frame_indices) - 1)

    def take(self) -> dict:
        out, self._pending = self._pending, {}
        return out


class GroundTruthSegmenter(Segmenter):
    """Exact RoE masks from the synthetic world's sidecar: union of the changed objects' pixels."""
    name = "ground_truth"

    def segment(self, frames, frame_indices, transitions, video_meta):
        truth = ground_truth(video_meta, frames, frame_indices)
        cfg = truth.cfg
        st = [truth.state(i) for i in frame_indices]
        out = []
        for a, b in zip(st, st[1:]):
            oids = changed_oids(a, b, cfg)
            masks = []
            for s in (a, b):
                m = np.zeros((cfg.image_px, cfg.image_px), bool)
                for o in s.objects:
                    if o.oid in oids:
                        m |= object_mask(o, s.camera, cfg)
                masks.append(m.astype(np.uint8) * 255)
            out.append((masks[0], masks[1]))
        return out


class EmptySegmenter(Segmenter):
    """No RoE maps: every mask empty. For a store trained with ``recipe.roe_prob: 0`` (no CSP/NSP
    tasks), when no GroundingDINO + SAM2 is at hand; its build records segmenter "none"."""
    name = "none"

    def segment(self, frames, frame_indices, transitions, video_meta):
        h, w = np.asarray(frames).shape[1:3]
        return [(np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)) for _ in transitions]
