"""Packing and the recipe, checked against an independently built dense mask.

The oracle below never reads the spec: it walks the samples' blocks and
decides visibility per token pair from what each token *is* (which session,
which interleaved position, noisy or clean), as the paper describes it.
"""
import numpy as np
import pytest
import torch

from vincie_mcore.data.maskspec import KIND_NOISY
from vincie_mcore.data.packing import EncodedSession, PackConfig, PackedStream, pack
from vincie_mcore.data.recipe import RecipeConfig, SessionPlan, build_sample, draw_plan, inference_sample


class FakeText:
    """Deterministic 'encoder': one row per word, so lengths vary with the text."""
    dim = 4

    def encode(self, texts):
        return [torch.full((len(t.split()), self.dim), float(len(t) % 7)) for t in texts]


def make_session(K, C=3, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return EncodedSession(frames=torch.randn(K, C, H, W, generator=g), texts=[f"edit number {j} now" for j in range(K - 1)],
                          cameras=["pan left"] * (K - 1), roe_src=torch.randn(K - 1, C, H, W, generator=g),
                          roe_tgt=torch.randn(K - 1, C, H, W, generator=g))


def oracle(items, mask_type, p, text):
    """Token-level facts from the samples, then the rule stated in words (DESIGN.md)."""
    txt, img = [], []   # per token: (session, interleaved position, block uid, noisy)
    uid = 0
    for s, (sample, sess) in enumerate(items):
        for pos, b in enumerate(sample.blocks):
            uid += 1
            if b.modality == "text":
                txt += [(s, b.order, uid, False)] * (len(b.text.split()) + 1)
            else:
                n = (sess.frames.shape[2] // p) * (sess.frames.shape[3] // p)
                img += [(s, b.order, uid, b.kind == KIND_NOISY)] * n
    toks = txt + img
    S = len(toks)
    M = torch.zeros(S, S, dtype=torch.bool)
    for i, (sq, oq, bq, nq) in enumerate(toks):
        for j, (sk, ok, bk, nk) in enumerate(toks):
            if sq != sk:
                continue
            if mask_type == "full" or bq == bk:
                M[i, j] = True
            elif not nk:
                M[i, j] = ok < oq if nq else ok <= oq
    return M


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_spec_matches_independent_dense_mask(mask_type):
    rng = np.random.default_rng(0)
    cfg = RecipeConfig(mask_type=mask_type, roe_prob=0.7, camera_prompts=False)
    items = []
    for k, K in enumerate([2, 4, 5, 3]):
        sess = make_session(K, seed=k)
        items.append((build_sample(sess.texts, sess.cameras, draw_plan(K, cfg, rng), cfg), sess))
    batch = pack(items, FakeText().encode, PackConfig(patch_size=4), mask_type)
    want = oracle(items, mask_type, 4, FakeText())
    assert batch.spec.seq_len == want.shape[0] == batch.s_txt + batch.s_img
    assert torch.equal(batch.spec.dense(), want)


def test_padding_is_isolated_and_lossless():
    sess = make_session(3)
    cfg = RecipeConfig(mask_type="block_causal", roe_prob=0.0)
    sample = build_sample(sess.texts, sess.cameras, draw_plan(3, cfg, np.random.default_rng(1)), cfg)
    b = pack([(sample, sess)], FakeText().encode, PackConfig(patch_size=4, pad_multiple=7), "block_causal")
    n_pad = b.s_img - sum(x["length"] for x in b.image_blocks)
    assert b.s_txt % 7 == 0 and b.s_img % 7 == 0 and n_pad > 0
    D = b.spec.dense()
    pads = b.spec.block_session >= 1
    for blk in torch.nonzero(pads).flatten().tolist():
        lo, hi = int(b.spec.block_offsets[blk]), int(b.spec.block_offsets[blk + 1])
        assert D[lo:hi, lo:hi].all() and D[lo:hi].sum() == (hi - lo) ** 2 and D[:, lo:hi].sum() == (hi - lo) ** 2
    assert not b.img_loss_mask[-n_pad:].any()


def test_full_mask_has_one_noisy_target_and_cuts_later_turns():
    cfg = RecipeConfig(mask_type="full", roe_prob=1.0, task_probs=(1, 0, 0))
    plan = SessionPlan(num_turns=4, use_roe=True, task="nip", target_turn=1, dropped=set())
    s = build_sample([f"t{j}" for j in range(4)], [None] * 4, plan, cfg)
    noisy = [b for b in s.blocks if b.kind == KIND_NOISY]
    assert [b.image for b in noisy] == [("frame", 2)]
    assert max(b.turn for b in s.blocks) == 2 and s.blocks[-1].kind == KIND_NOISY
    # CSP at turn 0: the source map is the (last) target; nothing after it
    plan = SessionPlan(num_turns=4, use_roe=True, task="csp", target_turn=0, dropped={("roe_src", 0)})
    s = build_sample([f"t{j}" for j in range(4)], [None] * 4, plan, cfg)
    assert s.blocks[-1].kind == KIND_NOISY and s.blocks[-1].image == ("roe_src", 0)


def test_dropout_never_drops_target_or_source():
    cfg = RecipeConfig(mask_type="full", drop_frame=1.0, drop_roe_src=1.0, drop_roe_tgt=1.0, roe_prob=1.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        plan = draw_plan(6, cfg, rng)
        s = build_sample(["x"] * 5, [None] * 5, plan, cfg)
        tgt = [b for b in s.blocks if b.kind == KIND_NOISY]
        assert len(tgt) == 1
        refs = {b.image for b in s.blocks if b.modality == "image"}
        assert ("frame", plan.target_turn) in refs


def test_rope_positions():
    sess = make_session(3)
    sample = inference_sample(sess.texts, camera_prompts=False)
    b = pack([(sample, sess)], FakeText().encode, PackConfig(patch_size=8), "full")
    # separate: text positions run 0.. over the text stream; frame j at turn coordinate 3j
    assert torch.equal(b.txt_pos, torch.arange(b.s_txt))
    assert b.img_pos[:, 0].unique().tolist() == [0, 3, 6]
    # RoE maps sit between their frames, and dropped context shifts nothing
    plan = SessionPlan(num_turns=2, use_roe=True, task="nip", dropped={("frame", 1), ("roe_src", 0)})
    cfg = RecipeConfig(mask_type="block_causal", camera_prompts=False)
    bm = pack([(build_sample(sess.texts, sess.cameras, plan, cfg), sess)], FakeText().encode,
              PackConfig(patch_size=8), "block_causal")
    turn_of = {(ib["ref"], ib["noisy"]): int(bm.img_pos[ib["start"], 0]) for ib in bm.image_blocks}
    assert turn_of[(("frame", 0), False)] == 0 and turn_of[(("roe_src", 0), True)] == 1
    assert turn_of[(("roe_tgt", 0), True)] == 2 and turn_of[(("frame", 1), True)] == 3
    assert turn_of[(("frame", 2), True)] == 6
    assert (("frame", 2), False) not in turn_of        # the last frame's clean twin: nothing could see it
    assert b.txt_turn[0] == 0 and (b.txt_turn >= 0).sum() == 2
    bi = pack([(sample, sess)], FakeText().encode, PackConfig(patch_size=8, rope_mode="interleaved"), "full")
    # interleaved: I0 at 0, T0 occupies 1..L0, I1 right after
    L0 = len(sess.texts[0].split()) + 1
    assert bi.img_pos[:, 0].unique().tolist()[:2] == [0, 1 + L0] and bi.txt_pos[0] == 1


def test_stream_is_a_function_of_step():
    corpus = [make_session(K, seed=K) for K in (2, 3, 4, 5)]
    cfg = RecipeConfig(mask_type="block_causal")
    a = PackedStream(corpus, FakeText(), cfg, PackConfig(patch_size=4, token_budget=200), seed=3)
    batches = [next(a) for _ in range(3)]
    b = PackedStream(corpus, FakeText(), cfg, PackConfig(patch_size=4, token_budget=200), seed=3)
    b.load_state_dict(a.state_dict() | {"step": 2})
    assert torch.equal(next(b).img_x0, batches[2].img_x0)
    assert all(x.spec.seq_len <= 200 or x.num_sessions == 1 for x in batches)


def test_block_text_names_each_image_its_instruction():
    """Per image block: the transition text that precedes it, and for RoE maps also its own prompt."""
    sess = make_session(3)
    cfg = RecipeConfig(mask_type="block_causal", camera_prompts=False)
    sample = build_sample(sess.texts, sess.cameras, SessionPlan(num_turns=2, use_roe=True, task="nip"), cfg)
    b = pack([(sample, sess), (sample, sess)], FakeText().encode, PackConfig(patch_size=8), "block_causal")
    texts = [x for x in sample.blocks if x.modality == "text"] * 2          # text blocks come first, by session
    images = [x for x in sample.blocks if x.modality == "image"] * 2
    assert (b.block_text[:len(texts)] == -1).all()
    for i, x in enumerate(images):
        tr, prompt = b.block_text[len(texts) + i].tolist()
        turn = x.image[1] - 1 if x.image[0] == "frame" else x.image[1]       # frame j follows transition j - 1
        if turn < 0:
            assert (tr, prompt) == (-1, -1)
            continue
        session_offset = 0 if i < len(images) // 2 else len(texts) // 2
        assert tr >= session_offset and texts[tr].text == sess.texts[turn]
        if x.image[0] == "frame":
            assert prompt == -1
        else:
            want = cfg.mask_prompt_src if x.image[0] == "roe_src" else cfg.mask_prompt_tgt
            assert texts[prompt].text == want and prompt > tr
    assert b.block_text.shape == (b.spec.num_blocks, 2)
