"""The paper's applications (vincie_mcore/infer/applications.py, docs/applications.md).

Unit tests on a tiny random MM-DiT (fp32, CPU): the layouts match training's, each sampled
block's context holds what the application says it puts there (read back from the packed batch
the model is called with), shapes, seeds. Then ``vincie-edit chain|drag|compose|story`` on one
3-step demo-config training run: strips with the right number of panels, one-line errors.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vincie_mcore.config import build
from vincie_mcore.data.packing import PackConfig
from vincie_mcore.data.recipe import (RecipeConfig, SessionPlan, build_sample, roe_inference_sample)
from vincie_mcore.diffusion.flow import FlowConfig
from vincie_mcore.encoders.image import PixelEncoder
from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig
from vincie_mcore.infer import applications as apps
from vincie_mcore.infer.editor import Editor, SamplerConfig
from vincie_mcore.model import MMDiTConfig, build_model
from vincie_mcore.packed.maskspec import KIND_CLEAN, KIND_NOISY
from vincie_mcore.packed.patches import patchify

ROOT = Path(__file__).resolve().parents[2]
RECIPE = RecipeConfig(mask_prompt_src="where it changes now", mask_prompt_tgt="where it will change")
H, W = 16, 24                                   # 2 x 3 tokens of 8 px


# ----------------------------------------------------------------------------- layouts

def _desc(blocks):
    return [(b.order, b.kind, b.text if b.modality == "text" else b.image) for b in blocks]


def test_roe_layout_full_mask_is_the_training_layout():
    """Under ``full``: the sample training draws for this turn and task (hand-written here)."""
    cfg = RecipeConfig(mask_type="full", camera_prompts=False, mask_prompt_src="S", mask_prompt_tgt="T")
    C, N = KIND_CLEAN, KIND_NOISY
    head = [(0, C, ("frame", 0)), (1, 0, "a"), (2, 0, "S"), (3, C, ("roe_src", 0)), (4, C, ("frame", 1)), (5, 0, "b")]
    maps = {("roe_src", 0)}                                   # turn 0's target map dropped: no "T" for it
    assert _desc(roe_inference_sample(["a", "b"], "csp", maps, cfg).blocks) == \
        head + [(6, 0, "S"), (7, N, ("roe_src", 1))]
    assert _desc(roe_inference_sample(["a", "b"], "nsp", maps | {("roe_src", 1)}, cfg).blocks) == \
        head + [(6, 0, "S"), (7, C, ("roe_src", 1)), (8, 0, "T"), (9, N, ("roe_tgt", 1))]
    assert _desc(roe_inference_sample(["a", "b"], "nip", maps | {("roe_tgt", 1)}, cfg).blocks) == \
        head + [(6, 0, "T"), (7, C, ("roe_tgt", 1)), (8, N, ("frame", 2))]
    with pytest.raises(ValueError, match="cannot be context"):
        roe_inference_sample(["a"], "csp", {("roe_tgt", 0)}, cfg)     # laid out after the CSP target


@pytest.mark.parametrize("task,maps", [("csp", {("roe_tgt", 0)}), ("nsp", {("roe_src", 1)}),
                                       ("nip", {("roe_src", 0), ("roe_src", 1), ("roe_tgt", 1)})])
def test_roe_layout_block_causal_target_sees_what_training_shows_it(task, maps):
    """Under ``block_causal``: the context is exactly what the target's noisy block may attend to
    (the mask rule, ``block_visibility``) in training's layout of the same session and dropout."""
    from vincie_kernels.reference import block_visibility
    cfg = RecipeConfig(mask_type="block_causal", camera_prompts=False, mask_prompt_src="S", mask_prompt_tgt="T")
    got = roe_inference_sample(["a", "b"], task, maps, cfg).blocks
    dropped = {(k, j) for j in (0, 1) for k in ("roe_src", "roe_tgt")} - maps
    train = build_sample(["a", "b"], [None, None], SessionPlan(num_turns=2, use_roe=True, dropped=dropped), cfg).blocks
    goal = {"csp": ("roe_src", 1), "nsp": ("roe_tgt", 1), "nip": ("frame", 2)}[task]
    t = next(i for i, b in enumerate(train) if b.kind == KIND_NOISY and b.image == goal)
    vis = block_visibility(torch.tensor([b.order for b in train]), torch.tensor([b.kind for b in train]),
                           torch.zeros(len(train), dtype=torch.long), "block_causal")[t]
    seen = [b for i, b in enumerate(train) if vis[i] and i != t]
    assert _desc(got) == _desc(seen) + _desc([train[t]])
    assert sum(b.kind == KIND_NOISY for b in got) == 1


# ----------------------------------------------------------------------------- tiny model

class Recorder:
    """The text encoder, noting every list of texts it encodes."""

    def __init__(self, enc):
        self.enc, self.calls = enc, []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.enc.encode(texts)


@pytest.fixture(scope="module")
def tiny(megatron_cpu):
    torch.manual_seed(0)
    cfg = build(MMDiTConfig, dict(hidden_size=64, num_layers=3, mm_layers=1, num_heads=2, ffn_hidden_size=128,
                                     text_dim=32, patch_dim=192, max_turns=16, rope_axes_dim=[8, 12, 12],
                                     adaln_zero_init=False, text_adaln=True, attention_backend="torch"), "model")
    model = build_model(cfg, device="cpu").eval()
    with torch.no_grad():                              # zero-init final layer would make every output 0
        torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    text = TextEncoder(TextEncoderConfig(d_model=32, num_layers=1, num_heads=2, pool=4))
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return model, text, image


