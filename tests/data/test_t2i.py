"""Text-to-image samples (``data.recipe.t2i_prob``): frame captions from the annotators, through the
session and latent stores, laid out as [caption, noisy frame], streamed and packed, and judged exactly.

References: the exact scene captions and renders of the synthetic world, a separately built text
encoder for the stored caption embeddings, and ``pack`` of the in-memory corpus for the streamed batches
(as tests/data/test_stream.py does for sessions)."""
import numpy as np
import pytest
import torch
from test_latents import IMG, TXT, make_session_store

from vincie_mcore.config import ConfigError
from vincie_mcore.data.corpus import CorpusConfig, decode_corpus, encode_corpus
from vincie_mcore.data.latents import LatentMismatch, LatentStore, encoder_identity, precompute, union
from vincie_mcore.data.packing import PackConfig, pack
from vincie_mcore.data.recipe import T2I, T2V, RecipeConfig, build_sample, draw_plan, pairwise_sessions
from vincie_mcore.data.store import RawSession, SessionStore
from vincie_mcore.data.stream import LatentStream, unit_of
from vincie_mcore.diffusion.flow import LOSS_TASKS, loss_groups
from vincie_mcore.encoders import TextEncoder
from vincie_mcore.packed.patches import patchify

PACK = PackConfig(patch_size=4, token_budget=300)
T2I_RECIPE = RecipeConfig(mask_type="block_causal", t2i_prob=0.5)


def _captions(i: int, k: int):
    return [f"frame {j} of video {i}: a {'red ' * (j % 3)}thing" for j in range(k)] if i % 3 else None


def make_store(root, n: int, seed: int = 0, prefix: str = "v"):
    """n sessions of 2-5 random 8-px frames; sessions i % 3 == 0 have no captions, the others one per frame."""
    return make_session_store(root, n, px=8, seed=seed, prefix=prefix, captions=_captions)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2i")
    make_store(tmp / "sessions", 14)
    precompute(tmp / "sessions", tmp / "latents", IMG, TXT, T2I_RECIPE, block_rows=5)
    return tmp, tmp / "latents"


# ----------------------------------------------------------------------------- captions at the source

def test_scene_captions_fix_the_frame():
    """Two scenes with one caption render to one frame (the judge can hold a generated image to it), over
    random scenes of a panning world; the judge passes the true frame and fails a blank one."""
    from vincie_mcore.data.world import Scene, WorldConfig, random_scene, render, scene_caption
    from vincie_mcore.eval.judge import judge_edit

    cfg = WorldConfig(camera_pan_prob=0.3, num_objects=(0, 4))
    rng, frames = np.random.default_rng(0), {}
    for _ in range(400):
        sc = random_scene(rng, cfg, int(rng.integers(0, 5)))
        sc = Scene(sc.objects, tuple(int(x) for x in rng.integers(-cfg.max_pan_px, cfg.max_pan_px + 1, 2)))
        cap = scene_caption(sc, cfg)
        frame = render(sc, cfg).tobytes()
        assert frames.setdefault(cap, frame) == frame, cap
        assert judge_edit(render(sc, cfg), Scene(), sc, cfg)["success"]
        assert judge_edit(render(Scene(camera=sc.camera), cfg), Scene(), sc, cfg)["success"] == (not sc.objects)
    assert len(frames) > 300
    two = Scene((random_scene(np.random.default_rng(1), cfg, 2).objects), (0, 0))
    assert scene_caption(two, cfg).count(", ") == 1 and scene_caption(Scene(), cfg) == "an empty scene"


