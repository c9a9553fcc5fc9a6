"""Real videos -> sessions (data/inputs.py, video.py's seek reader, shots.py, filters.py, real.py).

Independent references: the cut frames the clips were written with; a decode-everything
reader (``read_all_timed``) against the seek reader; the pts a VFR clip was written with;
the picture a rotated clip was made from.
"""
from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from real_clips import (CODECS, corrupt_middle_packet, make_frames, scene_frame, unsupported_codec, write_audio_only,
                        write_clip)

from vincie_mcore.config import build
from vincie_mcore.data.annotate import Annotator, Transition
from vincie_mcore.data.filters import FilterConfig
from vincie_mcore.data.inputs import InputsConfig, from_directory, from_manifest
from vincie_mcore.data.real import RealBuildConfig, build_real_sessions, read_stats
from vincie_mcore.data.sampling import SamplingConfig, sample_shot_times, sample_shot_windows
from vincie_mcore.data.segment import Segmenter
from vincie_mcore.data.shots import ShotConfig, scan_video
from vincie_mcore.data.store import SessionStore
from vincie_mcore.data.video import (DecodeConfig, fit_frame, frame_at, probe_stream, read_all_timed,
                                     read_at_times)

SCENES = [("moving", 30), ("gradient", 25), ("moving", 35), ("freeze", 60)]     # cuts at 30, 55, 90


def png(b):
    return np.asarray(Image.open(io.BytesIO(b)))


# ----------------------------------------------------------------------------- test scaffolding
class DiffAnnotator(Annotator):
    """TEST SCAFFOLDING, not a model: a deterministic text from the mean brightness change, so
    the pipeline's plumbing can be checked without a VLM (the VLM annotator lives in data/vlm.py)."""
    name = "test_diff"

    def annotate(self, frames, frame_indices, video_meta):
        assert video_meta["frame_times"] and len(video_meta["frame_times"]) == len(frames)
        out = []
        for a, b in zip(frames, frames[1:]):
            d = float(b.astype(np.int16).mean() - a.astype(np.int16).mean())
            out.append(Transition(f"change brightness by {d:+.0f}", "None"))
        return out


class DiffSegmenter(Segmenter):
    """TEST SCAFFOLDING: the RoE is where the two frames differ by more than 40 levels."""
    name = "test_diff"

    def segment(self, frames, frame_indices, transitions, video_meta):
        out = []
        for a, b in zip(frames, frames[1:]):
            m = (np.abs(a.astype(np.int16) - b).max(-1) > 40).astype(np.uint8) * 255
            out.append((m, m))
        return out


def small_cfg(**over) -> RealBuildConfig:
    d = {"decode": {"size": [48, 64]}, "sampling": {"strategy": "mixed", "interval_s": 0.25, "n_frames": [2, 6]},
         "filters": {"min_duration_s": 0.5, "min_height": 32, "min_width": 32, "min_shot_s": 0.3},
         "timeout_s": 60, "max_mb": 0}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return build(RealBuildConfig, d, "build")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    frames, cuts = make_frames(SCENES)
    paths = {}
    for codec in ("h264", "vp9"):
        p = d / f"cuts{CODECS[codec][1]}"
        write_clip(p, frames, codec)
        paths[codec] = p
    return d, paths, frames, cuts


# ----------------------------------------------------------------------------- shots
@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_cuts_found_within_one_frame(clips, codec):
    _, paths, frames, cuts = clips
    p = paths[codec]
    scan = scan_video(p, ShotConfig(detector="content"), probe_stream(p))
    assert len(scan.cuts) == len(cuts)
    assert all(abs(a - b) <= 1 for a, b in zip(scan.cuts, cuts)), (scan.cuts, cuts)
    assert [s.num_frames for s in scan.shots] and sum(s.num_frames for s in scan.shots) == len(frames)
    # adaptive: may miss a cut on these tiny clips, but finds no cut that is not there
    ad = scan_video(p, ShotConfig(detector="adaptive", threshold=3.0), probe_stream(p))
    assert all(min(abs(c - t) for t in cuts) <= 1 for c in ad.cuts)


def test_sessions_never_cross_a_cut(clips, tmp_path):
    d, paths, frames, cuts = clips
    cut_times = [c / 24 for c in cuts]
    cfg = small_cfg(sampling={"interval_s": 0.2, "max_frames": 20})
    s = build_real_sessions(from_directory(d), tmp_path / "s", cfg, DiffAnnotator(), DiffSegmenter(), progress=False)
    assert s["failed"] == 0 and s["sessions"] >= 6
    st = SessionStore(tmp_path / "s")
    for i in range(len(st)):
        r = st[i]
        ft = r.meta["frame_times"]
        assert 2 <= len(ft) <= 20 and ft == sorted(ft)
        assert not any(ft[0] < c <= ft[-1] for c in cut_times), (r.video_id, ft)     # no cut inside a session
        a, b = r.meta["shot_span_s"]
        assert a <= ft[0] and ft[-1] <= b
        assert png(r.frames[0]).shape == (48, 64, 3) and png(r.roe_src[0]).shape == (48, 64)