def _editor(tiny, mask_type="block_causal", seed=1, steps=2):
    model, text, _ = tiny
    return Editor(model, Recorder(text), PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                  SamplerConfig(steps=steps, shift=2.0, guidance=3.0, seed=seed, camera_prompts=False),
                  mask_type=mask_type)


class Batches:
    """The packed batch of every model call (the conditional branch), in call order."""

    def __init__(self, model):
        self.batches = []
        self.h = model.register_forward_hook(lambda m, args, out: self.batches.append(args[1]))

    def targets(self):
        """[(noisy ref, batch)] once per sampled block (CFG and steps call the model with equal layouts)."""
        out = []
        for b in self.batches:
            ref = [ib["ref"] for ib in b.image_blocks if ib["noisy"]]
            assert len(ref) == 1
            if not out or out[-1][1].image_blocks != b.image_blocks:
                out.append((ref[0], b))
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.h.remove()


def _clean(batch, ref):
    """The clean tokens [h*w, P] the batch holds for ``ref``."""
    ib = [ib for ib in batch.image_blocks if ib["ref"] == ref and not ib["noisy"]]
    assert len(ib) == 1, (ref, [i["ref"] for i in batch.image_blocks])
    return batch.img_x0[ib[0]["start"]: ib[0]["start"] + ib[0]["length"]]


def _tokens(image):
    return patchify(PixelEncoder().encode(torch.from_numpy(np.asarray(image))[None])[0], 8)


def test_chain_of_editing_predicts_maps_then_edits_with_them(tiny):
    ed = _editor(tiny)
    prompts = ["add a red square", "make it blue"]
    with Batches(tiny[0]) as rec:
        res = apps.chain_of_editing(ed, tiny[2], prompts, RECIPE)
    order = [ref for ref, _ in rec.targets()]
    assert order == [("roe_src", 0), ("roe_tgt", 0), ("frame", 1), ("roe_src", 1), ("roe_tgt", 1), ("frame", 2)]
    by_ref = dict(rec.targets())
    for n in (0, 1):
        m = res.masks[n]
        assert set(m) == {"roe_src", "roe_tgt"} and all(x.dtype == bool and x.shape == (H, W) for x in m.values())
        # the frame turn has this turn's predicted (binarized) maps as clean context, and so do later turns
        for kind in ("roe_src", "roe_tgt"):
            want = _tokens(apps.map_image(m[kind]))
            for later in [("frame", n + 1)] + ([("roe_src", 1), ("frame", 2)] if n == 0 else []):
                torch.testing.assert_close(_clean(by_ref[later], (kind, n)), want, rtol=0, atol=0)
        # ... and the frame it was edited from: the previous turn's output, not the start image
        torch.testing.assert_close(_clean(by_ref[("frame", n + 1)], ("frame", n)), _tokens(res.images[n]))
    # NSP sees the CSP map of its turn, CSP does not see its turn's target map
    assert any(ib["ref"] == ("roe_src", 1) and not ib["noisy"] for ib in by_ref[("roe_tgt", 1)].image_blocks)
    assert not any(ib["ref"] == ("roe_tgt", 1) for ib in by_ref[("roe_src", 1)].image_blocks if not ib["noisy"])
    texts = {t for call in ed.text.calls for t in call}
    assert {RECIPE.mask_prompt_src, RECIPE.mask_prompt_tgt, *prompts} <= texts    # the run's mask prompts
    assert len(res.panels) == len(res.labels) == 1 + 2 * 3 and len(res.images) == 3
    assert all(p.shape == (H, W, 3) and p.dtype == np.uint8 for p in res.panels)


def test_chain_of_editing_source_map_only_and_full_mask(tiny):
    ed = _editor(tiny, mask_type="full", steps=1)
    with Batches(tiny[0]) as rec:
        res = apps.chain_of_editing(ed, tiny[2], ["remove the circle"], RECIPE, maps=("roe_src",))
    assert [ref for ref, _ in rec.targets()] == [("roe_src", 0), ("frame", 1)]
    assert set(res.masks[0]) == {"roe_src"} and len(res.panels) == 3
    with pytest.raises(ValueError, match="maps"):
        apps.chain_of_editing(ed, tiny[2], ["x"], RECIPE, maps=("roe_mid",))


def test_seeded_and_deterministic(tiny):
    a = apps.chain_of_editing(_editor(tiny, seed=3), tiny[2], ["make it blue"], RECIPE)
    b = apps.chain_of_editing(_editor(tiny, seed=3), tiny[2], ["make it blue"], RECIPE)
    c = apps.chain_of_editing(_editor(tiny, seed=4), tiny[2], ["make it blue"], RECIPE)
    assert all(np.array_equal(x, y) for x, y in zip(a.panels, b.panels))
    assert not np.array_equal(a.images[1], c.images[1])


def test_drag_maps_are_the_region_and_its_shift(tiny):
    region = np.zeros((H, W), bool)
    region[2:6, 3:7] = True
    ed = _editor(tiny)
    with Batches(tiny[0]) as rec:
        res = apps.drag(ed, tiny[2], apps.map_image(region), dx=12, dy=-2, recipe=RECIPE)
    (ref, batch), = rec.targets()
    assert ref == ("frame", 1)
    moved = np.zeros((H, W), bool)
    moved[0:4, 15:19] = True
    assert np.array_equal(res.region, region) and np.array_equal(res.moved, moved)
    torch.testing.assert_close(_clean(batch, ("roe_src", 0)), _tokens(apps.map_image(region)), rtol=0, atol=0)
    torch.testing.assert_close(_clean(batch, ("roe_tgt", 0)), _tokens(apps.map_image(moved)), rtol=0, atol=0)
    torch.testing.assert_close(_clean(batch, ("frame", 0)), _tokens(tiny[2]))
    assert res.instruction == "move the object in the marked region 12 px right and 2 px up"
    assert res.instruction in ed.text.calls[-1] and RECIPE.mask_prompt_tgt in ed.text.calls[-1]
    assert len(res.panels) == 4 and res.image.shape == (H, W, 3)


