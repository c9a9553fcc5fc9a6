"""Text-to-video samples (``data.recipe.t2v_prob``): [caption_0, T0, ..., T_{n-1}, noisy clip I0..I_n].

References: the mask rule in words (a clip's frames are one block: they see each other and the texts,
nothing sees them), an edit's own packing for the frames' positions, and the patchified latents.
Streaming from the latent store is checked with text-to-image in tests/data/test_t2i.py."""
import numpy as np
import pytest
import torch

from vincie_mcore.data.packing import EncodedSession, PackConfig, pack
from vincie_mcore.data.recipe import T2I, T2V, RecipeConfig, SessionPlan, build_sample, camera_prompt, draw_plan
from vincie_mcore.diffusion.flow import FlowConfig, noise_batch
from vincie_mcore.packed.maskspec import KIND_NOISY
from vincie_mcore.packed.patches import patchify


def test_one_draw_picks_t2i_t2v_or_an_edit():
    """t2v_prob takes the draws just above t2i_prob: every sample not drawn as T2V is the one drawn without
    T2V (so t2v_prob 0 changes nothing), the shares are the probabilities, and an uncaptioned session is
    never T2V. A T2V plan keeps every frame up to max_frames."""
    base, both = RecipeConfig(t2i_prob=0.3), RecipeConfig(t2i_prob=0.3, t2v_prob=0.2)
    counts = {T2I: 0, T2V: 0}
    for seed in range(4000):
        a = draw_plan(5, base, np.random.default_rng(seed), has_captions=True)
        b = draw_plan(5, both, np.random.default_rng(seed), has_captions=True)
        if b.task == T2V:
            assert b == SessionPlan(num_turns=4, task=T2V, target_turn=0) and a.task != T2I
        else:
            assert a == b
        counts[T2I] += b.task == T2I
        counts[T2V] += b.task == T2V
    assert 0.27 < counts[T2I] / 4000 < 0.33 and 0.17 < counts[T2V] / 4000 < 0.23
    only = RecipeConfig(t2v_prob=1.0, max_frames=4)
    assert draw_plan(7, only, np.random.default_rng(0), has_captions=True).num_turns == 3
    assert draw_plan(7, only, np.random.default_rng(0), has_captions=False).task != T2V
    with pytest.raises(ValueError, match="t2i_prob \\+ t2v_prob must be <= 1"):
        RecipeConfig(t2i_prob=0.6, t2v_prob=0.5)
    with pytest.raises(ValueError, match="recipe.t2v_prob: must be a probability"):
        RecipeConfig(t2v_prob=-0.1)


def test_the_layout_is_caption_transitions_then_every_frame():
    plan = SessionPlan(num_turns=2, task=T2V, target_turn=0)
    rec = RecipeConfig(t2v_prob=1.0)
    sample = build_sample(["a", "b"], ["pan left", None], plan, rec, captions=["c0", "c1", "c2"])
    assert [(b.kind, b.order, b.turn, b.role, b.text or b.image) for b in sample.blocks] == [
        (0, 0, 0, "caption", "c0"), (0, 1, 0, "text", camera_prompt("a", "pan left")),
        (0, 2, 1, "text", camera_prompt("b", None)),
        (KIND_NOISY, 3, 0, T2V, (T2V, 0)), (KIND_NOISY, 4, 1, T2V, (T2V, 1)), (KIND_NOISY, 5, 2, T2V, (T2V, 2))]
    bare = build_sample(["a", "b"], [None, None], plan, RecipeConfig(t2v_prob=1.0, camera_prompts=False),
                        captions=["c0", "c1", "c2"])
    assert [b.text for b in bare.blocks[1:3]] == ["a", "b"]
    with pytest.raises(ValueError, match="text-to-video plan needs the session's frame captions"):
        build_sample(["a", "b"], [None, None], plan, rec)


