"""Editing with an imported official checkpoint: ``import-official`` writes a run folder, ``load_run`` /
``make_editor`` give the ``OfficialEditor``, and ``vincie-edit`` and the app's session logic edit on it.

The model is the golden fixture's tiny 3B-shaped release (tests/fixtures/official/, the official DiT's own
weights layout) imported by the real ``import_official``; the VAE is the official 3B VAE fixture
(tests/fixtures/official_vae/, saved as a ``vae.pth``); the text encoder a tiny random T5 saved with
``save_pretrained`` (the 7B's Flan-UL2 kind, 24-d to fit the fixture's text width). The last tests cover the
Hugging Face side: the plain ``VincieMMDiT`` against the official outputs and the Megatron model, and an export
of the import folder editing through ``VincieEditPipeline``.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from official_fixture import model_dict
from vincie_mcore.config import build

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
AREA = 32                      # images fitted to 32 x 32 (patch 2 x VAE 8 = 16: a 2 x 2 token frame)
STEPS, SHIFT, GUIDANCE, SEED = 3, 12.0, 7.5, 5
PROMPTS = ["make the sky orange", "add a red hat.", "remove the tree"]




def _model_yaml(path: Path) -> Path:
    path.write_text(yaml.safe_dump(model_dict("3b")))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An import-official folder with everything an editor needs (config.yaml written by the import)."""
    from safetensors.torch import load_file
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from vincie_mcore.convert.official import import_official

    d = tmp_path_factory.mktemp("official_run")
    torch.manual_seed(0)
    ByT5Tokenizer().save_pretrained(d / "text")
    T5EncoderModel(T5Config(vocab_size=384, d_model=24, d_kv=6, d_ff=48, num_layers=1, num_heads=4,
                            feed_forward_proj="gated-gelu", dropout_rate=0.0)).save_pretrained(d / "text")
    torch.save(load_file(str(FIX / "official_vae" / "3b_weights.safetensors")), d / "vae.pth")
    vae = json.loads((FIX / "official_vae" / "meta.json").read_text())["3b"]["config"]
    arch = ",".join(f"{k}:{json.dumps(vae[k])}" for k in ("block_out_channels", "layers_per_block",
                                                          "latent_channels", "norm_num_groups"))
    out = d / "v3b"
    import_official(FIX / "official" / "3b_weights.safetensors", out, model_config=_model_yaml(d / "model.yaml"),
                    overrides=["data=official_3b", f"data.text_encoder.path={d / 'text'}",
                               "data.text_encoder.dtype=float32", f"data.image_encoder.path={d / 'vae.pth'}",
                               f"+data.image_encoder.arch={{{arch}}}", f"data.corpus.image_size={AREA}",
                               f"sampler.steps={STEPS}", f"sampler.shift={SHIFT}", f"sampler.guidance={GUIDANCE}",
                               f"sampler.seed={SEED}"])
    return out


@pytest.fixture(scope="module")
def loaded(run):
    from vincie_mcore.build import load_run, make_editor
    from vincie_mcore.parallel import cpu_compat, groups
    try:
        cfg, model, text, image = load_run(run)
        yield cfg, model, text, image, make_editor(cfg, model, text, image)
    finally:                                    # load_run started one-process Megatron groups
        groups.destroy()
        cpu_compat.deactivate()