def test_drag_conversion_and_refusals(tiny):
    assert apps.drag_instruction(-3, 0) == "move the object in the marked region 3 px left"
    assert apps.drag_instruction(0, 5) == "move the object in the marked region 5 px down"
    region = np.zeros((H, W), bool)
    region[10:14, 0:2] = True
    with pytest.raises(ValueError, match=r"dx/dy: \(-1, 0\) moves the region .* off the 24x16 image"):
        apps.shift_mask(region, -1, 0)
    with pytest.raises(ValueError, match="off the"):
        apps.shift_mask(region, 0, 3)                             # rows 13..16: 16 is outside
    assert apps.shift_mask(region, 22, 2)[12:16, 22:24].all()
    ed = _editor(tiny, steps=1)
    with pytest.raises(ValueError, match="mask: size 8x24 differs"):
        apps.drag(ed, tiny[2], np.zeros((8, W), bool), 1, 0)
    with pytest.raises(ValueError, match="empty"):
        apps.drag(ed, tiny[2], np.zeros((H, W), bool), 1, 0)
    with pytest.raises(ValueError, match="zero"):
        apps.drag(ed, tiny[2], region, 0, 0, prompt="move it")
    with pytest.raises(ValueError, match="give a mask, or a prompt"):
        apps.drag(ed, tiny[2], None, 1, 0)


def test_transform_mask_scales_and_rotates_about_the_region_s_centre():
    """Hand-worked cases: x2 of a 2x2 square is the 4x4 square about the same centre; a quarter turn of a
    horizontal bar is the vertical bar through its centre; a counter-clockwise eighth turn lifts its right end
    (y points down); a pure move is shift_mask exactly; a turn that leaves the image or a scale that leaves
    no pixel is one line."""
    sq = np.zeros((H, W), bool)
    sq[4:6, 10:12] = True
    big = np.zeros((H, W), bool)
    big[3:7, 9:13] = True
    assert np.array_equal(apps.transform_mask(sq, scale=2), big)
    assert np.array_equal(apps.transform_mask(big, scale=0.5), sq)
    bar = np.zeros((H, W), bool)
    bar[7, 9:12] = True
    assert np.argwhere(apps.transform_mask(bar, angle=90)).tolist() == [[6, 10], [7, 10], [8, 10]]
    assert np.argwhere(apps.transform_mask(bar, angle=45)).tolist() == [[6, 11], [7, 10], [8, 9]]
    assert np.argwhere(apps.transform_mask(bar, angle=-45)).tolist() == [[6, 9], [7, 10], [8, 11]]
    assert np.argwhere(apps.transform_mask(bar, dx=2, dy=-1, angle=90)).tolist() == [[5, 12], [6, 12], [7, 12]]
    rng = np.random.default_rng(0)
    blob = np.zeros((H, W), bool)
    blob[4:12, 6:14] = rng.random((8, 8)) > 0.5
    assert np.array_equal(apps.transform_mask(blob, 3, -2), apps.shift_mask(blob, 3, -2))
    assert np.array_equal(apps.transform_mask(blob, 3, -2, angle=360), apps.shift_mask(blob, 3, -2))
    with pytest.raises(ValueError, match=r"^dx/dy/scale/angle: \(0, 0\), x4, 0 degrees takes the region .* off"):
        apps.transform_mask(big, scale=4)
    with pytest.raises(ValueError, match=r"^scale: x0.01 leaves no pixel of the region"):
        apps.transform_mask(sq, scale=0.01)
    with pytest.raises(ValueError, match=r"^scale: must be a number > 0"):
        apps.transform_mask(sq, scale=0)
    assert apps.drag_instruction(3, 0, 1.5, -30) == ("move the object in the marked region 3 px right, then scale it "
                                                     "by 1.5x, then rotate it 30 degrees clockwise")
    assert apps.drag_instruction(0, 0, angle=90) == "rotate the object in the marked region 90 degrees counter-clockwise"
    with pytest.raises(ValueError, match=r"^dx/dy: the displacement is zero \(and no scale or turn\)"):
        apps.drag_instruction(0, 0, 1.0, 720)


def test_drag_puts_the_scaled_and_turned_region_in_the_context(tiny):
    region = np.zeros((H, W), bool)
    region[6:8, 8:14] = True                                     # a 6x2 bar
    ed = _editor(tiny)
    with Batches(tiny[0]) as rec:
        res = apps.drag(ed, tiny[2], region, dx=2, dy=0, recipe=RECIPE, scale=0.5, angle=90)
    (_, batch), = rec.targets()
    want = np.zeros((H, W), bool)
    want[6:9, 12] = True                                         # 3x1 after x0.5, upright, 2 px right
    assert np.array_equal(res.moved, want)
    torch.testing.assert_close(_clean(batch, ("roe_tgt", 0)), _tokens(apps.map_image(want)), rtol=0, atol=0)
    assert res.instruction == ("move the object in the marked region 2 px right, then scale it by 0.5x, then "
                               "rotate it 90 degrees counter-clockwise") and res.labels[2].endswith("x0.5, 90 degrees")


