"""The learned quality filters (data/quality.py): the LAION aesthetic predictor and logo detection.

References: the aesthetic score against the predictor's own module layout (an ``nn.Sequential`` of
Linear and Dropout, as the published weights were saved, run in eval mode on CLIPModel's image features
computed here), the corner rule by hand, and a real build whose sessions a constant head keeps or drops.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostile_pickle import Payload  # noqa: E402
from tiny_clip_dino import save_tiny_clip  # noqa: E402
from tiny_vision_models import save_tiny_grounding_dino  # noqa: E402

from vincie_mcore.config import ConfigError, build  # noqa: E402
from vincie_mcore.data.quality import (AestheticConfig, AestheticScorer, LogoConfig, LogoDetector,  # noqa: E402
                                       QualityConfig, check_session, in_corner, pick, read_head)


def laion_head(dim: int, relu: bool = False) -> nn.Sequential:
    """The improved-aesthetic-predictor's head at a smaller width: Linear/Dropout, ReLUs in the reluMSE form."""
    act = [nn.ReLU()] if relu else []
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(dim, 24), *act, nn.Dropout(0.2), nn.Linear(24, 12), *act, nn.Dropout(0.2),
                         nn.Linear(12, 8), *act, nn.Dropout(0.1), nn.Linear(8, 4), *act, nn.Linear(4, 1)).eval()


class Head(nn.Module):
    def __init__(self, seq):
        super().__init__()
        self.layers = seq            # the published files' key names: layers.N.weight


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def frames_(n=5, h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("relu", [False, True])
def test_aesthetic_score_is_the_predictor_on_normalised_clip_features(clip, tmp_path, relu):
    from transformers import CLIPModel, CLIPProcessor

    seq = laion_head(16, relu)
    torch.save(Head(seq).state_dict(), tmp_path / "head.pth")
    cfg = AestheticConfig(clip_path=clip, head_path=str(tmp_path / "head.pth"), relu=relu)
    frames = frames_()
    got = AestheticScorer(cfg).score(frames)
    model = CLIPModel.from_pretrained(clip, local_files_only=True).eval()
    px = CLIPProcessor.from_pretrained(clip, local_files_only=True)(images=list(frames), return_tensors="pt")
    with torch.no_grad():
        f = model.get_image_features(pixel_values=px["pixel_values"])
        f = f if isinstance(f, torch.Tensor) else f.pooler_output
        want = seq(torch.nn.functional.normalize(f, dim=-1))[:, 0].numpy()
    assert got.shape == (5,) and np.allclose(got, want, atol=1e-5) and np.ptp(want) > 0
    if not relu:                                   # the same weights as safetensors
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in Head(seq).state_dict().items()}, tmp_path / "head.safetensors")
        cfg2 = AestheticConfig(clip_path=clip, head_path=str(tmp_path / "head.safetensors"))
        assert np.allclose(AestheticScorer(cfg2).score(frames), want, atol=1e-5)


def test_bad_heads_are_one_line(clip, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"layers.0.weight": Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"^build.quality.aesthetic.head_path: cannot read .*evil.pth"):
        read_head(tmp_path / "evil.pth")
    assert not marker.exists()                     # weights_only: the pickle's code never ran
    bad = {"not_tensors.pth": {"layers.0.weight": [1.0]},
           "two_outputs.pth": {"layers.0.weight": torch.zeros(2, 16), "layers.0.bias": torch.zeros(2)},
           "gap.pth": {"layers.0.weight": torch.zeros(8, 16), "layers.0.bias": torch.zeros(8),
                       "layers.2.weight": torch.zeros(1, 4), "layers.2.bias": torch.zeros(1)},
           "no_bias.pth": {"layers.0.weight": torch.zeros(1, 16)}}
    want = {"not_tensors.pth": "is not a state dict of tensors", "two_outputs.pth": "gives 2 numbers, not one score",
            "gap.pth": "a layer of 8 outputs feeds one of 4 inputs", "no_bias.pth": "holds no linear layers"}
    for name, sd in bad.items():
        torch.save(sd, tmp_path / name)
        with pytest.raises(ValueError, match=want[name]):
            read_head(tmp_path / name)
    torch.save({"weight": torch.zeros(1, 9), "bias": torch.zeros(1)}, tmp_path / "wide.pth")   # LAION's v1 linear form
    assert len(read_head(tmp_path / "wide.pth")) == 1
    with pytest.raises(ValueError, match=r"the head takes 9 numbers, .* CLIP embeds in 16"):
        AestheticScorer(AestheticConfig(clip_path=clip, head_path=str(tmp_path / "wide.pth")))
    with pytest.raises(ConfigError, match=r"^build.quality.aesthetic.head_path: no .safetensors/.pth/.pt file"):
        build(QualityConfig, {"aesthetic": {"clip_path": clip, "head_path": str(tmp_path / "nope.pth")}}, "build.quality")
    with pytest.raises(ConfigError, match=r"^build.quality.logo.grounding_dino_path: no model folder"):
        build(QualityConfig, {"logo": {"grounding_dino_path": str(tmp_path)}}, "build.quality")
    with pytest.raises(ConfigError, match=r"^build.quality.logo.minscore: unknown key"):
        build(QualityConfig, {"logo": {"minscore": 1}}, "build.quality")