def _image(seed=0, h=40, w=24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_import_official_writes_a_run_folder_with_the_release_presets(run):
    from omegaconf import OmegaConf

    from vincie_mcore.convert.official import _compose
    cfg = OmegaConf.load(run / "config.yaml")
    assert (cfg.model.variant, cfg.parallel.tp, cfg.train.ckpt_dir) == ("official", 1, None)
    assert (cfg.data.image_encoder.kind, cfg.data.text_encoder.kind) == ("official_vae", "official")
    assert (run / "latest").is_file()
    # the presets bring the release's data group and sampler; the user's overrides win
    for preset, shift, guidance, variant in (("official_3b", 12.0, 7.5, "3b"), ("official_7b", 10.0, 10.0, "7b")):
        c = _compose(preset, None, ["sampler.steps=9"])
        assert (c.sampler.steps, c.sampler.shift, c.sampler.guidance) == (9, shift, guidance)
        assert c.data.image_encoder.variant == variant and c.data.recipe.mask_type == "full"


def test_load_run_names_an_encoder_path_the_import_did_not_get(run, tmp_path):
    from omegaconf import OmegaConf

    from vincie_mcore.build import load_run
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.data.image_encoder.path = "???"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(ValueError, match=r"^data\.image_encoder\.path: not set in .*config\.yaml \(give it"):
        load_run(tmp_path)


def test_turn_one_is_official_sample_on_the_release_inputs(loaded):
    """The editor's first turn against official_sample called by hand: the template, negative prompt, noise
    layout and seed, sampler settings and the decoded last frame, each built here independently."""
    from vincie_mcore.infer.official_editor import OfficialEditor
    from vincie_mcore.model.official import OFFICIAL_NEGATIVE_PROMPT, official_sample

    cfg, model, text, image, editor = loaded
    assert isinstance(editor, OfficialEditor) and editor.area == AREA
    assert (editor.sampler.steps, editor.sampler.shift, editor.sampler.guidance) == (STEPS, SHIFT, GUIDANCE)
    sess = editor.start(_image())
    start = sess.images[0].numpy()
    assert start.shape == (32, 16, 3)        # 40x24 at area 32^2: 41x25 (bicubic), centre-cropped to 16's
    ref_fit = np.asarray(Image.fromarray(_image()).resize((25, 41), Image.BICUBIC))[4:36, 4:20]
    assert np.array_equal(start, ref_fit)
    out = sess.edit(PROMPTS[0])

    lat0 = image.encode(torch.from_numpy(start)[None])                            # (1, C, h, w)
    C, h, w = lat0.shape[1:]
    rows = text.encode([f"Based on <IMG0>, {PROMPTS[0]}. Output <IMG1>: "])
    neg = text.encode([OFFICIAL_NEGATIVE_PROMPT])[0]
    noise = torch.randn((2, h, w, C), generator=torch.Generator().manual_seed(SEED)).permute(0, 3, 1, 2)
    x = official_sample(model, [dict(texts=rows, latents=torch.cat([lat0, torch.zeros_like(lat0)]), t=0.0)], neg,
                        [noise], 2, steps=STEPS, shift=SHIFT, guidance=GUIDANCE)[0]
    torch.testing.assert_close(sess.latents[0], x[-1], rtol=0, atol=1e-6)
    assert (x[-1] - noise[-1]).abs().max() > 0.1                                 # sampling moved it
    assert np.array_equal(out, image.decode(x[-1][None])[0].numpy()) and out.shape == start.shape
    assert sess.info[0]["kv_cache"] is False and "official" in sess.info[0]["reason"]

    # turn 2: both images in context, both instructions (turn tokens 0, 1), noise for 3 frames, the same seed
    sess.edit(PROMPTS[1])
    lat = image.encode(torch.from_numpy(np.stack([start, out])))
    rows = text.encode([f"Based on <IMG0>, {PROMPTS[0]}. Output <IMG1>: ",
                        f"Based on <IMG1>, {PROMPTS[1].rstrip('.')}. Output <IMG2>: "])
    noise = torch.randn((3, h, w, C), generator=torch.Generator().manual_seed(SEED)).permute(0, 3, 1, 2)
    x = official_sample(model, [dict(texts=rows, latents=torch.cat([lat, torch.zeros_like(lat[:1])]), t=0.0)], neg,
                        [noise], 2, steps=STEPS, shift=SHIFT, guidance=GUIDANCE)[0]
    torch.testing.assert_close(sess.latents[1], x[-1], rtol=0, atol=1e-6)


def test_release_io_reads_every_turn_s_images_as_generate_py(loaded, tmp_path):
    """``sampler.release_io``: each turn's context is what the release's ``load_image_latent_v2i`` makes of the
    files, written out here step by step: the start image as given and turn 1's output saved as the release
    saves it (``* 255`` truncated, a PNG), re-opened, the second resized to the first's original size (PIL
    bicubic), then ToTensor, AreaResize (bicubic with antialiasing on floats: torchvision's tensor path),
    DivisibleCrop and Normalize(0.5, 0.5). The VAE latents given to ``official_sample`` match within 1e-5; the
    output is the truncated decode. The default editor keeps the images unresampled (other latents); the
    paper editor refuses the setting in one line; a batch and a resumed session keep the files."""
    import dataclasses
    import math

    from vincie_mcore.infer.editor import Editor, edit_batch
    from vincie_mcore.infer.official_editor import OfficialEditor

    cfg, model, text, image, editor = loaded
    ed = OfficialEditor(model, text, image, editor.pack_cfg, dataclasses.replace(editor.sampler, release_io=True),
                        area=AREA)
    src = _image(0, 40, 24)
    seen = []
    real = ed.session_inputs
    ed.session_inputs = lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    sess = ed.start(src)
    out1 = sess.edit(PROMPTS[0])
    sess.edit(PROMPTS[1])
    trunc = image.decode_float(sess.latents[0][None]).clamp(-1, 1).mul(0.5).add(0.5).mul(255).to(torch.uint8)
    assert np.array_equal(out1, trunc[0].permute(1, 2, 0).numpy())
    Image.fromarray(src).save(tmp_path / "input.png")
    Image.fromarray(out1).save(tmp_path / "turn_0.png")                   # mediapy.write_image: a PNG

    def load(paths):                                                        # generate.py, load_image_latent_v2i
        frames, ori = [], None
        for p in paths:
            with Image.open(p) as img:
                img = img.convert("RGB")
                if ori is None:
                    ori = img.size
                else:
                    img = img.resize(ori)
                x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)      # ToTensor
            h, w = x.shape[-2:]
            scale = math.sqrt(AREA ** 2 / (h * w))                                          # AreaResize
            x = torch.nn.functional.interpolate(x[None], size=(round(h * scale), round(w * scale)),
                                                mode="bicubic", align_corners=False, antialias=True)[0]
            h, w = x.shape[-2:]
            ch, cw = h - h % 16, w - w % 16                                                 # DivisibleCrop
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            frames.append((x[:, top:top + ch, left:left + cw] - 0.5) / 0.5)                # Normalize
        return image.encode_float(torch.stack(frames))
    torch.testing.assert_close(seen[0][0]["latents"][:1], load([tmp_path / "input.png"]), rtol=0, atol=1e-5)
    want = load([tmp_path / "input.png", tmp_path / "turn_0.png"])
    torch.testing.assert_close(seen[1][0]["latents"][:2], want, rtol=0, atol=1e-5)
    plain = editor.start(src)
    plain.add_turn(PROMPTS[0], out1, own=True)
    kept = image.encode(torch.stack(plain.images))                        # the default: unresampled, uint8
    assert (kept[1] - want[1]).abs().max() > 1e-3
    # a batch, and a session resumed from its files, read the same
    again = ed.start(src)
    again.add_turn(PROMPTS[0], out1, own=True)
    seen.clear()
    edit_batch([again, ed.start(_image(3, 24, 40))], [PROMPTS[1], PROMPTS[0]])
    torch.testing.assert_close(seen[0][0]["latents"][:2], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(again.latents[-1], sess.latents[-1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"^sampler.release_io: only for a released model"):
        Editor(model, text, image, editor.pack_cfg, None, dataclasses.replace(editor.sampler, release_io=True))


def test_a_batch_of_sessions_gives_each_its_own_edit(loaded):
    """``edit_batch`` on the official editor: sessions of different sizes and history lengths in one
    ``official_sample`` batch, each image the one its session gets alone (the release's per-turn seed and
    the shared negative prompt); per-edit seeds are refused (the release draws every turn from sampler.seed)."""
    from vincie_mcore.infer.editor import edit_batch

    *_, editor = loaded

    def sessions():
        a = editor.start(_image(1, 40, 24))
        b = editor.start(_image(2, 24, 40))
        b.add_turn(PROMPTS[0], _image(3, 24, 40))
        return [a, b]
    alone = sessions()
    for s, p in zip(alone, PROMPTS[1:]):
        s.edit(p)
    together = sessions()
    outs = edit_batch(together, PROMPTS[1:])
    assert [s.info[-1]["batch"] for s in together] == [2, 2]
    for a, b, out in zip(alone, together, outs):
        assert out.shape == a.images[-1].shape
        torch.testing.assert_close(b.latents[-1], a.latents[-1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"^seeds: the official editor draws every turn's noise from sampler.seed"):
        edit_batch(sessions(), PROMPTS[1:], [1, 2])


def test_benchmark_chain_resumes_to_the_uninterrupted_images(loaded, tmp_path):
    """A benchmark's multi-turn chain (eval/edit_runs.py) on the official editor, stopped after 2 of 3
    edits and rerun: the turns read back from their PNGs go into the context as the model made them
    (not fitted again), so the third edit equals the uninterrupted run's."""
    from vincie_mcore.eval import edit_runs

    editor = loaded[-1]
    paths = lambda d: [tmp_path / d / f"turn_{t}.png" for t in (1, 2, 3)]   # noqa: E731

    def chain(folder):
        outs, made = edit_runs.run_chains(editor, [edit_runs.source_chain(editor, "s", _image(3), PROMPTS,
                                                                          paths(folder))])
        return outs[0], made
    whole, made = chain("a")
    assert made == 3 and whole[0].shape == (32, 16, 3)
    start, n = editor.start, [0]

    def stopping(image):
        sess = start(image)
        edit = sess.edit

        def edit_or_stop(prompt):
            n[0] += 1
            if n[0] > 2:
                raise KeyboardInterrupt
            return edit(prompt)
        sess.edit = edit_or_stop
        return sess
    editor.start = stopping
    try:
        with pytest.raises(KeyboardInterrupt):
            chain("b")
    finally:
        del editor.start
    again, made = chain("b")
    assert made == 1 and all(np.array_equal(x, y) for x, y in zip(whole, again))


def test_vincie_edit_runs_three_turns_on_the_import(loaded, run, tmp_path, capsys):
    """In this process (``loaded`` holds the one-process groups the command's load_run finds): the plain
    form, then ``batch``; the console script itself runs in tests/infer/test_applications.py."""
    from vincie_tools.edit import main

    src = tmp_path / "start.png"
    Image.fromarray(_image(1, 32, 32)).save(src)
    args = ["--run", str(run), "--image", str(src), "--out", str(tmp_path / "strip.png")]
    for p in PROMPTS:
        args += ["--prompt", p]
    assert main([*args, "--set", "sampler.steps=2"]) == 0, capsys.readouterr().err[-2000:]
    assert [ln.split(":")[0] for ln in capsys.readouterr().out.splitlines()[:3]] == ["turn 1", "turn 2", "turn 3"]
    strip = np.asarray(Image.open(tmp_path / "strip.png"))
    assert strip.shape[1] == 4 * (32 * 4 + 4)                     # start + 3 turns, 4x, 4 px gaps
    turns = [np.asarray(Image.open(tmp_path / f"strip_turn{i}.png")) for i in (1, 2, 3)]
    assert all(t.shape == (32, 32, 3) for t in turns) and not np.array_equal(turns[0], turns[1])
    # vincie-edit batch on the import: two jobs in one official_sample batch per turn, the first the same
    # image and prompts as above, with the same images (the release seeds every turn alike)
    Image.fromarray(_image(2, 32, 32)).save(tmp_path / "other.png")
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"id": "s", "image": "start.png", "prompts": PROMPTS}) + "\n"
                                         + json.dumps({"id": "o", "image": "other.png", "prompts": PROMPTS[:2]}) + "\n")
    assert main(["batch", "--run", str(run), "--jobs", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "batch"),
                 "--batch", "2", "--size", "32", "32", "--set", "sampler.steps=2", "--quiet"]) == 0
    assert "2 of 2 jobs edited (5 edits made now" in capsys.readouterr().out
    for i, t in enumerate(turns, 1):
        b = np.asarray(Image.open(tmp_path / "batch" / "s" / f"turn_{i}.png"))
        assert np.abs(b.astype(int) - t.astype(int)).max() <= 1