def test_drag_without_a_mask_locates_the_region_first(tiny):
    """mask=None: a CSP turn on the prompt predicts the region (here the model's answer is replaced by a
    known one, so the test does not hang on what a random model draws), then its shift is the target map."""
    ed = _editor(tiny)
    located = np.zeros((H, W), bool)
    located[8:12, 4:8] = True
    seen = []
    real = ed.generate

    def generate(sample, sess):
        out = real(sample, sess)
        seen.append((list(out), [b.text for b in sample.blocks if b.modality == "text"]))
        if ("roe_src", 0) in out:
            out[("roe_src", 0)] = (apps.map_image(located), None)
        return out

    ed.generate = generate
    with Batches(tiny[0]) as rec:
        res = apps.drag(ed, tiny[2], None, dx=-4, dy=4, recipe=RECIPE, prompt="move the green circle")
    assert seen == [([("roe_src", 0)], ["move the green circle", RECIPE.mask_prompt_src]),
                    ([("frame", 1)], ["move the green circle", RECIPE.mask_prompt_src, RECIPE.mask_prompt_tgt])]
    assert np.array_equal(res.region, located) and res.moved[12:16, 0:4].all() and res.moved.sum() == 16
    nip = rec.targets()[-1][1]
    torch.testing.assert_close(_clean(nip, ("roe_tgt", 0)), _tokens(apps.map_image(res.moved)), rtol=0, atol=0)


def test_compose_packs_every_reference(tiny):
    rng = np.random.default_rng(5)
    refs = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    ed = _editor(tiny)
    with Batches(tiny[0]) as rec:
        res = apps.compose(ed, refs, "the square and the circle together", captions=["a square", "a circle"])
    (ref, batch), = rec.targets()
    assert ref == ("frame", 3)
    for i, r in enumerate(refs):
        torch.testing.assert_close(_clean(batch, ("frame", i)), _tokens(r))
    assert ed.text.calls[-1] == ["a square", "a circle", "the square and the circle together"]
    assert res.texts == ed.text.calls[-1] and len(res.panels) == 4 and res.image.shape == (H, W, 3)
    with pytest.raises(ValueError, match="no reference images"):
        apps.compose(ed, [], "x")
    with pytest.raises(ValueError, match="reference 2 is"):
        apps.compose(ed, [refs[0], refs[0][:8]], "x")
    with pytest.raises(ValueError, match="captions: expected 2"):
        apps.compose(ed, refs, "x", captions=["one"])


def test_story_is_multi_turn_editing_with_the_kv_cache(tiny):
    prompts = ["a red square appears", "it turns blue", "it leaves"]
    res = apps.story(_editor(tiny), tiny[2], prompts)
    ref = _editor(tiny).start(tiny[2])
    for p in prompts:
        ref.edit(p)
    assert len(res.images) == len(res.panels) == 4 and res.labels == ["start", *prompts]
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(res.images, ref.images))
    assert not np.array_equal(res.images[1], res.images[0])


def test_every_application_layout_samples_the_same_with_the_kv_cache(tiny):
    """Under block_causal ``Editor.generate`` computes each layout's context K/V once per CFG branch and runs
    the noisy block alone at every step: chain's CSP, NSP and NIP turns (on a two-turn history), drag's NIP
    with both maps and a composition of three references each sample what the re-packing path samples,
    within 1e-5 (same noise), and the cache did run (two prefills per call)."""
    from vincie_mcore.data.recipe import inference_sample

    model = tiny[0]
    cached, plain = _editor(tiny, steps=3), _editor(tiny, steps=3)
    plain.use_kv_cache = False
    assert cached.kv_cache_reason() is None and plain.kv_cache_reason().startswith("kv_cache: off")
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    frames = apps._encode(cached, images)
    m = apps._encode(cached, [apps.map_image(rng.random((H, W)) > 0.7) for _ in range(4)])
    zero = torch.zeros_like(frames[0])
    cfg = apps._recipe(cached, RECIPE)
    two = ["add a red square", "make it blue"]
    given = {("roe_src", 0): m[0], ("roe_tgt", 0): m[1]}
    cases = [  # (layout, frames with the target slot, texts, maps)
        (roe_inference_sample(two, "csp", set(given), cfg), frames, two, {**given, ("roe_src", 1): zero}),
        (roe_inference_sample(two, "nsp", {*given, ("roe_src", 1)}, cfg), frames, two,
         {**given, ("roe_src", 1): m[2], ("roe_tgt", 1): zero}),
        (roe_inference_sample(two, "nip", {*given, ("roe_src", 1), ("roe_tgt", 1)}, cfg), frames, two,
         {**given, ("roe_src", 1): m[2], ("roe_tgt", 1): m[3]}),
        (roe_inference_sample(["move it"], "nip", set(given), cfg), frames[:2], ["move it"], given),
        (inference_sample(["ref 2", "ref 3", "both"], False), torch.cat([frames, zero[None]]),
         ["ref 2", "ref 3", "both"], {}),
    ]
    prefills = []
    real = model.prefill
    model.prefill = lambda b, kv: prefills.append(1) or real(b, kv)
    try:
        for sample, fr, texts, maps in cases:
            sess = apps._session(fr, texts, maps)
            got, want = cached.generate(sample, sess), plain.generate(sample, sess)
            assert list(got) == list(want) and len(got) == 1
            (ref,) = got
            torch.testing.assert_close(got[ref][1], want[ref][1], atol=1e-5, rtol=0)
            assert np.abs(got[ref][0].astype(int) - want[ref][0].astype(int)).max() <= 1
    finally:
        del model.prefill
    assert len(prefills) == 2 * len(cases)