def test_corners_and_picks_by_hand():
    boxes = np.array([[0, 0, 10, 10],            # top-left corner
                      [90, 70, 100, 80],         # bottom-right
                      [45, 0, 55, 10],           # top edge, centred: not a corner
                      [0, 35, 10, 45],           # left edge, middle: not a corner
                      [40, 30, 60, 50]])         # the middle
    assert in_corner(boxes, 80, 100, 0.25).tolist() == [True, True, False, False, False]
    assert in_corner(boxes, 80, 100, 0.0).all()
    assert in_corner(np.zeros((0, 4)), 80, 100, 0.25).shape == (0,)
    assert pick(10, 3).tolist() == [0, 4, 9] or pick(10, 3).tolist() == [0, 5, 9]
    assert pick(2, 3).tolist() == [0, 1] and pick(7, 1).tolist() == [0]


def test_logo_detection_needs_a_box_in_every_checked_frame(tmp_path):
    """The tiny random GroundingDINO (its words only) finds boxes in every frame. A frame's nearness to a corner
    is, by hand, the least over its boxes of the larger of the centre's x and y distances to the nearest edges
    (as fractions): a corner region between the frames' values makes two of three checked frames show a logo,
    so the session stays; one past them all drops it; no box at all (threshold 1) keeps it."""
    torch.manual_seed(0)
    gd = save_tiny_grounding_dino(tmp_path / "gd")
    frames = frames_(4, 48, 64)
    checked = frames[pick(4, 3)]

    def logo(corner, thr=0.5):
        return LogoConfig(grounding_dino_path=gd, prompt="a white square.", box_threshold=thr, text_threshold=0.0,
                          corner_frac=corner, frames=3)
    found = LogoDetector(logo(0.0)).detect(checked)
    assert len(found) == 3 and all(len(s) and b.shape == (len(s), 4) and (s >= 0.5).all() for b, s in found)
    near = []
    for b, _ in found:
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        near.append(float(np.maximum(np.minimum(cx, 64 - cx) / 64, np.minimum(cy, 48 - cy) / 48).min()))
    near = np.sort(near)
    assert np.diff(near).min() > 1e-3, near
    two = float(near[1] + near[2]) / 2
    assert check_session(frames, QualityConfig(logo=logo(two))) == (None, {"logo_frames": "2/3"})
    assert check_session(frames, QualityConfig(logo=logo(float(near[2]) + 1e-3))) == ("logo", {"logo_frames": "3/3"})
    assert check_session(frames, QualityConfig(logo=logo(0.0))) == ("logo", {"logo_frames": "3/3"})   # anywhere
    assert check_session(frames, QualityConfig(logo=logo(0.0, 1.0))) == (None, {"logo_frames": "0/3"})


