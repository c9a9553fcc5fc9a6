"""Packing and the recipe, checked against an independently built dense mask.

The oracle below never reads the spec: it walks the samples' blocks and
decides visibility per token pair from what each token *is* (which session,
which interleaved position, noisy or clean), as the paper describes it.
"""
import numpy as np
import pytest
import torch

from vincie_mcore.data.packing import EncodedSession, PackConfig, PackedStream, pack
from vincie_mcore.data.recipe import RecipeConfig, SessionPlan, build_sample, draw_plan, inference_sample
from vincie_mcore.packed.maskspec import KIND_NOISY


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
    """Token-level facts from the samples, then the rule stated in words (docs/masks.md)."""
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


def test_text_then_image_rope_matches_training_at_inference():
    """Under "text_then_image" a frame's turn coordinate is the session's text tokens + 3j; a training sample
    cut at its target (full mask) and the editor's layout of the same turn put every image at the same place."""
    sess = make_session(4)
    cfg = PackConfig(patch_size=8, rope_mode="text_then_image")
    infer = pack([(inference_sample(sess.texts[:2], camera_prompts=False), sess)], FakeText().encode, cfg, "full")
    n_text = 2 * (len("edit number 0 now".split()) + 1)                  # two texts: <TURN> + 4 words each
    assert infer.s_txt == n_text and infer.txt_pos.tolist() == list(range(n_text))
    assert infer.img_pos[:, 0].unique().tolist() == [n_text, n_text + 3, n_text + 6]
    plan = SessionPlan(num_turns=3, use_roe=False, task="nip", target_turn=1)
    train = pack([(build_sample(sess.texts, [None] * 3, plan, RecipeConfig(mask_type="full", camera_prompts=False)),
                   sess)], FakeText().encode, cfg, "full")
    assert torch.equal(train.img_pos, infer.img_pos) and torch.equal(train.txt_pos, infer.txt_pos)
    with pytest.raises(ValueError, match="text_then_image"):
        pack([(inference_sample(sess.texts[:2], camera_prompts=False), sess)], FakeText().encode, cfg, "block_causal")


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


def test_pack_lays_out_two_sessions_exactly():
    """Every tensor of a small pack, written out by hand from the recipe's blocks (packed/builder.py rules)."""
    cfg = RecipeConfig(mask_type="block_causal", camera_prompts=False, mask_prompt_src="src", mask_prompt_tgt="tgt mask")
    a = make_session(2)                                                       # 16 x 16 latents: 2 x 2 tokens
    sa = build_sample(["a b"], [None], SessionPlan(num_turns=1, use_roe=True, task="nip"), cfg)
    # I0 | T"a b" | Tm"src" | M_src clean + noisy | Tm"tgt mask" | M_tgt clean + noisy | I1 noisy (last frame)
    g = torch.Generator().manual_seed(1)
    b = EncodedSession(frames=torch.randn(2, 3, 8, 16, generator=g), texts=["x"], cameras=[None])  # 1 x 2 tokens
    sb = inference_sample(["x"], camera_prompts=False)                        # I0 | T"x" | I1 noisy
    batch = pack([(sa, a), (sb, b)], FakeText().encode, PackConfig(patch_size=8, pad_multiple=8), "block_causal")

    # text: A's three blocks (3, 2, 3 tokens), B's one (2), padding 6 (10 -> 16); images: A 6 x 4, B 2 x 2, padding 4
    assert batch.spec.block_offsets.tolist() == [0, 3, 5, 8, 10, 16, 20, 24, 28, 32, 36, 40, 42, 44, 48]
    assert batch.spec.block_order.tolist() == [1, 2, 4, 1, 0, 0, 3, 3, 5, 5, 6, 0, 2, 0]
    assert batch.spec.block_kind.tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 1, 2, 2, 1, 2, 1]
    assert batch.spec.block_session.tolist() == [0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 1, 1, 3]
    assert batch.spec.mask_type == "block_causal" and batch.num_sessions == 2
    assert batch.txt_turn.tolist() == [0, -1, -1, 0, -1, 0, -1, -1, 0, -1] + [-1] * 6
    assert batch.txt_pos.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1] + [0] * 6
    word = {"a b": 3.0, "src": 3.0, "tgt mask": 1.0, "x": 1.0}                # FakeText: len(text) % 7
    want_emb = [0.0, word["a b"], word["a b"], 0.0, word["src"], 0.0, word["tgt mask"], word["tgt mask"],
                0.0, word["x"]] + [0.0] * 6
    assert torch.equal(batch.txt_emb, torch.tensor(want_emb)[:, None].expand(16, 4))
    # image positions: (turn slot, row, col); frame j at 3j, RoE source / target maps at 3j+1 / 3j+2
    g22, g12 = [[0, 0], [0, 1], [1, 0], [1, 1]], [[0, 0], [0, 1]]
    want_pos = [[s] + rc for s in (0, 1, 1, 2, 2, 3) for rc in g22] + [[s] + rc for s in (0, 3) for rc in g12]
    assert batch.img_pos.tolist() == want_pos + [[0, 0, 0]] * 4
    noisy = [False, False, True, False, True, True]
    assert batch.img_loss_mask.tolist() == [n for n in noisy for _ in range(4)] + [False, False, True, True] + [False] * 4
    # conditioning: maps name the transition text (block 0) and their own prompt (1 / 2); frames the text only
    assert batch.block_text.tolist() == [[-1, -1]] * 5 + [[-1, -1], [0, 1], [0, 1], [0, 2], [0, 2], [0, -1],
                                                          [-1, -1], [3, -1], [-1, -1]]
    assert torch.equal(batch.block_t, torch.zeros(14))
    refs = [("frame", 0), ("roe_src", 0), ("roe_src", 0), ("roe_tgt", 0), ("roe_tgt", 0), ("frame", 1)]
    want_blocks = [dict(block=5 + i, session=0, ref=r, hw=(2, 2), noisy=noisy[i], start=4 * i, length=4)
                   for i, r in enumerate(refs)]
    want_blocks += [dict(block=11, session=1, ref=("frame", 0), hw=(1, 2), noisy=False, start=24, length=2),
                    dict(block=12, session=1, ref=("frame", 1), hw=(1, 2), noisy=True, start=26, length=2)]
    assert batch.image_blocks == want_blocks
    # image rows: token (r, c) holds the 8 x 8 patch at (8r, 8c), features (channel, y, x)
    for ib in want_blocks:
        lat = (a if ib["session"] == 0 else b).latent(ib["ref"])
        for k in range(ib["length"]):
            r, c = divmod(k, ib["hw"][1])
            assert torch.equal(batch.img_x0[ib["start"] + k], lat[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8].reshape(-1))
    assert not batch.img_x0[-4:].any()
    # interleaved RoPE: one counter over the session: I0 at 0, <TURN> + "x" at 1..2, I1 at 3
    bi = pack([(sb, b)], FakeText().encode, PackConfig(patch_size=8, rope_mode="interleaved"), "full")
    assert bi.txt_pos.tolist() == [1, 2] and bi.img_pos[:, 0].tolist() == [0, 0, 3, 3]