@pytest.mark.parametrize("maps", [("roe_src", "roe_tgt"), ("roe_tgt",)])
def test_chain_keeps_one_kv_cache_across_its_calls_and_turns(tiny, maps):
    """A ``ChainSession``'s calls extend each other's context, so one pair of caches serves the chain: three
    turns (the second added by ``add_turn``) sample what the no-cache chain samples (within 1e-5, the same
    maps) and each context token is computed once per branch over the whole chain (the prefills add up to
    what a fresh cache computes for the last call's layout); a turn cut short takes the caches back to the
    turn's start, and made again it is still exact, computing only its own context; a layout that does not
    extend the caches is refused in one line."""
    model = tiny[0]
    cached, plain = _editor(tiny, steps=2), _editor(tiny, steps=2)
    plain.use_kv_cache = False
    rng = np.random.default_rng(4)
    given = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    given_maps = {k: rng.random((H, W)) > 0.6 for k in maps}
    a, b = (apps.ChainSession(ed, tiny[2], RECIPE, maps) for ed in (cached, plain))
    added, real = [], model.prefill
    model.prefill = lambda batch, kv: added.append((batch, real(batch, kv))) or added[-1][1]
    try:
        for c in (a, b):
            c.turn("add a red square")
            c.add_turn("make it blue", given, given_maps)
            c.turn("move it left")
        calls = 2 * (len(maps) + 1)                     # per turn: each map, then the frame; two branches each
        assert a.kv is not None and b.kv is None and len(added) == 2 * calls
        for x, y in zip(a.latents, b.latents):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        assert all(np.array_equal(p[k], q[k]) for p, q in zip(a.masks, b.masks) for k in maps)
        cond = [n for i, (_, n) in enumerate(added) if i % 2 == 0]
        assert cond == [n for i, (_, n) in enumerate(added) if i % 2 == 1]     # both branches alike
        assert sum(cond) == real(added[-1][0], model.new_kv_cache())          # each token once
        assert all(n > 0 for n in cond)

        state = dict(steps=0)

        def stop(done, steps):                          # cut the next turn short in its second call
            state["steps"] += 1
            if state["steps"] == steps + 1:
                raise KeyboardInterrupt
        cached.step_callback = stop
        before = {x: a.kv[x].sizes() for x in ("cond", "uncond")}
        with pytest.raises(KeyboardInterrupt):
            a.turn("now make it small")
        assert {x: a.kv[x].sizes() for x in ("cond", "uncond")} == before      # the cut turn's context taken back
        assert len(a.texts) == len(a.masks) == 3 and len(a.given) == 3 * len(maps)
        added.clear()
        cached.step_callback = None
        cached.gen.manual_seed(7), plain.gen.manual_seed(7)      # the cut turn drew noise
        a.turn("now make it small")
        b.turn("now make it small")
        torch.testing.assert_close(a.latents[-1], b.latents[-1], atol=1e-5, rtol=0)
        assert sum(n for _, n in added[-2 * (len(maps) + 1)::2]) == real(added[-1][0], model.new_kv_cache()) - \
            sum(before["cond"])                          # the remade turn computes its own context only
    finally:
        del model.prefill
    other = apps.ChainSession(cached, given, RECIPE, maps)
    other.kv = a.kv                                     # another chain's caches: its first frame differs
    with pytest.raises(ValueError, match="kv_cache|cached") as e:
        other.turn("add a red square")
    assert "\n" not in str(e.value) and len(other.texts) == 0


def test_chain_pop_turn_takes_the_caches_back_and_goes_on_exactly(tiny):
    """``ChainSession.pop_turn`` (the web editor's undo): popping a turn made here takes the caches back to its
    start, and made again with the same seed it equals the turn before the pop (within 1e-5) and computes only
    its own context; popping a turn given by ``add_turn`` takes them back to when it was added, and the chain
    goes on as a no-cache chain over the kept history does; with no turn left, one line."""
    model = tiny[0]
    cached, plain = _editor(tiny, steps=2), _editor(tiny, steps=2)
    plain.use_kv_cache = False
    rng = np.random.default_rng(5)
    given = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    given_maps = {k: rng.random((H, W)) > 0.6 for k in apps.MAP_KINDS}
    a = apps.ChainSession(cached, tiny[2], RECIPE)
    a.turn("add a red square")
    start = {x: a.kv[x].sizes() for x in ("cond", "uncond")}
    cached.gen.manual_seed(3)
    first = a.turn("make it blue")
    first_lat, first_maps = a.latents[-1], a.masks[-1]
    a.pop_turn()
    assert {x: a.kv[x].sizes() for x in ("cond", "uncond")} == start
    assert len(a.texts) == len(a.masks) == len(a.latents) == len(a.marks) == 1 and len(a.images) == 2
    assert set(a.given) == {(k, 0) for k in apps.MAP_KINDS} and a.frames.shape[0] == 2
    added, real = [], model.prefill
    model.prefill = lambda batch, kv: added.append((batch, real(batch, kv))) or added[-1][1]
    try:
        cached.gen.manual_seed(3)
        again = a.turn("make it blue")                  # the popped turn made again: the same draw
    finally:
        del model.prefill
    torch.testing.assert_close(a.latents[-1], first_lat, atol=1e-5, rtol=0)
    assert np.abs(again.astype(int) - first.astype(int)).max() <= 1
    assert all(np.array_equal(a.masks[-1][k], first_maps[k]) for k in apps.MAP_KINDS)
    assert sum(n for _, n in added[::2]) == real(added[-1][0], model.new_kv_cache()) - sum(start["cond"])

    a.add_turn("shift it", given, given_maps)           # a turn made elsewhere, then undone
    a.turn("move it left")                              # its context prefilled by this turn ...
    a.pop_turn(), a.pop_turn()                          # ... and taken back with it
    assert len(a.texts) == 2 and len(a.latents) == 2 and len(a.given) == 2 * len(apps.MAP_KINDS)
    b = apps.ChainSession(plain, tiny[2], RECIPE)       # the kept history, no cache
    b.add_turn("add a red square", a.images[1], a.masks[0])
    b.add_turn("make it blue", a.images[2], a.masks[1])
    cached.gen.manual_seed(9), plain.gen.manual_seed(9)
    a.turn("zoom in")
    b.turn("zoom in")
    torch.testing.assert_close(a.latents[-1], b.latents[-1], atol=1e-5, rtol=0)
    for _ in range(3):
        a.pop_turn()
    assert a.texts == [] and all(len(a.kv[x]) == 0 for x in ("cond", "uncond"))
    with pytest.raises(ValueError, match="^pop_turn: the chain has no turn to drop$"):
        a.pop_turn()


