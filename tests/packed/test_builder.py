"""The batch builder, checked against facts written independently of it.

The mask oracle below never reads the spec: it lists, per token, what the caller added
(session, order, kind, which block) and applies the rule in words. Packing real recipe
samples through the builder is checked in tests/data/test_packing.py.
"""
import pytest
import torch

from vincie_mcore.packed.builder import BatchBuilder, concat
from vincie_mcore.packed.maskspec import KIND_CLEAN, KIND_NOISY, KIND_TEXT

TEXT_DIM, PATCH_DIM = 3, 5


def random_layout(gen, n_sessions, mask_type):
    """Sessions as lists of ("text", order, turn, length) / ("image", order, kind, (h, w), turn) /
    ("clip", order, [((h, w), turn) per frame]): a clip's noisy frames, one block in words too."""
    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    sessions = []
    for _ in range(n_sessions):
        if rint(0, 2) == 0:                 # a text-to-video sample: texts, then one clip of noisy frames
            texts = [("text", o, o, rint(1, 4)) for o in range(rint(1, 2))]
            sessions.append(texts + [("clip", len(texts), [((2, rint(1, 2)), 3 * f) for f in range(rint(2, 3))])])
            continue
        order, blocks = 0, [("image", 0, KIND_CLEAN, (rint(1, 3), rint(1, 3)), 0)]
        for t in range(rint(1, 3)):
            order += 1
            blocks.append(("text", order, t, rint(1, 6)))
            order += 1
            hw = (rint(1, 3), rint(1, 3))
            if mask_type == "block_causal" or rint(0, 1):
                blocks.append(("image", order, KIND_CLEAN, hw, t + 1))
            blocks.append(("image", order, KIND_NOISY, hw, t + 1))
        sessions.append(blocks)
    return sessions


def fill(builder, sessions, gen=None, tags=None):
    """Add the sessions' blocks; with ``gen``, with tensors drawn from it. Returns per-token facts
    (session, order, kind, block uid) and appends each image's tag to ``tags``."""
    tags = [] if tags is None else tags
    txt, img, uid = [], [], 0
    for s, blocks in enumerate(sessions):
        builder.session()
        last = -1
        for blk in blocks:
            uid += 1
            if blk[0] == "text":
                _, order, turn, n = blk
                emb = None if gen is None else torch.randn(n - 1, TEXT_DIM, generator=gen)
                last = builder.text(order, turn, emb, length=None if gen is not None else n)
                txt += [(s, order, KIND_TEXT, uid)] * n
            elif blk[0] == "clip":          # frame f at its own order; the block is the clip's (uid, order)
                _, order, frames = blk
                for f, ((h, w), turn) in enumerate(frames):
                    tok = None if gen is None else torch.randn(h * w, PATCH_DIM, generator=gen)
                    builder.image(order + f, KIND_NOISY, (h, w), tok, rope_turn=turn, text_block=last,
                                  joins=f > 0, tag=(uid, f))
                    img += [(s, order, KIND_NOISY, uid)] * (h * w)
                    tags.append((uid, f))
            else:
                _, order, kind, (h, w), turn = blk
                tok = None if gen is None else torch.randn(h * w, PATCH_DIM, generator=gen)
                builder.image(order, kind, (h, w), tok, rope_turn=turn, text_block=last, tag=uid)
                img += [(s, order, kind, uid)] * (h * w)
                tags.append(uid)
    return txt, img


def oracle(tokens, mask_type):
    """[S, S] from per-token facts and the rule in words (reference.py's docstring)."""
    S = len(tokens)
    M = torch.zeros(S, S, dtype=torch.bool)
    for i, (sq, oq, kq, bq) in enumerate(tokens):
        for j, (sk, ok, kk, bk) in enumerate(tokens):
            if sq != sk:
                continue
            if mask_type == "full" or bq == bk:
                M[i, j] = True
            elif kk != KIND_NOISY:
                M[i, j] = ok < oq if kq == KIND_NOISY else ok <= oq
    return M


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
@pytest.mark.parametrize("pad", [1, 8])
def test_spec_matches_a_token_level_oracle(mask_type, pad):
    gen = torch.Generator().manual_seed(0)
    for trial in range(4):
        builder = BatchBuilder(mask_type, pad_multiple=pad)
        tags = []
        txt, img = fill(builder, random_layout(gen, 1 + trial, mask_type), gen, tags)
        batch = builder.build()
        n = builder.num_sessions
        pad_t, pad_i = -len(txt) % pad, -len(img) % pad
        # padding: a block of its own session per stream (ids n and n + 1)
        tokens = txt + [(n, 0, KIND_TEXT, -1)] * pad_t + img + [(n + 1, 0, KIND_CLEAN, -2)] * pad_i
        assert batch.s_txt == len(txt) + pad_t and batch.s_img == len(img) + pad_i
        assert torch.equal(batch.spec.dense(), oracle(tokens, mask_type))
        assert batch.img_loss_mask.tolist() == [t[2] == KIND_NOISY for t in img] + [False] * pad_i
        assert [ib["tag"] for ib in batch.image_blocks] == tags
        # a clip's frames: one block, each frame its own rows
        for ib in batch.image_blocks:
            blk = batch.spec.block_offsets[ib["block"]:ib["block"] + 2] - batch.s_txt
            assert blk[0] <= ib["start"] and ib["start"] + ib["length"] <= blk[1]
            assert (blk[1] - blk[0] > ib["length"]) == isinstance(ib["tag"], tuple)