def _words(texts):
    return [torch.full((1 + len(t) % 3, 4), float(len(t))) for t in texts]


@pytest.mark.parametrize("mask", ["full", "block_causal"])
def test_a_clip_is_one_block_at_its_frames_slots(mask):
    """Packed: the frames are the clip's one noisy block (one diffusion time), each at the RoPE slot frame j
    has in an edit, its rows frame j's latent; under block_causal the clip sees every text and itself and
    no text sees it; the clip is conditioned (text AdaLN) on the caption."""
    lat = torch.randn(3, 3, 8, 8)
    sess = EncodedSession(frames=lat, texts=["a", "bb"], cameras=[None, None], captions=["c0", "c1", "c2"])
    rec = RecipeConfig(mask_type=mask, t2v_prob=1.0, camera_prompts=False)
    sample = build_sample(sess.texts, sess.cameras, SessionPlan(num_turns=2, task=T2V, target_turn=0), rec,
                          sess.captions)
    pc = PackConfig(patch_size=4)
    b = pack([(sample, sess)], _words, pc, mask)
    edit = pack([(build_sample(sess.texts, sess.cameras, SessionPlan(num_turns=2, task="nip", target_turn=1),
                               RecipeConfig(mask_type="full", camera_prompts=False)), sess)], _words, pc, "full")
    kinds = b.spec.block_kind.tolist()
    assert kinds == [0, 0, 0, KIND_NOISY] and b.img_loss_mask.all()
    assert torch.equal(b.img_x0, torch.cat([patchify(lat[j], 4) for j in range(3)]))
    assert torch.equal(b.img_pos, edit.img_pos[:b.s_img])                         # frame j at frame j's slot
    assert [ib["ref"] for ib in b.image_blocks] == [(T2V, 0), (T2V, 1), (T2V, 2)]
    assert {ib["block"] for ib in b.image_blocks} == {3}
    assert b.block_text[3].tolist() == [0, -1]                                    # the caption
    dense = b.spec.dense()
    assert dense[b.s_txt:].all()                                                  # the clip sees all
    assert dense[:b.s_txt, b.s_txt:].any().item() == (mask == "full")
    _, _, noised = noise_batch(b, FlowConfig(), torch.Generator().manual_seed(0))
    assert noised.token_t()[b.s_txt:].unique().numel() == 1


def test_a_clip_session_packs_beside_edits():
    """A T2V session and an edit session in one pack: attention never crosses them, and the edit's blocks
    are what they are alone."""
    lat = torch.randn(3, 3, 8, 8)
    sess = EncodedSession(frames=lat, texts=["a", "bb"], cameras=[None, None], captions=["c0", "c1", "c2"])
    rec = RecipeConfig(mask_type="block_causal", t2v_prob=1.0)
    clip = build_sample(sess.texts, sess.cameras, SessionPlan(num_turns=2, task=T2V, target_turn=0), rec,
                        sess.captions)
    edit = build_sample(sess.texts, sess.cameras, SessionPlan(num_turns=2), rec)
    pc = PackConfig(patch_size=4)
    both = pack([(edit, sess), (clip, sess)], _words, pc, "block_causal")
    alone = pack([(edit, sess)], _words, pc, "block_causal")
    sess_of = both.spec.block_session[both.spec.token_blocks()]
    dense = both.spec.dense()
    assert not (dense & (sess_of[:, None] != sess_of[None, :])).any()
    e = (sess_of == 0).nonzero().squeeze(1)
    assert torch.equal(dense[e][:, e], alone.spec.dense())


