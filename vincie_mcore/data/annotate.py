"""Annotators: the text of each transition between consecutive sampled frames.

Contract (every implementation, ground-truth or model-based):

    annotate(frames, frame_indices, video_meta) -> list[Transition]

* ``frames``: uint8 [K, H, W, 3], the K >= 2 sampled frames, in order;
* ``frame_indices``: the K frame indices (decode order) they came from;
* ``video_meta``: dict with at least ``path``, ``video_id``, ``fps``,
  ``num_frames``; an implementation may cache what it parses in it under keys
  starting with ``_`` (the segmenter sees the same dict);
* returns K - 1 ``Transition(text, camera)``, one per pair (i, i + 1):
  ``text`` an imperative edit instruction turning frame i into frame i + 1
  (changes joined by " and "; "no change" when nothing changed); ``camera``
  the camera motion ("pan left", ...) or "None".
* Raises ValueError / RuntimeError with a one-line message when the video
  cannot be annotated; the builder records it in the failure manifest.

The VLM annotator (paper §3.1, App. C.2 prompt; ``data/vlm.py``) sits behind the same interface:
each frame pair and the prompt go to an OpenAI-compatible server, and the answer becomes a Transition
whose ``entities`` name the regions to segment and whose ``notes`` keep the reply itself (its
descriptions of both frames, the changes it saw): the store keeps them beside the text, so a rater or a
researcher can see why the VLM wrote what it wrote (``eval/human.py``'s annotation study shows them).
``states`` is optional: annotators that know exact scene states (the synthetic
world) return them so the judge can use them; others return None.

``captions`` (optional, one per frame) describe each sampled frame on its own: what text-to-image
samples are conditioned on (``data.recipe.t2i_prob``; paper Fig. 14: the model also learns from T2I data).
The synthetic world's are exact (``world.scene_caption``); a VLM's are its own frame descriptions, kept in
its notes (``captions_from_notes``); an annotator with neither gives None and the store records none.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from .video import SyntheticTruth, load_sidecar, sidecar_path
from .world import camera_label, render, scene_caption, transition_text


@dataclass(frozen=True)
class Transition:
    text: str
    camera: str        # "pan left" ... or "None"
    entities: tuple = ()   # descriptions of the changed characters/objects (what a segmenter grounds)
    notes: dict | None = None   # the annotator's own account (a VLM's parsed reply), stored for audit


def notes_of(transitions) -> list | None:
    """The transitions' notes as a session stores them: one entry (a dict or None) per transition, or None
    when no transition has any (a store of ground-truth texts records no notes key at all)."""
    notes = [getattr(t, "notes", None) for t in transitions]
    return notes if any(n is not None for n in notes) else None


def caption_of(described: dict) -> str:
    """A VLM's description of one frame (``{"scene": ..., "char1": ..., "obj1": ...}``) as one caption:
    the scene first, then each character and object in the order given, each a sentence."""
    parts = [described.get("scene", "")] + [v for k, v in described.items() if k != "scene"]
    parts = [" ".join(str(p).split()).rstrip(".") for p in parts]
    return ". ".join(p for p in parts if p) + "." if any(parts) else ""


def captions_from_notes(notes) -> list | None:
    """Each frame's caption from a VLM's per-transition notes (``vlm.Reply`` dumps): frame i from transition
    i's ``frame1_caption``, the last frame from the last transition's ``frame2_caption``. None when a
    transition has no notes or a frame's description is empty (a session is captioned whole or not at all)."""
    if not notes or any(not isinstance(n, dict) for n in notes):
        return None
    described = [n.get("frame1_caption") for n in notes] + [notes[-1].get("frame2_caption")]
    out = [caption_of(d) if isinstance(d, dict) else "" for d in described]
    return out if all(out) else None


class Annotator(abc.ABC):
    name: str = "annotator"

    @abc.abstractmethod
    def annotate(self, frames: np.ndarray, frame_indices, video_meta: dict) -> list[Transition]:
        ...

    def states(self, frame_indices, video_meta: dict):
        """Exact scene states (JSON dicts) of the sampled frames, or None when unknown."""
        return None

    def captions(self, transitions, frame_indices, video_meta: dict) -> list | None:
        """One caption per sampled frame, or None: by default the frame descriptions in the transitions'
        notes (a VLM's, ``captions_from_notes``)."""
        return captions_from_notes(notes_of(transitions))


def ground_truth(video_meta: dict, frames: np.ndarray | None = None, frame_indices=None,
                 tol: float = 8.0) -> SyntheticTruth:
    """The video's sidecar, parsed once per video and cached in ``video_meta['_truth']``.

    With ``frames``, also checks that they show the scenes the sidecar claims
    (mean abs error per frame <= ``tol``: exact for lossless VP9, a few levels
    for MJPEG), so a sidecar that belongs to another video is caught.
    """
    truth = video_meta.get("_truth")
    if truth is None:
        truth = video_meta["_truth"] = load_sidecar(sidecar_path(video_meta["path"]))
    if frame_indices is not None:
        bad = [i for i in frame_indices if not 0 <= i < truth.num_frames]
        if bad:
            raise ValueError(f"sidecar covers {truth.num_frames} frames, sampled frame {bad[0]} is beyond it")
    if frames is not None and not video_meta.get("_verified"):
        for f, i in zip(frames, frame_indices):
            ref = render(truth.state(i), truth.cfg)
            if ref.shape != f.shape or np.abs(ref.astype(np.int16) - f).mean() > tol:
                raise ValueError(f"sidecar does not match the video at frame {i}")
        video_meta["_verified"] = True
    return truth


class GroundTruthAnnotator(Annotator):
    """Exact texts from the synthetic world's sidecar: diff of the scene states."""
    name = "ground_truth"

    def annotate(self, frames, frame_indices, video_meta):
        truth = ground_truth(video_meta, frames, frame_indices)
        st = [truth.state(i) for i in frame_indices]
        return [Transition(transition_text(a, b, truth.cfg), camera_label(a, b)) for a, b in zip(st, st[1:])]

    def states(self, frame_indices, video_meta):
        truth = ground_truth(video_meta, frame_indices=frame_indices)
        return [truth.state(i).to_dict() for i in frame_indices]

    def captions(self, transitions, frame_indices, video_meta):
        truth = ground_truth(video_meta, frame_indices=frame_indices)
        return [scene_caption(truth.state(i), truth.cfg) for i in frame_indices]