def test_positions_and_text_rows():
    b = BatchBuilder("block_causal")
    b.session()
    b.image(0, KIND_CLEAN, (1, 2), torch.ones(2, PATCH_DIM), rope_turn=0)
    t = b.text(1, 0, torch.full((2, TEXT_DIM), 7.0))
    b.image(2, KIND_CLEAN, (2, 1), torch.ones(2, PATCH_DIM), rope_turn=4, text_block=t)
    b.image(2, KIND_NOISY, (2, 1), torch.ones(2, PATCH_DIM), rope_turn=4, text_block=t)
    b.session()
    b.text(0, 3, torch.zeros(0, TEXT_DIM))                                     # a bare <TURN>_3
    b.image(1, KIND_NOISY, (1, 1), torch.ones(1, PATCH_DIM), rope_turn=2)
    batch = b.build()
    assert batch.txt_turn.tolist() == [0, -1, -1, 3] and batch.txt_pos.tolist() == [0, 1, 2, 0]
    assert batch.txt_emb[:, 0].tolist() == [0.0, 7.0, 7.0, 0.0]              # <TURN> rows carry no features
    assert batch.img_pos.tolist() == [[0, 0, 0], [0, 0, 1], [4, 0, 0], [4, 1, 0], [4, 0, 0], [4, 1, 0], [2, 0, 0]]
    assert batch.block_text.tolist() == [[-1, -1]] * 2 + [[-1, -1], [0, -1], [0, -1], [-1, -1]]
    # interleaved: one counter per session, text tokens and images (a twin shares its slot)
    bi = BatchBuilder("block_causal", rope_mode="interleaved")
    bi.session()
    bi.image(0, KIND_CLEAN, (1, 1), torch.ones(1, PATCH_DIM))
    bi.text(1, 0, torch.zeros(2, TEXT_DIM))
    bi.image(2, KIND_CLEAN, (1, 1), torch.ones(1, PATCH_DIM))
    bi.image(2, KIND_NOISY, (1, 1), torch.ones(1, PATCH_DIM))
    bi.text(3, 1, torch.zeros(1, TEXT_DIM))
    out = bi.build()
    assert out.txt_pos.tolist() == [1, 2, 3, 5, 6] and out.img_pos[:, 0].tolist() == [0, 4, 4]