def test_long_shots_give_a_session_per_window(clips, tmp_path):
    """sampling.windows: every shot at 0.25 s intervals with max_frames 4 gives consecutive windows of at most
    4 frames inside the shot, ids _w001, _w002, ... after the first, each through the filters on its own (the
    clip's four shots: seven sessions); without it, the first window only, the same session under the same id."""
    d, paths, frames, cuts = clips
    one = {"decode": {"size": [48, 64]}, "shots": {"detector": "content"}}
    plain = small_cfg(sampling={"strategy": "equal", "interval_s": 0.25, "max_frames": 4}, **one)
    wide = small_cfg(sampling={"strategy": "equal", "interval_s": 0.25, "max_frames": 4, "windows": True}, **one)
    clip = tmp_path / "in"
    clip.mkdir()
    shutil.copy(paths["h264"], clip / "v.mp4")
    build_real_sessions(from_directory(clip), tmp_path / "a", plain, DiffAnnotator(), DiffSegmenter(), progress=False)
    build_real_sessions(from_directory(clip), tmp_path / "b", wide, DiffAnnotator(), DiffSegmenter(), progress=False)
    a, b = SessionStore(tmp_path / "a"), SessionStore(tmp_path / "b")
    import zarr
    assert "windows" not in zarr.open_group(str(tmp_path / "a"), mode="r").attrs["build"]["real"]["sampling"]  # stores
    # built before the key existed resume: it is recorded only when on
    ra = {a[i].video_id: a[i] for i in range(len(a))}
    rb = {b[i].video_id: b[i] for i in range(len(b))}
    assert set(ra) < set(rb) and all(ra[k].meta["frame_times"] == rb[k].meta["frame_times"] for k in ra)
    for shot in {r.meta["shot"] for r in rb.values()}:
        wins = sorted((r for r in rb.values() if r.meta["shot"] == shot), key=lambda r: r.meta["window"])
        times = [t for r in wins for t in r.meta["frame_times"]]
        lo, hi = wins[0].meta["shot_span_s"]
        assert times == sorted(times) and lo <= times[0] and times[-1] <= hi + 1e-6     # consecutive, in the shot
        assert all(len(r.meta["frame_times"]) <= 4 for r in wins)
        assert [r.video_id.rsplit("/", 1)[1] for r in wins] == \
            [f"shot_{shot:04d}"] + [f"shot_{shot:04d}_w{w:03d}" for w in range(1, len(wins))]
    assert sorted(rb) == ["v.mp4/shot_0000", "v.mp4/shot_0001", "v.mp4/shot_0002", "v.mp4/shot_0002_w001",
                          "v.mp4/shot_0003", "v.mp4/shot_0003_w001", "v.mp4/shot_0003_w002"] and len(ra) == 4


def test_shot_sampling_strategies():
    rng = np.random.default_rng(0)
    eq, s = sample_shot_times(1.0, 4.0, SamplingConfig(strategy="equal", interval_s=1.0), rng)
    assert s == "equal" and eq == [1.0, 2.0, 3.0, 4.0]
    fx, s = sample_shot_times(1.0, 4.0, SamplingConfig(strategy="fixed", n_frames=(4, 4)), rng)
    assert s == "fixed" and fx == [1.0, 2.0, 3.0, 4.0]
    capped, _ = sample_shot_times(0.0, 100.0, SamplingConfig(strategy="equal", interval_s=1.0, max_frames=20), rng)
    assert len(capped) == 20
    snapped, _ = sample_shot_times(0.0, 1.0, SamplingConfig(strategy="fixed", n_frames=(6, 6)), rng,
                                   frame_times=[0.0, 0.5, 1.0])
    assert snapped == [0.0, 0.5, 1.0]                     # six wanted times land on three frames
    # windows: a 100 s shot at 1 s intervals, max 20 frames -> 101 times in 5 windows of 20 (the 101st alone: dropped)
    wins = sample_shot_windows(0.0, 100.0, SamplingConfig(strategy="equal", interval_s=1.0, max_frames=20,
                                                          windows=True), rng)
    assert [len(w) for w, _ in wins] == [20] * 5 and wins[0][0] == capped and wins[1][0][0] == 20.0
    assert sample_shot_windows(0.0, 100.0, SamplingConfig(strategy="fixed", n_frames=(3, 3), windows=True), rng)[0][0] \
        == [0.0, 50.0, 100.0]                               # fixed-frame: one session over the shot, as before
    assert len(sample_shot_windows(0.0, 100.0, SamplingConfig(strategy="equal", interval_s=1.0), rng)) == 1


