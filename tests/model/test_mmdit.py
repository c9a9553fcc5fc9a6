"""The MM-DiT end to end on CPU: shapes, no leakage through the mask, gradients, checkpoints, sizes."""
import pytest
import torch
import yaml

from model_batches import BLOCK_CAUSAL_SESSION, CONFIGS, FULL_SESSION, make_batch, tiny_cfg
from vincie_mcore.config import build
from vincie_mcore.model import MMDiTConfig, build_model


@pytest.fixture(scope="module")
def model(megatron_cpu):
    torch.manual_seed(0)
    return build_model(tiny_cfg(), device="cpu")


def _rows(blocks, session, kind, nth=0):
    """(stream, start, end) of the nth block of that kind in a session."""
    from vincie_kernels.reference import KIND_CLEAN, KIND_NOISY, KIND_TEXT
    k = {"text": KIND_TEXT, "clean": KIND_CLEAN, "noisy": KIND_NOISY}[kind]
    b = [b for b in blocks if b["session"] == session and b["kind"] == k][nth]
    return b["stream"], b["rows"][0], b["rows"][1]


def _perturb(batch, x_img, stream, start, end):
    batch2, x2 = batch, x_img.clone()
    if stream == "img":
        x2[start:end] += torch.randn(end - start, x2.shape[1])
    else:
        from dataclasses import replace
        emb = batch.txt_emb.clone()
        emb[start:end] += torch.randn(end - start, emb.shape[1])
        batch2 = replace(batch, txt_emb=emb)
    return batch2, x2


def test_output_shape_two_sessions(model):
    for mask_type, sess in (("block_causal", BLOCK_CAUSAL_SESSION), ("full", FULL_SESSION)):
        batch, _ = make_batch([sess, sess[:4]], mask_type, 64, 192)
        out = model(batch.img_x0, batch)
        assert out.shape == (batch.s_img, 192) and torch.isfinite(out).all()


@torch.no_grad()
def test_no_leakage_block_causal(model):
    batch, blocks = make_batch([BLOCK_CAUSAL_SESSION, BLOCK_CAUSAL_SESSION[:4]], "block_causal", 64, 192, seed=1)
    x = batch.img_x0
    _, t0, t1 = _rows(blocks, 0, "noisy", 0)               # session 0, first noisy image (turn 1)
    base = model(x, batch)[t0:t1]
    invisible = [_rows(blocks, 0, "clean", 1),              # its own clean twin (same order)
                 _rows(blocks, 0, "clean", 2),              # the later clean image (turn 2)
                 _rows(blocks, 0, "noisy", 1),              # the later noisy image
                 _rows(blocks, 0, "text", 1)]               # the later text turn
    invisible += [("img", b["rows"][0], b["rows"][1]) for b in blocks if b["session"] == 1 and b["stream"] == "img"]
    invisible += [("txt", b["rows"][0], b["rows"][1]) for b in blocks if b["session"] == 1 and b["stream"] == "txt"]
    for where in invisible:
        b2, x2 = _perturb(batch, x, *where)
        torch.testing.assert_close(model(x2, b2)[t0:t1], base, rtol=0, atol=1e-6, msg=f"leak from {where}")
    for where in (_rows(blocks, 0, "clean", 0), _rows(blocks, 0, "text", 0)):
        b2, x2 = _perturb(batch, x, *where)
        assert (model(x2, b2)[t0:t1] - base).abs().max() > 1e-4, f"{where} should be visible"


@torch.no_grad()
def test_no_leakage_full_across_sessions(model):
    batch, blocks = make_batch([FULL_SESSION, FULL_SESSION, FULL_SESSION[:2] + [("noisy", 2, 2, 1)]], "full",
                               64, 192, seed=2)
    x = batch.img_x0
    _, t0, t1 = _rows(blocks, 0, "noisy")
    base = model(x, batch)[t0:t1]
    for s in (1, 2):
        b2, x2 = batch, x
        for b in blocks:
            if b["session"] == s:
                b2, x2 = _perturb(b2, x2, b["stream"], *b["rows"])
        torch.testing.assert_close(model(x2, b2)[t0:t1], base, rtol=0, atol=1e-6)
    b2, x2 = _perturb(batch, x, *_rows(blocks, 0, "text"))
    assert (model(x2, b2)[t0:t1] - base).abs().max() > 1e-4