def test_a_clip_is_one_block_its_frames_keep_their_positions():
    """A text-to-video clip: frames at their own turn coordinates and rows, one spec block (so one
    diffusion time, and under block_causal each frame sees the others and the text before)."""
    b = BatchBuilder("block_causal")
    b.session()
    t = b.text(0, 0, torch.zeros(1, TEXT_DIM))
    for f in range(3):
        b.image(1 + f, KIND_NOISY, (1, 2), torch.full((2, PATCH_DIM), float(f)), rope_turn=3 * f, text_block=t,
                joins=f > 0, ref=("t2v", f))
    batch = b.build()
    assert batch.spec.num_blocks == 2 and batch.img_pos[:, 0].tolist() == [0, 0, 3, 3, 6, 6]
    assert [(ib["block"], ib["start"], ib["length"], ib["ref"]) for ib in batch.image_blocks] == \
        [(1, 2 * f, 2, ("t2v", f)) for f in range(3)]
    assert batch.spec.dense()[batch.s_txt:].all() and batch.block_text.tolist() == [[-1, -1], [0, -1]]
    r = BatchBuilder("block_causal")
    r.session()
    r.text(0, 0, length=2)
    for f in range(3):
        r.image(1 + f, KIND_NOISY, (1, 1), rope_turn=f, joins=f > 0)
    rb = r.build(torch.Generator().manual_seed(0), text_dim=TEXT_DIM, patch_dim=PATCH_DIM, random_t=True)
    assert rb.token_t()[rb.s_txt:].unique().numel() == 1 and float(rb.block_t[1]) > 0
    bad = BatchBuilder("block_causal")
    bad.session()
    with pytest.raises(ValueError, match="joins=True needs a noisy image"):
        bad.image(0, KIND_NOISY, (1, 1), rope_turn=0, joins=True)
    bad.image(0, KIND_CLEAN, (1, 1), rope_turn=0)
    with pytest.raises(ValueError, match="joins=True needs a noisy image"):
        bad.image(1, KIND_NOISY, (1, 1), rope_turn=1, joins=True)
    bad.image(1, KIND_NOISY, (1, 1), rope_turn=1)
    with pytest.raises(ValueError, match="an order of its own"):
        bad.image(1, KIND_NOISY, (1, 1), rope_turn=1, joins=True)
    tb = bad.text(2, 0, length=1)
    with pytest.raises(ValueError, match="share their block's text blocks"):
        bad.image(3, KIND_NOISY, (1, 1), rope_turn=2, text_block=tb, joins=True)


def test_text_then_image_puts_images_after_their_sessions_text():
    """Paper Table 10's first RoPE row: text as under "separate", each image at its session's text length +
    rope_turn (every text block counts, later ones too), the grid and the mask as under "separate"."""
    def fill(b):
        b.session()
        b.image(0, KIND_CLEAN, (1, 2), torch.ones(2, PATCH_DIM), rope_turn=0)
        t = b.text(1, 0, torch.zeros(2, TEXT_DIM))                              # 3 tokens
        b.image(2, KIND_CLEAN, (1, 1), torch.ones(1, PATCH_DIM), rope_turn=3, text_block=t)
        b.text(3, 1, torch.zeros(1, TEXT_DIM))                                  # 2 more: session 0 has 5
        b.image(4, KIND_NOISY, (2, 1), torch.ones(2, PATCH_DIM), rope_turn=6)
        b.session()
        b.image(0, KIND_CLEAN, (1, 1), torch.ones(1, PATCH_DIM), rope_turn=0)
        b.text(1, 0, torch.zeros(3, TEXT_DIM))                                  # session 1 has 4
        b.image(2, KIND_CLEAN, (1, 1), torch.ones(1, PATCH_DIM), rope_turn=3)
        b.image(2, KIND_NOISY, (1, 1), torch.ones(1, PATCH_DIM), rope_turn=3)   # its twin, same position
        return b.build()
    tti = fill(BatchBuilder("full", rope_mode="text_then_image", pad_multiple=5))
    sep = fill(BatchBuilder("full", pad_multiple=5))
    assert tti.txt_pos.tolist() == sep.txt_pos.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0]
    assert tti.img_pos[:, 0].tolist() == [5, 5, 8, 11, 11, 4, 7, 7, 0, 0]       # the last rows: padding, at 0
    assert torch.equal(tti.img_pos[:, 1:], sep.img_pos[:, 1:]) and sep.img_pos[:, 0].tolist()[:5] == [0, 0, 3, 6, 6]
    assert torch.equal(tti.spec.dense(), sep.spec.dense())
    with pytest.raises(ValueError, match='^rope_mode "text_then_image" needs mask_type "full", got .block_causal.'):
        BatchBuilder("block_causal", rope_mode="text_then_image")
    b = BatchBuilder("full", rope_mode="text_then_image")
    b.session()
    with pytest.raises(ValueError, match="rope_turn is required under rope_mode='text_then_image'"):
        b.image(0, KIND_CLEAN, (1, 1), torch.ones(1, PATCH_DIM))
    b.image(0, KIND_CLEAN, (1, 1), torch.ones(1, PATCH_DIM), rope_turn=0)
    with pytest.raises(ValueError, match="already sits at turn 0, not 1"):
        b.image(0, KIND_NOISY, (1, 1), torch.ones(1, PATCH_DIM), rope_turn=1)