def test_vlm_notes_give_frame_captions():
    """A VLM's frame descriptions become captions: frame i from transition i's first frame, the last frame from
    the last transition's second; a session with a transition the VLM did not describe gets none."""
    from vincie_mcore.data.annotate import Annotator, Transition, captions_from_notes
    from vincie_mcore.data.vlm import parse_reply

    def reply(a, b):
        return parse_reply('{"frame1_caption": {"scene": "%s", "obj1": "a red cup."}, "frame2_caption": "%s", '
                           '"summary_change": "move the cup"}' % (a, b)).model_dump()

    notes = [reply("A kitchen", "A kitchen, the cup moved"), reply("A  kitchen\\nlater", "An empty kitchen")]
    assert captions_from_notes(notes) == ["A kitchen. a red cup.", "A kitchen later. a red cup.", "An empty kitchen."]
    assert captions_from_notes([notes[0], None]) is None and captions_from_notes(None) is None

    class _Vlm(Annotator):
        def annotate(self, frames, frame_indices, video_meta):
            return []
    trans = [Transition("move the cup", "None", notes=n) for n in notes]
    assert _Vlm().captions(trans, [0, 5, 9], {}) == captions_from_notes(notes)
    assert _Vlm().captions([Transition("x", "None")], [0, 1], {}) is None


def test_captions_round_trip_and_bad_ones_are_refused(tmp_path):
    st = SessionStore(make_store(tmp_path / "s", 6))
    for i in range(6):
        assert st[i].captions == _captions(i, st[i].num_frames)
    assert not any("captions" in rec for i, _, rec in st.records() if i % 3 == 0)    # none: no key at all
    with pytest.raises(ValueError, match="captions must be 2 non-empty strings"):
        RawSession("x", [b"a", b"b"], [b"m"], [b"m"], ["t"], ["None"], captions=["only one"])


# ----------------------------------------------------------------------------- the latent store

@pytest.mark.parametrize("resident_mb", [0, 512])
def test_stored_captions_are_the_text_encoder_s(made, resident_mb, monkeypatch):
    import vincie_mcore.data.latents as latents

    monkeypatch.setattr(latents, "RESIDENT_MB", resident_mb)
    _, root = made
    st, text = LatentStore(root), TextEncoder(TXT)
    assert st.resident == (resident_mb > 0) and st.captioned
    idx = st.index()
    assert st.attrs["summary"]["captioned_rows"] == sum(1 for i in range(14) if i % 3)
    for row in range(14):
        sess, embs = st.session(row)
        k = sess.frames.shape[0]
        lens = idx["cap_len"][idx["cap_first"][row]:idx["cap_first"][row + 1]]
        assert sess.captions == _captions(row, k) and len(lens) == k
        if sess.captions is None:
            assert not lens.any()
            continue
        for c, want, n in zip(sess.captions, text.encode(sess.captions), lens):
            assert embs[c].shape[0] == n
            torch.testing.assert_close(embs[c], want)


def test_a_store_without_captions_serves_no_t2i_run(made):
    """A captioned store serves a run without text-to-image; one made without captions is refused by a T2I
    run in one line (by the identity check, and by the planner when no identity is given)."""
    tmp, root = made
    plain = RecipeConfig(mask_type="block_causal")
    LatentStream(root, plain, PACK, num_workers=0, expect=encoder_identity(IMG, TXT, plain, None, "float32"))
    precompute(tmp / "sessions", tmp / "plain", IMG, TXT, plain, block_rows=5)
    with pytest.raises(LatentMismatch, match="texts.captions: None there, True now"):
        LatentStream(tmp / "plain", T2I_RECIPE, PACK, num_workers=0,
                     expect=encoder_identity(IMG, TXT, T2I_RECIPE, None, "float32"))
    with pytest.raises(ConfigError, match="holds no frame captions"):
        LatentStream(tmp / "plain", T2I_RECIPE, PACK, num_workers=0)
    with pytest.raises(ConfigError, match="no session of this run has frame captions"):
        LatentStream(root, T2I_RECIPE, PACK, num_workers=0, max_sessions=1, subset_seed=_uncaptioned_first(root))


def _uncaptioned_first(root) -> int:
    """A subset seed whose first row is an uncaptioned session."""
    from vincie_mcore.data.stream import subset_rows
    n = len(LatentStore(root))
    return next(s for s in range(100) if int(subset_rows(n, 1, s)[0]) % 3 == 0)


# ----------------------------------------------------------------------------- the recipe and the stream

