"""Several sessions' turns in one model pass (``infer.editor.edit_batch``, ``eval.edit_runs.run_chains``):
each session gets the image it gets when edited alone with the same seed, the reference being the
one-session path (``EditSession.edit`` after ``gen.manual_seed``) on the same tiny random model."""
import numpy as np
import pytest
import torch
from vincie_mcore.config import build

PROMPTS = ["add a red square", "make it blue", "remove the square", "brighten the sky", "zoom out"]


def _editor(mask_type="full", steps=2, guidance=3.0):
    from vincie_mcore.data.packing import PackConfig
    from vincie_mcore.diffusion.flow import FlowConfig
    from vincie_mcore.encoders.image import PixelEncoder
    from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig
    from vincie_mcore.infer.editor import Editor, SamplerConfig
    from vincie_mcore.model import MMDiTConfig, build_model

    torch.manual_seed(0)
    model = build_model(build(MMDiTConfig, dict(
        hidden_size=32, num_layers=2, mm_layers=1, num_heads=2, ffn_hidden_size=64, text_dim=32, patch_dim=192,
        max_turns=8, rope_axes_dim=[4, 6, 6], adaln_zero_init=False, attention_backend="torch"), "model"),
        device="cpu").eval()
    return Editor(model, TextEncoder(TextEncoderConfig(d_model=32, num_layers=1, num_heads=2, pool=4)), PixelEncoder(),
                  PackConfig(patch_size=8), FlowConfig(prediction="v"),
                  SamplerConfig(steps=steps, guidance=guidance, seed=3), mask_type=mask_type)


def _image(seed, h=16, w=24):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _sessions(ed):
    """Three sessions of different sizes and history lengths (0, 1 and 2 earlier turns)."""
    out = []
    for i, (h, w) in enumerate([(16, 24), (24, 16), (16, 16)]):
        s = ed.start(_image(i, h, w))
        for k in range(i):
            s.add_turn(PROMPTS[k], _image(10 + k, h, w))
        out.append(s)
    return out


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_a_batch_gives_each_session_its_own_edit(megatron_cpu, mask_type):
    """full: one packed batch (the re-packing path); block_causal: one batch on the sessions' KV caches joined
    for the turn and split back. Either way session i's image and sampled latent are those of ``sess.edit``
    after ``gen.manual_seed(seed_i)``, turn after turn, and under block_causal each session's caches after
    the batch are the ones it built alone (so it goes on alone or in another batch)."""
    from vincie_mcore.infer.editor import edit_batch

    ed = _editor(mask_type)
    alone, together = _sessions(ed), _sessions(ed)
    for turn, (seeds, prompts) in enumerate([([11, 22, 33], PROMPTS[2:5]), ([7, 8, 9], PROMPTS[:3])]):
        for s, p, seed in zip(alone, prompts, seeds):
            ed.gen.manual_seed(seed)
            s.edit(p)
        outs = edit_batch(together, prompts, seeds)
        for a, b, out in zip(alone, together, outs):
            assert out.shape == a.images[-1].shape and b.texts == a.texts
            assert torch.allclose(b.latents[-1], a.latents[-1], atol=1e-5), (b.latents[-1] - a.latents[-1]).abs().max()
            assert np.abs(out.astype(int) - a.images[-1].numpy().astype(int)).max() <= 1
        assert [s.info[-1]["batch"] for s in together] == [3] * 3
        assert all(s.info[-1]["kv_cache"] is (mask_type == "block_causal") for s in together)
    if mask_type == "block_causal":
        for a, b in zip(alone, together):
            for br in ("cond", "uncond"):
                ka, kb = a.kv[br], b.kv[br]
                assert torch.equal(ka.txt_rows, kb.txt_rows) and torch.equal(ka.img_rows, kb.img_rows)
                assert torch.allclose(ka.txt_sig, kb.txt_sig, atol=1e-5) and torch.allclose(ka.img_sig, kb.img_sig, atol=1e-5)
                assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ka.k + ka.v, kb.k + kb.v))
        ed.gen.manual_seed(5)
        alone[1].edit(PROMPTS[4])
        ed.gen.manual_seed(5)
        together[1].edit(PROMPTS[4])                       # alone again, on its split caches
        assert torch.allclose(together[1].latents[-1], alone[1].latents[-1], atol=1e-5)
        # a fresh session (no cache yet) joins two cached ones in a batch, as run_chains' pool refills
        fresh_alone, fresh = _sessions(ed)[2], _sessions(ed)[2]
        for s_, p, seed in zip([alone[0], fresh_alone], PROMPTS[:2], [41, 42]):
            ed.gen.manual_seed(seed)
            s_.edit(p)
        edit_batch([together[0], fresh], PROMPTS[:2], [41, 42])
        for a, b in ((alone[0], together[0]), (fresh_alone, fresh)):
            assert torch.allclose(b.latents[-1], a.latents[-1], atol=1e-5)
    # the seeds matter: the same batch without them draws other noise for the second session
    again = _sessions(ed)
    edit_batch(again, PROMPTS[2:5], None)
    ed.gen.manual_seed(22)
    ref = _sessions(ed)[1]
    ref.edit(PROMPTS[3])
    assert not torch.allclose(again[1].latents[-1], ref.latents[-1], atol=1e-3)