@pytest.mark.parametrize("mask_type", ["block_causal", "full"])
def test_chain_turns_batch_several_chains_as_each_alone(tiny, mask_type):
    """``chain_turns``: three chains of different histories (one given a turn by ``add_turn``, one a step
    behind), two batched turns each seeded, give each chain the maps and frames it gets alone after
    ``gen.manual_seed(seed)`` (within 1e-5; under block_causal each keeps its own caches, under full none);
    chains of other maps or another editor are refused."""
    rng = np.random.default_rng(2)
    starts = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    given = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    masks = {k: rng.random((H, W)) > 0.5 for k in apps.MAP_KINDS}
    prompts = [["add a red square", "make it blue"], ["remove the circle", "zoom in"], ["brighten it", "add a hat"]]

    def chains(ed):
        cs = [apps.ChainSession(ed, im, RECIPE) for im in starts]
        cs[1].add_turn("shift it", given, masks)
        return cs
    ed = _editor(tiny, mask_type=mask_type, steps=2)
    batched, alone = chains(ed), chains(_editor(tiny, mask_type=mask_type, steps=2))
    for t in range(2):
        seeds = [100 + 10 * i + t for i in range(3)]
        apps.chain_turns(batched, [p[t] for p in prompts], seeds)
        for c, p, seed in zip(alone, prompts, seeds):
            c.editor.gen.manual_seed(seed)
            c.turn(p[t])
    for b, a in zip(batched, alone):
        assert len(b.latents) == len(a.latents) == 2 and (b.kv is not None) == (mask_type == "block_causal")
        if b.kv is not None:                            # split back: each chain's caches hold its own context
            assert [len(b.kv[x]) for x in ("cond", "uncond")] == [len(a.kv[x]) for x in ("cond", "uncond")]
            assert all(torch.equal(b.kv[x].img_rows, a.kv[x].img_rows) for x in ("cond", "uncond"))
        for x, y in zip(b.latents, a.latents):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        assert all(np.array_equal(p[k], q[k]) for p, q in zip(b.masks, a.masks) for k in apps.MAP_KINDS)
    other = apps.ChainSession(ed, starts[0], RECIPE, ("roe_src",))
    with pytest.raises(ValueError, match="one editor and the same maps"):
        apps.chain_turns([batched[0], other], ["x", "y"])
    with pytest.raises(ValueError, match="2 chains, 1 prompts"):
        apps.chain_turns(batched[:2], ["x"])


def test_chain_benchmark_reports_every_path_beside_its_check(megatron_cpu):
    """``vincie-bench-editor --app chain`` at a tiny size: three generate calls per turn, the three timings
    (no cache, per-call caches, the chain's caches), and both cached paths' latents within 1e-5 of the
    no-cache path's, with the same maps."""
    from vincie_mcore.perf.bench_editor import bench_chain

    r = bench_chain(hidden=32, layers=2, heads=2, image_tokens=2, steps=1, turns=2)
    assert r["generate_calls"] == 6 and min(r["seconds_cache"], r["seconds_no_cache"], r["seconds_cache_per_call"]) > 0
    assert r["max_abs_diff_latents"] < 1e-5 and r["maps_equal"] and r["max_abs_diff_pixels"] <= 1