def test_app_session_edits_two_turns_on_the_import(loaded, run, tmp_path):
    import dataclasses

    from vincie_mcore.app.session import Backend, WebSession

    cfg, model, text, image, editor = loaded
    be = Backend(model, text, image, editor.pack_cfg, None, editor.sampler, "full", f"run {run}", area=AREA,
                 variant="official")
    ws = WebSession(be)
    start = ws.start(_image(2, 24, 40))                             # any size: fitted as the release does
    assert start.shape == (16, 32, 3)
    seen = []
    ws.edit(PROMPTS[0], steps=2, guidance=GUIDANCE, seed=3, progress=lambda d, n: seen.append((d, n)))
    ws.edit(PROMPTS[1], steps=2, guidance=GUIDANCE, seed=3)
    assert seen == [(1, 2), (2, 2)] and len(ws.images) == 3 and ws.summary()["turns"][1]["prompt"] == PROMPTS[1]
    # the page's turn is the run's editor's turn with the page's settings
    ed = type(editor)(model, text, image, editor.pack_cfg, dataclasses.replace(editor.sampler, steps=2, seed=3),
                      area=AREA)
    s = ed.start(_image(2, 24, 40))
    s.edit(PROMPTS[0])
    assert np.array_equal(ws.images[1], s.images[1].numpy())
    ws.undo()
    assert len(ws.images) == 2 and ws.download(tmp_path).is_file()
    # composition in the page: the release's way (references of two sizes), and the turn after it verbatim
    from vincie_mcore.infer import applications as apps
    refs = [_image(7, 40, 24), _image(8, 30, 50)]
    out = ws.compose(refs, "the two together", steps=2, guidance=GUIDANCE, seed=3)
    assert np.array_equal(out, apps.compose(ed, refs, "the two together").image)
    ws.edit(PROMPTS[0], steps=2, guidance=GUIDANCE, seed=3)
    assert ws.session.editor.template is False and ws.references == 2
    assert ws.session.texts == ["<IMG1>: ", "Based on <IMG0> and <IMG1>, the two together. Output <IMG2>: ",
                                PROMPTS[0]]