def test_edit_batch_refuses_mismatched_lists(megatron_cpu):
    from vincie_mcore.infer.editor import edit_batch

    ed = _editor()
    ss = _sessions(ed)
    with pytest.raises(ValueError, match=r"^edit_batch: 3 sessions, 2 prompts, no seeds$"):
        edit_batch(ss, PROMPTS[:2])
    with pytest.raises(ValueError, match=r"^prompt: expected a non-empty string$"):
        edit_batch(ss, ["a", " ", "b"])
    with pytest.raises(ValueError, match=r"^edit_batch: the sessions belong to different editors$"):
        edit_batch([ss[0], _editor().start(_image(0))], PROMPTS[:2])
    assert [len(s.images) for s in ss] == [1, 2, 3]          # nothing appended by a refused call


def test_run_chains_batched_equals_one_by_one_and_resumes(megatron_cpu, tmp_path):
    """Five chains of 1-4 turns through ``run_chains`` at batch 3 (a rolling pool: a finished chain's
    place taken by the next) give the images of batch 1, each turn on its previous output; a run killed
    mid-way resumes to the same images."""
    from vincie_mcore.eval import edit_runs

    ed = _editor(steps=1)
    lengths = [2, 4, 1, 3, 2]

    def chains(folder):
        return [edit_runs.source_chain(ed, f"s{i}", _image(i), PROMPTS[:n],
                                       None if folder is None else [folder / f"s{i}_{t}.png" for t in range(n)])
                for i, n in enumerate(lengths)]

    one, made1 = edit_runs.run_chains(ed, chains(None), batch=1)
    seen = []
    real = ed.edit_turns

    def spy(histories, prompts, seeds=None):
        seen.append([len(h[0]) for h in histories])
        return real(histories, prompts, seeds)
    ed.edit_turns = spy
    three, made3 = edit_runs.run_chains(ed, chains(None), batch=3)
    assert made1 == made3 == sum(lengths)
    # longest first (4, 3, 2, 2, 1 turns), a finished chain's place taken at once: four full passes
    assert seen == [[1, 1, 1], [2, 2, 2], [3, 3, 1], [4, 2, 1]]
    for a, b in zip(one, three):
        assert len(a) == len(b)
        assert all(np.abs(x.astype(int) - y.astype(int)).max() <= 1 for x, y in zip(a, b))

    calls = [0]

    def crash(histories, prompts, seeds=None):
        calls[0] += 1
        if calls[0] > 2:
            raise KeyboardInterrupt
        return real(histories, prompts, seeds)
    ed.edit_turns = crash
    with pytest.raises(KeyboardInterrupt):
        edit_runs.run_chains(ed, chains(tmp_path), batch=3)
    assert len(list(tmp_path.glob("*.png"))) == 6
    ed.edit_turns = real
    resumed, made = edit_runs.run_chains(ed, chains(tmp_path), batch=3)
    assert made == sum(lengths) - 6
    for a, b in zip(one, resumed):
        assert all(np.abs(x.astype(int) - y.astype(int)).max() <= 1 for x, y in zip(a, b))
    (tmp_path / "s1_1.png").unlink()                 # a middle turn lost: it and every later turn are made again
    again, made = edit_runs.run_chains(ed, chains(tmp_path), batch=3)
    assert made == 3 and all(np.abs(x.astype(int) - y.astype(int)).max() <= 1 for x, y in zip(one[1], again[1]))
    with pytest.raises(ValueError, match=r"^batch: must be >= 1, got 0$"):
        edit_runs.run_chains(ed, chains(None), batch=0)


def test_batched_benchmark_reports_rates_beside_its_check(megatron_cpu):
    """``vincie-bench-editor --batch``'s logic at a tiny size: both rates, and the pixel difference of the
    same run's images (batch 1 against batch 3) within one level."""
    from vincie_mcore.perf.bench_editor import bench_batched

    r = bench_batched(batch=3, sessions=4, hidden=32, layers=2, heads=2, image_tokens=2, steps=1, turns=2)
    assert r["edits"] == 8 and r["config"]["batch"] == 3 and r["config"]["mask_type"] == "full"
    assert r["edits_per_s_batch_1"] > 0 and r["edits_per_s_batched"] > 0
    assert r["max_abs_diff_pixels"] <= 1 and 0 <= r["pixels_differing"] < 0.01
    with pytest.raises(ValueError, match=r"^bench_batched: need batch >= 2"):
        bench_batched(batch=1)


