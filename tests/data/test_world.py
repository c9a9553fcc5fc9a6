import numpy as np
import pytest

from vincie_mcore.data.world import (PALETTE, SHAPES, Scene, Obj, WorldConfig, camera_label, check_scene, demo_config,
                                     diff_scenes, generate_video, object_mask, render, shape_mask, transition_text)

BIG = dict(image_px=64, grid_rows=4, grid_cols=4, cell_px=16, shapes=SHAPES, num_objects=(2, 6),
           colours=("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white"), sizes=("small", "medium", "large"))
CONFIGS = [demo_config(), WorldConfig(), WorldConfig(camera_pan_prob=0.6), WorldConfig(**BIG, camera_pan_prob=0.3)]


@pytest.mark.parametrize("kw,field", [
    (dict(cell_px=9), "image_px"), (dict(num_objects=(3, 2)), "num_objects"), (dict(shapes=("square", "hexagon")), "shapes"),
    (dict(shapes=("circle", "cross")), "shapes"), (dict(colours=()), "colours"), (dict(sizes=("large", "small")), "sizes"),
    (dict(edit_probs={"teleport": 1.0}), "edit_probs"), (dict(camera_pan_prob=1.5), "camera_pan_prob"),
    (dict(max_pan_px=8), "max_pan_px"), (dict(num_keyframes=(1, 3)), "num_keyframes"), (dict(background=(225, 45, 45)), "background"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"WorldConfig.{field}"):
        WorldConfig(**kw)


@pytest.mark.parametrize("cfg", CONFIGS[:1] + CONFIGS[3:])
def test_shapes_distinguishable(cfg):
    pats = [shape_mask(s, cfg.size_px(z)) for z in cfg.sizes for s in cfg.shapes]
    for i in range(len(pats)):
        for j in range(i + 1, len(pats)):
            if pats[i].shape == pats[j].shape:
                assert (pats[i] != pats[j]).sum() >= 4
    assert cfg.size_px("small") < cfg.size_px("large") < cfg.cell_px


def _independent_render(scene, cfg):
    """Pixel loop from the documented geometry, not using world.render's slicing."""
    img = np.full((cfg.image_px, cfg.image_px, 3), cfg.background, np.uint8)
    gy, gx = (cfg.image_px - cfg.grid_rows * cfg.cell_px) // 2, (cfg.image_px - cfg.grid_cols * cfg.cell_px) // 2
    for o in scene.objects:
        s = cfg.size_px(o.size)
        m = shape_mask(o.shape, s)
        for y in range(cfg.image_px):
            for x in range(cfg.image_px):
                wy, wx = y + scene.camera[0] - gy - o.row * cfg.cell_px, x + scene.camera[1] - gx - o.col * cfg.cell_px
                p = (cfg.cell_px - s) // 2
                if p <= wy < p + s and p <= wx < p + s and m[wy - p, wx - p]:
                    img[y, x] = PALETTE[o.colour]
    return img


@pytest.mark.parametrize("ci", range(len(CONFIGS)))
def test_video_invariants(ci):
    cfg = CONFIGS[ci]
    kinds, pans = set(), 0
    for seed in range(25):
        v = generate_video(np.random.default_rng(seed), cfg)
        assert v.frames.dtype == np.uint8 and v.frames.shape[1:] == (cfg.image_px, cfg.image_px, 3)
        assert len(v.states) == len(v.frames) == len(v.frame_keyframe)
        assert len(v.events) == len(v.keyframes) - 1
        for s, f in zip(v.states, v.frames):
            check_scene(s, cfg)                                   # one object per cell, unique colour+shape
            assert cfg.num_objects[0] <= len(s.objects) <= cfg.num_objects[1]
            assert all(abs(c) <= cfg.max_pan_px for c in s.camera)
            assert np.array_equal(f, render(s, cfg))
            masks = [object_mask(o, s.camera, cfg) for o in s.objects]
            assert sum(m.sum() for m in masks) == np.any(masks, axis=0).sum() if masks else True   # no overlap
        for k, e in enumerate(v.events):
            a, b = v.keyframes[k], v.keyframes[k + 1]
            ch = diff_scenes(a, b, cfg)
            assert len(ch) == 1 and ch[0].kind == e.kind                 # exactly one edit per transition
            assert e.text == transition_text(a, b, cfg) == ch[0].text
            assert e.camera == camera_label(a, b)
            assert v.frame_keyframe[e.frame] == k + 1 and v.frame_keyframe[e.frame - 1] == k
            kinds.add(e.kind)
            pans += e.camera != "None"
    assert kinds == {"add", "remove", "move", "recolour", "resize"}
    assert (pans > 0) == (cfg.camera_pan_prob > 0)


def test_render_matches_independent_pixel_loop():
    for cfg in (CONFIGS[2], CONFIGS[3]):
        v = generate_video(np.random.default_rng(7), cfg)
        for s in v.states[::3]:
            assert np.array_equal(render(s, cfg), _independent_render(s, cfg))


NAMES3 = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "middle left", (1, 1): "centre",
          (1, 2): "middle right", (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"}


def test_texts_exact():
    cfg = demo_config()
    a = Scene((Obj(0, "square", "red", "small", 0, 0), Obj(1, "circle", "blue", "large", 1, 1)))
    for (r, c), name in NAMES3.items():
        if (r, c) in ((0, 0), (1, 1)):
            continue
        b = Scene(a.objects + (Obj(2, "triangle", "green", "large", r, c),))
        assert transition_text(a, b, cfg) == f"add a large green triangle at the {name}"
        b = Scene((Obj(0, "square", "red", "small", r, c), a.objects[1]))
        assert transition_text(a, b, cfg) == f"move the red square to the {name}"
    assert transition_text(a, Scene(a.objects[1:]), cfg) == "remove the red square"
    assert transition_text(a, Scene((a.objects[0], Obj(1, "circle", "yellow", "large", 1, 1))), cfg) == "make the blue circle yellow"
    assert transition_text(a, Scene((a.objects[0], Obj(1, "circle", "blue", "small", 1, 1))), cfg) == "make the blue circle smaller"
    assert transition_text(a, a, cfg) == "no change"
    two = Scene((Obj(0, "square", "purple", "large", 0, 0),))
    assert transition_text(a, two, cfg) == "make the red square purple and make the red square bigger and remove the blue circle"
    assert camera_label(Scene(camera=(0, 0)), Scene(camera=(-1, 2))) == "pan right and up"
    big = WorldConfig(**BIG)
    assert transition_text(Scene(), Scene((Obj(0, "ring", "white", "medium", 1, 3),)), big) == "add a medium white ring in row 2, column 4"