def test_timestep_conditions_only_its_block(model):
    """Changing one noisy block's t changes that block; a block that cannot see it is untouched."""
    batch, blocks = make_batch([BLOCK_CAUSAL_SESSION], "block_causal", 64, 192, seed=3)
    from dataclasses import replace
    nb_txt = sum(b["stream"] == "txt" for b in blocks)
    noisy = [i for i, b in enumerate(blocks) if b["kind"] == 2]
    with torch.no_grad():
        base = model(batch.img_x0, batch)
        t = batch.block_t.clone()
        t[noisy[1]] = 0.93 if t[noisy[1]] < 0.5 else 0.07
        out = model(batch.img_x0, replace(batch, block_t=t))
    first, second = blocks[noisy[0]]["rows"], blocks[noisy[1]]["rows"]
    torch.testing.assert_close(out[first[0]:first[1]], base[first[0]:first[1]], rtol=0, atol=1e-6)
    assert (out[second[0]:second[1]] - base[second[0]:second[1]]).abs().max() > 1e-4
    assert nb_txt == 2


def test_gradients_reach_every_parameter(model):
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION, FULL_SESSION], "block_causal", 64, 192, seed=4)
    model.zero_grad(set_to_none=True)
    model(batch.img_x0, batch).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    model.zero_grad(set_to_none=True)


def test_zero_init_starts_at_identity(megatron_cpu):
    m = build_model(tiny_cfg(adaln_zero_init=True), device="cpu")
    batch, _ = make_batch([FULL_SESSION], "full", 64, 192)
    assert m(batch.img_x0, batch).abs().max() == 0


def test_flops_count_allowed_pairs(model):
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION, FULL_SESSION], "block_causal", 64, 192)
    cfg = model.cfg
    S, pairs = batch.spec.seq_len, int(batch.spec.dense().sum())
    D, A, F = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.ffn_hidden_size
    expect = (2 * S * cfg.num_layers * (4 * D * A + 3 * D * F) + 4 * pairs * A * cfg.num_layers
              + 2 * (batch.s_txt * cfg.text_dim * D + 2 * batch.s_img * cfg.patch_dim * D))
    assert model.flops_per_step(batch, training=False) == pytest.approx(expect)
    assert model.flops_per_step(batch) == pytest.approx(3 * expect)


def test_dist_checkpoint_roundtrip(model, tmp_path):
    from megatron.core import dist_checkpointing
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION], "block_causal", 64, 192)
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp_path))
    torch.manual_seed(123)
    other = build_model(tiny_cfg(), device="cpu")
    with torch.no_grad():
        assert not torch.allclose(other(batch.img_x0, batch), model(batch.img_x0, batch))
    loaded = dist_checkpointing.load(other.sharded_state_dict(), str(tmp_path))
    other.load_state_dict(loaded)
    with torch.no_grad():
        torch.testing.assert_close(other(batch.img_x0, batch), model(batch.img_x0, batch), rtol=0, atol=0)


def test_bad_batch_is_named(model):
    batch, _ = make_batch([FULL_SESSION], "full", 64, 192)
    with pytest.raises(ValueError, match="x_img"):
        model(batch.img_x0[:, :100], batch)
    with pytest.raises(ValueError, match="spec"):
        model(batch.img_x0[:-1], batch)


@pytest.mark.parametrize("over,key", [
    (dict(hidden_size=130), "hidden_size"),
    (dict(mm_layers=5), "mm_layers"),
    (dict(rope_axes_dim=[8, 8, 12]), "rope_axes_dim"),
    (dict(attention_backend="flash"), "attention_backend"),
    (dict(adaln="zero"), "adaln"),
    (dict(head_dim=31), "head_dim"),
    (dict(num_layers=0), "num_layers"),
    (dict(softmax_scale=0), "softmax_scale"),
    (dict(attention_tilings="fwd=128x64"), "attention_tilings"),
])
def test_config_errors_name_the_key(over, key):
    with pytest.raises(ValueError, match=rf"^model\.{key}:"):
        tiny_cfg(**over)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"^model\.hiden_size: unknown key"):
        build(MMDiTConfig, {"hiden_size": 64}, "model")


