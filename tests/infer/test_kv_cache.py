"""The editor's KV cache (docs/kv_cache.md) against the re-packing path it replaces.

Tiny random MM-DiT in fp32 on CPU: every sampling step's model output (both CFG branches) and
every turn's sample must equal the no-cache path's within 1e-5 over a 3-turn session.
"""
import numpy as np
import pytest
import torch

from vincie_mcore.config import build
from vincie_mcore.data.packing import PackConfig
from vincie_mcore.diffusion.flow import FlowConfig
from vincie_mcore.encoders.image import PixelEncoder
from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig
from vincie_mcore.infer.editor import Editor, SamplerConfig
from vincie_mcore.model import MMDiTConfig, build_model

PROMPTS = ["add a red square at the top left", "make the red square blue", "remove the circle"]


def _cfg(**over):
    d = dict(hidden_size=64, num_layers=3, mm_layers=1, num_heads=2, ffn_hidden_size=128, text_dim=32,
             patch_dim=192, max_turns=8, rope_axes_dim=[8, 12, 12], adaln_zero_init=False, text_adaln=True,
             attention_backend="torch")
    d.update(over)
    return build(MMDiTConfig, d, "model")


@pytest.fixture(scope="module")
def parts(megatron_cpu):
    torch.manual_seed(0)
    model = build_model(_cfg(), device="cpu").eval()
    with torch.no_grad():                              # zero-init final layer would make every output 0
        torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    text = TextEncoder(TextEncoderConfig(d_model=32, num_layers=1, num_heads=2, pool=4))
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    return model, text, image


def _session(parts, mask_type, use_kv_cache, steps=3, rope_mode="separate"):
    """Run the 3 turns; -> (session, per-call noisy-row outputs of the model)."""
    model, text, image = parts
    outs = []
    hook = model.register_forward_hook(lambda m, args, out: outs.append(out[args[1].img_loss_mask].clone()))
    try:
        ed = Editor(model, text, PixelEncoder(), PackConfig(patch_size=8, rope_mode=rope_mode),
                    FlowConfig(prediction="x0"),
                    SamplerConfig(steps=steps, shift=2.0, guidance=3.0, seed=1), mask_type=mask_type,
                    use_kv_cache=use_kv_cache)
        sess = ed.start(image)
        for p in PROMPTS:
            sess.edit(p)
    finally:
        hook.remove()
    return sess, outs


@pytest.mark.parametrize("rope_mode", ["separate", "interleaved"])
def test_cache_matches_no_cache_block_causal(parts, rope_mode):
    """Either RoPE layout the block-causal mask takes: a cached context keeps its positions as turns are added."""
    ref, ref_outs = _session(parts, "block_causal", use_kv_cache=False, rope_mode=rope_mode)
    got, got_outs = _session(parts, "block_causal", use_kv_cache=True, rope_mode=rope_mode)
    assert [i["kv_cache"] for i in got.info] == [True] * 3 and not any(i["kv_cache"] for i in ref.info)
    assert len(got_outs) == len(ref_outs) == 3 * 3 * 2          # turns x steps x (cond, uncond)
    for k, (a, b) in enumerate(zip(got_outs, ref_outs)):
        assert a.shape == b.shape and a.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"model call {k}")
    for a, b in zip(got.latents, ref.latents):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(got.images, ref.images):
        assert (a.int() - b.int()).abs().max() <= 1            # uint8 rounding of equal-within-1e-5 samples
    # the cache grows by each turn's new context: I0+T0, then I1+T1, then I2+T2 (both branches)
    sizes = [i["cache_bytes"] for i in got.info]
    assert 0 < sizes[0] < sizes[1] < sizes[2]
    kv = got.kv["cond"]
    assert kv.img_rows.numel() == 3 * 2 * 3 and len(kv) > kv.img_rows.numel()   # 3 frames of 2x3 tokens + texts


