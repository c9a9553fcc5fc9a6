"""The released models' variant trained from a latent store (data/stream.py OfficialLayout).

Each streamed batch is checked against the release's layout built independently from the in-memory
corpus (decode + encode, the release's turn template, a separate text encoder, ``official_pack``);
resume, workers and the layout check of the store; then the commands a user runs: vincie-precompute
with the official config and vincie-train model=official_tiny streaming what it wrote.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_latents import IMG, TXT, make_latents, make_session_store

from vincie_mcore.config import build
from vincie_mcore.data.corpus import CorpusConfig, decode_corpus, encode_corpus
from vincie_mcore.data.latents import LatentMismatch, LatentStore, precompute
from vincie_mcore.data.official_pack import official_pack, official_texts, uncond_texts
from vincie_mcore.data.packing import PackConfig
from vincie_mcore.data.recipe import RecipeConfig
from vincie_mcore.data.stream import LatentStream, OfficialLayout
from vincie_mcore.encoders import TextEncoder, build_image_encoder
from vincie_mcore.model import MMDiTConfig
from vincie_mcore.packed.official import OFFICIAL_NEGATIVE_PROMPT

ROOT = Path(__file__).resolve().parents[2]
RECIPE = RecipeConfig(mask_type="full", max_frames=4)
PACK = PackConfig(patch_size=4, token_budget=300)
N = 12
# the pixel "VAE" (3 channels) at 4-px patches: [x_t | clean | flag] = 2 * 48 + 16
MODEL = build(MMDiTConfig, dict(variant="official", hidden_size=32, num_layers=1, mm_layers=1, num_heads=2,
                                ffn_hidden_size=64, text_dim=32, patch_dim=48, image_in_dim=112, max_turns=8,
                                rope_axes_dim=[4, 6, 6], attention_backend="torch"), "model")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official_stream")
    store = make_session_store(tmp / "sessions", N, px=8)
    precompute(store, tmp / "latents", IMG, TXT, RECIPE, block_rows=5, layout="official")
    return tmp, tmp / "latents"


def _stream(root, uncond="negative", **kw):
    kw.setdefault("num_workers", 0)
    return LatentStream(root, RECIPE, PACK, seed=3, official=OfficialLayout(MODEL, text_drop=0.3, uncond=uncond), **kw)


def _same(a, b) -> bool:
    return (a.num_sessions == b.num_sessions and torch.equal(a.img_x0, b.img_x0) and torch.equal(a.txt_emb, b.txt_emb)
            and torch.equal(a.img_pos, b.img_pos) and torch.equal(a.txt_pos, b.txt_pos)
            and torch.equal(a.txt_turn, b.txt_turn) and torch.equal(a.img_loss_mask, b.img_loss_mask)
            and torch.equal(a.spec.block_offsets, b.spec.block_offsets)
            and torch.equal(a.spec.block_kind, b.spec.block_kind) and torch.equal(a.spec.block_session, b.spec.block_session))


@pytest.mark.parametrize("uncond", ["negative", "empty"])
def test_batches_are_the_release_layout_of_the_in_memory_corpus(made, uncond):
    tmp, root = made
    ref = encode_corpus(decode_corpus(tmp / "sessions", CorpusConfig()), build_image_encoder(IMG))
    text = TextEncoder(TXT)
    s = _stream(root, uncond)
    walk = s.planner.packs(0, 0, 0)
    rows, ks, dropped = [], [], 0
    while True:
        k, epoch, _, items = next(walk)
        if epoch > 0:
            break
        b = next(s)
        assert s.last_pack == k
        want = []
        for _, row, plan in items:
            r = ref[row]
            n = min(len(r.frames), RECIPE.max_frames) - 1
            assert 1 <= plan.k <= n                                     # target: one of the session's turns
            texts = uncond_texts(plan.k, uncond) if plan.dropped else \
                official_texts(r.texts[:plan.k], r.cameras[:plan.k], RECIPE.camera_prompts)
            want.append((r.frames[:plan.k + 1], texts))
            rows.append(row)
            ks.append(plan.k)
            dropped += plan.dropped
        w = official_pack(want, text.encode, MODEL, PACK)
        assert torch.equal(b.img_x0, w.img_x0) and torch.equal(b.spec.block_kind, w.spec.block_kind)
        assert torch.equal(b.img_pos, w.img_pos) and torch.equal(b.txt_pos, w.txt_pos)
        assert torch.equal(b.img_loss_mask, w.img_loss_mask) and torch.equal(b.txt_turn, w.txt_turn)
        torch.testing.assert_close(b.txt_emb, w.txt_emb)
        # the planner's token count is the packed length: the budget holds
        assert b.spec.seq_len == sum(s.planner.tokens(row, plan) for _, row, plan in items)
        assert b.spec.seq_len <= PACK.token_budget or len(items) == 1
    assert sorted(rows) == list(range(N))                               # one epoch: every session once
    assert 0 < dropped < N and len(set(ks)) > 1                         # both text branches, several turns


def test_stored_texts_are_the_release_template(made):
    tmp, root = made
    ls = LatentStore(root)
    assert ls.layout == "official" and list(ls.prompts()) == [OFFICIAL_NEGATIVE_PROMPT, ""]
    sess, embs = ls.session(4)
    assert list(embs) == official_texts(sess.texts, sess.cameras, RECIPE.camera_prompts)
    assert all(t.startswith(f"Based on <IMG{j}>") for j, t in enumerate(embs))


def test_resume_and_workers_give_the_uninterrupted_batches(made):
    _, root = made
    whole = [next(s) for s in [_stream(root)] for _ in range(7)]
    first = _stream(root, num_workers=2)                                # workers: the layout crosses a pickle
    for _ in range(3):
        next(first)
    state = first.state_dict()
    again = _stream(root, num_workers=2)
    again.load_state_dict(state)
    rest = [next(again) for _ in range(4)]
    assert all(_same(x, y) for x, y in zip(rest, whole[3:]))
    first.close()
    again.close()


def test_a_store_of_the_other_layout_is_refused(made, tmp_path):
    _, root = made
    paper = make_latents(tmp_path, 3, block_rows=3, px=8)
    with pytest.raises(LatentMismatch, match=r"holds texts in the paper layout, this run needs the official layout "
                                             r"\(model.variant\): precompute with the run's config$"):
        _stream(paper)
    with pytest.raises(LatentMismatch, match=r"holds texts in the official layout, this run needs the paper layout"):
        LatentStream(root, RECIPE, PACK, num_workers=0)
    with pytest.raises(ValueError, match=r"^data.recipe.pairwise: the official variant trains whole sessions"):
        LatentStream(root, RecipeConfig(mask_type="full", pairwise=True), PACK, num_workers=0,
                     official=OfficialLayout(MODEL))


def _cli(tool, *args, timeout=300):
    r = subprocess.run([str(Path(sys.executable).parent / tool), *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return r


def test_precompute_and_train_official_tiny_from_the_latent_store(tmp_path):
    """What a user runs to fine-tune the release on a large corpus: vincie-precompute with the official
    config (the store records the official layout), then vincie-train model=official_tiny streaming it."""
    data = ["model=official_tiny", "data.corpus.workers=1", "data.pack.token_budget=300", "data.pack.pad_multiple=8"]
    r = _cli("vincie-build-sessions", "--synthetic", "6", "--world", "demo", "--videos", str(tmp_path / "videos"),
             "--out", str(tmp_path / "store"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("vincie-precompute", "run", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "lat"),
             "--block-rows", "4", "--quiet", *data)
    assert r.returncode == 0, r.stderr[-2000:]
    assert LatentStore(tmp_path / "lat").layout == "official"
    train = [*data, "train.warmup=0", "train.log_every=1", "train.progress=false", "train.steps=2",
             f"data.corpus.latents={tmp_path / 'lat'}"]
    r = _cli("vincie-train", *train, f"run_dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"^step +\d+ \| loss ([0-9.]+)", r.stdout, re.M)]
    assert len(losses) == 2 and all(np.isfinite(losses))