# With the release's FFN rule (6912, 9728) and a 64-row turn table, our blocks (MLP biases, one AdaLN
# table) count 3.39B and 7.3B; the names are the release's nominal sizes (docs/design.md, "Sizes").
@pytest.mark.parametrize("name,count", [("3b", 3.39e9), ("7b", 7.3e9)])
def test_reference_sizes(megatron_cpu, name, count):
    m = build_model(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()), meta=True)
    n = m.num_parameters()
    assert abs(n / count - 1) < 0.02, n
    assert sum(isinstance(layer, type(m.layers[0])) for layer in m.layers) == m.cfg.mm_layers


def test_recompute_matches(model):
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION], "block_causal", 64, 192, seed=5)
    grads = []
    for recompute in (False, True):
        model.recompute = recompute
        model.zero_grad(set_to_none=True)
        out = model(batch.img_x0, batch)
        out.pow(2).mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    model.recompute = False
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_interleaved_rope_text_positions(model):
    """Text may carry 3D positions (the "interleaved" RoPE of paper Table 10): it runs and matters."""
    from dataclasses import replace
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION], "block_causal", 64, 192, seed=6)
    pos3 = torch.stack([batch.txt_pos, torch.zeros_like(batch.txt_pos), batch.txt_pos], -1)
    with torch.no_grad():
        a = model(batch.img_x0, batch)
        b = model(batch.img_x0, replace(batch, txt_pos=pos3))
    assert a.shape == b.shape and (a - b).abs().max() > 1e-5


def test_backend_choice_and_transformer_engine_gate(megatron_cpu):
    from vincie_mcore.model.attention import TorchMaskedAttention, TritonMaskedAttention
    from vincie_mcore.model.specs import core_attention_class
    assert core_attention_class("auto", "cpu") is TorchMaskedAttention
    assert core_attention_class("auto", "cuda") is TritonMaskedAttention
    assert core_attention_class("torch", "cuda") is TorchMaskedAttention
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="Transformer Engine"):
            build_model(tiny_cfg(transformer_impl="transformer_engine"), device="cpu")
        return
    if not torch.cuda.is_available():
        pytest.skip("Transformer Engine needs CUDA")
    m = build_model(tiny_cfg(transformer_impl="transformer_engine"), device="cuda")
    batch = make_batch([BLOCK_CAUSAL_SESSION], "block_causal", 64, 192)[0].to("cuda")
    assert torch.isfinite(m(batch.img_x0, batch)).all()


def test_image_abs_pos_grid_gives_tokens_their_place(megatron_cpu):
    """The optional learned (h, w) table: checkpointed, trained, and a grid too small is named."""
    torch.manual_seed(0)
    m = build_model(tiny_cfg(image_abs_pos_grid=8, adaln_zero_init=False), device="cpu")
    batch, _ = make_batch([FULL_SESSION], "full", 64, 192)
    out = m(batch.img_x0, batch)
    assert out.shape == (batch.s_img, 192)
    # the table is a checkpointed, trained parameter
    assert any(k.startswith("img_pos_embedder") for k in m.sharded_state_dict())
    out.sum().backward()
    assert m.img_pos_embedder.weight.grad.abs().sum() > 0
    small = build_model(tiny_cfg(image_abs_pos_grid=1), device="cpu")
    with pytest.raises(ValueError, match="image_abs_pos_grid"):
        small(batch.img_x0, batch)
    with pytest.raises(ValueError, match=r"^model\.image_abs_pos_grid:"):
        tiny_cfg(image_abs_pos_grid=-1)