# ------------------------------------------------------------------ the plain-PyTorch model (Hugging Face export)

def _fixture_case(name: str):
    """(MMDiTConfig, image tokens, batch, sessions, official output [sum T*H*W, C]) of tests/fixtures/official/."""
    from safetensors.torch import load_file

    from vincie_mcore.model import MMDiTConfig
    from vincie_mcore.model.official import official_image_tokens, official_session_batch
    meta = json.loads((FIX / "official" / "meta.json").read_text())["configs"][name]
    cfg, p = build(MMDiTConfig, model_dict(name), "model"), meta["nadit"]["patch_size"][1]
    io = load_file(str(FIX / "official" / f"{name}_io.safetensors"))
    sessions, xs = [], []
    for s, sm in enumerate(meta["sessions"]):
        lat, xt = io[f"s{s}.latents"].permute(0, 3, 1, 2), io[f"s{s}.x_t"].permute(0, 3, 1, 2)   # (T, C, H, W)
        sessions.append(dict(texts=[io[f"s{s}.text{j}"] for j in range(len(sm["turn_tokens"]))], latents=lat,
                             t=sm["t"] / 1000.0))
        xs.append(official_image_tokens(xt, lat, p))
    return cfg, torch.cat(xs), official_session_batch(sessions, cfg, p), sessions, p, io["out"]


