import json
import os

import numpy as np
import pytest

from vincie_mcore.data.video import (VideoError, load_sidecar, probe_video, read_video, sidecar_path, truth_of,
                                     write_sidecar, write_synthetic_corpus, write_video)
from vincie_mcore.data.world import WorldConfig, demo_config, generate_video, render


@pytest.fixture(scope="module")
def video():
    return generate_video(np.random.default_rng(0), WorldConfig(camera_pan_prob=0.5))


def test_vp9_roundtrip_exact(tmp_path, video):
    p = tmp_path / "a.webm"
    write_video(p, video.frames, video.fps)
    assert np.array_equal(read_video(p), video.frames)
    assert np.array_equal(read_video(p, [3, 0, 3]), video.frames[[3, 0, 3]])
    info = probe_video(p)
    assert (info.num_frames, info.fps, info.height, info.width, info.codec) == (len(video.frames), 8.0, 24, 24, "vp9")


def test_mjpeg_roundtrip_close(tmp_path, video):
    p = tmp_path / "a.avi"
    write_video(p, video.frames, video.fps, codec="mjpeg")
    err = np.abs(read_video(p).astype(int) - video.frames)
    assert err.mean() < 1.0 and err.max() <= 16


def test_dali_decodes_our_videos(tmp_path, video):
    """DALI's CPU video decoder reads what we write, bit-exactly for VP9."""
    from nvidia.dali import fn, pipeline_def, types
    p = tmp_path / "a.webm"
    write_video(p, video.frames, video.fps)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        return fn.decoders.video(fn.external_source(name="v", dtype=types.UINT8, ndim=1), device="cpu")
    pp = pipe()
    pp.build()
    pp.feed_input("v", [np.fromfile(p, np.uint8)])
    (out,) = pp.run()
    assert np.array_equal(np.array(out.at(0)), video.frames)


def test_sidecar_roundtrip(tmp_path, video):
    p = tmp_path / "a.json"
    write_sidecar(p, truth_of(video))
    t = load_sidecar(p)
    assert t.cfg == video.cfg and t.events == video.events and t.num_frames == len(video.frames)
    for i, s in enumerate(video.states):
        assert t.state(i) == s and np.array_equal(render(t.state(i), t.cfg), video.frames[i])


@pytest.mark.parametrize("mutate,match", [
    (lambda d: "{not json", "not JSON"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "keyframes"}), "missing key"),
    (lambda d: json.dumps({**d, "frame_keyframe": d["frame_keyframe"][:-1]}), "entries"),
    (lambda d: json.dumps({**d, "world": {**d["world"], "cell_px": 2}}), "cell_px"),
    (lambda d: json.dumps({**d, "format": "other"}), "format"),
])
def test_malformed_sidecar_one_line(tmp_path, video, mutate, match):
    p = tmp_path / "a.json"
    write_sidecar(p, truth_of(video))
    p.write_text(mutate(json.loads(p.read_text())))
    with pytest.raises(ValueError, match=match) as e:
        load_sidecar(p)
    assert "malformed sidecar a.json" in str(e.value) and "\n" not in str(e.value)


def test_bad_files_raise_one_line(tmp_path, video):
    good = tmp_path / "g.webm"
    write_video(good, video.frames, video.fps)
    data = good.read_bytes()
    (tmp_path / "junk.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 8)
    (tmp_path / "trunc.webm").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.webm").write_bytes(b"")
    write_video(tmp_path / "gap.webm", video.frames[:6], video.fps, pts=[0, 1, 2, 3, 4, 30])   # 31 frames declared, 6 decode
    for name, match in [("junk", "cannot open|corrupt"), ("trunc", "truncated"), ("empty", "cannot open"),
                        ("nope", "cannot open")]:
        with pytest.raises(VideoError, match=match) as e:
            read_video(tmp_path / f"{name}.webm")
        assert "\n" not in str(e.value)
    assert probe_video(tmp_path / "gap.webm").num_frames == 31
    assert read_video(tmp_path / "gap.webm").shape[0] == 6
    with pytest.raises(VideoError, match="missing frame in gap.webm: index 30 but only 6 frames decode"):
        read_video(tmp_path / "gap.webm", [0, 30])


def test_corpus_deterministic_and_resumable(tmp_path):
    cfg = demo_config()
    a = write_synthetic_corpus(tmp_path / "a", 6, cfg, seed=3, workers=1)
    b = write_synthetic_corpus(tmp_path / "b", 6, cfg, seed=3, workers=2)
    for pa, pb in zip(a, b):
        assert np.array_equal(read_video(pa), read_video(pb))
        assert sidecar_path(pa).read_text() == sidecar_path(pb).read_text()
    mtime = [os.path.getmtime(p) for p in a]
    write_synthetic_corpus(tmp_path / "a", 8, cfg, seed=3)              # keeps the 6, adds 2
    assert [os.path.getmtime(p) for p in a] == mtime
    assert len(list((tmp_path / "a").glob("*.webm"))) == 8
