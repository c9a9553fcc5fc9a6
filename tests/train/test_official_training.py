"""Training the released architecture (``model.variant: official``): the release's layout for a training
session (data/official_pack.py) and its v_lerp loss (diffusion/official_flow.py); docs/official.md,
"Fine-tuning the released models".

References: the layout against ``official_session_batch`` / ``official_image_tokens`` /
``official_frames`` (model/official.py, matched to the official code by tests/convert/test_official.py),
the loss against the lerp / v_lerp definitions written out here per frame."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vincie_mcore.data.official_pack import OfficialStream, official_pack, official_texts, uncond_texts
from vincie_mcore.data.packing import EncodedSession, PackConfig
from vincie_mcore.data.recipe import RecipeConfig
from vincie_mcore.diffusion.official_flow import OfficialFlowConfig, official_noise, official_training_loss
from vincie_mcore.encoders import TextEncoder, TextEncoderConfig
from vincie_mcore.model.config import MMDiTConfig
from vincie_mcore.model.official import (OFFICIAL_NEGATIVE_PROMPT, official_frames, official_image_tokens,
                                         official_session_batch)

ROOT = Path(__file__).resolve().parents[2]
P = 8                                          # official_tiny: 3 channels x 8 x 8 = patch_dim 192


def _cfg() -> MMDiTConfig:
    d = yaml.safe_load((ROOT / "configs/model/official_tiny.yaml").read_text())
    return MMDiTConfig.from_dict(dict(d, attention_backend="torch"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices on a shared 2-core box: a second thread only waits (10x slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def enc():
    return TextEncoder(TextEncoderConfig(kind="tiny_random", d_model=64))


def _items(gen):
    """Two sessions: 3 and 2 kept frames of [3, 24, 24] latents, with their turn texts."""
    a = torch.randn(3, 3, 24, 24, generator=gen)
    b = torch.randn(2, 3, 24, 16, generator=gen)
    return [(a, official_texts(["add a red ball.", "make the sky dark"], [None, "pan-left"], True)),
            (b, official_texts(["remove the cat"], [None], False))]


def test_turn_texts_follow_the_release_template():
    assert official_texts(["add a cat.", "make it red "], [None, "pan-left"], True) == [
        "Based on <IMG0>, [###CAMERA: None###] add a cat. Output <IMG1>: ",
        "Based on <IMG1>, [###CAMERA: pan-left###] make it red. Output <IMG2>: "]
    assert official_texts(["add a cat."], ["pan-left"], False) == ["Based on <IMG0>, add a cat. Output <IMG1>: "]
    assert uncond_texts(3, "negative") == [OFFICIAL_NEGATIVE_PROMPT]
    assert uncond_texts(3, "empty") == ["", "", ""]
    with pytest.raises(ValueError, match="flow.uncond_text"):
        uncond_texts(1, "zero")


def test_packed_batch_round_trips_and_noised_tokens_are_the_release_input(enc):
    cfg, gen = _cfg(), torch.Generator().manual_seed(0)
    items = _items(gen)
    batch = official_pack(items, enc.encode, cfg, PackConfig(patch_size=P, pad_multiple=8))
    sessions = [dict(latents=lat, texts=enc.encode(ts), t=0.0) for lat, ts in items]
    ref = official_session_batch(sessions, cfg, P)                     # unpadded reference layout
    n_img, n_txt = ref.s_img, ref.s_txt
    assert batch.s_txt % 8 == 0 and batch.s_img % 8 == 0 and (batch.s_txt, batch.s_img) != (n_txt, n_img)
    # every frame's latent comes back; the loss is on each session's last frame only, never on padding
    for (lat, _), back in zip(items, official_frames(batch.img_x0[:n_img], sessions, P)):
        assert torch.equal(back, lat)
    assert torch.equal(batch.img_loss_mask[:n_img], ref.img_loss_mask) and not batch.img_loss_mask[n_img:].any()
    want_mask = torch.cat([torch.arange(len(lat) * (lat.shape[2] // P) * (lat.shape[3] // P))
                           >= (len(lat) - 1) * (lat.shape[2] // P) * (lat.shape[3] // P) for lat, _ in items])
    assert torch.equal(ref.img_loss_mask, want_mask)
    assert torch.equal(batch.txt_emb[:n_txt], ref.txt_emb) and torch.equal(batch.txt_turn[:n_txt], ref.txt_turn)
    assert batch.txt_turn.tolist()[:1] == [0] and (batch.txt_turn[n_txt:] == -1).all()
    assert batch.spec.mask_type == "full"

    flow = OfficialFlowConfig(t_loc=0.3, t_scale=1.25)
    tokens, target, nb = official_noise(batch, flow, torch.Generator().manual_seed(1), P)
    # per session one t on every block; x_t = (1 - t) x0 + t eps with v = eps - x0
    sess_t = [nb.block_t[nb.spec.block_session == s] for s in range(2)]
    assert all(t.numel() > 1 and torch.all(t == t[0]) and 0 < t[0] < 1 for t in sess_t)
    x_t = official_frames(tokens[:n_img, :192], sessions, P)
    v = official_frames(target[:n_img], sessions, P)
    want = []
    for (lat, _), xt, vv, t in zip(items, x_t, v, sess_t):
        torch.testing.assert_close(xt, lat + t[0] * vv, rtol=0, atol=1e-5)
        want.append(official_image_tokens(xt, lat, P))                 # the release's [x_t | clean | flag]
    torch.testing.assert_close(tokens[:n_img], torch.cat(want), rtol=0, atol=0)
    assert (tokens[n_img:, 192:] == 0).all()                            # padding: no condition, no flag


def _loss_by_hand(model, items, enc, flow, seed):
    """The lerp / v_lerp loss written out per frame, drawing the same numbers in the same order."""
    cfg = _cfg()
    gen = torch.Generator().manual_seed(seed)
    t = torch.sigmoid(torch.randn(len(items), generator=gen) * flow.t_scale + flow.t_loc)
    n_img = sum(len(lat) * (lat.shape[2] // P) * (lat.shape[3] // P) for lat, _ in items)
    sessions = [dict(latents=lat, texts=enc.encode(ts), t=float(ti)) for (lat, ts), ti in zip(items, t)]
    eps = official_frames(torch.randn(n_img, 192, generator=gen), sessions, P)
    x_t = [(1 - ti) * lat + ti * e for (lat, _), ti, e in zip(items, t, eps)]
    tokens = torch.cat([official_image_tokens(x, s["latents"], P) for x, s in zip(x_t, sessions)])
    pred = official_frames(model(tokens, official_session_batch(sessions, cfg, P)), sessions, P)
    frames = slice(None) if flow.loss_frames == "all" else slice(-1, None)
    sq = [(p - (e - lat))[frames].pow(2) for p, e, (lat, _) in zip(pred, eps, items)]
    return sum(s.sum() for s in sq) / sum(s.numel() for s in sq)


@pytest.mark.parametrize("loss_frames", ["target", "all"])
def test_loss_equals_the_lerp_v_lerp_definition(megatron_cpu, enc, loss_frames):
    from vincie_mcore.model import build_model

    torch.manual_seed(0)
    model = build_model(_cfg(), device="cpu")
    items = _items(torch.Generator().manual_seed(2))
    batch = official_pack(items, enc.encode, _cfg(), PackConfig(patch_size=P, pad_multiple=1))
    flow = OfficialFlowConfig(t_loc=0.3, t_scale=1.25, loss_frames=loss_frames)
    loss, m = official_training_loss(model, batch, flow, torch.Generator().manual_seed(7), P)
    with torch.no_grad():
        want = _loss_by_hand(model, items, enc, flow, 7)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=0)
    n_tgt = sum((lat.shape[2] // P) * (lat.shape[3] // P) * (len(lat) if loss_frames == "all" else 1) for lat, _ in items)
    assert m["noisy_tokens"] == n_tgt


def test_flow_config_refuses_what_the_release_does_not_train():
    with pytest.raises(ValueError, match="flow.prediction"):
        OfficialFlowConfig(prediction="x0")
    with pytest.raises(ValueError, match="flow.loss_frames"):
        OfficialFlowConfig(loss_frames="context")


def test_stream_draws_turns_like_the_full_recipe_and_drops_text_to_the_negative_prompt(enc):
    cfg, gen = _cfg(), torch.Generator().manual_seed(3)
    sess = EncodedSession(frames=torch.randn(6, 3, 24, 24, generator=gen), texts=[f"edit {i}" for i in range(5)],
                          cameras=[None] * 5)
    recipe, pack = RecipeConfig(mask_type="full", max_frames=5, camera_prompts=False), PackConfig(patch_size=P)
    s = OfficialStream([sess], enc, recipe, pack, cfg, seed=0, text_drop=0.0)
    rng = np.random.default_rng(0)
    draws = [s.draw(rng) for _ in range(400)]
    kept = np.bincount([len(lat) for lat, _ in draws], minlength=6)
    assert kept[:2].sum() == 0 and kept[5 + 1:].sum() == 0             # 2..max_frames frames kept
    assert all(60 < c < 140 for c in kept[2:6]), kept                  # the target turn: uniform over 4
    lat, texts = draws[0]
    assert torch.equal(lat, sess.frames[: len(lat)]) and texts == official_texts(sess.texts[: len(lat) - 1],
                                                                               sess.cameras, False)
    # text dropout: the whole text becomes the negative prompt as one turn-0 sentence
    d = OfficialStream([sess], enc, recipe, pack, cfg, seed=0, text_drop=1.0)
    b = next(d)
    neg = enc.encode([OFFICIAL_NEGATIVE_PROMPT])[0]
    assert (b.txt_turn == 0).sum() == b.num_sessions and (b.txt_turn > 0).sum() == 0
    assert torch.equal(b.txt_emb[1: 1 + neg.shape[0]], neg)
    # batch k depends on (seed, k) only
    s2 = OfficialStream([sess], enc, recipe, pack, cfg, seed=0, text_drop=0.0)
    next(s2)
    s2.load_state_dict({"step": 0, "seed": 0})
    assert torch.equal(next(s2).img_x0, next(OfficialStream([sess], enc, recipe, pack, cfg, seed=0, text_drop=0.0)).img_x0)


def test_tiny_official_model_fits_a_fixed_batch(megatron_cpu, enc):
    from vincie_mcore.model import build_model
    from vincie_mcore.parallel import cpu_compat

    torch.manual_seed(0)
    model = build_model(_cfg(), device="cpu")
    batch = official_pack(_items(torch.Generator().manual_seed(4)), enc.encode, _cfg(), PackConfig(patch_size=P))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        with cpu_compat.suspended():      # as the trainer runs it: ~20 us a torch call less
            loss, _ = official_training_loss(model, batch, OfficialFlowConfig(), torch.Generator().manual_seed(0), P)
            opt.zero_grad()
            loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def _train(*args):
    exe = Path(sys.executable).parent / "vincie-train"
    r = subprocess.run([str(exe), "model=official_tiny", "data.corpus.videos=8", "data.corpus.heldout_videos=2",
                        "data.corpus.workers=1", "data.pack.token_budget=300", "data.pack.pad_multiple=8",
                        "train.warmup=0", "train.log_every=1", "train.progress=false", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return [float(x) for x in re.findall(r"^step +\d+ \| loss ([0-9.]+)", r.stdout, re.M)]


def test_vincie_train_official_tiny_end_to_end_and_init_from(tmp_path):
    a = _train("train.steps=3", f"run_dir={tmp_path / 'a'}")
    assert len(a) == 3 and all(np.isfinite(a))
    assert (tmp_path / "a/checkpoints/latest").is_file()
    # a second run starts from the first one's weights: its first batch (same seed) fits as the first run's
    # trained weights fit it, not as a fresh model does
    b = _train("train.steps=1", f"run_dir={tmp_path / 'b'}", f"train.init_from={tmp_path / 'a/checkpoints'}")
    assert b[0] < a[0] - 0.05, (a, b)
