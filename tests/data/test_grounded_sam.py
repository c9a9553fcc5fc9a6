"""The GroundingDINO + SAM2 segmenter, real transformers code on tiny random models saved locally.

Random weights make the boxes and masks meaningless, so the checks are what does not depend on
them: shapes and values, the union over boxes against SAM2 run box by box, per-entity grounding
against the entities grounded one at a time, empty masks and counts when nothing is grounded, our
SAM2 input steps against ``Sam2Processor`` (where torchvision exists), one-line config errors, and
a store built with it.
"""
import importlib.util

import numpy as np
import pytest
import torch

from vincie_mcore.config import ConfigError, build
from vincie_mcore.data.annotate import GroundTruthAnnotator, Transition
from vincie_mcore.data.grounded_sam import GroundedSAMConfig, GroundedSAMSegmenter, sam2_inputs

from tiny_vision_models import save_tiny_grounding_dino, save_tiny_sam2

ENTITIES = ("a red square", "a man in a coat", "a white cat")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("vision_models")
    return save_tiny_grounding_dino(d / "gdino"), save_tiny_sam2(d / "sam2")


def _seg(folders, **over):
    gd, sam = folders
    return GroundedSAMSegmenter(build(GroundedSAMConfig, {"grounding_dino_path": gd, "sam2_path": sam,
                                                          "box_threshold": 0.0, "text_threshold": 0.0, **over},
                                      "segmenter"))


def _frames(k=3, h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (k, h, w, 3), dtype=np.uint8)


def test_masks_are_binary_frame_sized_and_counted(folders):
    seg = _seg(folders)
    tr = [Transition("t0", "None", ENTITIES[:2]), Transition("t1", "None", ENTITIES[2:]),
          Transition("t2", "None", ())]
    out = seg.segment(_frames(4), [0, 1, 2, 3], tr, {"video_id": "v"})
    assert len(out) == 3
    for src, tgt in out:
        for m in (src, tgt):
            assert m.shape == (48, 64) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    assert out[0][0].any() and not (out[2][0].any() or out[2][1].any())     # no entities: two empty masks
    s = seg.stats()
    assert s["transitions"] == 3 and s["entities"] == 3 and s["unfound"] == 0 and s["empty_transitions"] == 1
    assert 0 < s["boxes"] <= 2 * 3 * 3                                      # max_boxes_per_entity 3, two frames


def test_nothing_grounded_gives_empty_masks_and_counts_the_entities(folders):
    seg = _seg(folders, box_threshold=1.0)                                 # no box scores above 1
    out = seg.segment(_frames(3), [0, 1, 2], [Transition("t", "None", ENTITIES)] * 2, {"video_id": "v7"})
    assert all(not (a.any() or b.any()) for a, b in out)
    s = seg.stats()
    assert s["unfound"] == 6 and s["empty_transitions"] == 2 and s["boxes"] == 0
    assert s["unfound_examples"][0] == "v7: a red square"


@torch.no_grad()
def test_grounding_is_per_entity_and_the_mask_is_the_union_of_per_box_masks(folders):
    seg = _seg(folders, max_boxes_per_entity=2)
    frame = _frames(1, seed=3)[0]
    boxes, hit = seg.ground(frame, list(ENTITIES))
    alone = [seg.ground(frame, [e]) for e in ENTITIES]                     # one entity at a time
    np.testing.assert_allclose(boxes, np.concatenate([b for b, _ in alone]), atol=1e-3)
    assert hit.tolist() == [bool(h[0]) for _, h in alone] and hit.all() and len(boxes) == 2 * len(ENTITIES)
    union = seg.masks(frame, boxes)
    per_box = np.zeros_like(union)
    for b in boxes:
        per_box |= seg.masks(frame, b[None])
    assert union.shape == frame.shape[:2] and union.any()
    assert (union != per_box).mean() < 1e-3                                # float ties at the threshold only


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="Sam2Processor needs torchvision, which the CPU lock cannot hold (tools/gpu_check.sh runs it)")
def test_our_sam2_inputs_match_sam2_processor():
    from transformers import Sam2ImageProcessor

    frame = _frames(1, h=40, w=72)[0]
    ours, scale = sam2_inputs(frame, (128, 128))
    theirs = Sam2ImageProcessor(size={"height": 128, "width": 128})(images=frame, return_tensors="pt")
    torch.testing.assert_close(ours, theirs["pixel_values"], atol=2e-2, rtol=0)
    assert scale == (128 / 72, 128 / 40)