def test_read_jobs_refuses_each_bad_row_in_one_line(tmp_path):
    import json

    from vincie_mcore.eval.edit_runs import read_jobs

    f = tmp_path / "jobs.jsonl"
    ok = {"id": 7, "image": "sub/a.png", "prompts": ["make it red"]}
    f.write_text(json.dumps(ok) + "\n\n")
    assert read_jobs(f) == [{"id": "7", "image": tmp_path / "sub" / "a.png", "prompts": ["make it red"]}]
    for rows, msg in (([ok, ok], r"line 2: id '7' repeats an earlier row's"),
                      ([dict(ok, prompts=["a", " "])], r"line 1: prompts: expected a non-empty list of non-empty strings"),
                      ([dict(ok, prompts="a")], r"line 1: prompts: expected a non-empty list of non-empty strings"),
                      ([dict(ok, image=3)], r"line 1: image: expected a file name, got int"),
                      ([dict(ok, id="")], r"line 1: id: empty name"),
                      ([[1]], r"line 1: expected a JSON object, got list")):
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(ValueError, match=r"^jobs.jsonl " + msg + "$"):
            read_jobs(f)
    f.write_text("{nope\n")
    with pytest.raises(ValueError, match=r"^jobs.jsonl line 1: not JSON \("):
        read_jobs(f)
    f.write_text("\n")
    with pytest.raises(ValueError, match=r"jobs.jsonl: no jobs$"):
        read_jobs(f)


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_text_to_image_in_one_batch_gives_each_caption_its_own_image(megatron_cpu, mask_type):
    """``Editor.text_to_image``: captions packed in one batch give what each gives alone with the same seed;
    under block_causal the KV-cache path (caption K/V once) equals re-packing every step."""
    ed = _editor(mask_type)
    caps = ["a small red square at the top left", "an empty scene", "a large blue circle at the centre"]
    together = ed.text_to_image(caps, (16, 24), seeds=[5, 6, 7])
    assert all(im.shape == (16, 24, 3) and im.dtype == np.uint8 for im in together)
    for c, seed, im in zip(caps, [5, 6, 7], together):
        ed.gen.manual_seed(seed)
        (alone,) = ed.text_to_image([c], (16, 24))
        assert np.abs(alone.astype(int) - im.astype(int)).max() <= 1
    if mask_type == "block_causal":
        assert ed.kv_cache_reason() is None
        ed.use_kv_cache = False
        repacked = ed.text_to_image(caps, (16, 24), seeds=[5, 6, 7])
        assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(repacked, together))
    with pytest.raises(ValueError, match="must be divisible by 8"):
        ed.text_to_image(caps[:1], (12, 16))
    with pytest.raises(ValueError, match="non-empty strings"):
        ed.text_to_image(["  "], (16, 16))


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_text_to_video_clips_in_one_batch_and_frames_that_see_each_other(megatron_cpu, mask_type):
    """``Editor.text_to_video``: clips of different lengths packed in one batch give what each gives alone
    with the same seed (under block_causal the KV-cache path equals re-packing); and a clip's frames are
    generated together: changing only frame 1's starting noise changes frame 0 (under block_causal too,
    where separate noisy blocks would never see each other)."""
    from dataclasses import replace

    from vincie_mcore.data.packing import EncodedSession, pack
    from vincie_mcore.data.recipe import t2v_sample
    from vincie_mcore.diffusion.flow import euler_sample

    ed = _editor(mask_type)
    caps = ["a small red square at the top left", "an empty scene"]
    texts = [["make it blue", "move it right"], ["add a green circle"]]
    together = ed.text_to_video(caps, texts, (16, 24), seeds=[5, 6])
    assert [len(c) for c in together] == [3, 2]
    assert all(im.shape == (16, 24, 3) and im.dtype == np.uint8 for c in together for im in c)
    for c, tx, seed, clip in zip(caps, texts, [5, 6], together):
        ed.gen.manual_seed(seed)
        (alone,) = ed.text_to_video([c], [tx], (16, 24))
        assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(alone, clip))
    if mask_type == "block_causal":
        assert ed.kv_cache_reason() is None
        ed.use_kv_cache = False
        repacked = ed.text_to_video(caps, texts, (16, 24), seeds=[5, 6])
        assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for x, y in zip(repacked, together)
                   for a, b in zip(x, y))
    sess = EncodedSession(frames=torch.zeros(3, 3, 16, 24), texts=texts[0], cameras=[None, None])
    batch = pack([(t2v_sample(caps[0], texts[0]), sess)], ed.text.encode, ed.pack_cfg, mask_type)
    f0, f1 = batch.image_blocks[0], batch.image_blocks[1]
    noise = torch.randn(batch.img_x0.shape, generator=torch.Generator().manual_seed(0))
    other = noise.clone()
    other[f1["start"]:f1["start"] + f1["length"]] = torch.randn(f1["length"], noise.shape[1])
    cfg = replace(ed.flow_cfg)
    a = euler_sample(ed.model, batch, cfg, steps=2, guidance=3.0, noise=noise)
    b = euler_sample(ed.model, batch, cfg, steps=2, guidance=3.0, noise=other)
    rows0 = slice(f0["start"], f0["start"] + f0["length"])
    assert (a[rows0] - b[rows0]).abs().max() > 1e-5          # 0 exactly where frame 0 could not see frame 1
    with pytest.raises(ValueError, match="2 lists for 1 captions"):
        ed.text_to_video(caps[:1], texts, (16, 24))
    with pytest.raises(ValueError, match="a list of non-empty strings"):
        ed.text_to_video(caps[:1], ["make it blue"], (16, 24))