def test_a_build_keeps_or_drops_sessions_by_their_score(clip, tmp_path):
    """A constant head (weights 0, bias 5): every session scores 5. min_score 4 keeps them with meta.aesthetic 5;
    min_score 6 drops every one, counted low_aesthetic, the video a failure line 'filtered: ...'. The store
    records the section without the device; another min_score on the same store is refused."""
    from real_clips import make_frames, write_clip
    from test_real_videos import DiffAnnotator, DiffSegmenter, small_cfg

    from vincie_mcore.data.inputs import from_directory
    from vincie_mcore.data.real import build_real_sessions
    from vincie_mcore.data.store import SessionStore, StoreMismatch

    torch.save({"weight": torch.zeros(1, 16), "bias": torch.tensor([5.0])}, tmp_path / "const.pth")
    d = tmp_path / "v"
    d.mkdir()
    write_clip(d / "a.mp4", make_frames([("moving", 48)])[0], "h264")

    def cfg(min_score):
        return small_cfg(sampling={"strategy": "fixed", "n_frames": [3, 3]}, quality={"aesthetic": {
            "clip_path": clip, "head_path": str(tmp_path / "const.pth"), "min_score": min_score, "frames": 2}})
    keep = build_real_sessions(from_directory(d), tmp_path / "keep", cfg(4.0), DiffAnnotator(), DiffSegmenter(),
                               progress=False)
    st = SessionStore(tmp_path / "keep")
    assert keep["sessions"] == 1 and st[0].meta["aesthetic"] == pytest.approx(5.0, abs=1e-4)
    assert keep["filters"]["low_aesthetic"] == 0
    import zarr

    recorded = zarr.open_group(str(tmp_path / "keep"), mode="r").attrs["build"]["real"]["quality"]
    assert recorded == {"aesthetic": {"clip_path": clip, "head_path": str(tmp_path / "const.pth"), "min_score": 4.0,
                                      "relu": False, "frames": 2}}
    drop = build_real_sessions(from_directory(d), tmp_path / "drop", cfg(6.0), DiffAnnotator(), DiffSegmenter(),
                               progress=False)
    assert drop["sessions"] == 0 and drop["filtered"] == 1 and drop["filters"]["low_aesthetic"] == 1
    assert SessionStore(tmp_path / "drop").failures()["a.mp4"].startswith("filtered: no shot left (low_aesthetic 1")
    with pytest.raises(StoreMismatch):
        build_real_sessions(from_directory(d), tmp_path / "keep", cfg(6.0), DiffAnnotator(), DiffSegmenter(),
                            progress=False)


def test_a_wrong_model_folder_stops_the_build_before_any_video(clip, tmp_path):
    """A CLIP key pointing at a GroundingDINO folder is refused by its config (transformers would load it as a
    randomly initialised CLIP); check_models at the build's start: a folder whose weights do not load, or a CUDA
    device on a machine without one, is one line naming the key; no store is written."""
    from test_real_videos import DiffAnnotator, DiffSegmenter, small_cfg

    from vincie_mcore.data.inputs import from_directory
    from vincie_mcore.data.real import build_real_sessions

    gd = save_tiny_grounding_dino(tmp_path / "gd")
    torch.save({"weight": torch.zeros(1, 16), "bias": torch.zeros(1)}, tmp_path / "h.pth")
    (tmp_path / "v").mkdir()
    with pytest.raises(ValueError, match=r"^build.quality.aesthetic.clip_path: .*gd holds a 'grounding-dino' model, "
                                         r"not 'clip'$"):
        small_cfg(quality={"aesthetic": {"clip_path": gd, "head_path": str(tmp_path / "h.pth")}})
    import shutil

    shutil.copytree(clip, tmp_path / "broken")
    for f in (tmp_path / "broken").glob("*.safetensors"):
        f.write_bytes(b"not weights")
    wrong = small_cfg(quality={"aesthetic": {"clip_path": str(tmp_path / "broken"), "head_path": str(tmp_path / "h.pth")}})
    with pytest.raises(ValueError, match=r"^build.quality.aesthetic: cannot load or run its model \("):
        build_real_sessions(from_directory(tmp_path / "v"), tmp_path / "s", wrong, DiffAnnotator(), DiffSegmenter(),
                            progress=False)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match=r"^build.quality.logo.grounding_dino_path: .* holds a 'clip' model, "
                                         r"not 'grounding-dino'$"):
        small_cfg(quality={"logo": {"grounding_dino_path": clip}})
    if not torch.cuda.is_available():
        gpu = small_cfg(quality={"logo": {"grounding_dino_path": gd, "device": "cuda"}})
        with pytest.raises(ValueError, match=r"^build.quality.logo.device: 'cuda', but no CUDA device"):
            build_real_sessions(from_directory(tmp_path / "v"), tmp_path / "s", gpu, DiffAnnotator(),
                                DiffSegmenter(), progress=False)