@pytest.mark.parametrize("name", ["3b", "7b"])
def test_plain_official_model_matches_the_release_and_megatron(loaded, name):
    """VincieMMDiT (no Megatron) with the release's weights, converted by the import's mapping, gives the official
    implementation's output (golden fixture) within 2e-5 (written on Intel; 9.2e-6 measured on an AMD EPYC:
    tests/convert/test_official.py's ATOL); for the 3B it also equals the Megatron model of the run."""
    from vincie_mcore.convert.official import converted, plan_import
    from vincie_mcore.hf.modeling import VincieMMDiT
    from vincie_mcore.model.official import official_frames

    cfg, x, batch, sessions, p, ref = _fixture_case(name)
    plain = VincieMMDiT(**cfg.to_dict())
    plan, src = plan_import(FIX / "official" / f"{name}_weights.safetensors", cfg,
                            expected={k: tuple(v.shape) for k, v in plain.state_dict().items()})
    plain.load_state_dict(dict(converted(plan, src)), strict=True)
    with torch.no_grad():
        out = plain.eval()(x, batch)
    as_release = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in official_frames(out, sessions, p)])
    assert ref.abs().max() > 1
    torch.testing.assert_close(as_release, ref, rtol=0, atol=2e-5)
    if name == "3b":                              # the run's Megatron model holds the same imported weights
        model = loaded[1]
        with torch.no_grad():
            torch.testing.assert_close(out, model(x, batch), rtol=0, atol=1e-5)


