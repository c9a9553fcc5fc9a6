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

from vincie_mcore.config import build
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
    return build(MMDiTConfig, dict(d, attention_backend="torch"), "model")


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


def test_weighted_draws_follow_the_mix(enc):
    """data.corpus.mix on the in-memory stream: each session drawn in proportion to its weight (a source left
    out never), the same draws for the same seed, and a resume with another mix refused."""
    cfg = _cfg()
    corpus = [EncodedSession(frames=torch.full((3, 3, 24, 24), float(i)), texts=["a", "b"], cameras=[None] * 2)
              for i in range(4)]
    recipe, pack = RecipeConfig(mask_type="full", camera_prompts=False), PackConfig(patch_size=P)
    w = [0.0, 0.25, 0.25, 0.5]                                        # a source of 2 (0.5) and one of 1 (0.5)
    s = OfficialStream(corpus, enc, recipe, pack, cfg, seed=0, text_drop=0.0, weights=w, mix='{"a": 1}')
    rng = np.random.default_rng(0)
    got = np.bincount([int(s.draw(rng)[0][0, 0, 0, 0]) for _ in range(2000)], minlength=4)
    assert got[0] == 0 and all(abs(got[i] / 2000 - w[i]) < 0.04 for i in (1, 2, 3)), got
    with pytest.raises(ValueError, match=r"mix none in the checkpoint, \{\"a\": 1\} now"):
        s.load_state_dict({"step": 3, "seed": 0})
    with pytest.raises(ValueError, match="weights must be 4 numbers >= 0 with a positive sum"):
        OfficialStream(corpus, enc, recipe, pack, cfg, weights=[0, 0, 0, 0])


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


def test_vincie_train_official_tiny_end_to_end_and_init_from(megatron_cpu, tmp_path):
    from omegaconf import OmegaConf

    from vincie_mcore.build import init_weights, make_model
    from vincie_mcore.config import ConfigError
    from vincie_mcore.train import checkpoint

    losses = _train("train.steps=3", f"run_dir={tmp_path / 'a'}")
    assert len(losses) == 3 and all(np.isfinite(losses))
    ckpt = str(tmp_path / "a" / "checkpoints")
    assert checkpoint.latest_step(ckpt) == 3
    # train.init_from: a new run's model starts from that checkpoint's weights (run a's config, so the
    # same seed-0 initialisation run a started from)
    cfg = OmegaConf.load(tmp_path / "a" / "config.yaml")
    cfg.train.init_from = ckpt
    fresh, started, trained = make_model(cfg), make_model(cfg), make_model(cfg)
    init_weights(cfg, started, str(tmp_path / "b" / "checkpoints"))
    checkpoint.load(ckpt, trained)
    pairs = list(zip(fresh.named_parameters(), started.named_parameters(), trained.named_parameters()))
    assert any(not torch.equal(f, s) for (_, f), (_, s), _ in pairs)
    assert all(torch.equal(s, t) for _, (_, s), (_, t) in pairs)
    # a run whose own ckpt_dir holds a checkpoint resumes from it: init_from is not read
    again = make_model(cfg)
    init_weights(cfg, again, ckpt)
    assert all(torch.equal(f, g) for (_, f), (_, g) in zip(fresh.named_parameters(), again.named_parameters()))
    cfg.train.init_from = str(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="train.init_from"):
        init_weights(cfg, again, str(tmp_path / "b" / "checkpoints"))


# ----------------------------------------------------------------------------- TP 2 with SP == 1 rank

FIX = ROOT / "tests" / "fixtures" / "official"