def test_no_t2i_draws_nothing_more():
    """With t2i_prob 0 a captioned session draws exactly the plans it drew before captions existed; with
    t2i_prob 1 every captioned sample is one frame's text-to-image, the frame uniform."""
    rec = RecipeConfig(mask_type="full")
    for seed in range(50):
        a = draw_plan(5, rec, np.random.default_rng(seed), has_captions=True)
        b = draw_plan(5, rec, np.random.default_rng(seed), has_captions=False)
        assert a == b and a.task != T2I
    always = RecipeConfig(t2i_prob=1.0)
    frames = [draw_plan(4, always, np.random.default_rng(s), has_captions=True) for s in range(400)]
    assert all(p.task == T2I and p.num_turns == 0 for p in frames)
    assert np.bincount([p.target_turn for p in frames], minlength=4).min() > 70
    assert draw_plan(4, always, np.random.default_rng(0), has_captions=False).task != T2I
    sample = build_sample(["a", "b", "c"], [None] * 3, frames[0], always, captions=["c0", "c1", "c2", "c3"])
    assert [(b.modality, b.role, b.text or b.image) for b in sample.blocks] == \
        [("text", "caption", f"c{frames[0].target_turn}"), ("image", T2I, (T2I, frames[0].target_turn))]
    with pytest.raises(ValueError, match="needs the session's frame captions"):
        build_sample(["a"], [None], frames[0], always)



def test_a_t2i_frame_is_packed_as_a_first_image():
    """Whichever frame of its video it is, a T2I image takes the RoPE positions of a session's first image
    (I0 of an edit), and is the only target, conditioned on its caption."""
    from vincie_mcore.data.packing import EncodedSession
    from vincie_mcore.data.recipe import inference_sample, t2i_sample
    from vincie_mcore.packed.maskspec import KIND_NOISY

    lat = torch.randn(4, 3, 8, 8)
    sess = EncodedSession(frames=lat, texts=["a", "b", "c"], cameras=[None] * 3, captions=["w", "x", "y", "z"])
    emb = lambda texts: [torch.ones(2, 4) * len(t) for t in texts]
    pc = PackConfig(patch_size=4)
    for mask in ("full", "block_causal"):
        first = pack([(t2i_sample("z", 0), sess)], emb, pc, mask)
        last = pack([(t2i_sample("z", 3), sess)], emb, pc, mask)
        edit = pack([(inference_sample(["a"], camera_prompts=False), sess)], emb, pc, mask)
        assert torch.equal(first.img_pos, last.img_pos) and torch.equal(first.img_pos, edit.img_pos[:first.s_img])
        assert torch.equal(last.img_x0, patchify(lat[3], 4)) and last.img_loss_mask.all()
        assert [int(k) for k in last.spec.block_kind[-1:]] == [KIND_NOISY]


@pytest.mark.parametrize("pairwise, t2v_max", [(False, 0), (False, 2), (True, 0)])
def test_streamed_t2i_batches_equal_pack_of_the_in_memory_corpus(made, pairwise, t2v_max):
    """Every streamed batch equals ``pack`` of the in-memory corpus under the same plans (captions from the
    session store, embeddings from a separate text encoder); the planner counts its tokens; text-to-image
    and -video samples come from captioned sessions only, about t2i_prob / t2v_prob of theirs; their
    targets form task_t2i / task_t2v (a store made for T2I serves T2V: the same captions). ``t2v_max`` 2:
    one-text windows at any start, whose camera tags (alternating by transition) make their texts' lengths
    differ from the session's first."""
    tmp, root = made
    rec = RecipeConfig(mask_type="block_causal", t2i_prob=0.3, t2v_prob=0.3, t2v_max_frames=t2v_max, pairwise=pairwise)
    ref = encode_corpus(decode_corpus(tmp / "sessions", CorpusConfig()), IMG_ENCODER())
    text = TextEncoder(TXT)
    s = LatentStream(root, rec, PACK, seed=3, num_workers=1)
    walk, t2i, t2v, captioned_units, seen = s.planner.packs(0, 0, 0), 0, 0, 0, 0
    for k in range(400):
        _, epoch, _, items = next(walk)
        if epoch == 4:
            break
        b = next(s)
        assert s.last_pack == k
        layouts = []
        for _, key, plan in items:
            row, pair = unit_of(key, pairwise)
            sess = ref[row] if pair is None else pairwise_sessions([ref[row]])[pair]
            layouts.append((build_sample(sess.texts, sess.cameras, plan, rec, sess.captions), sess))
            captioned_units += row % 3 != 0
            t2i += plan.task == T2I
            t2v += plan.task == T2V
            assert plan.task not in (T2I, T2V) or row % 3 != 0
        want = pack(layouts, text.encode, PACK, rec.mask_type)
        assert torch.equal(b.img_x0, want.img_x0) and torch.equal(b.spec.block_kind, want.spec.block_kind)
        torch.testing.assert_close(b.txt_emb, want.txt_emb)
        assert torch.equal(b.img_pos, want.img_pos) and torch.equal(b.txt_pos, want.txt_pos)
        assert b.spec.seq_len == sum(s.planner.tokens(key, plan) for _, key, plan in items)
        groups = loss_groups(b)
        for ib in b.image_blocks:
            if ib["noisy"] and ib["ref"][0] in (T2I, T2V):
                g = groups[:, ib["start"]:ib["start"] + ib["length"]]
                assert (g[0] == LOSS_TASKS.index(f"task_{ib['ref'][0]}")).all() and (g[1] == -1).all()
        seen += len(items)
    # 36-56 draws: the shares are loose here (tests/data/test_t2v.py checks them on 4,000 plans)
    assert seen >= 4 * 14 and t2i and t2v and 0.35 < (t2i + t2v) / captioned_units < 0.85


