"""The session-build benchmark: every stage timed, the VLM and segmenter counted when configured."""
import json

import pytest
from fake_vlm import FakeVLM
from tiny_vision_models import save_tiny_grounding_dino, save_tiny_sam2

from vincie_mcore.perf.bench_sessions import STAGES, bench_sessions, project, write_clips


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_clips")
    write_clips(d, n=2, seconds=4.0, size=(96, 128), cut_every_s=2.0)
    return d


def test_cpu_stages_only(clips):
    r = bench_sessions(clips, {"build": {"decode": {"size": [64, 64]}, "sampling": {"interval_s": 0.5}}})
    assert r["videos"] == 2 and r["failed"] == 0 and r["sessions"] >= 4       # two shots per clip
    assert r["annotate"].startswith("not measured") and "vlm" not in r
    assert set(r["stage_seconds"]) == set(STAGES) and r["stage_seconds"]["decode"] > 0
    assert abs(sum(r["stage_share"].values()) - 1) < 1e-3
    assert r["check"] == {"frames_compared": r["frames"], "max_abs_diff": 0}   # the same run, decoded independently
    p = project(r, sessions=1000, vlm_pairs_per_gpu_s=2.0)
    assert p["pairs"] == round(1000 * r["pairs"] / r["sessions"]) and p["segment_gpu_hours"] is None
    assert p["vlm_gpu_hours"] == round(p["pairs"] / 2.0 / 3600, 1)


def test_with_a_vlm_server_and_grounded_sam(clips, tmp_path):
    server = FakeVLM(delay=0.01)
    try:
        r = bench_sessions(clips, {
            "build": {"decode": {"size": [64, 64]}, "sampling": {"interval_s": 0.5}},
            "annotator": {"kind": "vlm", "base_urls": [server.url], "model": "tiny-vlm"},
            "segmenter": {"kind": "gsam", "grounding_dino_path": save_tiny_grounding_dino(tmp_path / "gd"),
                          "sam2_path": save_tiny_sam2(tmp_path / "sam"), "box_threshold": 0.0,
                          "text_threshold": 0.0}})
    finally:
        server.close()
    assert r["annotate"] == "measured" and r["vlm"]["replies"] == r["pairs"] == len(server.requests)
    assert r["vlm"]["tokens_per_s"] > 0 and r["segment"] == "gdino+sam2"
    assert r["segmenter_stats"]["transitions"] == r["pairs"] and r["segment_s_per_pair"] > 0
    json.dumps(r)


def test_quality_bench_at_toy_sizes_checks_its_scores_by_hand():
    """vincie-bench-sessions --quality's code at toy sizes: both filters timed per session, and the aesthetic
    scores of the same run equal to the head applied by hand to CLIP's features."""
    from vincie_mcore.perf.bench_quality import bench_quality

    r = bench_quality(sessions=2, frames=3, size=48, scale="tiny")
    assert r["aesthetic"]["check"]["ok"] and r["aesthetic"]["check"]["max_abs_error_vs_by_hand"] < 1e-3
    assert r["aesthetic"]["s_per_session"] > 0 and r["logo"]["s_per_session"] > 0 and r["frames_per_session"] == 3
    assert r["logo"]["check"]["ok"] and len(r["logo"]["check"]["by_hand"]) == 2
    with pytest.raises(ValueError, match="scale must be real or tiny"):
        bench_quality(scale="huge")
    with pytest.raises(ValueError, match="sessions and frames must be >= 1, got 0 and 3"):
        bench_quality(sessions=0, scale="tiny")