def _tp_case():
    """The golden 3B-shaped tiny release (tests/convert/test_official.py) and a padded official batch."""
    import json

    m = json.loads((FIX / "meta.json").read_text())["configs"]["3b"]
    n, C = m["nadit"], m["latent_channels"]
    p, D = n["patch_size"][1], n["vid_dim"]
    cfg = build(MMDiTConfig, dict(
        variant="official", hidden_size=D, num_layers=n["num_layers"], mm_layers=n["mm_layers"], num_heads=n["heads"],
        head_dim=n["head_dim"], ffn_hidden_size=-(-int(2 * D * n["expand_ratio"] / 3) // 256) * 256,
        text_dim=m["text_in_dim"], patch_dim=C * p * p, image_in_dim=(2 * C + 1) * p * p, max_turns=m["max_turns"],
        rope_axes_dim=[n["rope_dim"] // 3] * 3, norm_eps=n["norm_eps"], qk_norm_eps=n["norm_eps"],
        attention_backend="torch", adaln_zero_init=False), "model")
    g = torch.Generator().manual_seed(11)
    rows = {}
    encode = lambda ts: [rows.setdefault(t, torch.randn(3 + len(t) % 4, cfg.text_dim, generator=g)) for t in ts]  # noqa: E731
    items = [(torch.randn(3, C, 8, 8, generator=g), ["a", "bb"]), (torch.randn(2, C, 6, 8, generator=g), ["ccc"])]
    return cfg, p, official_pack(items, encode, cfg, PackConfig(patch_size=p, pad_multiple=4))


def _loss_grads(tp: int):
    """(loss, {name: full gradient}) of one official loss step on this rank's model (TP shards gathered)."""
    from megatron.core import parallel_state as ps

    from vincie_mcore.convert.official import load_official
    from vincie_mcore.model import build_model

    cfg, p, batch = _tp_case()
    model = build_model(cfg, tensor_model_parallel_size=tp, sequence_parallel=tp > 1, device="cpu")
    load_official(model, FIX / "3b_weights.safetensors")
    loss, _ = official_training_loss(model, batch, OfficialFlowConfig(t_scale=1.25, loss_frames="all"),
                                     torch.Generator().manual_seed(5), p)
    loss.backward()
    grads = {}
    for name, w in model.named_parameters():
        g = w.grad.detach().clone()
        if tp > 1 and getattr(w, "tensor_model_parallel", False):
            parts = [torch.empty_like(g) for _ in range(tp)]
            torch.distributed.all_gather(parts, g, group=ps.get_tensor_model_parallel_group())
            if name.endswith("linear_fc1.weight"):       # SwiGLU: each shard is [gate_r; up_r]
                parts = [h for k in range(2) for h in (q.chunk(2, w.partition_dim)[k] for q in parts)]
            g = torch.cat(parts, w.partition_dim)
        elif tp > 1 and getattr(w, "sequence_parallel", False):     # each rank saw its slice of the sequence
            torch.distributed.all_reduce(g, group=ps.get_tensor_model_parallel_group())
        grads[name] = g
    return float(loss), grads


def _tp_worker(rank, world, port, tmp):
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vincie_mcore.parallel import groups
    groups.init_distributed(tp=2, cp=1)
    torch.save(_loss_grads(2), f"{tmp}/rank{rank}.pt")
    groups.destroy()


def test_tp2_with_sequence_parallel_trains_like_one_rank(megatron_cpu, tmp_path):
    import torch.multiprocessing as mp

    from vincie_mcore.parallel import groups

    loss1, grads1 = _loss_grads(1)
    mp.start_processes(_tp_worker, args=(2, groups._free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for r in range(2):
        loss2, grads2 = torch.load(tmp_path / f"rank{r}.pt")
        assert abs(loss2 - loss1) <= 1e-5 * abs(loss1)
        assert grads2.keys() == grads1.keys()
        for name, g in grads1.items():
            torch.testing.assert_close(grads2[name], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("overrides", [["model=official_tiny"], ["model=official_3b", "data=official_3b"],
                                       ["model=official_7b", "data=official_7b"]])
def test_presets_and_their_data_groups_agree_on_the_token_width(overrides):
    from vincie_mcore.config import load_config
    from vincie_mcore.data.official_pack import check_official_widths

    cfg = load_config(overrides)
    mcfg = build(MMDiTConfig, dict(cfg.model), "model")
    check_official_widths(mcfg, int(cfg.data.pack.patch_size))
    with pytest.raises(ValueError, match="model.image_in_dim"):
        check_official_widths(mcfg, int(cfg.data.pack.patch_size) + 1)


def test_official_variant_refuses_a_rope_mode_it_would_ignore():
    """Its packer places images by model.rope_image_origin; a data.pack.rope_mode other than separate would be
    silently ignored, so it is one line naming the key."""
    from vincie_mcore.build import build_run_config
    from vincie_mcore.config import ConfigError, load_config

    build_run_config(load_config(["model=official_tiny"]))
    with pytest.raises(ConfigError, match=r"^data.pack.rope_mode: the official variant places images by "
                                          r"model.rope_image_origin .*got 'interleaved'$"):
        build_run_config(load_config(["model=official_tiny", "data.pack.rope_mode=interleaved"]))