def test_hf_export_of_the_import_edits_like_the_run(loaded, run, tmp_path):
    """vincie-convert export on the import folder -> VincieEditPipeline (plain model, the official editor):
    two turns equal the run's Megatron editor's within the uint8 rounding of ~1e-6 differences."""
    import dataclasses

    from vincie_mcore.convert.hf import export_checkpoint
    from vincie_mcore.hf import VincieEditPipeline

    cfg, model, text, image, editor = loaded
    export_checkpoint(run, tmp_path / "export")
    pipe = VincieEditPipeline.from_pretrained(tmp_path / "export")
    assert pipe.area == AREA and pipe.model.cfg.variant == "official"
    start = _image(4, 32, 32)
    got = pipe(start, PROMPTS[:2], steps=2, seed=7)
    ref = type(editor)(model, text, image, editor.pack_cfg, dataclasses.replace(editor.sampler, steps=2, seed=7),
                       area=AREA).start(start)
    want = [ref.edit(p) for p in PROMPTS[:2]]
    for g, w in zip(got, want):
        assert g.shape == w.shape == (32, 32, 3)
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 1
    # composition through the pipeline: the run's editor's composed image (references of two sizes)
    from vincie_mcore.infer import applications as apps
    refs = [_image(5, 32, 32), _image(6, 24, 40)]
    got = pipe.compose(refs, "the two together", steps=2, seed=7).image
    want = apps.compose(ref.editor, refs, "the two together").image
    assert got.shape == want.shape == (32, 32, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    with pytest.raises(ValueError, match=r"^chain: not for a released model \(variant 'official'\)"):
        pipe.chain(start, ["x"])
    # the benchmarks' and vincie-edit batch's --export: the release's editor, with --set's sampler settings
    import argparse

    from vincie_mcore.infer.official_editor import OfficialEditor
    from vincie_tools.benchmark import load_editor
    deferred, cfg, weights = load_editor(argparse.Namespace(export=str(tmp_path / "export"), run=None,
                                                            set=["sampler.steps=2", "sampler.seed=7"]))
    assert cfg is None and len(weights["weights_sha256"]) == 64 and not deferred.loaded
    ed = deferred.get()
    assert isinstance(ed, OfficialEditor) and (ed.sampler.steps, ed.sampler.seed, ed.area) == (2, 7, AREA)
    assert not ed.release_io
    ed = load_editor(argparse.Namespace(export=str(tmp_path / "export"), run=None,
                                        set=["sampler.release_io=true"]))[0].get()
    assert ed.release_io and ed.start(start).files is not None               # the export reads the release's way
    with pytest.raises(ValueError, match=r"^--set: sampler.release_io: expected true or false, got 'yes'$"):
        load_editor(argparse.Namespace(export=str(tmp_path / "export"), run=None, set=["sampler.release_io=yes"]))
    # the web editor on the export: the release's editor too (the same first turn as the pipeline's)
    from vincie_mcore.app.session import Backend, WebSession
    be = Backend.from_export(tmp_path / "export")
    assert (be.variant, be.area) == ("official", AREA) and isinstance(be.editor(2, 7.5, 7), OfficialEditor)
    ws = WebSession(be)
    ws.start(start)
    out = ws.edit(PROMPTS[0], steps=2, guidance=be.sampler.guidance, seed=7)
    assert np.abs(out.astype(int) - pipe(start, PROMPTS[:1], steps=2, seed=7)[0].astype(int)).max() <= 1


def test_compose_texts_are_the_release_readme_s():
    """The README's six-image family prompt: captions <IMG1>: .. <IMG5>: , the prompt written around the
    instruction unless it names its images; bad counts and empty texts in one line."""
    from vincie_mcore.packed.official import official_compose_texts

    texts = official_compose_texts(6, "A smiling family poses for a portrait.")
    assert texts[:5] == [f"<IMG{i}>: " for i in range(1, 6)]
    assert texts[5] == ("Based on <IMG0>, <IMG1>, <IMG2>, <IMG3>, <IMG4>, and <IMG5>, A smiling family poses for a "
                        "portrait. Output <IMG6>: ")
    assert official_compose_texts(2, "the two together") == ["<IMG1>: ", "Based on <IMG0> and <IMG1>, the two "
                                                             "together. Output <IMG2>: "]
    named = "Based on <IMG0> and <IMG1>, the dog in <IMG1> sits by the man in <IMG0>. Output <IMG2>: "
    assert official_compose_texts(2, named, ["a dog"]) == ["a dog", named]
    for args, msg in (((0, "x"), r"^references: no reference images"),
                      ((2, "x", ["a", "b"]), r"^captions: expected 1 \(one after each reference"),
                      ((2, "x", [" "]), r"^captions: expected non-empty strings"),
                      ((2, " "), r"^prompt: expected a non-empty string")):
        with pytest.raises(ValueError, match=msg):
            official_compose_texts(*args)


def test_compose_is_one_release_turn_over_the_references_verbatim(loaded):
    """``applications.compose`` on the official editor against ``official_sample`` called by hand: the second
    reference (another size) resized to the first's (bicubic) and both fitted, the texts verbatim (no template),
    noise for 3 frames from the seed, the last frame decoded; a turn after it stays verbatim, and the editor
    the session came from keeps its template."""
    from vincie_mcore.infer import applications as apps
    from vincie_mcore.model.official import OFFICIAL_NEGATIVE_PROMPT, official_sample

    cfg, model, text, image, editor = loaded
    a, b = _image(7, 40, 24), _image(8, 30, 50)
    res = apps.compose(editor, [a, b], "the two together.")
    texts = ["<IMG1>: ", "Based on <IMG0> and <IMG1>, the two together. Output <IMG2>: "]
    assert res.texts == texts and res.labels == ["<IMG0>", "<IMG1>", "the two together."]

    b_as_a = np.asarray(Image.fromarray(b).resize((24, 40), Image.BICUBIC))
    fitted = [editor.fit(a), editor.fit(b_as_a)]
    assert all(np.array_equal(p, f) for p, f in zip(res.panels, fitted))
    lat = image.encode(torch.from_numpy(np.stack(fitted)))
    C, h, w = lat.shape[1:]
    noise = torch.randn((3, h, w, C), generator=torch.Generator().manual_seed(SEED)).permute(0, 3, 1, 2)
    x = official_sample(model, [dict(texts=text.encode(texts), latents=torch.cat([lat, torch.zeros_like(lat[:1])]),
                                     t=0.0)], text.encode([OFFICIAL_NEGATIVE_PROMPT])[0], [noise], 2,
                        steps=STEPS, shift=SHIFT, guidance=GUIDANCE)[0]
    assert np.array_equal(res.image, image.decode(x[-1][None])[0].numpy())

    sess, prompt = editor.compose_session([a, b], "the two together.")
    assert sess.editor.template is False and editor.template is True and sess.texts == texts[:1]
    sess.edit(prompt)
    assert sess.editor.turn_texts([*sess.texts, "make it red"]) == [*texts, "make it red"]
    assert editor.turn_texts(["make it red"]) == ["Based on <IMG0>, make it red. Output <IMG1>: "]
    with pytest.raises(ValueError, match=r"^references: reference 2: expected uint8 \[H, W, 3\]"):
        editor.compose_session([a, b[..., 0]], "x")
    story = apps.story(editor, a, PROMPTS[:1])                 # the release's turn-by-turn editing
    assert np.array_equal(story.images[1], editor.start(a).edit(PROMPTS[0]))


def test_vincie_edit_compose_on_the_import(loaded, run, tmp_path, capsys):
    """The CLI's compose on the import (references of two sizes, which the paper layout refuses), in this
    process; chain and drag refused in one line before any model loads."""
    from vincie_tools.edit import main

    Image.fromarray(_image(1, 32, 32)).save(tmp_path / "a.png")
    Image.fromarray(_image(2, 48, 32)).save(tmp_path / "b.png")
    assert main(["compose", "--run", str(run), "--ref", str(tmp_path / "a.png"), "--ref", str(tmp_path / "b.png"),
                 "--prompt", "the two together", "--out", str(tmp_path / "c.png"), "--set", "sampler.steps=2"]) == 0
    assert "compose strip (3 panels)" in capsys.readouterr().out
    assert np.asarray(Image.open(tmp_path / "c.png")).shape[1] == 3 * (32 * 4 + 4)
    for name, extra in (("chain", ["--prompt", "x"]), ("drag", ["--dx", "4", "--dy", "0", "--prompt", "x"])):
        assert main([name, "--run", str(run), "--image", str(tmp_path / "a.png"), *extra]) == 2
    with pytest.raises(SystemExit):
        main(["compose", "--run", str(run)])