def test_save_writes_one_panel_per_image(tiny, tmp_path):
    res = apps.Result()
    for i in range(5):
        res.add(np.full((H, W, 3), 40 * i, np.uint8), f"panel {i}")
    apps.save(res, tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size[0] == 5 * (4 * W + 4)


# ----------------------------------------------------------------------------- the CLI on a demo run

def _cli(*args, timeout=300):
    exe = Path(sys.executable).parent / "vincie-edit"
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _panels(path, w=24, scale=4):
    width = Image.open(path).size[0]
    assert width % (w * scale + 4) == 0, width
    return width // (w * scale + 4)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, shared_demo_run):
    """The suite's 3-step demo-config run (tests/conftest.py) as ``run``, beside input files."""
    d = tmp_path_factory.mktemp("apps")
    (d / "run").symlink_to(shared_demo_run, target_is_directory=True)
    start = np.full((24, 24, 3), 30, np.uint8)
    start[2:6, 2:6] = (220, 40, 40)
    Image.fromarray(start).save(d / "start.png")
    other = start.copy()
    other[12:16, 12:16] = (40, 40, 220)
    Image.fromarray(other).save(d / "other.png")
    mask = np.zeros((24, 24), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(mask[:16]).save(d / "short.png")
    return d


@pytest.mark.parametrize("args,panels", [
    (["chain", "--prompt", "make the red square blue"], 4),                      # input | src | tgt | frame
    (["chain", "--prompt", "make it blue", "--prompt", "remove it", "--maps", "src"], 5),
    (["drag", "--mask", "mask.png", "--dx", "10", "--dy", "-2"], 4),            # input | region | moved | frame
    (["drag", "--mask", "mask.png", "--dx", "6", "--dy", "6", "--scale", "1.5", "--angle", "30"], 4),
    (["compose", "--ref", "start.png", "--ref", "other.png", "--prompt", "both squares"], 3),
    (["story", "--prompt", "a blue square appears", "--prompt", "the red square leaves"], 3),
])
def test_cli_writes_the_strip(demo_run, megatron_cpu, args, panels, capsys):
    """In this process (the console script runs in test_plain_edit_form_still_works_without_a_subcommand)."""
    from vincie_tools.edit import main

    d = demo_run
    args = [str(d / a) if a.endswith(".png") else a for a in args]
    if args[0] != "compose":
        args += ["--image", str(d / "start.png")]
    out = d / f"{args[0]}_{panels}.png"
    assert main([*args, "--run", str(d / "run"), "--out", str(out), "--set", "sampler.steps=2"]) == 0
    assert _panels(out) == panels and f"({panels} panels)" in capsys.readouterr().out


def test_cli_on_an_export_makes_the_run_s_strips(demo_run, megatron_cpu, tmp_path, capsys):
    """``--export`` instead of ``--run``: the export folder's plain model (``VincieEditPipeline``, with the
    recipe config.json now carries) gives every application's (and plain editing's) strip of the run's
    Megatron model, within a
    level of float rounding; an export without the recipe refuses chain and drag in one line, and --set
    takes only sampler settings."""
    import json

    from vincie_mcore.convert.hf import export_checkpoint
    from vincie_tools.edit import main

    d = demo_run
    export_checkpoint(d / "run", tmp_path / "export")
    for args in (["chain", "--prompt", "make it blue", "--prompt", "remove it", "--image", "start.png"],
                 ["drag", "--mask", "mask.png", "--dx", "10", "--dy", "-2", "--image", "start.png"],
                 ["compose", "--ref", "start.png", "--ref", "other.png", "--prompt", "both squares"],
                 ["story", "--prompt", "a blue square appears", "--image", "start.png"],
                 ["--prompt", "a blue square appears", "--image", "start.png"]):          # plain editing
        args = [str(d / a) if a.endswith(".png") else a for a in args]
        strips = []
        for src in (["--run", str(d / "run")], ["--export", str(tmp_path / "export")]):
            out = tmp_path / f"{args[0].strip('-')}_{src[0][2:]}.png"
            assert main([*args, *src, "--out", str(out), "--set", "sampler.steps=2"]) == 0, capsys.readouterr().err
            strips.append(np.asarray(Image.open(out)).astype(int))
        assert strips[0].shape == strips[1].shape and np.abs(strips[0] - strips[1]).max() <= 1, args[0]

    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    del meta["pipeline"]["recipe"]                                     # an export written before the recipe was
    (tmp_path / "export" / "config.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["chain", "--export", str(tmp_path / "export"), "--image", str(d / "start.png"), "--prompt", "x",
                 "--out", str(tmp_path / "c.png")]) == 2
    assert capsys.readouterr().err.startswith("error: chain: this export has no recipe in config.json")
    assert main(["story", "--export", str(tmp_path / "export"), "--image", str(d / "start.png"), "--prompt", "x",
                 "--set", "data.pack.patch_size=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set: 'data.pack.patch_size=4': with --export only sampler.") and \
        len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,names", [
    (["drag", "--image", "start.png", "--mask", "missing.png", "--dx", "1", "--dy", "0"], ["--mask", "missing.png"]),
    (["drag", "--image", "start.png", "--mask", "short.png", "--dx", "1", "--dy", "0"], ["--mask", "24x16"]),
    (["drag", "--image", "start.png", "--mask", "mask.png", "--dx", "0", "--dy", "-3"], ["--dx/--dy", "off the"]),
    (["drag", "--image", "start.png", "--dx", "1", "--dy", "0"], ["--mask", "--prompt"]),
    (["drag", "--image", "start.png", "--mask", "mask.png", "--scale", "-1"], ["--scale", "> 0"]),
    (["drag", "--image", "start.png", "--mask", "mask.png", "--scale", "9"], ["--dx/--dy/--scale/--angle", "off the"]),
    (["compose", "--prompt", "both"], ["--ref", "no reference images"]),
    (["chain", "--image", "start.png", "--prompt", "x", "--maps", "src,mid"], ["--maps"]),
])
def test_cli_bad_input_is_one_line(demo_run, args, names):
    d = demo_run
    r = _cli(*[str(d / a) if a.endswith(".png") else a for a in args], "--run", str(d / "run"))
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(n in err[0] for n in names), r.stderr


