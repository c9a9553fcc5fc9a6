"""The DALI decode path of real videos against the PyAV one: DALI's CPU decoder here (VP9);
tools/gpu_check.sh runs the same tests with VINCIE_DALI_TEST_DEVICE=gpu (NVDEC)."""
import os

import numpy as np
import pytest
from real_clips import make_frames, write_clip

from vincie_mcore.config import build
from vincie_mcore.data.dali_video import read_at_times_dali, read_indices_dali
from vincie_mcore.data.real import RealBuildConfig, make_video_sessions
from vincie_mcore.data.inputs import VideoInput
from vincie_mcore.data.segment import EmptySegmenter
from vincie_mcore.data.video import VideoError, read_all_timed, read_at_times
from vincie_mcore.data.annotate import Annotator, Transition

SCENES = [("moving", 30), ("gradient", 25), ("moving", 35)]
DEVICE = os.environ.get("VINCIE_DALI_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames, cuts = make_frames(SCENES, h=48, w=64)
    p = tmp_path_factory.mktemp("dali") / "cuts.webm"
    write_clip(p, frames, codec="vp9", fps=24)
    return p


def _close(a, b):
    d = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
    return d.mean() < 4 and np.percentile(d, 99) < 48            # YUV->RGB rounding, chroma upsampling


def test_dali_frames_are_pyav_s_frames(clip):
    times, ref = read_all_timed(clip)
    idx = [0, 7, 29, 30, 54, 89, 3]                                # any order, repeats allowed by DALI
    got = read_indices_dali(clip, idx, device=DEVICE)
    assert got.shape == (len(idx), 48, 64, 3) and got.dtype == np.uint8
    for g, i in zip(got, idx):
        assert _close(g, ref[i]), i
    # and not some other frame: frame 30 (after the cut) is far from frame 29
    assert not _close(got[2], ref[30])


def test_times_map_to_the_same_frames_as_the_seek_path(clip):
    times, _ = read_all_timed(clip)
    want = [0.0, 0.5, 1.24, 2.0, 3.6]
    frames, got = read_at_times_dali(clip, want, times, device=DEVICE)
    ref, ref_got = read_at_times(clip, want)
    assert got == pytest.approx(ref_got, abs=1e-6)
    assert all(_close(a, b) for a, b in zip(frames, ref))


def test_rotation_is_applied_after_decoding(clip):
    plain = read_indices_dali(clip, [5], device=DEVICE)[0]
    turned = read_indices_dali(clip, [5], rotation=90, device=DEVICE)[0]
    assert turned.shape == (64, 48, 3) and np.array_equal(turned, np.rot90(plain))


def test_an_undecodable_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1aE\xdf\xa3" + b"\x00" * 200)
    with pytest.raises(VideoError, match=rf"^bad.webm: DALI \({DEVICE}\) could not decode it") as e:
        read_indices_dali(bad, [0], device=DEVICE)
    assert "\n" not in str(e.value)


class _Blank(Annotator):
    name = "blank"

    def annotate(self, frames, frame_indices, video_meta):
        return [Transition("x", "None") for _ in range(len(frame_indices) - 1)]


def test_a_video_s_sessions_with_either_backend(clip):
    base = {"decode": {"size": [48, 64]}, "sampling": {"strategy": "equal", "interval_s": 0.25},
            "filters": {"min_duration_s": 0.5, "min_height": 32, "min_width": 32, "min_shot_s": 0.3}}
    out = {}
    for backend in ("pyav", "dali"):
        cfg = build(RealBuildConfig, {**base, "decode": {**base["decode"], "backend": backend, "dali_device": DEVICE}}, "build")
        out[backend] = make_video_sessions("v", VideoInput("v", clip), cfg, _Blank(), EmptySegmenter()).sessions
    assert [s.meta["frame_times"] for s in out["dali"]] == [s.meta["frame_times"] for s in out["pyav"]]
    from PIL import Image
    import io
    for a, b in zip(out["dali"], out["pyav"]):
        for fa, fb in zip(a.frames, b.frames):
            assert _close(np.asarray(Image.open(io.BytesIO(fa))), np.asarray(Image.open(io.BytesIO(fb))))
    with pytest.raises(ValueError, match="build.decode.backend: dali takes frame indices from the shot scan"):
        build(RealBuildConfig, {"decode": {"backend": "dali"}, "shots": {"detector": "none"}}, "build")