def IMG_ENCODER():
    from vincie_mcore.encoders import build_image_encoder
    return build_image_encoder(IMG)


def test_a_union_keeps_the_captions(made, tmp_path):
    tmp, root = made
    make_store(tmp_path / "s2", 5, seed=4, prefix="w")
    precompute(tmp_path / "s2", tmp_path / "l2", IMG, TXT, T2I_RECIPE, block_rows=3)
    u = union(tmp_path / "u", [f"a={root}", f"b={tmp_path / 'l2'}"])
    assert u["rows"] == 19
    st, text = LatentStore(tmp_path / "u"), TextEncoder(TXT)
    idx = st.index()
    assert len(idx["cap_len"]) == int(idx["n_frames"].astype(int).sum())
    for row in (0, 1, 14, 15, 18):
        sess, embs = st.session(row)
        i = row if row < 14 else row - 14
        assert sess.captions == _captions(i, sess.frames.shape[0])
        for c, n in zip(sess.captions or [], idx["cap_len"][idx["cap_first"][row]:]):
            assert embs[c].shape[0] == n
            torch.testing.assert_close(embs[c], text.encode([c])[0])


def test_t2i_summary_counts_objects_and_background():
    """``summarize_t2i`` from judged frames: true frames all pass; a frame with one object recoloured fails
    and loses exactly that object; a blank frame passes only the empty scene."""
    from vincie_mcore.data.world import PALETTE, Obj, Scene, demo_config, render
    from vincie_mcore.eval.judge import judge_edit
    from vincie_mcore.eval.synthetic import summarize_t2i

    cfg = demo_config()
    scenes = [Scene(), Scene((Obj(0, "square", "red", "large", 0, 0),)),
              Scene((Obj(0, "circle", "blue", "small", 1, 1), Obj(1, "triangle", "green", "large", 2, 0)))]
    true = [judge_edit(render(s, cfg), Scene(), s, cfg) | {"objects": len(s.objects)} for s in scenes]
    wrong = render(scenes[2], cfg)
    wrong[np.all(wrong == PALETTE["blue"], -1)] = PALETTE["yellow"]          # the blue circle drawn yellow
    judged = true[:2] + [judge_edit(wrong, Scene(), scenes[2], cfg) | {"objects": 2}]
    blank = [judge_edit(render(Scene(), cfg), Scene(), s, cfg) for s in scenes]
    a, b = summarize_t2i(true, blank), summarize_t2i(judged, blank)
    assert (a["t2i_success"], a["t2i_objects_right"], a["t2i_baseline_success"]) == (1.0, 1.0, round(1 / 3, 4))
    assert (b["t2i_success"], b["t2i_objects_right"], b["t2i_background_right"]) == (round(2 / 3, 4), 0.6667, 1.0)
    assert b["t2i_success_by_objects"] == {"0": 1.0, "1": 1.0, "2": 0.0} and b["t2i_sessions"] == 3