def test_t2v_summary_judges_every_frame():
    """``summarize_t2v`` from judged frames of a real synthetic session: its true frames pass every frame and
    the clip; one frame recoloured fails that frame and the clip only; holding frame 0 still passes frame 0
    and fails each frame an edit changed."""
    from vincie_mcore.data.world import PALETTE, Obj, Scene, demo_config, render
    from vincie_mcore.eval.judge import judge_edit
    from vincie_mcore.eval.synthetic import summarize_t2v

    cfg = demo_config()
    states = [Scene((Obj(0, "square", "red", "large", 0, 0),)), Scene((Obj(0, "square", "blue", "large", 0, 0),)),
              Scene((Obj(0, "square", "blue", "large", 0, 0), Obj(1, "circle", "green", "small", 2, 2)))]
    frames = [render(s, cfg) for s in states]
    judge = lambda clip: [judge_edit(f, Scene() if k == 0 else states[k - 1], states[k], cfg)
                          for k, f in enumerate(clip)]
    wrong = frames[2].copy()
    wrong[np.all(wrong == PALETTE["green"], -1)] = PALETTE["yellow"]
    clips = [judge(frames), judge(frames[:2] + [wrong])]
    still = [judge([frames[0]] * 3)] * 2
    per_frame = lambda cs: [[c[k] for c in cs] for k in range(3)]
    s = summarize_t2v(per_frame(clips), per_frame(still))
    assert s["t2v_frame_success"] == [1.0, 1.0, 0.5] and s["t2v_clip_success"] == 0.5
    assert s["t2v_still_baseline"] == [1.0, 0.0, 0.0] and s["t2v_sessions"] == 2
    assert s["t2v_cell_error"][0] < s["t2v_cell_error"][2]


def test_a_clip_window_of_a_longer_session():
    """``t2v_max_frames``: a longer session's clip is that many consecutive frames from a uniform start a, with
    caption a and transitions a.., packed exactly as a clip from frame 0 of a session cut at a (the same
    positions, rows and conditioning); shorter sessions draw no start."""
    rec = RecipeConfig(mask_type="block_causal", t2v_prob=1.0, t2v_max_frames=3, camera_prompts=False)
    plans = [draw_plan(6, rec, np.random.default_rng(s), has_captions=True) for s in range(400)]
    assert {p.num_turns for p in plans} == {2} and np.bincount([p.target_turn for p in plans]).min() > 70
    assert len({p.target_turn for p in plans}) == 4                       # starts 0..3 of 6 frames
    assert draw_plan(3, rec, np.random.default_rng(0), has_captions=True) == \
        SessionPlan(num_turns=2, task=T2V, target_turn=0)
    with pytest.raises(ValueError, match="t2v_max_frames: 0 \\(every kept frame\\) or >= 2, got 1"):
        RecipeConfig(t2v_max_frames=1)
    lat = torch.randn(6, 3, 8, 8)
    texts, caps = [f"t{j}" for j in range(5)], [f"c{j}" for j in range(6)]
    sess = EncodedSession(frames=lat, texts=texts, cameras=[None] * 5, captions=caps)
    a = 2
    sample = build_sample(texts, [None] * 5, SessionPlan(num_turns=2, task=T2V, target_turn=a), rec, caps)
    assert [b.text or b.image for b in sample.blocks] == ["c2", "t2", "t3", (T2V, 2), (T2V, 3), (T2V, 4)]
    cut = EncodedSession(frames=lat[a:a + 3], texts=texts[a:a + 2], cameras=[None] * 2, captions=caps[a:a + 3])
    from_zero = build_sample(cut.texts, cut.cameras, SessionPlan(num_turns=2, task=T2V, target_turn=0), rec,
                             cut.captions)
    pc = PackConfig(patch_size=4)
    b, z = pack([(sample, sess)], _words, pc, "block_causal"), pack([(from_zero, cut)], _words, pc, "block_causal")
    for f in ("img_x0", "img_pos", "txt_emb", "txt_pos", "txt_turn", "block_text"):
        assert torch.equal(getattr(b, f), getattr(z, f)), f
    assert torch.equal(b.spec.dense(), z.spec.dense())
    assert [ib["ref"] for ib in b.image_blocks] == [(T2V, 2), (T2V, 3), (T2V, 4)]