def test_bad_config_is_one_line_naming_the_key(folders, tmp_path):
    gd, sam = folders
    with pytest.raises(ConfigError, match=r"^segmenter.sam2_path: no model folder \(config.json\) at "):
        build(GroundedSAMConfig, {"grounding_dino_path": gd, "sam2_path": str(tmp_path / "none")}, "segmenter")
    # the two folders swapped: transformers would load each as the other class with random weights
    with pytest.raises(ConfigError, match=r"^segmenter.grounding_dino_path: .* holds a 'sam2' model, not 'grounding-dino'$"):
        build(GroundedSAMConfig, {"grounding_dino_path": sam, "sam2_path": gd}, "segmenter")
    with pytest.raises(ConfigError, match=r"^segmenter.box_threshold: must be in \[0, 1\]"):
        build(GroundedSAMConfig, {"grounding_dino_path": gd, "sam2_path": sam, "box_threshold": 2}, "segmenter")


class _NamedEntities(GroundTruthAnnotator):
    """The synthetic world's exact texts, with an entity list as a VLM would name it."""
    name = "ground_truth+entities"

    def annotate(self, frames, frame_indices, video_meta):
        return [Transition(t.text, t.camera, ("a red square",))
                for t in super().annotate(frames, frame_indices, video_meta)]


def test_a_store_built_with_it(folders, tmp_path):
    """Built twice: in this process, and with two per-video workers under the time and memory limits
    (the workers decode; GroundingDINO + SAM2 stay in this process and segment each session as its
    video comes back). The two stores hold the same sessions, masks included, and every call to the
    models ran here."""
    import io
    import os

    from PIL import Image

    from vincie_mcore.data.build import build_sessions
    from vincie_mcore.data.store import SessionStore, read_failures
    from vincie_mcore.data.video import write_synthetic_corpus
    from vincie_mcore.data.world import demo_config

    write_synthetic_corpus(tmp_path / "videos", 3, demo_config(), seed=0)
    seg = _seg(folders)
    s = build_sessions(tmp_path / "videos", tmp_path / "here", annotator=_NamedEntities(), segmenter=seg,
                       progress=False, decode_timeout_s=None, decode_max_mb=None)
    assert s["written"] == 3 and s["failed"] == 0, read_failures(tmp_path / "here")
    pids = []
    segment = seg.segment
    seg.segment = lambda *a: pids.append(os.getpid()) or segment(*a)
    s = build_sessions(tmp_path / "videos", tmp_path / "workers", annotator=_NamedEntities(), segmenter=seg,
                       progress=False, workers=2, decode_timeout_s=60, decode_max_mb=4096)
    assert s["written"] == 3 and s["failed"] == 0, read_failures(tmp_path / "workers")
    assert pids == [os.getpid()] * 3
    here, there = SessionStore(tmp_path / "here"), SessionStore(tmp_path / "workers")
    assert len(here) == len(there) == 3
    masks = 0
    for i in range(3):
        a, b = here[i], there[i]
        assert (a.video_id, a.frames, a.roe_src, a.roe_tgt, a.texts) == (b.video_id, b.frames, b.roe_src, b.roe_tgt,
                                                                           b.texts)
        assert a.meta["segmenter"] == b.meta["segmenter"] == "gdino+sam2"
        frame = np.asarray(Image.open(io.BytesIO(a.frames[0])))
        for png in a.roe_src + a.roe_tgt:
            m = np.asarray(Image.open(io.BytesIO(png)))
            assert m.shape == frame.shape[:2] and set(np.unique(m)) <= {0, 255}
            masks += int(m.any())
    assert masks > 0                      # the masks compared are the segmenter's, not empty stand-ins
