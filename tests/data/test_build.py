import io
import json
import logging
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from vincie_mcore.config import build
from vincie_mcore.data.annotate import GroundTruthAnnotator, Transition
from vincie_mcore.data.build import build_sessions
from vincie_mcore.data.sampling import SamplingConfig
from vincie_mcore.data.segment import GroundTruthSegmenter
from vincie_mcore.data.store import SessionStore, read_failures
from vincie_mcore.data.video import read_video, sidecar_path, write_synthetic_corpus, write_video
from vincie_mcore.data.world import Scene, WorldConfig, camera_label, render, scene_caption, transition_text

CFG = WorldConfig(camera_pan_prob=0.3, num_objects=(1, 4))


def png(b):
    return np.asarray(Image.open(io.BytesIO(b)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_synthetic_corpus(d, 12, CFG, seed=1)
    return d


def test_sessions_are_exact(corpus, tmp_path):
    s = build_sessions(corpus, tmp_path / "s", sampling="mixed", shard_size=5, seed=0, progress=False)
    assert (s["written"], s["skipped"], s["failed"], s["total"]) == (12, 0, 0, 12)
    st = SessionStore(tmp_path / "s")
    assert len(st) == 12 and sorted(st.video_ids()) == [f"vid_{i:06d}" for i in range(12)]
    assert not any("notes" in rec for _, _, rec in st.records())         # ground truth keeps no notes
    strategies = set()
    for i in range(len(st)):
        r = st[i]
        idx = r.meta["frame_indices"]
        video = read_video(r.meta["video_path"])
        states = [build(Scene, d, "scene") for d in r.states]
        strategies.add(r.meta["sampling"])
        assert r.meta["annotator"] == r.meta["segmenter"] == "ground_truth"
        # each frame's caption is its exact scene caption (text-to-image samples, data.recipe.t2i_prob)
        assert r.captions == [scene_caption(sd, CFG) for sd in states]
        for k, (f, sd) in enumerate(zip(r.frames, states)):
            assert np.array_equal(png(f), video[idx[k]]) and np.array_equal(png(f), render(sd, CFG))
        for k in range(len(idx) - 1):
            a, b = states[k], states[k + 1]
            assert r.texts[k] == transition_text(a, b, CFG) and r.cameras[k] == camera_label(a, b)
            src, tgt = png(r.roe_src[k]), png(r.roe_tgt[k])
            assert set(np.unique(src)) <= {0, 255} and src.shape == (24, 24)
            fa, fb = render(a, CFG), render(b, CFG)
            # independent check: masks lie on objects of their own frame, and, without a pan, cover every changed pixel
            assert not (src & np.all(fa == CFG.background, -1)).any() and not (tgt & np.all(fb == CFG.background, -1)).any()
            if a.camera == b.camera:
                changed = np.any(fa != fb, -1)
                assert not (changed & ~((src > 0) | (tgt > 0))).any()
                assert (r.texts[k] == "no change") == (not changed.any()) == (src.max() == tgt.max() == 0)
    assert strategies == {"equal", "fixed"}


def test_workers_do_not_change_results(corpus, tmp_path):
    build_sessions(corpus, tmp_path / "a", workers=1, shard_size=4, progress=False)
    build_sessions(corpus, tmp_path / "b", workers=2, shard_size=4, progress=False)
    a, b = SessionStore(tmp_path / "a"), SessionStore(tmp_path / "b")
    assert a.video_ids() == b.video_ids()
    for i in range(len(a)):
        assert a[i].frames == b[i].frames and a[i].texts == b[i].texts and a[i].roe_tgt == b[i].roe_tgt


class _WhereAnnotator(GroundTruthAnnotator):
    """The ground truth, with the process that made the session and its parent in the text."""
    name = "where"

    def annotate(self, frames, frame_indices, video_meta):
        return [Transition(f"{t.text} | pid {os.getpid()} ppid {os.getppid()}", t.camera)
                for t in super().annotate(frames, frame_indices, video_meta)]


def test_workers_are_not_forks_of_the_building_process(corpus, tmp_path, caplog):
    # the builder runs threads (tqdm, a VLM client's pool, zarr's loop): a fork of it may inherit a
    # lock mid-use, so workers fork from a fork server; a labeler that does not pickle is not forked
    # either (forks of a test process hung on all 12 videos that way): its videos are made here
    s = build_sessions(corpus, tmp_path / "s", workers=2, annotator=_WhereAnnotator(), progress=False)
    assert s["written"] == 12
    where = {t.rsplit(" | ", 1)[1] for r in SessionStore(tmp_path / "s") for t in r.texts}
    pids = {int(w.split()[1]) for w in where}
    parents = {int(w.split()[3]) for w in where}
    assert os.getpid() not in pids | parents, where

    held = _WhereAnnotator()
    held.lock = threading.Lock()                            # does not pickle
    with caplog.at_level(logging.WARNING, logger="vincie_mcore.data.build"):
        s = build_sessions(corpus, tmp_path / "f", workers=2, annotator=held, progress=False)
    assert s["written"] == 12
    assert {int(t.rsplit(" | pid ", 1)[1].split()[0]) for r in SessionStore(tmp_path / "f") for t in r.texts} \
        == {os.getpid()}
    assert "does not pickle (TypeError: cannot pickle '_thread.lock' object): its videos are made in this process" \
        in caplog.text
    frames = [{r.video_id: r.frames for r in SessionStore(tmp_path / d)} for d in "sf"]
    assert frames[0] == frames[1]                                            # the same sessions either way


def test_a_job_that_does_not_pickle_keeps_the_time_limit(tmp_path):
    """Made in this process, a video that runs past the limit is one failure line; the others are made."""
    from vincie_mcore.data.build import run_videos

    lock = threading.Lock()

    def make(video_id, source, lock):
        if source == "slow":
            time.sleep(30)
        return video_id

    out = list(run_videos([("a", "fast"), ("b", "slow"), ("c", "fast")], make, {"lock": lock}, workers=2,
                          timeout_s=1.0, max_mb=None))
    assert out == [("a", "a", None), ("b", None, "decode timed out after 1 s"), ("c", "c", None)]


def test_bad_videos_skipped_with_reasons_and_rerun_skips(corpus, tmp_path):
    d = tmp_path / "v"
    shutil.copytree(corpus, d)
    good = sorted(d.glob("*.webm"))
    data = good[0].read_bytes()
    (d / "corrupt.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 4)
    (d / "trunc.webm").write_bytes(data[: len(data) * 9 // 10])
    shutil.copy(sidecar_path(good[0]), d / "trunc.json")
    frames = read_video(good[1])
    write_video(d / "missing.webm", frames[:5], 8, pts=[0, 1, 2, 3, 40])       # sampling plans 41 frames, 5 decode
    shutil.copy(sidecar_path(good[1]), d / "missing.json")
    shutil.copy(good[2], d / "badjson.webm")
    (d / "badjson.json").write_text('{"format": "vincie-synthetic-video/1", "world": ')
    shutil.copy(good[3], d / "wrongtruth.webm")
    shutil.copy(sidecar_path(good[4]), d / "wrongtruth.json")                    # a sidecar of another video

    fixed = SamplingConfig(strategy="fixed", n_frames=(3, 3))                 # always samples the last frame
    s = build_sessions(d, tmp_path / "s", sampling=fixed, workers=2, progress=False)
    assert (s["written"], s["failed"], s["skipped"]) == (12, 5, 0)
    fails = [json.loads(l) for l in (tmp_path / "s" / "failures.jsonl").read_text().splitlines()]
    reasons = {f["video_id"]: f["reason"] for f in fails}
    assert set(reasons) == {"corrupt", "trunc", "missing", "badjson", "wrongtruth"}
    assert "corrupt video" in reasons["corrupt"] or "cannot open" in reasons["corrupt"]
    assert reasons["trunc"].startswith("truncated video trunc.webm")
    assert reasons["missing"] == "missing frame in missing.webm: index 20 but only 5 frames decode"  # frames 0, 20, 40
    assert reasons["badjson"].startswith("malformed sidecar badjson.json: not JSON")
    assert reasons["wrongtruth"].startswith("sidecar does not match the video")
    assert all("\n" not in r for r in reasons.values())
    assert len(SessionStore(tmp_path / "s")) == 12

    s2 = build_sessions(d, tmp_path / "s", sampling=fixed, progress=False)     # re-run: nothing to do
    assert (s2["written"], s2["failed"], s2["skipped"]) == (0, 0, 17)
    write_synthetic_corpus(d, 14, CFG, seed=1)                                 # two new videos appear
    s3 = build_sessions(d, tmp_path / "s", sampling=fixed, progress=False)
    assert (s3["written"], s3["failed"], s3["skipped"]) == (2, 0, 17)
    assert len(SessionStore(tmp_path / "s")) == 14


def test_cli_synthetic(tmp_path, capsys):
    from vincie_tools.build_sessions import run_cli as main
    s = main(["--synthetic", "5", "--videos", str(tmp_path / "v"), "--out", str(tmp_path / "s"), "--sampling", "fixed",
              "--shard-size", "2", "--quiet", "--world", '{"image_px": 64, "grid_rows": 4, "grid_cols": 4, "cell_px": 16}'])
    assert s["written"] == 5
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("sessions: 5 written, 0 skipped, 0 failed of 5 videos")
    r = SessionStore(tmp_path / "s")[0]
    assert png(r.frames[0]).shape == (64, 64, 3) and 2 <= len(r.frames) <= 6
    with pytest.raises(SystemExit):
        main(["--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "s2"), "--quiet"])


def test_static_filter_drops_exactly_the_frames_where_nothing_happened(corpus, tmp_path):
    """Independent reference: the world's own scene states. With min_change > 0 no stored transition
    is 'no change', and the kept frames are the unfiltered ones minus those equal to their predecessor."""
    build_sessions(corpus, tmp_path / "all", sampling="fixed", seed=0, progress=False)
    build_sessions(corpus, tmp_path / "f", sampling=SamplingConfig(strategy="fixed", min_change=2.0), seed=0,
                   progress=False)
    a, f = SessionStore(tmp_path / "all"), SessionStore(tmp_path / "f")
    dropped = 0
    kept_by_id = {f[i].video_id: f[i] for i in range(len(f))}
    for i in range(len(a)):
        r = a[i]
        idx = r.meta["frame_indices"]
        states = [build(Scene, d, "scene") for d in r.states]
        expect = [idx[0]]
        last = states[0]
        for k in range(1, len(idx)):
            if np.any(render(last, CFG) != render(states[k], CFG)):
                expect.append(idx[k])
                last = states[k]
        dropped += len(idx) - len(expect)
        if len(expect) < 2:
            assert r.video_id not in kept_by_id and r.video_id in f.failures()
            assert "static video" in f.failures()[r.video_id]
            continue
        g = kept_by_id[r.video_id]
        assert g.meta["frame_indices"] == expect
        assert all(cam != "None" for t, cam in zip(g.texts, g.cameras) if t == "no change")   # only pans remain
    assert dropped > 0                                   # the corpus has static transitions to drop


def test_resuming_with_other_settings_is_refused(corpus, tmp_path):
    from vincie_mcore.data.store import StoreMismatch
    build_sessions(corpus, tmp_path / "s", sampling="fixed", seed=0, progress=False)
    with pytest.raises(StoreMismatch, match="min_change|sampling"):
        build_sessions(corpus, tmp_path / "s", sampling=SamplingConfig(strategy="fixed", min_change=2.0), seed=0,
                       progress=False)
    s = build_sessions(corpus, tmp_path / "s", sampling="fixed", seed=0, progress=False)    # same settings resume
    assert s["skipped"] == 12 and s["written"] == 0


class _StuckSegmenter(GroundTruthSegmenter):
    """Runs in the build's main process, as GroundingDINO + SAM2 do; on one video it spins for 15 s (for
    ever, as far as a 1 s limit goes; finite, so a build without the limit writes the video and the test
    fails rather than hangs), swallowing any Exception it meets on the way."""
    name = "stuck"
    in_process = True

    def segment(self, frames, frame_indices, transitions, video_meta):
        if video_meta["video_id"] == "vid_000003":
            end = time.monotonic() + 15
            while time.monotonic() < end:
                try:
                    time.sleep(0.05)
                except Exception:  # noqa: BLE001 - a segmenter's own catch-all must not stop the limit
                    pass
        return super().segment(frames, frame_indices, transitions, video_meta)


def test_in_process_segmentation_has_the_per_video_time_limit(corpus, tmp_path):
    """The in-process segmenter stuck on one video: that video is a failure line past the limit (1 s),
    the others are written as a build without the stuck video writes them, and SIGALRM's handler is back."""
    import signal

    before = signal.getsignal(signal.SIGALRM)
    s = build_sessions(corpus, tmp_path / "s", segmenter=_StuckSegmenter(), progress=False, decode_timeout_s=1.0,
                       decode_max_mb=None)
    assert (s["written"], s["failed"]) == (11, 1)
    assert read_failures(tmp_path / "s") == {"vid_000003": "segmentation timed out after 1 s"}
    assert signal.getsignal(signal.SIGALRM) is before
    ref = build_sessions(corpus, tmp_path / "ref", segmenter=GroundTruthSegmenter(), progress=False,
                         decode_timeout_s=None, decode_max_mb=None)
    a, b = SessionStore(tmp_path / "s"), SessionStore(tmp_path / "ref")
    rows = {b[i].video_id: b[i] for i in range(len(b))}
    assert ref["written"] == 12 and sorted(a.video_ids()) == sorted(set(rows) - {"vid_000003"})
    for i in range(len(a)):
        assert a[i].roe_src == rows[a[i].video_id].roe_src and a[i].roe_tgt == rows[a[i].video_id].roe_tgt
