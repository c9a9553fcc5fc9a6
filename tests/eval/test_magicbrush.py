"""MagicBrush multi-turn metrics (vincie_mcore/eval/magicbrush.py, docs/magicbrush.md).

Tiny random CLIP and DINO saved locally; each metric against an independent reference: L1/L2 in
numpy, CLIP-I/CLIP-T through the model's own sub-modules and torchmetrics' clip_score, DINO's
transform by hand on an image where it is a plain crop; the per-turn / final-turn aggregation on a
hand-made 2-session (2 and 3 turns) folder, in our layout and in the release's; what each setting's
editor sees, on the library's Editor; a resumed run equal to an uninterrupted one; one-line errors.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from slurm_cluster import slurm_cluster  # noqa: F401 - the fixture
from tiny_clip_dino import save_tiny_clip, save_tiny_dino
from vincie_mcore.config import build
from vincie_mcore.eval.magicbrush import (DUMMY_INSTRUCTION, IMAGENET_MEAN, IMAGENET_STD, SETTINGS,
                                          MagicBrushConfig, MagicBrushMetrics, aggregate, generated_path,
                                          read_magicbrush, run_magicbrush, score_magicbrush)

RNG = np.random.default_rng(0)


def _img(h=64, w=64, seed=None):
    r = np.random.default_rng(seed) if seed is not None else RNG
    return r.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("mb_models")
    return save_tiny_clip(d / "clip"), save_tiny_dino(d / "dino")


@pytest.fixture(scope="module")
def metrics(models):
    return MagicBrushMetrics(MagicBrushConfig(clip_path=models[0], dino_path=models[1], batch_size=3))


def _cos(a, b):
    a, b = (np.asarray(x.detach() if isinstance(x, torch.Tensor) else x, np.float64).ravel() for x in (a, b))
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- each metric

def test_identical_images_score_perfect(metrics):
    t = _img()
    r = metrics.score([t.copy()], [t], ["a red dog"])[0]
    assert r["l1"] == 0.0 and r["l2"] == 0.0
    assert r["clip_i"] == pytest.approx(1.0, abs=1e-5) and r["dino"] == pytest.approx(1.0, abs=1e-5)
    assert r["clip_t"] == pytest.approx(r["clip_t_oracle"], abs=1e-6)


def test_l1_l2_against_numpy(metrics, models):
    t = _img()
    g = np.clip(t.astype(int) + RNG.integers(-40, 41, t.shape), 0, 255).astype(np.uint8)
    r = metrics.score([g], [t], ["x"])[0]
    d = (g.astype(np.float64) - t) / 255.0
    assert r["l1"] == pytest.approx(np.abs(d).mean(), rel=1e-5)
    assert r["l2"] == pytest.approx((d ** 2).mean(), rel=1e-5)           # MSE, not its root
    assert r["l1"] > 0.01 and r["dino"] < 1 - 1e-4

    # another size: the edited image is resized (bicubic) to the target's size first
    small = _img(32, 48)
    r = metrics.score([small], [t], ["x"])[0]
    ref = np.asarray(Image.fromarray(small).resize((64, 64), Image.BICUBIC), np.float64)
    assert r["l1"] == pytest.approx(np.abs(ref - t).mean() / 255, rel=1e-5)

    # distance_size: both to N x N
    m16 = MagicBrushMetrics(MagicBrushConfig(clip_path=models[0], dino_path=models[1], distance_size=16))
    r = m16.score([g], [t], ["x"])[0]
    a, b = (np.asarray(Image.fromarray(x).resize((16, 16), Image.BICUBIC), np.float64) for x in (g, t))
    assert r["l2"] == pytest.approx((((a - b) / 255) ** 2).mean(), rel=1e-5)


def test_clip_i_clip_t_against_the_model_s_submodules(metrics):
    clip, proc = metrics.clip, metrics.clip_proc
    g, t, cap = _img(), _img(48, 80), "a cat"
    r = metrics.score([g], [t], [cap])[0]
    with torch.no_grad():
        emb = lambda im: clip.visual_projection(clip.vision_model(
            pixel_values=proc(images=[im], return_tensors="pt")["pixel_values"]).pooler_output)
        ids = proc.tokenizer([cap], return_tensors="pt")
        txt = clip.text_projection(clip.text_model(**ids).pooler_output)
    assert r["clip_i"] == pytest.approx(_cos(emb(g), emb(t)), abs=1e-5) and r["clip_i"] < 0.99
    assert r["clip_t"] == pytest.approx(_cos(emb(g), txt), abs=1e-5)
    assert r["clip_t_oracle"] == pytest.approx(_cos(emb(t), txt), abs=1e-5)


class _TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9's clip_score wants tensors from get_*_features; transformers 5 returns outputs."""

    def __init__(self, clip):
        super().__init__()
        self.m, self.config = clip, clip.config

    def get_image_features(self, *a, **k):
        return self.m.get_image_features(*a, **k).pooler_output

    def get_text_features(self, *a, **k):
        return self.m.get_text_features(*a, **k).pooler_output


def test_clip_agrees_with_torchmetrics_clip_score(metrics):
    from torchmetrics.functional.multimodal import clip_score

    wrapped = lambda: (_TensorFeatures(metrics.clip), metrics.clip_proc)
    checked = 0
    for seed in range(6):
        g, t = _img(seed=10 + seed), _img(seed=20 + seed)
        cap = ["a red dog", "a cat", "the dog"][seed % 3]
        r = metrics.score([g], [t], [cap])[0]
        chw = lambda x: torch.from_numpy(x).permute(2, 0, 1)
        with torch.no_grad():
            cs_t = float(clip_score(chw(g), cap, model_name_or_path=wrapped))
            cs_i = float(clip_score(chw(g), chw(t), model_name_or_path=wrapped))
        # CLIPScore = max(100 cos, 0): ours is the raw cosine (the paper's scale)
        assert cs_t == pytest.approx(max(100 * r["clip_t"], 0), abs=1e-3)
        assert cs_i == pytest.approx(max(100 * r["clip_i"], 0), abs=1e-3)
        checked += r["clip_t"] > 0
    assert checked >= 1                                                     # the comparison was not all zeros