def test_a_turn_cut_short_leaves_the_cache_as_it_was(parts):
    """An edit interrupted mid-sampling (its prompt's context already cached) leaves the session's caches at
    what they held before it (``KVCache.truncate``), so the session goes on: the next turn, with another
    prompt, equals the same turn of a session never cut (same seed), within 1e-5, computing only its own
    context. Before, its cached prompt made every later turn refuse the cache."""
    model, text, image = parts

    def editor():
        return Editor(model, text, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                      SamplerConfig(steps=2, guidance=3.0, seed=1), mask_type="block_causal")
    cut, whole = editor().start(image), editor().start(image)
    for s in (cut, whole):
        s.edit(PROMPTS[0])
    sizes = {b: c.sizes() for b, c in cut.kv.items()}
    k0 = cut.kv["cond"].k[0].clone()

    def stop(done, steps):
        raise KeyboardInterrupt
    cut.editor.step_callback = stop
    with pytest.raises(KeyboardInterrupt):
        cut.edit("something else")
    assert {b: c.sizes() for b, c in cut.kv.items()} == sizes and torch.equal(cut.kv["cond"].k[0], k0)
    assert len(cut.texts) == 1 and len(cut.images) == 2
    cut.editor.step_callback = None
    for s in (cut, whole):
        s.editor.gen.manual_seed(5)
        s.edit(PROMPTS[1])
    torch.testing.assert_close(cut.latents[-1], whole.latents[-1], rtol=0, atol=1e-5)
    assert {b: c.sizes() for b, c in cut.kv.items()} == {b: c.sizes() for b, c in whole.kv.items()}


@pytest.mark.parametrize("rope_mode", ["separate", "text_then_image"])
def test_full_mask_takes_no_cache_path(parts, rope_mode):
    got, got_outs = _session(parts, "full", use_kv_cache=True, steps=2, rope_mode=rope_mode)
    ref, ref_outs = _session(parts, "full", use_kv_cache=False, steps=2, rope_mode=rope_mode)
    assert not any(i["kv_cache"] for i in got.info) and "'full' mask" in got.info[0]["reason"]
    assert got.kv is None and all(i["cache_bytes"] == 0 for i in got.info)
    for a, b in zip(got_outs, ref_outs):
        assert torch.equal(a, b)
    if rope_mode == "text_then_image":          # the positions matter: the same session edits otherwise
        other, _ = _session(parts, "full", use_kv_cache=False, steps=2)
        assert not torch.equal(other.latents[-1], got.latents[-1])
    with pytest.raises(ValueError, match='rope_mode "text_then_image" needs mask_type "full"'):
        _session(parts, "block_causal", use_kv_cache=True, steps=2, rope_mode="text_then_image")


@torch.no_grad()
def test_refusals(parts):
    model, text, image = parts
    ed = Editor(model, text, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                SamplerConfig(steps=1, guidance=3.0), mask_type="block_causal")
    sess = ed.start(image)
    sess.edit(PROMPTS[0])
    # a cache built for the conditional branch refuses the text-dropped batch, and vice versa
    from dataclasses import replace

    from vincie_mcore.data.packing import pack
    batch = pack([ed._item(ed.image.encode(torch.stack(sess.images)), sess.texts, PROMPTS[1])], text.encode, ed.pack_cfg,
                 "block_causal")
    model.prefill(batch, sess.kv["cond"])
    dropped = replace(batch, txt_emb=torch.zeros_like(batch.txt_emb))
    with pytest.raises(ValueError, match="no longer matches the batch"):
        model(batch.img_x0, dropped, kv_cache=sess.kv["cond"])
    # an empty cache: the step has nothing to attend to
    with pytest.raises(ValueError, match="not cached; call prefill"):
        model(batch.img_x0, batch, kv_cache=model.new_kv_cache())
    # the full mask is refused by the model itself, in one line
    full = replace(batch, spec=replace(batch.spec, mask_type="full"))
    with pytest.raises(ValueError, match="block_causal mask") as e:
        model.prefill(full, model.new_kv_cache())
    assert "\n" not in str(e.value)


def test_other_backend_falls_back(megatron_cpu):
    model = build_model(_cfg(attention_backend="triton"), device="cpu")     # built only, never run here
    reason = model.kv_cache_support()
    assert reason.startswith("kv_cache: needs the torch attention core") and "\n" not in reason
    ed = Editor(model, None, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(), mask_type="block_causal")
    assert ed.kv_cache_reason() == reason


def test_benchmark_reports_both_paths_beside_its_check(megatron_cpu):
    """``vincie-bench-editor`` at a tiny size: per-turn seconds both ways, the cache seen to run, the two
    paths' samples within 1e-5, the attention cores and dtype named in the JSON."""
    from vincie_mcore.perf.bench_editor import bench_editor

    r = bench_editor(hidden=32, layers=2, heads=2, image_tokens=2, steps=1, turns=2)
    assert [t["turn"] for t in r["turns"]] == [1, 2] and all(t["seconds_cache"] > 0 for t in r["turns"])
    assert r["max_abs_diff_samples"] < 1e-5 and r["model_calls_compared"] == 2 * 2
    assert (r["config"]["cache_backend"], r["config"]["no_cache_backend"], r["config"]["dtype"]) == \
        ("torch", "torch", "float32") and r["device"] == "cpu"