# ----------------------------------------------------------------------------- decode
@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_seek_equals_full_decode(clips, codec):
    """Exact, for H.264 (B-frames, GOP 12) as for VP9: seeking lands on a keyframe and decoding
    forward from it gives the same pixels as decoding from the start."""
    _, paths, frames, _ = clips
    times_all, ref = read_all_timed(paths[codec])
    assert len(ref) == len(frames)
    rng = np.random.default_rng(1)
    want = list(rng.uniform(0, times_all[-1] + 0.1, 20)) + [times_all[7], times_all[100], times_all[3], -0.5]
    for gap in (0.0, 2.0):                                  # always seek; decode on when close
        got, got_t = read_at_times(paths[codec], want, DecodeConfig(seek_gap_s=gap))
        for t, g, gt in zip(want, got, got_t):
            i = frame_at(times_all, t)
            assert gt == pytest.approx(times_all[i], abs=1e-9) and np.array_equal(g, ref[i]), (t, i)


def test_rotated_clip_comes_out_upright(tmp_path):
    up = np.stack([scene_frame("moving", k, 64, 96, 2) for k in range(12)])     # upright: 64 tall, 96 wide
    # a camera stores it turned a quarter clockwise and asks players to turn it back (90 ccw)
    write_clip(tmp_path / "r.mp4", np.ascontiguousarray(np.rot90(up, k=-1, axes=(1, 2))), "h264", rotation=90)
    info = probe_stream(tmp_path / "r.mp4")
    assert (info.rotation, info.height, info.width) == (90, 64, 96)
    (f,), _ = read_at_times(tmp_path / "r.mp4", [0.2])
    assert f.shape == (64, 96, 3)
    assert np.abs(f.astype(int) - up[frame_at(np.arange(12) / 24, 0.2)]).mean() < 3
    # a 'rotate=90' phone file: the MP4 track matrix turns it a quarter clockwise (no PyAV writer involved)
    write_clip(tmp_path / "p.mp4", np.ascontiguousarray(np.rot90(up, k=1, axes=(1, 2))), "h264")
    data = bytearray((tmp_path / "p.mp4").read_bytes())
    m = data.find(b"tkhd") + 4 + 40                          # version 0 tkhd: the 3x3 matrix after 40 bytes
    data[m:m + 36] = np.array([0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30], ">i4").tobytes()
    (tmp_path / "p.mp4").write_bytes(bytes(data))
    assert probe_stream(tmp_path / "p.mp4").rotation == 270
    (g,), _ = read_at_times(tmp_path / "p.mp4", [0.2])
    assert g.shape == (64, 96, 3) and np.abs(g.astype(int) - up[4]).mean() < 3


def test_vfr_clip_samples_by_time(tmp_path):
    """Frame k shows grey level 20 + 3k; the frames sit at uneven times. The frame picked for t is
    the one on screen at t by the written pts, not index round(t * fps)."""
    n = 50
    pts = np.cumsum(np.r_[0, np.random.default_rng(2).choice([20, 40, 120], n - 1)])     # ms
    frames = np.stack([np.full((48, 64, 3), 20 + 3 * k, np.uint8) for k in range(n)])
    write_clip(tmp_path / "v.mkv", frames, "h264", pts_ms=pts)
    want = list(np.arange(0, pts[-1] / 1000, 0.1))
    got, got_t = read_at_times(tmp_path / "v.mkv", want)
    index_guess_wrong = 0
    for t, g, gt in zip(want, got, got_t):
        k = int(np.searchsorted(pts / 1000, t + 1e-6, side="right") - 1)
        assert round((g.mean() - 20) / 3) == k and gt == pytest.approx(pts[k] / 1000)
        index_guess_wrong += round(t * probe_stream(tmp_path / "v.mkv").fps) != k
    assert index_guess_wrong > len(want) // 2             # a frame-index reader would pick other frames