def test_dino_transform_and_cls_cosine(metrics):
    # 256 wide, 300 tall: the shorter side is already 256, so the transform is a plain center crop
    g, t = _img(300, 256), _img(300, 256)
    r = metrics.score([g], [t], ["x"])[0]
    top, left = round((300 - 224) / 2), 16

    def cls(a):
        x = (a[top:top + 224, left:left + 224] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        with torch.no_grad():
            h = metrics.dino(pixel_values=torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None])
        return h.last_hidden_state[0, 0].numpy()
    assert r["dino"] == pytest.approx(_cos(cls(g), cls(t)), abs=1e-5)
    top += 8                                                                # a crop 8 px off would be caught
    assert abs(r["dino"] - _cos(cls(g), cls(t))) > 1e-3
    # a rescaled copy of the same picture: the transform maps both to (nearly) the same crop
    big = np.asarray(Image.fromarray(g).resize((512, 600), Image.BICUBIC))
    assert metrics.score([big], [g], ["x"])[0]["dino"] > r["dino"]


def test_image_modes_and_bad_images(metrics, tmp_path):
    t = _img()
    rgba = np.concatenate([t, RNG.integers(0, 256, (64, 64, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    r = metrics.score([t], [tmp_path / "t.png"], ["x"])[0]          # alpha dropped, as convert('RGB')
    assert r["l1"] == 0.0
    gray = t[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    r = metrics.score([tmp_path / "g.png"], [np.repeat(gray[..., None], 3, 2)], ["x"])[0]
    assert r["l1"] == 0.0
    with pytest.raises(ValueError, match=r"generated image: expected uint8 \[H, W, 3\], got float32"):
        metrics.score([t.astype(np.float32)], [t], ["x"])
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*bad.png"):
        metrics.score([tmp_path / "bad.png"], [t], ["x"])


# ----------------------------------------------------------------------------- the protocol

def _write_set(root, turns=(2, 3)):
    """Sessions s1 (2 turns) and s2 (3 turns) with random images; -> {id: [target arrays]}."""
    (root / "images").mkdir(parents=True)
    rows, targets = [], {}
    for k, (sid, n) in enumerate(zip(["s1", "s2"], turns)):
        Image.fromarray(_img(seed=100 + k)).save(root / "images" / f"{sid}_in.png")
        targets[sid] = [_img(seed=200 + 10 * k + t) for t in range(n)]
        for t, a in enumerate(targets[sid]):
            Image.fromarray(a).save(root / "images" / f"{sid}_out{t + 1}.png")
        rows.append(dict(id=sid, source=f"images/{sid}_in.png",
                         turns=[dict(instruction=f"edit {t + 1}", target=f"images/{sid}_out{t + 1}.png",
                                     caption=["a cat", "a red dog", "the dog"][t]) for t in range(n)]))
    (root / "sessions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return targets


def test_multi_turn_aggregation(metrics, tmp_path):
    targets = _write_set(tmp_path / "mb")
    ds = read_magicbrush(tmp_path / "mb")
    assert [(s.id, len(s.turns)) for s in ds] == [("s1", 2), ("s2", 3)]
    # generated = target + a known offset per (session, turn): L1 known exactly (no clipping: 0..255 - 9)
    offs = {"s1": [0, 3], "s2": [6, 9, 0]}
    gen = {sid: [np.clip(a.astype(int) + o, 0, 255).astype(np.uint8) for a, o in zip(targets[sid], offs[sid])]
           for sid in targets}
    l1 = {sid: [np.abs(g.astype(float) - a).mean() / 255 for g, a in zip(gen[sid], targets[sid])] for sid in gen}
    res = score_magicbrush(gen, ds, metrics=metrics)
    json.dumps(res)                                                        # JSON-able
    assert res["sessions"] == 2 and [p["n"] for p in res["per_turn"]] == [2, 2, 1]
    assert [p["turn"] for p in res["per_turn"]] == [1, 2, 3]
    assert res["per_turn"][0]["l1"] == pytest.approx((l1["s1"][0] + l1["s2"][0]) / 2, abs=2e-6)
    assert res["per_turn"][1]["l1"] == pytest.approx((l1["s1"][1] + l1["s2"][1]) / 2, abs=2e-6)
    assert res["per_turn"][2]["l1"] == pytest.approx(l1["s2"][2], abs=2e-6)
    assert res["per_turn"][2]["l1"] == 0.0 and res["per_turn"][2]["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert res["final_turn"]["n"] == 2                                     # s1's turn 2 and s2's turn 3
    assert res["final_turn"]["l1"] == pytest.approx((l1["s1"][1] + l1["s2"][2]) / 2, abs=2e-6)
    assert res["all_turns"]["n"] == 5
    assert res["all_turns"]["l1"] == pytest.approx(np.mean(l1["s1"] + l1["s2"]), abs=2e-6)
    assert [len(s["turns"]) for s in res["per_session"]] == [2, 3]
    # the same images from the generated-folder layout give the same results
    for sid, ims in gen.items():
        for t, a in enumerate(ims, 1):
            p = generated_path(tmp_path / "gen", sid, t)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(p)
    again = score_magicbrush(tmp_path / "gen", tmp_path / "mb", metrics=metrics)
    assert again["per_turn"] == res["per_turn"] and again["final_turn"] == res["final_turn"]
    # the page people look at: the table, then each session's source and per turn target over edit
    from vincie_mcore.eval.magicbrush import write_report
    page = write_report(tmp_path / "r.html", again, ds, tmp_path / "gen").read_text()
    assert page.count("<img ") == (1 + 2 * 2) + (1 + 2 * 3) and page.count("<h3>session ") == 2
    assert f"{res['per_turn'][1]['l1']:.4f}" in page and "<b>3.</b> edit 3" in page
    short = write_report(tmp_path / "r1.html", res, ds, gen, max_sessions=1).read_text()
    assert short.count("<h3>session ") == 1 and "1 more sessions in the JSON" in short


def test_aggregate_by_hand():
    row = lambda v: {m: v for m in ("l1", "l2", "clip_i", "clip_t", "dino", "clip_t_oracle")}
    res = aggregate([dict(id="a", turns=[row(1.0), row(3.0)]), dict(id="b", turns=[row(2.0), row(5.0), row(8.0)])])
    assert [(p["n"], p["dino"]) for p in res["per_turn"]] == [(2, 1.5), (2, 4.0), (1, 8.0)]
    assert (res["final_turn"]["n"], res["final_turn"]["clip_t"]) == (2, 5.5)
    assert (res["all_turns"]["n"], res["all_turns"]["l2"]) == (5, 3.8)


class _BrightenEditor:
    """Editor stand-in: each turn returns its input + 20 and records what it saw, so a chain
    fed with the ground truth (or with the source every turn) would give other images."""

    def __init__(self):
        self.seen = []

    def start(self, image):
        ed = self

        class Session:
            images, texts = [np.asarray(image)], []

            def edit(self, prompt):
                ed.seen.append((len(self.images), prompt))
                out = np.clip(self.images[-1].astype(int) + 20, 0, 255).astype(np.uint8)
                self.images.append(out)
                self.texts.append(prompt)
                return out
        return Session()


def test_run_feeds_outputs_back_and_scores(metrics, tmp_path):
    _write_set(tmp_path / "mb")
    ed = _BrightenEditor()
    res = run_magicbrush(ed, tmp_path / "mb", metrics=metrics, out_dir=tmp_path / "run", progress=False)
    assert ed.seen == [(1, "edit 1"), (2, "edit 2"), (1, "edit 1"), (2, "edit 2"), (3, "edit 3")]
    src = np.asarray(Image.open(tmp_path / "mb/images/s2_in.png"))
    out3 = np.asarray(Image.open(generated_path(tmp_path / "run", "s2", 3)))
    assert np.array_equal(out3, np.clip(src.astype(int) + 60, 0, 255))     # three edits chained on the source
    assert json.loads((tmp_path / "run/results_multi_turn.json").read_text())["per_turn"] == res["per_turn"]
    assert (tmp_path / "run/report_multi_turn.html").read_text().count("<h3>session ") == 2
    assert [p["n"] for p in res["per_turn"]] == [2, 2, 1] and res["setting"] == "multi_turn"
    assert res["edits"] == {"made": 5, "resumed": 0}
    # edit_size: the editor sees the source at N x N; scoring resizes its outputs to the targets
    small = run_magicbrush(_BrightenEditor(), tmp_path / "mb", progress=False,
                           metrics=MagicBrushMetrics(MagicBrushConfig(clip_path=metrics.cfg.clip_path,
                                                                      dino_path=metrics.cfg.dino_path, edit_size=16)))
    assert small["per_turn"][0]["n"] == 2 and small["per_turn"][0]["l1"] != res["per_turn"][0]["l1"]


# ----------------------------------------------------------------------------- one-line errors

def test_missing_model_folder_names_the_key(models, tmp_path):
    with pytest.raises(ValueError, match=r"^magicbrush.clip_path: no local model folder .*nothing is downloaded$"):
        MagicBrushMetrics(MagicBrushConfig(clip_path=str(tmp_path / "nope"), dino_path=models[1]))
    with pytest.raises(ValueError, match=r"^magicbrush.dino_path: no local model folder \(config.json\) at "
                                         r"'facebook/dino-vits16'"):
        MagicBrushMetrics(MagicBrushConfig(clip_path=models[0]))           # the default: a folder that is not here
    with pytest.raises(ValueError, match="MagicBrushConfig.dino_crop"):
        MagicBrushConfig(dino_resize=200, dino_crop=224)


@pytest.mark.parametrize("edit, match", [
    (lambda r: r.pop("turns"), r"sessions.jsonl:1: session row missing key 'turns'$"),
    (lambda r: r["turns"][1].pop("caption"), r"sessions.jsonl:1: turns\[1\] missing key 'caption'$"),
    (lambda r: r.update(turns=[]), r"'turns' must be a non-empty list$"),
    (lambda r: r["turns"][0].update(target="../x.png"), r"turns\[0\].target: '../x.png' climbs out"),
    (lambda r: r["turns"][0].update(target="images/none.png"), r"turns\[0\].target: no image file"),
    (lambda r: r.update(id="s2"), r"sessions.jsonl:2: id 's2' repeats an earlier row$"),
])
def test_bad_session_rows(tmp_path, edit, match):
    _write_set(tmp_path / "mb")
    f = tmp_path / "mb" / "sessions.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    edit(rows[0])
    f.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        read_magicbrush(tmp_path / "mb")


def test_generated_must_match_the_sessions(metrics, tmp_path):
    targets = _write_set(tmp_path / "mb")
    with pytest.raises(ValueError, match=r"session 's1' has 1 images for 2 turns"):
        score_magicbrush({"s1": targets["s1"][:1], "s2": targets["s2"]}, tmp_path / "mb", metrics=metrics)
    with pytest.raises(KeyError, match=r"no images for session 's2'"):
        score_magicbrush({"s1": targets["s1"]}, tmp_path / "mb", metrics=metrics)
    with pytest.raises(KeyError, match=r"not in the dataset: \['s9'\]"):
        score_magicbrush({**targets, "s9": []}, tmp_path / "mb", metrics=metrics)
    with pytest.raises(FileNotFoundError, match=r"session 's1' lacks s1_1.png, s1_iter_2.png in .* \(setting multi_turn\)$"):
        score_magicbrush(tmp_path / "empty", tmp_path / "mb", metrics=metrics)
    with pytest.raises(FileNotFoundError, match=r"session 's1' lacks s1_1.png, s1_inde_2.png"):
        score_magicbrush(tmp_path / "empty", tmp_path / "mb", metrics=metrics, setting="independent")
    with pytest.raises(ValueError, match=r"^setting: 'single' is not one of multi_turn, independent, history, dummy$"):
        score_magicbrush(tmp_path / "empty", tmp_path / "mb", metrics=metrics, setting="single")


def _tiny_editor(mask_type="block_causal", steps=2):
    """The library's Editor on a tiny random MM-DiT and the pixel 'VAE' (8 px patches)."""
    from vincie_mcore.data.packing import PackConfig
    from vincie_mcore.diffusion.flow import FlowConfig
    from vincie_mcore.encoders.image import PixelEncoder
    from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig
    from vincie_mcore.infer.editor import Editor, SamplerConfig
    from vincie_mcore.model import MMDiTConfig, build_model

    torch.manual_seed(0)
    model = build_model(build(MMDiTConfig, dict(
        hidden_size=32, num_layers=1, mm_layers=1, num_heads=2, ffn_hidden_size=64, text_dim=32, patch_dim=192,
        max_turns=8, rope_axes_dim=[4, 6, 6], adaln_zero_init=False, text_adaln=True, attention_backend="torch"), "model"),
        device="cpu").eval()
    return Editor(model, TextEncoder(TextEncoderConfig(d_model=32, num_layers=1, num_heads=2, pool=4)), PixelEncoder(),
                  PackConfig(patch_size=8), FlowConfig(prediction="x0"), SamplerConfig(steps=steps, seed=1),
                  mask_type=mask_type)


def _small(metrics):
    cfg = MagicBrushConfig(clip_path=metrics.cfg.clip_path, dino_path=metrics.cfg.dino_path, edit_size=16)
    return MagicBrushMetrics(cfg)


def test_run_with_the_library_s_editor(metrics, tmp_path, megatron_cpu):
    """The real Editor: run_magicbrush drives EditSession turn after turn, and each turn's context holds
    the earlier outputs (the images the results score)."""
    _write_set(tmp_path / "mb")
    ed = _tiny_editor()
    started = []
    start = ed.start
    ed.start = lambda im: started.append(start(im)) or started[-1]
    res = run_magicbrush(ed, tmp_path / "mb", out_dir=tmp_path / "run", progress=False, metrics=_small(metrics))
    assert [p["n"] for p in res["per_turn"]] == [2, 2, 1]
    s2 = started[1]
    assert s2.texts == ["edit 1", "edit 2", "edit 3"] and len(s2.images) == 4 and s2.images[0].shape == (16, 16, 3)
    for t in (1, 2, 3):
        assert np.array_equal(np.asarray(Image.open(generated_path(tmp_path / "run", "s2", t))), s2.images[t].numpy())


def _at16(path):
    return np.asarray(Image.open(path).convert("RGB").resize((16, 16), Image.BICUBIC))


def test_each_setting_s_context(metrics, tmp_path, megatron_cpu):
    """What the editor sees at each turn, per setting: Table 1's own outputs, MagicBrush's single-turn
    ground-truth input alone, Table 4's ground-truth history, and the dummy copy turn before it. Recorded
    at the Editor's re-packing path (full mask), where the history reaches the model as given."""
    _write_set(tmp_path / "mb")
    ds = read_magicbrush(tmp_path / "mb")
    s2 = ds[1]
    src, gt1, gt2 = _at16(s2.source), _at16(s2.turns[0].target), _at16(s2.turns[1].target)
    small = _small(metrics)
    seen = {}
    for setting in SETTINGS:
        ed = _tiny_editor("full")
        calls = []
        edit_turn = ed.edit_turn
        ed.edit_turn = lambda images, texts, prompt: calls.append(
            ([np.asarray(i) for i in images], list(texts), prompt)) or edit_turn(images, texts, prompt)
        res = run_magicbrush(ed, ds, metrics=small, out_dir=tmp_path / setting, progress=False, setting=setting)
        assert res["setting"] == setting and [p["n"] for p in res["per_turn"]] == [2, 2, 1]
        seen[setting] = calls[2:]                                  # s2's three turns (s1 has two)
        assert [c[2] for c in seen[setting]] == ["edit 1", "edit 2", "edit 3"]
    outs = [np.asarray(Image.open(generated_path(tmp_path / "multi_turn", "s2", t))) for t in (1, 2)]
    same = lambda got, want: len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    images, texts, _ = seen["multi_turn"][2]
    assert same(images, [src, *outs]) and texts == ["edit 1", "edit 2"]
    images, texts, _ = seen["independent"][2]
    assert same(images, [gt2]) and texts == []
    images, texts, _ = seen["history"][2]
    assert same(images, [src, gt1, gt2]) and texts == ["edit 1", "edit 2"]
    images, texts, _ = seen["dummy"][2]
    assert same(images, [src, src, gt1, gt2]) and texts == [DUMMY_INSTRUCTION, "edit 1", "edit 2"]
    images, texts, _ = seen["dummy"][0]
    assert same(images, [src, src]) and texts == [DUMMY_INSTRUCTION]
    for setting in ("multi_turn", "independent", "history"):          # turn 1: the source alone
        assert same(seen[setting][0][0], [src]) and seen[setting][0][1] == []
    # turn 1 is one edit in the first three settings (same input, same noise): one file, MagicBrush's
    first = [np.asarray(Image.open(generated_path(tmp_path / st, "s2", 1, st))) for st in ("multi_turn", "independent")]
    assert generated_path(tmp_path, "s2", 1, "independent").name == "s2_1.png" and np.array_equal(*first)
    assert generated_path(tmp_path, "s2", 3, "history").name == "s2_hist_3.png"
    assert generated_path(tmp_path, "s2", 1, "dummy").name == "s2_dummy_1.png"


class _Crash(Exception):
    pass


def _crashing(ed, after):
    """``ed`` whose sessions raise at the (after+1)-th edit: a job killed mid-run."""
    n, start = [0], ed.start

    def started(im):
        sess = start(im)
        edit = sess.edit

        def crash_or_edit(prompt):
            n[0] += 1
            if n[0] > after:
                raise _Crash()
            return edit(prompt)
        sess.edit = crash_or_edit
        return sess
    ed.start = started
    return ed


@pytest.mark.parametrize("setting", ["multi_turn", "dummy"])
def test_resumed_run_equals_an_uninterrupted_one(metrics, tmp_path, megatron_cpu, setting):
    """A run killed after 3 of 5 edits, then rerun into the same folder, writes the images of a run never
    stopped (pixel-exact, on the Editor's KV-cache path): each edit's noise is a function of its session and
    turn, and earlier outputs come back from their PNGs as context. Another editor cannot resume there."""
    from vincie_mcore.infer.editor import SamplerConfig

    _write_set(tmp_path / "mb")
    small = _small(metrics)
    whole = run_magicbrush(_tiny_editor(), tmp_path / "mb", metrics=small, out_dir=tmp_path / "A", progress=False,
                           setting=setting)
    with pytest.raises(_Crash):
        run_magicbrush(_crashing(_tiny_editor(), 3), tmp_path / "mb", metrics=small, out_dir=tmp_path / "B",
                       progress=False, setting=setting)
    resumed = run_magicbrush(_tiny_editor(), tmp_path / "mb", metrics=small, out_dir=tmp_path / "B", progress=False,
                             setting=setting)
    assert whole["edits"] == {"made": 5, "resumed": 0} and resumed["edits"] == {"made": 2, "resumed": 3}
    files = [generated_path(tmp_path / d, sid, t, setting) for d in ("A", "B") for sid, n in (("s1", 2), ("s2", 3))
             for t in range(1, n + 1)]
    a, b = ([np.asarray(Image.open(f)) for f in files[i * 5:(i + 1) * 5]] for i in (0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert resumed["per_turn"] == whole["per_turn"]
    if setting == "multi_turn":
        # a remade turn makes the later ones stale: s2's turn 2 gone, its turn 3 is remade too
        generated_path(tmp_path / "B", "s2", 2).unlink()
        again = run_magicbrush(_tiny_editor(), tmp_path / "mb", metrics=small, out_dir=tmp_path / "B",
                               progress=False)
        assert again["edits"] == {"made": 2, "resumed": 3} and again["per_turn"] == whole["per_turn"]
    other = _tiny_editor()
    other.sampler = SamplerConfig(steps=3, seed=1)
    with pytest.raises(ValueError, match=r"^out_dir: .*/B holds edits made with sampler=\{.*'steps': 2.*\}, this run "
                                         r"has sampler=\{.*'steps': 3.*\}; give another out_dir$"):
        run_magicbrush(other, tmp_path / "mb", metrics=small, out_dir=tmp_path / "B", progress=False, setting=setting)


def test_chain_of_editing_run_writes_its_maps_and_resumes_from_them(metrics, tmp_path, megatron_cpu, monkeypatch):
    """``coe="cs_ns"``: each multi_turn turn is a ``ChainSession`` turn with that edit's own seed, its two maps
    written beside its image (equal to the chain run by hand); a run killed after 3 of 5 turns resumes from
    the images and maps on disk to the uninterrupted run's images, pixel for pixel; two sessions per model
    pass give the same images and maps; the folder records the inference; the settings it cannot run are
    one line."""
    from vincie_mcore.data.recipe import RecipeConfig
    from vincie_mcore.eval import edit_runs
    from vincie_mcore.eval.edit_runs import map_path
    from vincie_mcore.infer import applications as apps

    _write_set(tmp_path / "mb")
    ds, small = read_magicbrush(tmp_path / "mb"), _small(metrics)
    recipe = RecipeConfig(mask_prompt_src="where it changes", mask_prompt_tgt="where it will be")
    whole = run_magicbrush(_tiny_editor(), ds, metrics=small, out_dir=tmp_path / "A", progress=False, coe="cs_ns",
                           recipe=recipe)
    assert whole["coe"] == "cs_ns" and whole["edits"] == {"made": 5, "resumed": 0}
    ed = _tiny_editor()                                              # the reference: session s2 by hand
    chain = apps.ChainSession(ed, _at16(ds[1].source), recipe, apps.COE["cs_ns"])
    for t, turn in enumerate(ds[1].turns, 1):
        edit_runs.seed_edit(ed, "s2", t)
        out = chain.turn(turn.instruction)
        path = generated_path(tmp_path / "A", "s2", t)
        assert np.array_equal(np.asarray(Image.open(path)), out)
        for kind in apps.MAP_KINDS:
            assert np.array_equal(np.asarray(Image.open(map_path(path, kind))), apps.map_image(chain.masks[-1][kind]))

    turns, real = [0], apps.chain_turns

    def crash_after_3(chains, prompts, seeds=None):
        turns[0] += 1
        if turns[0] > 3:
            raise _Crash()
        return real(chains, prompts, seeds)
    monkeypatch.setattr(apps, "chain_turns", crash_after_3)
    with pytest.raises(_Crash):
        run_magicbrush(_tiny_editor(), ds, metrics=small, out_dir=tmp_path / "B", progress=False, coe="cs_ns",
                       recipe=recipe)
    monkeypatch.setattr(apps, "chain_turns", real)
    resumed = run_magicbrush(_tiny_editor(), ds, metrics=small, out_dir=tmp_path / "B", progress=False, coe="cs_ns",
                             recipe=recipe)
    assert resumed["edits"] == {"made": 2, "resumed": 3} and resumed["per_turn"] == whole["per_turn"]
    for sid, n in (("s1", 2), ("s2", 3)):
        for t in range(1, n + 1):
            a, b = generated_path(tmp_path / "A", sid, t), generated_path(tmp_path / "B", sid, t)
            for x, y in [(a, b), *((map_path(a, k), map_path(b, k)) for k in apps.MAP_KINDS)]:
                assert np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y))), (x, y)
    batched = run_magicbrush(_tiny_editor(), ds, metrics=small, out_dir=tmp_path / "D", progress=False, coe="cs_ns",
                             recipe=recipe, batch=2)
    assert batched["edits"] == {"made": 5, "resumed": 0}
    for sid, n in (("s1", 2), ("s2", 3)):
        for t in range(1, n + 1):
            a, d = generated_path(tmp_path / "A", sid, t), generated_path(tmp_path / "D", sid, t)
            assert np.abs(np.asarray(Image.open(a), int) - np.asarray(Image.open(d), int)).max() <= 1, (sid, t)
            for k in apps.MAP_KINDS:
                assert np.array_equal(np.asarray(Image.open(map_path(a, k))), np.asarray(Image.open(map_path(d, k))))
    with pytest.raises(ValueError, match=r"^out_dir: .*/A holds edits made with coe='cs_ns', this run has coe='cs'"):
        run_magicbrush(_tiny_editor(), ds, metrics=small, out_dir=tmp_path / "A", progress=False, coe="cs",
                       recipe=recipe)
    for kw, msg in ((dict(coe="cs", setting="history"), r"^coe: chain-of-editing runs the multi_turn setting"),
                    (dict(coe="cs->i"), r"^coe: expected one of none, cs, ns, cs_ns, got 'cs->i'$")):
        with pytest.raises(ValueError, match=msg):
            run_magicbrush(_tiny_editor(), ds, metrics=small, out_dir=tmp_path / "C", progress=False, **kw)


# ----------------------------------------------------------------------------- the release's layout

def _write_release(root, targets_from):
    """The sessions of ``_write_set(targets_from)`` laid out as MagicBrush's test release: images/<id>/ with
    <id>-input.png, <id>-output<k>.png and masks, edit_sessions.json, global and local descriptions."""
    src_root = targets_from
    rows = [json.loads(x) for x in (src_root / "sessions.jsonl").read_text().splitlines()]
    sessions, glob, loc = {}, {}, {}
    for r in rows:
        sid = r["id"]
        d = root / "images" / sid
        d.mkdir(parents=True)
        (d / f"{sid}-input.png").write_bytes((src_root / r["source"]).read_bytes())
        turns, prev = [], f"{sid}-input.png"
        glob[sid], loc[sid] = {prev: "the input"}, {}
        for k, t in enumerate(r["turns"], 1):
            (d / f"{sid}-output{k}.png").write_bytes((src_root / t["target"]).read_bytes())
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(d / f"{sid}-mask{k}.png")
            turns.append({"input": prev, "mask": f"{sid}-mask{k}.png", "output": f"{sid}-output{k}.png",
                          "instruction": t["instruction"]})
            glob[sid][f"{sid}-output{k}.png"] = t["caption"]
            loc[sid][f"{sid}-output{k}.png"] = f"local {k}"
            prev = f"{sid}-output{k}.png"
        sessions[sid] = turns
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    (root / "global_descriptions.json").write_text(json.dumps(glob))
    (root / "local_descriptions.json").write_text(json.dumps(loc))
    return sessions


def test_release_layout_reads_as_its_sessions(tmp_path):
    _write_set(tmp_path / "mb")
    _write_release(tmp_path / "rel", tmp_path / "mb")
    ours, rel = read_magicbrush(tmp_path / "mb"), read_magicbrush(tmp_path / "rel")
    assert [s.id for s in rel] == ["s1", "s2"] and rel[1].source.name == "s2-input.png"
    for a, b in zip(ours, rel):
        assert a.id == b.id and a.source.read_bytes() == b.source.read_bytes()
        assert [(t.instruction, t.caption, t.target.read_bytes()) for t in a.turns] == \
            [(t.instruction, t.caption, t.target.read_bytes()) for t in b.turns]
        assert b.gt_input(0) == b.source and b.gt_input(2 if len(b.turns) > 2 else 1) == b.turns[-2].target
    local = read_magicbrush(tmp_path / "rel", captions="local_descriptions.json")
    assert [t.caption for t in local[1].turns] == ["local 1", "local 2", "local 3"]


@pytest.mark.parametrize("edit, match", [
    (lambda s, c: s["s2"][1].update(input="s2-input.png"),
     r"edit_sessions.json: session 's2': turns\[1\].input is 's2-input.png', not the previous turn's output "
     r"'s2-output1.png'$"),
    (lambda s, c: c["s1"].pop("s1-output2.png"),
     r"global_descriptions.json: no caption for session 's1', file 's1-output2.png'$"),
    (lambda s, c: s["s1"][0].update(output="s1-output9.png"), r"session 's1': turns\[0\].output: no image file"),
    (lambda s, c: s["s1"][0].pop("instruction"), r"session 's1': turns\[0\] missing key 'instruction'$"),
    (lambda s, c: s.update(s1=[]), r"session 's1': expected a non-empty list of turns$"),
    (lambda s, c: s.update({"../s1": s.pop("s1")}), r"turns\[0\].input: .* climbs out"),
])
def test_bad_release_folders(tmp_path, edit, match):
    _write_set(tmp_path / "mb")
    sessions = _write_release(tmp_path / "rel", tmp_path / "mb")
    caps = json.loads((tmp_path / "rel/global_descriptions.json").read_text())
    edit(sessions, caps)
    (tmp_path / "rel/edit_sessions.json").write_text(json.dumps(sessions))
    (tmp_path / "rel/global_descriptions.json").write_text(json.dumps(caps))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        read_magicbrush(tmp_path / "rel")


def test_release_and_layout_errors(tmp_path):
    _write_set(tmp_path / "mb")
    _write_release(tmp_path / "rel", tmp_path / "mb")
    with pytest.raises(FileNotFoundError, match=r"^captions: no nope.json in .*rel \(CLIP-T's text; the default is "
                                                r"the release's global_descriptions.json\)$"):
        read_magicbrush(tmp_path / "rel", captions="nope.json")
    with pytest.raises(ValueError, match=r"^captions: .*sessions.jsonl carries its captions in its rows"):
        read_magicbrush(tmp_path / "mb", captions="local_descriptions.json")
    with pytest.raises(FileNotFoundError, match=r"^magicbrush: no sessions.jsonl, edit_sessions.json \(the release.s test folder\) or .parquet files"):
        read_magicbrush(tmp_path / "rel" / "images")
    (tmp_path / "rel/edit_sessions.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"edit_sessions.json: not JSON \(.*line 1\)$"):
        read_magicbrush(tmp_path / "rel")


def test_docs_list_every_key_with_its_default():
    """docs/magicbrush.md's two key tables name every MagicBrushConfig field with its default."""
    import dataclasses
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "magicbrush.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `?([^|`]+?)`? \|", text, re.M))
    want = {f.name: str(getattr(MagicBrushConfig(), f.name)) for f in dataclasses.fields(MagicBrushConfig)}
    assert {k: rows.get(k) for k in want} == want


@pytest.fixture(scope="module")
def demo_run(shared_demo_run):
    """The suite's 3-step demo run (tests/conftest.py; the CLI tests' model). Copied before any test writes."""
    return shared_demo_run


def test_cli_chain_of_editing_on_a_training_run(demo_run, models, tmp_path, megatron_cpu, capsys):
    """``vincie-benchmark magicbrush --coe cs`` in-process on the demo run: the run's recipe reaches the chain,
    each turn's source map lies beside its image, the results say the inference; what --coe cannot run is one
    line before any model loads."""
    from vincie_tools.benchmark import main

    from vincie_mcore.eval.edit_runs import map_path

    _write_set(tmp_path / "mb")
    base = ["magicbrush", "--data", str(tmp_path / "mb"), "--run", str(demo_run), "--clip", models[0],
            "--dino", models[1], "--edit-size", "24", "--set", "sampler.steps=1", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "out"), "--coe", "cs"]) == 0
    res = json.loads((tmp_path / "out" / "results_multi_turn.json").read_text())
    assert res["coe"] == "cs" and res["edits"] == {"made": 5, "resumed": 0}
    first = generated_path(tmp_path / "out", "s2", 1)
    assert map_path(first, "roe_src").is_file() and not map_path(first, "roe_tgt").exists()
    assert json.loads((tmp_path / "out" / "editor.json").read_text())["coe"] == "cs"
    capsys.readouterr()
    for extra, msg in ((["--setting", "dummy"], "error: --coe: chain-of-editing runs --setting multi_turn"),):
        assert main([*base, "--out", str(tmp_path / "bad"), "--coe", "cs", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(msg) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_cli_runs_every_setting_on_a_training_run_and_resumes(demo_run, tmp_path):
    """vincie-benchmark magicbrush --run on a 3-step demo run, the release's layout, --setting all, two
    edits per model pass (--batch 2): four results and reports; turn 1 made once for the three settings that share it; a rerun in a new process
    makes nothing; once the run has saved a newer checkpoint, a rerun into the folder is refused (another
    sampler's refusal: test_resumed_run_equals_an_uninterrupted_one)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tiny_clip_dino import save_tiny_clip, save_tiny_dino

    exe = Path(sys.executable).parent
    shutil.copytree(demo_run, tmp_path / "run")           # this test saves a later checkpoint into it
    _write_set(tmp_path / "mb")
    _write_release(tmp_path / "test", tmp_path / "mb")
    cmd = [str(exe / "vincie-benchmark"), "magicbrush", "--data", str(tmp_path / "test"), "--run", str(tmp_path / "run"),
           "--clip", save_tiny_clip(tmp_path / "clip"), "--dino", save_tiny_dino(tmp_path / "dino"),
           "--edit-size", "24", "--out", str(tmp_path / "out"), "--setting", "all", "--set", "sampler.steps=2",
           "--set", "data.recipe.mask_type=full", "--batch", "2", "--quiet"]   # full: no KV cache, so batched
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    made = {st: json.loads((tmp_path / "out" / f"results_{st}.json").read_text())["edits"] for st in SETTINGS}
    assert made == {"multi_turn": {"made": 5, "resumed": 0}, "independent": {"made": 3, "resumed": 2},
                    "history": {"made": 3, "resumed": 2}, "dummy": {"made": 5, "resumed": 0}}
    assert all((tmp_path / "out" / f"report_{st}.html").is_file() for st in SETTINGS)
    assert [ln.split(",")[0] for ln in r.stdout.splitlines() if ln.startswith("MagicBrush ")] == \
        [f"MagicBrush {st}" for st in SETTINGS]
    assert generated_path(tmp_path / "out", "s2", 3, "dummy").is_file()
    # every edit exists: the rerun reads them back and never loads the model (edit_runs.Deferred), so step
    # 3's weights, emptied here, are not read (a load would fail on them)
    from vincie_mcore.train.checkpoint import LATEST, step_dir
    ckpt = str(tmp_path / "run" / "checkpoints")
    weights = [f for f in Path(step_dir(ckpt, 3)).rglob("*") if f.is_file() and f.stat().st_size > 0]
    assert weights
    for f in weights:
        f.write_bytes(b"")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(json.loads((tmp_path / "out" / f"results_{st}.json").read_text())["edits"]["made"] == 0
               for st in SETTINGS)
    assert json.loads((tmp_path / "out" / "editor.json").read_text())["step"] == 3
    # the run trains on and saves step 4 (its step 3, copied): the folder's edits are step 3's, so refused
    shutil.copytree(step_dir(ckpt, 3), step_dir(ckpt, 4))
    Path(ckpt, LATEST).write_text("4")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().endswith("holds edits made with step=3, this run has step=4; "
                                                           "give another out_dir"), r.stderr[-2000:]


def test_slurm_benchmark_edits_on_two_gpus_then_scores(slurm_cluster, demo_run, models, tmp_path, capsys):  # noqa: F811
    """slurm/benchmark.sh 2 on a real one-node Slurm: an array of two tasks, each editing every other session
    (--shard i/2, no CLIP/DINO loaded), then the scoring job (afterok), which reads all five edits back and
    writes the results; a shard run without a folder to share, or --shard with --generated, is one line."""
    import re
    import subprocess
    import sys
    import time
    from pathlib import Path

    from vincie_tools.benchmark import main

    root = Path(__file__).resolve().parents[2]
    exe = Path(sys.executable).parent
    _write_set(tmp_path / "mb")
    _write_release(tmp_path / "test", tmp_path / "mb")
    clip, dino = models
    args = ["magicbrush", "--data", str(tmp_path / "test"), "--run", str(demo_run), "--clip", clip, "--dino", dino,
            "--edit-size", "24", "--out", str(tmp_path / "out"), "--set", "sampler.steps=2"]
    env = dict(slurm_cluster, PATH=f"{exe}:{os.environ['PATH']}",      # the scoring job's own options
               VINCIE_SCORE_OPTS="--job-name=vincie-benchmark-scoring --cpus-per-task=1")
    r = subprocess.run(["bash", str(root / "slurm" / "benchmark.sh"), "2", f"--chdir={tmp_path}", "--cpus-per-task=1",
                        "--", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    score = int(re.findall(r"job (\d+)", r.stdout)[-1])
    end, state = time.monotonic() + 600, ""
    while time.monotonic() < end and state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        time.sleep(0.5)
        out = subprocess.run(["scontrol", "-o", "show", "job", str(score)], env=env, capture_output=True, text=True).stdout
        state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")
    logs = {p.name: p.read_text() for p in tmp_path.glob("vincie-benchmark*.out")}
    assert state == "COMPLETED", {k: v[-1500:] for k, v in logs.items()}
    parts = sorted(re.findall(r"shard (\d)/2: (\d) sessions, (\d) edits made", "".join(logs.values())))
    assert parts == [("0", "1", "2"), ("1", "1", "3")], logs        # s1 (2 turns) | s2 (3 turns)
    assert [k for k in logs if k.startswith("vincie-benchmark-scoring-")] == [f"vincie-benchmark-scoring-{score}.out"]
    res = json.loads((tmp_path / "out" / "results_multi_turn.json").read_text())
    assert res["edits"] == {"made": 0, "resumed": 5} and res["sessions"] == 2
    capsys.readouterr()
    assert main(["magicbrush", "--data", str(tmp_path / "test"), "--generated", str(tmp_path / "out"), "--out",
                 str(tmp_path / "x"), "--shard", "0/2"]) == 2
    assert capsys.readouterr().err == ("error: --shard: edits one part of a run; --generated images are scored "
                                       "whole\n")
    assert main(["magicbrush", "--data", str(tmp_path / "test"), "--run", str(demo_run), "--out", str(tmp_path / "x"),
                 "--clip", clip]) == 2
    assert capsys.readouterr().err == ("error: --dino: required to score (only a --shard run, which edits, goes "
                                       "without)\n")


# ----------------------------------------------------------------------------- Hugging Face's parquet

def _write_parquet(root, release):
    """The release folder's sessions as osunlp/MagicBrush's parquet rows (turns of a session in reverse
    order, s2 in a second file): each turn's source_img is the previous turn's target_img bytes."""
    from vincie_mcore.perf.bench_sessions import write_magicbrush_parquet

    sessions = json.loads((release / "edit_sessions.json").read_text())
    root.mkdir()
    for n, (sid, turns) in enumerate(sessions.items()):
        read = lambda f: {"bytes": (release / "images" / sid / f).read_bytes(), "path": f}   # noqa: E731
        rows = [{"img_id": sid, "turn_index": k, "source_img": read(t["input"]), "mask_img": read(t["mask"]),
                 "instruction": t["instruction"], "target_img": read(t["output"])} for k, t in enumerate(turns, 1)]
        write_magicbrush_parquet(root / f"dev-0000{n}-of-00002.parquet", rows[::-1], row_group_size=1)
    return sessions


def test_parquet_split_reads_and_scores_as_the_release(metrics, tmp_path):
    targets = _write_set(tmp_path / "mb")
    _write_release(tmp_path / "rel", tmp_path / "mb")
    _write_parquet(tmp_path / "hf", tmp_path / "rel")
    rel, hf = read_magicbrush(tmp_path / "rel"), read_magicbrush(tmp_path / "hf")
    assert [s.id for s in hf] == ["s1", "s2"]
    for a, b in zip(rel, hf):
        assert b.source == a.source.read_bytes()
        assert [(t.instruction, t.target) for t in b.turns] == [(t.instruction, t.target.read_bytes()) for t in a.turns]
        assert all(t.caption is None for t in b.turns)          # Hugging Face's splits publish no captions
    gen = {sid: [np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8) for a in ims] for sid, ims in targets.items()}
    r_rel, r_hf = (score_magicbrush(gen, ds, metrics=metrics) for ds in (rel, hf))
    for p, q in zip(r_rel["per_turn"], r_hf["per_turn"]):
        assert {m: p[m] for m in ("n", "l1", "l2", "clip_i", "dino")} == {m: q[m] for m in ("n", "l1", "l2", "clip_i", "dino")}
        assert p["clip_t"] is not None and q["clip_t"] is None and q["clip_t_oracle"] is None
    capped = read_magicbrush(tmp_path / "hf", captions=str(tmp_path / "rel" / "global_descriptions.json"))
    r_cap = score_magicbrush(gen, capped, metrics=metrics)
    assert r_cap["per_turn"] == r_rel["per_turn"] and r_cap["final_turn"] == r_rel["final_turn"]
    from vincie_mcore.eval.magicbrush import write_report
    page = write_report(tmp_path / "r.html", r_hf, hf, gen).read_text()
    assert page.count("<img ") == (1 + 2 * 2) + (1 + 2 * 3)    # the thumbnails from bytes


@pytest.mark.parametrize("edit, match", [
    (lambda s: s["s2"][1].update(input="s1-input.png"), r"dev-00001-of-00002.parquet row 1 \(session 's2', turn 2\): "
                                                       r"its source_img is not turn 1's target_img$"),
    (lambda s: s["s1"][1].update(instruction=" "), r"row 0 \(session 's1', turn 2\): empty instruction$"),
])
def test_bad_parquet_splits(tmp_path, edit, match):
    _write_set(tmp_path / "mb")
    sessions = _write_release(tmp_path / "rel", tmp_path / "mb")
    edit(sessions)
    if sessions["s2"][1]["input"] == "s1-input.png":
        import shutil
        shutil.copy(tmp_path / "rel/images/s1/s1-input.png", tmp_path / "rel/images/s2/s1-input.png")
    (tmp_path / "rel/edit_sessions.json").write_text(json.dumps(sessions))
    _write_parquet(tmp_path / "hf", tmp_path / "rel")
    with pytest.raises(ValueError, match=match):
        read_magicbrush(tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match=r"^captions: no nope.json \(a path, or a name next to the parquet"):
        read_magicbrush(tmp_path / "hf", captions="nope.json")