def test_the_threshold_workflow_through_the_cli(clip, tmp_path, capsys):
    """vincie-build-sessions build with build.quality in the YAML (the VLM annotator against the local fake
    server): a sample kept whole (min_score far below) records every session's score; stats prints their
    percentiles; preview --by aesthetic lists them lowest first; the corpus built at the sample's median keeps
    exactly the sessions scoring at or above it, the rest counted low_aesthetic."""
    import json

    import yaml
    from fake_vlm import FakeVLM
    from real_clips import make_frames, write_clip
    from vincie_tools.build_sessions import run_cli

    from vincie_mcore.data.store import SessionStore

    seq = laion_head(16)
    torch.save(Head(seq).state_dict(), tmp_path / "head.pth")
    vids = tmp_path / "v"
    vids.mkdir()
    for k in range(4):
        frames, _ = make_frames([("moving", 24 + 6 * k), ("gradient", 20 + 4 * k)], h=48, w=64)
        write_clip(vids / f"c{k}.mp4", frames, codec="h264", fps=24)

    def build(store, min_score, url):
        conf = {"build": {"decode": {"size": [48, 64]}, "timeout_s": 120, "max_mb": 0,
                          "sampling": {"strategy": "fixed", "n_frames": [3, 3]},
                          "filters": {"min_duration_s": 0.5, "min_height": 32, "min_width": 32, "min_shot_s": 0.3},
                          "quality": {"aesthetic": {"clip_path": clip, "head_path": str(tmp_path / "head.pth"),
                                                    "min_score": min_score}}},
                "annotator": {"kind": "vlm", "base_urls": [url], "model": "tiny-vlm", "max_retries": 1,
                              "backoff_s": 0.01, "timeout_s": 30},
                "segmenter": {"kind": "none"}}
        (tmp_path / "build.yaml").write_text(yaml.safe_dump(conf))
        return run_cli(["build", "--videos", str(vids), "--store", str(tmp_path / store), "--config",
                        str(tmp_path / "build.yaml"), "--quiet"])

    server = FakeVLM(delay=0.0)
    try:
        build("sample", -1e9, server.url)
        st = SessionStore(tmp_path / "sample")
        scores = {st[i].video_id: st[i].meta["aesthetic"] for i in range(len(st))}
        assert len(scores) == 8                                                # two shots a clip, each scored
        s = run_cli(["stats", "--store", str(tmp_path / "sample")])
        median = s["aesthetic"]["p50"]
        assert median == pytest.approx(float(np.median(list(scores.values()))), abs=1e-4)
        assert f"p50 {median}" in capsys.readouterr().out
        run_cli(["preview", "--store", str(tmp_path / "sample"), "--out", str(tmp_path / "pv"), "--sessions", "8",
                 "--by", "aesthetic"])
        shown = [r for sh in json.loads((tmp_path / "pv" / "preview.json").read_text())["sheets"] for r in sh["sessions"]]
        assert [r["video_id"] for r in shown] == sorted(scores, key=scores.get)
        out = build("corpus", median, server.url)
    finally:
        server.close()
    st = SessionStore(tmp_path / "corpus")
    kept = sorted(v for v, a in scores.items() if a >= median)
    assert sorted(st.video_ids()) == kept and 4 <= len(kept) < 8 and out["sessions"] == len(kept)
    assert run_cli(["stats", "--store", str(tmp_path / "corpus")])["aesthetic"]["sessions"] == len(kept)
    counts = [json.loads(x)["counts"] for x in (tmp_path / "corpus" / "parts" / "00000" / "filter_counts.jsonl")
              .read_text().splitlines()]
    assert sum(c.get("low_aesthetic", 0) for c in counts) == 8 - len(kept)