def test_odd_size_and_aspect_policies(tmp_path):
    frames = np.stack([scene_frame("moving", k, 61, 97, 1) for k in range(10)])
    write_clip(tmp_path / "o.webm", frames, "vp9")
    (f,), _ = read_at_times(tmp_path / "o.webm", [0.1])
    assert f.shape == (61, 97, 3)
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, :25] = 255                                       # white left quarter
    assert fit_frame(img, (40, 40), "center_crop")[:, 2:].max() < 30         # the white left quarter is cut away
    pad = fit_frame(img, (40, 40), "pad", pad_value=7)
    assert pad.shape == (40, 40, 3) and (pad[:10] == 7).all() and (pad[-10:] == 7).all() and pad[15:25, :8].min() > 200
    st = fit_frame(img, (40, 40), "resize")
    assert st[:, :8].min() > 200 and st[:, 12:].max() < 60
    with pytest.raises(ValueError, match="build.decode.aspect"):
        DecodeConfig(aspect="stretch")


# ----------------------------------------------------------------------------- filters
def test_each_filter_counts(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    write_clip(d / "short.mp4", make_frames([("moving", 8)])[0], "h264")                      # 0.33 s
    write_clip(d / "tiny.mp4", make_frames([("moving", 30)], h=24, w=32)[0], "h264")          # 32x24
    write_clip(d / "static.mp4", make_frames([("still", 40)])[0], "h264")
    write_clip(d / "black.mp4", make_frames([("moving", 30), ("black", 30)])[0], "h264")
    write_clip(d / "grey.mp4", make_frames([("moving", 30), ("grey", 30)])[0], "h264")
    write_clip(d / "freeze.mp4", make_frames([("freeze", 60)])[0], "h264")
    write_clip(d / "cutshort.mp4", make_frames([("moving", 30), ("gradient", 14)])[0], "h264")   # 0.54 s shot
    cfg = small_cfg(sampling={"strategy": "fixed", "n_frames": [5, 5]},
                    filters={"min_duration_s": 1.0, "min_shot_s": 0.8})
    s = build_real_sessions(from_directory(d), tmp_path / "s", cfg, DiffAnnotator(), DiffSegmenter(), progress=False)
    f = s["filters"]
    assert f["short_video"] == 1 and f["low_resolution"] == 1 and f["static_shot"] == 1
    assert f["black_frame"] == 5 and f["blank_frame"] == 5 and f["short_shot"] == 1
    assert f["duplicate_frame"] >= 1 and f["too_few_frames"] >= 2
    fails = SessionStore(tmp_path / "s").failures()
    assert fails["short.mp4"] == "filtered: video lasts 0.33s < min_duration_s=1"
    assert fails["tiny.mp4"] == "filtered: video is 32x24 < min 32x32"
    assert "static_shot 1" in fails["static.mp4"]
    st = SessionStore(tmp_path / "s")
    assert sorted(st.video_ids()) == ["black.mp4/shot_0000", "cutshort.mp4/shot_0000", "freeze.mp4/shot_0000", "grey.mp4/shot_0000"]
    fr = next(st[i] for i in range(len(st)) if st[i].video_id == "freeze.mp4/shot_0000")
    assert len(fr.frames) < 5                                # the held frames went as duplicates
    assert read_stats(tmp_path / "s") == f


def test_multi_shot_scenes(tmp_path):
    """shots.scene_max_shots: a clip of four shots, A | A flipped | B | B flipped (B in other colours): each
    flip is a cut (every pixel moves) within one scene (the same colours). At 1 (the default) four
    single-shot sessions; at 4, two scene sessions sampled across their cut; at similarity 0 one of all
    four, and at most 3 shots a scene of three and the last shot alone. The histogram overlap by hand."""
    from vincie_mcore.data.shots import colour_hist, scenes, similarity

    a = make_frames([("moving", 30)])[0]
    b = np.stack([scene_frame("moving", k, 72, 96, 2) for k in range(30)])
    frames = np.concatenate([a, a[:, :, ::-1], b, b[:, :, ::-1]])
    d = tmp_path / "v"
    d.mkdir()
    write_clip(d / "four.mp4", frames, "h264")
    one = np.zeros((4, 4, 3), np.uint8)
    assert similarity(colour_hist(one), colour_hist(one)) == pytest.approx(1.0)
    assert similarity(colour_hist(one), colour_hist(one + 255)) == 0.0
    half = one.copy()
    half[:2] = 255                                           # half the pixels in the top bin of every channel
    assert similarity(colour_hist(one), colour_hist(half)) == pytest.approx(0.5)

    def build(name, **shots):
        cfg = small_cfg(sampling={"strategy": "equal", "interval_s": 0.5, "max_frames": 20}, shots=shots)
        s = build_real_sessions(from_directory(d), tmp_path / name, cfg, DiffAnnotator(), DiffSegmenter(),
                                progress=False)
        st = SessionStore(tmp_path / name)
        return s, {st[i].video_id: st[i] for i in range(len(st))}

    info = probe_stream(d / "four.mp4")
    scan = scan_video(d / "four.mp4", build_section_shots(scene_max_shots=4), info)
    assert scan.cuts == [30, 60, 90] and scan.hists.shape == (4, 24)
    sims = [similarity(scan.hists[k], scan.hists[k + 1]) for k in range(3)]
    assert sims[0] > 0.9 and sims[2] > 0.9 and sims[1] < 0.5, sims      # a flip keeps the colours
    assert [[x.index for x in sc] for sc in scenes(scan, build_section_shots(scene_max_shots=4))] == [[0, 1], [2, 3]]

    s, rows = build("single")
    assert sorted(rows) == [f"four.mp4/shot_{k:04d}" for k in range(4)] and s["filters"]["multi_shot_scene"] == 0
    s, rows = build("scenes", scene_max_shots=4)
    assert sorted(rows) == ["four.mp4/shot_0000_to_0001", "four.mp4/shot_0002_to_0003"]
    assert s["filters"]["multi_shot_scene"] == 2
    for r in rows.values():
        first, last = r.meta["scene_shots"]
        cut = (30 if first == 0 else 90) / 24
        ft = r.meta["frame_times"]
        assert ft[0] < cut < ft[-1], ft                      # sampled across the scene's cut
        assert r.meta["shot_span_s"][0] < cut < r.meta["shot_span_s"][1]
    _, rows = build("all", scene_max_shots=4, scene_min_similarity=0.0)
    assert sorted(rows) == ["four.mp4/shot_0000_to_0003"]
    _, rows = build("three", scene_max_shots=3, scene_min_similarity=0.0)
    assert sorted(rows) == ["four.mp4/shot_0000_to_0002", "four.mp4/shot_0003"]
    assert "scene_shots" not in rows["four.mp4/shot_0003"].meta


def build_section_shots(**kw) -> ShotConfig:
    return build(ShotConfig, kw, "build.shots")


@pytest.mark.parametrize("features", ["clip", "dino"])
def test_scenes_by_model_embeddings(tmp_path, features):
    """shots.scene_features: clip / dino on the clip of ``test_multi_shot_scenes``: each shot's feature is the
    unit mean of the model's embeddings (CLIP's image features, DINO's CLS token) of every 12th frame (2 a
    second at 24 fps) in it, equal to decoding those frames with PyAV and running the model by hand; scenes
    follow the cosines at a threshold set between them; the build groups the same way and records the
    features and the one folder used in its recipe; a shot no embedded frame falls in joins nothing; bad
    settings are one line naming the key."""
    import sys
    from pathlib import Path

    import av
    import torch
    from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPModel, ViTModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
    from tiny_clip_dino import save_tiny_clip, save_tiny_dino

    from vincie_mcore.config import ConfigError
    from vincie_mcore.data.shots import Shot, scenes, shot_means, shot_similarity

    a = make_frames([("moving", 30)])[0]
    b = np.stack([scene_frame("moving", k, 72, 96, 2) for k in range(30)])
    d = tmp_path / "v"
    d.mkdir()
    write_clip(d / "four.mp4", np.concatenate([a, a[:, :, ::-1], b, b[:, :, ::-1]]), "h264")
    clip = save_tiny_clip(tmp_path / "clip")
    dino = save_tiny_dino(tmp_path / "dino", image_size=32, processor=True)
    key, folder = {"clip": ("scene_clip_path", clip), "dino": ("scene_dino_path", dino)}[features]
    shots = dict(scene_max_shots=4, scene_features=features, **{key: folder})
    scan = scan_video(d / "four.mp4", build_section_shots(**shots), probe_stream(d / "four.mp4"))
    assert scan.cuts == [30, 60, 90] and scan.hists is None
    assert scan.embeds.shape == (4, 16 if features == "clip" else 32)

    with av.open(str(d / "four.mp4")) as c:                    # the reference: decoded and embedded by hand
        rgb = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    if features == "clip":
        model, proc = CLIPModel.from_pretrained(clip).eval(), CLIPImageProcessor.from_pretrained(clip)
    else:
        model, proc = ViTModel.from_pretrained(dino, add_pooling_layer=False).eval(), AutoImageProcessor.from_pretrained(dino)
    want = []
    for lo in (0, 30, 60, 90):
        picked = [rgb[i] for i in range(lo, lo + 30) if i % 12 == 0]
        px = proc(images=picked, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            if features == "clip":
                e = model.get_image_features(pixel_values=px)
                e = (e if isinstance(e, torch.Tensor) else e.pooler_output).numpy()
            else:
                e = model(pixel_values=px).last_hidden_state[:, 0].numpy()
        m = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
        want.append(m / np.linalg.norm(m))
    np.testing.assert_allclose(scan.embeds, np.stack(want), atol=1e-5)

    sims = [float(np.dot(want[k], want[k + 1])) for k in range(3)]
    assert [shot_similarity(scan, k, k + 1) for k in range(3)] == pytest.approx(sims, abs=1e-5)
    order = sorted(sims)
    thr = (order[1] + order[2]) / 2                            # between the second and the most alike pair
    expect = [[0]]
    for k in range(1, 4):                                      # the rule by hand: join the scene before, or not
        if sims[k - 1] >= thr:
            expect[-1].append(k)
        else:
            expect.append([k])
    cfg = build_section_shots(**shots, scene_min_similarity=round(thr, 6))
    assert [[x.index for x in sc] for sc in scenes(scan, cfg)] == expect and len(expect) == 3

    bcfg = small_cfg(sampling={"strategy": "equal", "interval_s": 0.5, "max_frames": 20},
                     shots={**shots, "scene_min_similarity": round(thr, 6)})
    build_real_sessions(from_directory(d), tmp_path / "store", bcfg, DiffAnnotator(), DiffSegmenter(), progress=False)
    st = SessionStore(tmp_path / "store")
    names = {(sc[0], sc[-1]) for sc in expect}
    assert sorted(st[i].video_id for i in range(len(st))) == sorted(
        f"four.mp4/shot_{f:04d}" + (f"_to_{t:04d}" if t != f else "") for f, t in names)
    rec = bcfg.recipe()["shots"]
    assert rec["scene_features"] == features and rec[key] == folder and "scene_device" not in rec
    other = {"scene_clip_path", "scene_dino_path"} - {key}
    if features == "dino":                              # stores made with CLIP scenes before DINO came still resume
        assert not other & set(rec)
    assert not {"scene_features", "scene_dino_path"} & set(small_cfg().recipe()["shots"])   # colour: as before

    empty = shot_means(np.eye(2, dtype=np.float32), np.array([0, 5]), [Shot(0, 0, 1, 3), Shot(1, 1, 2, 2),
                                                                       Shot(2, 2, 3, 3)])
    assert np.array_equal(empty, [[1, 0], [0, 0], [0, 1]])                # shot 1 holds no embedded frame

    wrong = {"clip": dino, "dino": clip}[features]
    for kw, msg in ((dict(scene_features="siglip"), r"^build.shots.scene_features: must be one of"),
                    (dict(scene_features=features), rf"^build.shots.{key}: no model folder"),
                    (dict(scene_features=features, **{key: wrong}),
                     rf"^build.shots.{key}: .* holds a '{'vit' if features == 'clip' else 'clip'}' model, not "),
                    (dict(shots, scene_fps=0), r"^build.shots.scene_fps: must be")):
        with pytest.raises((ValueError, ConfigError), match=msg):
            build_section_shots(**kw)
    (Path(folder) / "model.safetensors").write_bytes(b"not a model")       # a broken folder: before any video
    with pytest.raises(ValueError, match=rf"^build.shots.{key}: cannot load or run its model \("):
        build_real_sessions(from_directory(d), tmp_path / "store2", bcfg, DiffAnnotator(), DiffSegmenter(),
                            progress=False)
    assert not (tmp_path / "store2").exists()


def test_black_borders_are_cropped(tmp_path):
    """filters.border_max_luma: a letterboxed clip (10 black rows above and below a moving scene) gives sessions
    cropped to the picture, counted as black_border; off (the default), the bars stay in the frames. The
    detector alone: exact bars, pillarbox, a picture black throughout left to the black-frame filter."""
    from vincie_mcore.data.filters import black_borders

    frames = make_frames([("moving", 48)])[0].copy()                 # [T, 72, 96, 3]
    frames[:, :10], frames[:, -10:] = 0, 0
    d = tmp_path / "v"
    d.mkdir()
    write_clip(d / "letterbox.mp4", frames, "h264")
    on = small_cfg(sampling={"strategy": "fixed", "n_frames": [3, 3]}, filters={"border_max_luma": 16.0})
    off = small_cfg(sampling={"strategy": "fixed", "n_frames": [3, 3]})
    s = build_real_sessions(from_directory(d), tmp_path / "on", on, DiffAnnotator(), DiffSegmenter(), progress=False)
    build_real_sessions(from_directory(d), tmp_path / "off", off, DiffAnnotator(), DiffSegmenter(), progress=False)
    a, b = SessionStore(tmp_path / "on")[0], SessionStore(tmp_path / "off")[0]
    top, bottom, left, right = a.meta["border_cropped"]
    assert 9 <= top <= 11 and 9 <= bottom <= 11 and left == right == 0 and s["filters"]["black_border"] == 1
    y = lambda im: (0.299 * im[..., 0] + 0.587 * im[..., 1] + 0.114 * im[..., 2])      # noqa: E731
    assert y(png(b.frames[0])[0]).mean() < 16 and y(png(a.frames[0])[0]).mean() > 40   # the top row: bar / picture
    assert b.meta["border_cropped"] == [0, 0, 0, 0]
    pic = np.full((20, 30, 3), 100, np.uint8)
    pic[:, :4] = pic[:, -6:] = 0
    assert black_borders([pic, pic], 16) == (0, 0, 4, 6)
    assert black_borders([np.zeros((20, 30, 3), np.uint8)], 16) == (0, 0, 0, 0)
    dark = pic.copy()
    dark[:, :4] = 200                                               # bright in one frame: not a border
    assert black_borders([pic, dark], 16) == (0, 0, 0, 6)


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_skipped_with_reasons(clips, tmp_path):
    _, paths, _, _ = clips
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(paths["h264"], root / "good.mp4")
    shutil.copy(paths["vp9"], root / "good2.webm")
    frames = make_frames([("moving", 40), ("gradient", 40)])[0]
    write_clip(root / "fs.mp4", frames, "h264", faststart=True)
    data = (root / "fs.mp4").read_bytes()
    (root / "trunc_fast.mp4").write_bytes(data[: len(data) * 6 // 10])          # moov first, media cut
    (root / "fs.mp4").unlink()
    data = (root / "good.mp4").read_bytes()
    (root / "trunc.mp4").write_bytes(data[: len(data) // 2])                    # moov at the end: lost
    write_audio_only(root / "audio.m4a")
    (root / "audio.m4a").rename(root / "audio.mp4")
    (root / "empty.mp4").write_bytes(b"")
    unsupported_codec(root / "good.mp4", root / "codec.mp4")
    corrupt_middle_packet(root / "good.mp4", root / "corrupt.mp4")
    outside = tmp_path / "outside.mp4"
    shutil.copy(paths["h264"], outside)
    os.symlink(outside, root / "link.mp4")

    rows = [{"path": "good.mp4", "caption": "a clip"}, {"path": "good2.webm", "id": "second"},
            {"path": "trunc.mp4"}, {"path": "trunc_fast.mp4"}, {"path": "audio.mp4"}, {"path": "empty.mp4"},
            {"path": "codec.mp4"}, {"path": "corrupt.mp4"},
            {"path": "../outside.mp4"}, {"path": str(outside)}, {"path": "link.mp4"},
            {"path": "good.mp4", "id": "../../evil"}, {"path": "missing.mp4"}, {"caption": "no path"}]
    man = tmp_path / "m.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    inputs = from_manifest(man, root=root)
    assert len(inputs.videos) == 8 and len(inputs.skipped) == 7
    reasons = dict(inputs.skipped)
    assert "climbs out" in reasons["m.jsonl:9"] and "absolute path" in reasons["m.jsonl:10"]
    assert "leads out" in reasons["m.jsonl:11"] and "climbs out" in reasons["m.jsonl:12"]
    assert "not a file" in reasons["m.jsonl:13"] and "no 'path'" in reasons["m.jsonl:14"]
    assert "not a JSON object" in reasons["m.jsonl:15"]

    cfg = small_cfg(workers=2)
    # first the good videos alone: what they write must survive the bad run
    good = from_manifest(man, root=root)
    good.videos, good.skipped = [v for v in good.videos if v.video_id in ("good.mp4", "second")], []
    s1 = build_real_sessions(good, tmp_path / "s", cfg, DiffAnnotator(), DiffSegmenter(), progress=False)
    before = SessionStore(tmp_path / "s")
    first = {before[i].video_id: before[i].frames for i in range(len(before))}
    assert s1["written_videos"] == 2 and s1["failed"] == 0

    s = build_real_sessions(inputs, tmp_path / "s", cfg, DiffAnnotator(), DiffSegmenter(), progress=False)
    assert (s["skipped"], s["failed"], s["written_videos"]) == (2, 6, 0)
    fails = SessionStore(tmp_path / "s").failures()
    assert fails["trunc.mp4"].startswith("cannot open video trunc.mp4")
    assert fails["trunc_fast.mp4"].startswith(("truncated video trunc_fast.mp4", "corrupt video trunc_fast.mp4"))
    assert fails["audio.mp4"] == "no video stream in audio.mp4"
    assert fails["empty.mp4"] == "empty file empty.mp4: zero bytes"
    assert fails["codec.mp4"].startswith("unsupported codec in codec.mp4")
    assert fails["corrupt.mp4"].startswith("corrupt video corrupt.mp4")
    assert sum(k.startswith("inputs:m.jsonl:") for k in fails) == 7
    lines = (tmp_path / "s" / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 13 and all(json.loads(l)["reason"] for l in lines)
    after = SessionStore(tmp_path / "s")
    assert {after[i].video_id: after[i].frames for i in range(len(after))} == first     # nothing lost
    assert after[0].meta["caption"] == "a clip"
    s3 = build_real_sessions(inputs, tmp_path / "s", cfg, DiffAnnotator(), DiffSegmenter(), progress=False)
    assert (s3["skipped"], s3["failed"]) == (8, 0)                                      # a rerun has nothing to do
    assert len((tmp_path / "s" / "failures.jsonl").read_text().splitlines()) == 13


def test_inputs_directory_and_csv(tmp_path):
    (tmp_path / "my clips").mkdir()
    frames = make_frames([("moving", 30)])[0]
    write_clip(tmp_path / "my clips" / "a b.mp4", frames, "h264")
    (tmp_path / "notes.txt").write_text("x")
    inp = from_directory(tmp_path)
    assert [v.video_id for v in inp.videos] == ["my~20clips/a~20b.mp4"]
    (tmp_path / "m.csv").write_text('path,caption,id\n"my clips/a b.mp4",a square,x1\n../a.mp4,,\n')
    inp = from_manifest(tmp_path / "m.csv")
    assert [(v.video_id, v.caption) for v in inp.videos] == [("x1", "a square")] and len(inp.skipped) == 1
    with pytest.raises(ValueError, match="'path' column"):
        (tmp_path / "bad.csv").write_text("file\nx.mp4\n")
        from_manifest(tmp_path / "bad.csv")
    assert len(from_manifest(tmp_path / "m.csv", cfg=InputsConfig(allow_symlinks_out=True)).videos) == 1


def test_config_errors_name_the_key():
    for d, match in [({"shots": {"treshold": 3}}, r"build.shots.treshold: unknown key"),
                     ({"filters": {"min_shot_s": -1}}, r"build.filters.min_shot_s"),
                     ({"decode": {"size": [4, 4]}}, r"build.decode.size"),
                     ({"sampling": {"min_change": 2.0}}, r"build.sampling.min_change"),
                     ({"sampling": {"strategy": "all"}}, r"build.sampling.strategy: must be one of"),
                     ({"wokers": 2}, r"build.wokers: unknown key")]:
        with pytest.raises(ValueError, match=match) as e:
            build(RealBuildConfig, d, "build")
        assert "\n" not in str(e.value)
    build(RealBuildConfig, {"filters": FilterConfig().__dict__}, "build")


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_store_reads_in_training(clips, tmp_path):
    d, paths, _, _ = clips
    v = tmp_path / "v"
    v.mkdir()
    for i, (codec, scenes) in enumerate([("h264", [("moving", 40), ("gradient", 30)]),
                                         ("vp9", [("gradient", 36), ("moving", 36)]),
                                         ("h264", [("freeze", 60)])]):
        write_clip(v / f"c{i}{CODECS[codec][1]}", make_frames(scenes)[0], codec)
    cfg = small_cfg(shots={"detector": "content"}, decode={"size": [32, 32], "aspect": "pad"}, shard_size=2)
    s = build_real_sessions(from_directory(v), tmp_path / "s", cfg, DiffAnnotator(), DiffSegmenter(), progress=False)
    assert s["written_videos"] == 3 and s["sessions"] == 5
    st = SessionStore(tmp_path / "s")
    assert len(st) == 5 and all(st[i].texts[0].startswith("change brightness") for i in range(5))
    from vincie_mcore.data.corpus import CorpusConfig, decode_corpus
    dec = decode_corpus(tmp_path / "s", CorpusConfig(store=str(tmp_path / "s")))
    assert len(dec) == 5 and dec[0].frames.shape[1:] == (32, 32, 3)
    assert np.array_equal(dec[0].frames[0], png(st[0].frames[0]))


def test_docs_config_block_is_the_defaults():
    """docs/real_videos.md lists every key with its default; keep them in step."""
    import re
    from pathlib import Path

    import yaml
    text = (Path(__file__).resolve().parents[2] / "docs" / "real_videos.md").read_text()
    block = re.search(r"## Config keys.*?```yaml\n(.*?)```", text, re.S).group(1)
    assert build(RealBuildConfig, yaml.safe_load(block), "build") == RealBuildConfig()