def test_plain_edit_form_still_works_without_a_subcommand(demo_run, tmp_path):
    d = demo_run
    r = _cli("--run", str(d / "run"), "--image", str(d / "start.png"), "--prompt", "make it blue",
             "--out", str(tmp_path / "strip.png"), "--set", "sampler.steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _panels(tmp_path / "strip.png") == 2 and (tmp_path / "strip_turn1.png").is_file()


def test_batch_cli_edits_every_job_resumes_and_skips_a_bad_image(demo_run, megatron_cpu, tmp_path, capsys):
    """vincie-edit batch on the demo run (block_causal: the sessions' KV caches joined per pass): four jobs
    of 1-3 turns at three sessions per pass, a corrupt image skipped in one line while the rest are made;
    the images equal a one-by-one run's; a rerun reads everything back; a bad jobs file is one line."""
    import json
    import shutil

    d = demo_run
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for f in ("start.png", "other.png"):
        shutil.copy(d / f, jobs / f)
    (jobs / "bad.png").write_bytes(b"not a png")
    rows = [{"id": "a", "image": "start.png", "prompts": ["make it blue", "remove it"]},
            {"id": "b", "image": "other.png", "prompts": ["add a hat", "zoom out", "brighten it"]},
            {"id": "c/1", "image": "bad.png", "prompts": ["x"]},
            {"id": "d", "image": "start.png", "prompts": ["make it green"]}]
    (jobs / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = ["--run", str(d / "run"), "--jobs", str(jobs / "jobs.jsonl"), "--set", "sampler.steps=2", "--quiet"]
    r = _cli("batch", *run, "--out", str(tmp_path / "out"), "--batch", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 of 4 jobs edited (6 edits made now, 0 read back), 1 skipped" in r.stdout
    assert "skipped job 'c/1': image " in r.stderr and "bad.png: not an image" in r.stderr
    fails = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in fails] == ["c/1"]
    got = {k: [np.asarray(Image.open(tmp_path / "out" / k / f"turn_{t}.png")) for t in range(1, n + 1)]
           for k, n in (("a", 2), ("b", 3), ("d", 1))}
    assert _panels(tmp_path / "out" / "b" / "strip.png") == 4 and not (tmp_path / "out" / "c~2f1").exists()
    page = (tmp_path / "out" / "index.html").read_text()              # each strip, or why it is missing
    assert page.count("<img src=") == 3 and "b/strip.png" in page and "skipped: image " in page
    from vincie_tools.edit import main                  # the rest in this process

    capsys.readouterr()
    for i in (1, 0):                            # one session per pass, on two "GPUs" (--shard i/2: a, c/1 | b, d)
        assert main(["batch", *run, "--out", str(tmp_path / "one"), "--shard", f"{i}/2"]) == 0
        out = capsys.readouterr().out
        assert f"shard {i}/2: {1 if i == 0 else 2} of 2 jobs edited ({2 if i == 0 else 4} edits made now" in out
    assert not (tmp_path / "one" / "index.html").exists() and (tmp_path / "one" / "failures_shard_0of2.jsonl").is_file()
    for k, ims in got.items():
        for t, im in enumerate(ims, 1):
            one = np.asarray(Image.open(tmp_path / "one" / k / f"turn_{t}.png"))
            assert np.abs(one.astype(int) - im.astype(int)).max() <= 1, (k, t)
    assert main(["batch", *run, "--out", str(tmp_path / "one"), "--batch", "2"]) == 0   # all, another N: read back
    assert "(0 edits made now, 6 read back)" in capsys.readouterr().out
    assert (tmp_path / "one" / "index.html").read_text().count("<img src=") == 3

    (jobs / "jobs.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({"id": "e", "image": "start.png"}) + "\n")
    capsys.readouterr()
    assert main(["batch", *run, "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "error: jobs.jsonl line 2: no 'prompts' field\n"
    (jobs / "jobs.jsonl").write_text(json.dumps({"id": "e", "image": "../start.png", "prompts": ["x"]}) + "\n")
    assert main(["batch", *run, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "climbs out with '..'" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    # an editor that cannot load (a checkpoint of another shape) is the run's one-line error, no job skipped
    (jobs / "jobs.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert main(["batch", *run, "--out", str(tmp_path / "y"), "--set", "model.ffn_hidden_size=24"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "skipped" not in err, err
    assert not (tmp_path / "y" / "failures.jsonl").exists()
    with pytest.raises(SystemExit) as e:
        main(["batch", *run, "--out", str(tmp_path / "x"), "--batch", "0"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith("argument --batch: expected an integer >= 1, got '0'")


def test_batch_cli_by_chain_of_editing(demo_run, megatron_cpu, tmp_path, capsys):
    """``vincie-edit batch --coe cs --batch 2``: each turn's source map written beside its image and shown before
    it in the strip, the images and maps those of ``--batch 1``; a rerun reads everything back; the folder
    records the inference (a plain rerun into it is refused in one line)."""
    import json
    import shutil

    from vincie_tools.benchmark import COE_CHOICES
    from vincie_tools.edit import main

    from vincie_mcore.eval.edit_runs import map_path

    assert COE_CHOICES == tuple(apps.COE)                   # the commands' choices are the library's inferences

    d = demo_run
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for f in ("start.png", "other.png"):
        shutil.copy(d / f, jobs / f)
    rows = [{"id": "a", "image": "start.png", "prompts": ["make it blue", "remove it"]},
            {"id": "b", "image": "other.png", "prompts": ["add a hat"]}]
    (jobs / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = ["batch", "--run", str(d / "run"), "--jobs", str(jobs / "jobs.jsonl"), "--set", "sampler.steps=2", "--quiet",
           "--coe", "cs"]
    for n in (2, 1):
        assert main([*run, "--out", str(tmp_path / f"b{n}"), "--batch", str(n)]) == 0
        assert "2 of 2 jobs edited (3 edits made now, 0 read back)" in capsys.readouterr().out
    for k, turns in (("a", 2), ("b", 1)):
        for t in range(1, turns + 1):
            x, y = (tmp_path / f"b{n}" / k / f"turn_{t}.png" for n in (2, 1))
            assert np.abs(np.asarray(Image.open(x), int) - np.asarray(Image.open(y), int)).max() <= 1
            assert np.array_equal(np.asarray(Image.open(map_path(x, "roe_src"))),
                                  np.asarray(Image.open(map_path(y, "roe_src"))))
            assert not map_path(x, "roe_tgt").exists()
        assert _panels(tmp_path / "b2" / k / "strip.png") == 1 + 2 * turns          # start | per turn: map, image
    assert json.loads((tmp_path / "b2" / "editor.json").read_text())["coe"] == "cs"
    assert main([*run, "--out", str(tmp_path / "b2")]) == 0
    assert "(0 edits made now, 3 read back)" in capsys.readouterr().out
    assert main([r for r in run if r not in ("--coe", "cs")] + ["--out", str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err
    assert "holds edits made with coe='cs', this run has coe=None" in err and len(err.strip().splitlines()) == 1

