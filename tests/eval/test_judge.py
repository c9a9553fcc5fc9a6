import numpy as np
import pytest

from vincie_mcore.data.world import Obj, Scene, WorldConfig, demo_config, generate_video, render
from vincie_mcore.eval.judge import edit_kinds, edit_type, expected_frame, judge_edit, summarize

CFGS = [demo_config(), WorldConfig(camera_pan_prob=0.5),
        WorldConfig(image_px=64, grid_rows=4, grid_cols=4, cell_px=16, camera_pan_prob=0.0,
                    shapes=("square", "circle", "triangle", "ring", "cross"))]


def _transitions(cfg, n=10):
    for seed in range(n):
        v = generate_video(np.random.default_rng(seed), cfg)
        for e in v.events:
            yield v.states[e.frame - 1], v.states[e.frame], e


@pytest.mark.parametrize("ci", range(len(CFGS)))
def test_expected_passes_copy_fails(ci):
    cfg = CFGS[ci]
    rng = np.random.default_rng(0)
    results = []
    for src, tgt, e in _transitions(cfg):
        exp = expected_frame(tgt, cfg)
        r = judge_edit(exp, src, tgt, cfg)
        assert r["success"] and r["follow"] and r["consistent"] and r["edit_type"] == e.kind
        noisy = np.clip(exp + rng.normal(0, 12, exp.shape), 0, 255).astype(np.uint8)
        assert judge_edit(noisy, src, tgt, cfg)["success"]
        copy = judge_edit(render(src, cfg), src, tgt, cfg)      # copy-the-input baseline
        assert not copy["success"] and not copy["follow"]
        results.append(copy)
    assert summarize(results)["all"]["success"] == 0.0


def _scene():
    return Scene((Obj(0, "square", "red", "large", 0, 0), Obj(1, "circle", "blue", "small", 1, 1)))


@pytest.mark.parametrize("wrong", [
    Obj(2, "triangle", "green", "large", 2, 1),   # right shape+colour, wrong cell
    Obj(2, "triangle", "yellow", "large", 2, 2),  # wrong colour
    Obj(2, "circle", "green", "large", 2, 2),     # wrong shape
    Obj(2, "triangle", "green", "small", 2, 2),   # wrong size
])
def test_wrong_edit_fails_follow(wrong):
    cfg = demo_config()
    src = _scene()
    tgt = Scene(src.objects + (Obj(2, "triangle", "green", "large", 2, 2),))
    pred = render(Scene(src.objects + (wrong,)), cfg)
    r = judge_edit(pred, src, tgt, cfg)
    assert not r["success"] and not r["follow"] and (2, 2) in r["wrong_cells"]


def test_one_wrong_cell_fails_consistency():
    cfg = demo_config()
    src = _scene()
    tgt = Scene((src.objects[0], Obj(1, "circle", "cyan", "small", 1, 1)))
    pred = expected_frame(tgt, cfg).copy()
    pred[16:24, 0:8] = render(Scene((Obj(5, "triangle", "red", "small", 2, 0),)), cfg)[16:24, 0:8]   # a stray object
    r = judge_edit(pred, src, tgt, cfg)
    assert r["follow"] and not r["consistent"] and not r["success"] and r["wrong_cells"] == [(2, 0)]
    garbage = expected_frame(tgt, cfg).copy()
    garbage[0:8, 8:16] = 128                                  # an empty cell filled with grey
    assert not judge_edit(garbage, src, tgt, cfg)["consistent"]


def test_outside_grid_checked():
    cfg = WorldConfig(image_px=28, num_objects=(1, 3))       # 2-px background margin around the grid
    src = Scene((Obj(0, "square", "red", "large", 0, 0),))
    tgt = Scene((Obj(0, "square", "red", "small", 0, 0),))
    pred = expected_frame(tgt, cfg).copy()
    assert judge_edit(pred, src, tgt, cfg)["success"]
    pred[:2] = 255
    r = judge_edit(pred, src, tgt, cfg)
    assert r["follow"] and not r["consistent"] and r["outside_error"] > 32


def test_edit_type_helpers():
    cfg = demo_config()
    a = _scene()
    b = Scene((Obj(0, "square", "red", "large", 2, 2),))
    assert edit_kinds(a, b, cfg) == ["move", "remove"] and edit_type(a, b, cfg) == "multi"
    assert edit_type(a.to_dict(), a.to_dict(), cfg) == "none"
    with pytest.raises(ValueError, match="pred must be"):
        judge_edit(np.zeros((8, 8, 3), np.uint8), a, b, cfg)