def test_random_tensors_are_drawn_text_times_images():
    sessions = [[("image", 0, KIND_CLEAN, (2, 2), 0), ("text", 1, 0, 3), ("image", 2, KIND_NOISY, (1, 3), 1)]]
    b = BatchBuilder("full")
    fill(b, sessions)
    batch = b.build(torch.Generator().manual_seed(4), text_dim=TEXT_DIM, patch_dim=PATCH_DIM, random_t=True)
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(3, TEXT_DIM, generator=g)
    emb[0] = 0.0
    t = float(torch.rand((), generator=g))
    assert torch.equal(batch.txt_emb, emb)
    assert batch.block_t.tolist() == [0.0, 0.0, t]                           # text, clean, noisy
    assert torch.equal(batch.img_x0, torch.randn(7, PATCH_DIM, generator=g))


def test_concat_is_one_build_of_all_sessions():
    gen = torch.Generator().manual_seed(2)
    sessions = random_layout(gen, 5, "block_causal")
    whole, parts = BatchBuilder("block_causal"), [BatchBuilder("block_causal"), BatchBuilder("block_causal")]
    fill(whole, sessions, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)                                       # the same tensors, split 2 + 3
    fill(parts[0], sessions[:2], g)
    fill(parts[1], sessions[2:], g)
    want, got = whole.build(), concat([p.build() for p in parts])
    for f in ("txt_emb", "txt_turn", "txt_pos", "img_x0", "img_pos", "img_loss_mask", "block_t", "block_text"):
        assert torch.equal(getattr(got, f), getattr(want, f)), f
    for x, y in zip(got.spec.tensors(), want.spec.tensors()):
        assert torch.equal(x, y)
    tag = lambda bs: [{k: v for k, v in ib.items() if k != "tag"} for ib in bs]  # noqa: E731  (uids differ per fill)
    assert tag(got.image_blocks) == tag(want.image_blocks) and got.num_sessions == want.num_sessions == 5


def test_concat_keeps_padding_isolated():
    gen = torch.Generator().manual_seed(3)
    batches, facts = [], []
    for k in range(3):
        b = BatchBuilder("full", pad_multiple=4)
        txt, img = fill(b, random_layout(gen, 1 + k, "full"))
        batches.append(b.build(gen, text_dim=TEXT_DIM, patch_dim=PATCH_DIM))
        facts.append((txt, img, b.num_sessions))
    out = concat(batches)
    s0, txt, img = 0, [], []
    for t, i, n in facts:                                                      # sessions renumbered, pads included
        txt += [(s + s0, o, k, (s0, u)) for s, o, k, u in t] + [(s0 + n, 0, KIND_TEXT, (s0, -1))] * (-len(t) % 4)
        img += [(s + s0, o, k, (s0, u)) for s, o, k, u in i] + [(s0 + n + 1, 0, KIND_CLEAN, (s0, -2))] * (-len(i) % 4)
        s0 += n + (2 if len(i) % 4 else 1 if len(t) % 4 else 0)                  # the last id used, + 1
    assert torch.equal(out.spec.dense(), oracle(txt + img, "full")) and out.num_sessions == s0
    assert [ib["start"] for ib in out.image_blocks] == [ib["start"] + sum(b.s_img for b in batches[:p])
                                                        for p, b in enumerate(batches) for ib in b.image_blocks]


def test_misuse_is_one_line():
    b = BatchBuilder("full")
    with pytest.raises(ValueError, match="call session"):
        b.text(0, 0, length=2)
    b.session()
    with pytest.raises(ValueError, match="exactly one of emb"):
        b.text(0, 0)
    with pytest.raises(ValueError, match="rope_turn is required"):
        b.image(0, KIND_CLEAN, (1, 1))
    with pytest.raises(ValueError, match="KIND_CLEAN or KIND_NOISY"):
        b.image(0, KIND_TEXT, (1, 1), rope_turn=0)
    b.image(0, KIND_CLEAN, (1, 1), rope_turn=0)
    with pytest.raises(ValueError, match="twins share a position"):
        b.image(0, KIND_NOISY, (1, 1), rope_turn=1)
    t = b.text(1, 0, length=2)
    b.session()
    with pytest.raises(ValueError, match="not a text block of session 1"):
        b.image(1, KIND_NOISY, (1, 1), rope_turn=1, text_block=t)
    with pytest.raises(ValueError, match="pass gen"):
        b.build()
    b.text(0, 0, torch.zeros(1, TEXT_DIM))
    with pytest.raises(ValueError, match="not some"):
        b.build(torch.Generator(), text_dim=TEXT_DIM, patch_dim=PATCH_DIM)
    with pytest.raises(ValueError, match="mask_type"):
        BatchBuilder("causal")