def test_text_adaln_conditions_each_block_on_its_own_instruction(megatron_cpu):
    """text_adaln: a block's AdaLN gets the mean embedding of exactly its instruction's rows; a later
    instruction stays invisible, text dropout removes the conditioning, and the projection trains."""
    from dataclasses import replace
    from vincie_mcore.diffusion.flow import drop_text
    torch.manual_seed(0)
    m = build_model(tiny_cfg(text_adaln=True), device="cpu")
    batch, blocks = make_batch([BLOCK_CAUSAL_SESSION, FULL_SESSION], "block_causal", 64, 192, seed=5)
    mean = m.block_text_mean(batch)
    for i, b in enumerate(blocks):
        if b["stream"] == "img" and b["text"] >= 0:
            r0, r1 = blocks[b["text"]]["rows"]
            torch.testing.assert_close(mean[i], batch.txt_emb[r0 + 1:r1].mean(0))    # row r0 is <TURN>
        else:
            assert mean[i].abs().max() == 0
    dropped = m.block_text_mean(drop_text(batch, torch.tensor([True, False])))
    for i, b in enumerate(blocks):
        assert (dropped[i].abs().max() == 0) if b["session"] == 0 else torch.equal(dropped[i], mean[i])
    # the later instruction (session 0, text 1) cannot reach the first noisy block
    _, t0, t1 = _rows(blocks, 0, "noisy", 0)
    with torch.no_grad():
        base = m(batch.img_x0, batch)[t0:t1]
        b2, x2 = _perturb(batch, batch.img_x0, *_rows(blocks, 0, "text", 1))
        torch.testing.assert_close(m(x2, b2)[t0:t1], base, rtol=0, atol=1e-6)
    m(batch.img_x0, batch).pow(2).mean().backward()
    assert m.text_cond.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="block_text"):
        m(batch.img_x0, replace(batch, block_text=None))


@torch.no_grad()
def test_softmax_scale_reaches_the_core(megatron_cpu):
    """null is 1/sqrt(head_dim); another value changes the output (sharper attention)."""
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION], "block_causal", 64, 192, seed=6)
    outs = {}
    for scale in (None, 32 ** -0.5, 1.0):
        torch.manual_seed(0)
        outs[scale] = build_model(tiny_cfg(softmax_scale=scale), device="cpu")(batch.img_x0, batch)
    torch.testing.assert_close(outs[32 ** -0.5], outs[None], rtol=0, atol=0)
    assert (outs[1.0] - outs[None]).abs().max() > 1e-4


def test_attention_tilings_are_checked_on_load_and_reach_every_triton_core(megatron_cpu, tmp_path):
    """model.attention_tilings: tuned=<json> is read once and kept as its explicit tilings (a saved config
    stands without the file); every Triton core gets them; they apply to bf16/fp16 on CUDA only."""
    import json
    from vincie_kernels.masked_attention import FA2_CONFIGS_BF16_D128
    tune = tmp_path / "tune.json"
    tune.write_text(json.dumps({"overall_best": {"config": {"fwd": [128, 64, 8, 3], "dkdv": [32, 128, 8, 2],
                                                            "dq": [128, 64, 8, 2]}}}))
    cfg = tiny_cfg(attention_backend="triton", attention_tilings=f"tuned={tune}")
    assert cfg.attention_tilings == "fwd=128x64x8x3,dkdv=32x128x8x2,dq=128x64x8x2"
    tune.unlink()
    assert MMDiTConfig(**cfg.to_dict()).attention_tilings == cfg.attention_tilings
    cores = [layer.attention.core_attention for layer in build_model(cfg, device="cpu").layers]
    assert len(cores) == cfg.num_layers and all(c.tilings == cfg.attention_tilings for c in cores)
    assert cores[0]._configs(torch.zeros(4, 2, 16)) is None                  # the interpreter keeps its tiles
    if torch.cuda.is_available():
        assert cores[0]._configs(torch.zeros(4, 2, 16, device="cuda", dtype=torch.bfloat16)) == FA2_CONFIGS_BF16_D128
        assert cores[0]._configs(torch.zeros(4, 2, 16, device="cuda")) is None   # fp32: twice the shared memory
    torch_core = build_model(tiny_cfg(attention_backend="torch", attention_tilings="fa2"), device="cpu")
    assert not hasattr(torch_core.layers[0].attention.core_attention, "tilings")
