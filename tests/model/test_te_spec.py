"""Transformer Engine spec and FP8: config validation and gates on any machine; TE/FP8 numerics on a GPU.

Transformer Engine cannot be imported without CUDA, so the TE tests are gated on
``importlib.util.find_spec("transformer_engine")`` plus a CUDA device. This file needs no
yaml/hydra (it also runs on the bare GPU box of tools/gpu_check.sh).
"""
import importlib.util
from itertools import repeat

import pytest
import torch

from model_batches import make_batch
from vincie_mcore.config import build
from vincie_mcore.model import MMDiTConfig, build_model
from vincie_mcore.model.fp8 import FP8Config, check_fp8_batch, check_fp8_model, fp8_autocast
from vincie_mcore.train.trainer import TrainConfig

HAS_TE = importlib.util.find_spec("transformer_engine") is not None
CUDA = torch.cuda.is_available()
needs_te = pytest.mark.skipif(not (HAS_TE and CUDA), reason="needs Transformer Engine and a CUDA device "
                              "(TE cannot be imported on a CPU-only machine)")

# FP8-friendly tiny widths: every TE GEMM dimension a multiple of 16.
TINY = dict(hidden_size=128, num_layers=4, mm_layers=2, num_heads=4, ffn_hidden_size=384, text_dim=64,
            patch_dim=64, max_turns=8, rope_axes_dim=[8, 12, 12], attention_backend="torch",
            adaln_zero_init=False)
# streams of 32 text and 48 image tokens (multiples of 16)
SESSION16 = [("clean", 4, 4, 0), ("text", 16, 0), ("clean", 4, 4, 1), ("noisy", 4, 4, 1), ("text", 16, 1)]


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------
# Config (any machine)
# ----------------------------------------------------------------------------

def test_fp8_config_defaults_roundtrip():
    c = FP8Config()
    assert (c.enabled, c.recipe, c.fp8_format) == (False, "current", "hybrid")
    assert build(FP8Config, c.to_dict(), "train.fp8") == c
    assert build(FP8Config, None, "train.fp8") == c
    d = build(FP8Config, {"enabled": True, "recipe": "delayed", "margin": 2, "amax_history_len": 16,
                             "amax_compute_algo": "most_recent", "fp8_format": "e4m3"}, "train.fp8")
    assert (d.recipe, d.margin, d.amax_history_len, d.amax_compute_algo) == ("delayed", 2, 16, "most_recent")


@pytest.mark.parametrize("kw,key", [
    ({"enabled": 1}, "enabled"),
    ({"recipe": "mxfp8"}, "recipe"),
    ({"fp8_format": "e5m2"}, "fp8_format"),
    ({"recipe": "delayed", "margin": -1}, "margin"),
    ({"recipe": "delayed", "margin": 1.5}, "margin"),
    ({"recipe": "delayed", "amax_history_len": 0}, "amax_history_len"),
    ({"recipe": "delayed", "amax_compute_algo": "mean"}, "amax_compute_algo"),
    ({"recipe": "current", "margin": 2}, "margin"),               # delayed-only knob on current scaling
    ({"recipe": "current", "amax_history_len": 16}, "amax_history_len"),
])
def test_fp8_config_rejects_bad_values(kw, key):
    with pytest.raises(ValueError, match=rf"^FP8Config\.{key}:") as e:
        FP8Config(**kw)
    _one_line(e)


def test_fp8_config_from_hydra_node():
    omegaconf = pytest.importorskip("omegaconf")
    node = omegaconf.OmegaConf.create({"recipe": "delayed", "margin": 2})
    assert build(FP8Config, node, "train.fp8") == FP8Config(recipe="delayed", margin=2)


def test_fp8_config_unknown_key():
    with pytest.raises(ValueError, match=r"^train\.fp8\.recipie: unknown key") as e:
        build(FP8Config, {"recipie": "delayed"}, "train.fp8")
    _one_line(e)


def test_train_config_holds_fp8():
    t = TrainConfig(steps=2, fp8={"recipe": "delayed", "margin": 1})
    assert isinstance(t.fp8, FP8Config) and t.fp8.margin == 1 and not t.fp8.enabled
    assert isinstance(TrainConfig(steps=2).fp8, FP8Config)
    with pytest.raises(ValueError, match=r"^train\.fp8\.recipe:"):
        TrainConfig(steps=2, fp8={"recipe": "bogus"})
    if not CUDA:   # FP8 trains around bf16 weights: no FP8 on a CPU run
        with pytest.raises(ValueError, match=r"^TrainConfig\.dtype:.*FP8") as e:
            TrainConfig(steps=2, fp8={"enabled": True})
        _one_line(e)


def test_config_build_names_the_fp8_key():
    from vincie_mcore.config import ConfigError, build
    with pytest.raises(ConfigError, match=r"^train\.fp8\.amax_history_len:") as e:
        build(TrainConfig, {"steps": 3, "fp8": {"recipe": "delayed", "amax_history_len": -3}}, "train")
    _one_line(e)
    assert build(TrainConfig, {"steps": 3, "fp8": {"recipe": "delayed"}}, "train").fp8.recipe == "delayed"


def test_fp8_autocast_disabled_is_a_no_op():
    for cfg in (None, FP8Config()):
        with fp8_autocast(cfg):
            y = torch.ones(2) * 2
        assert y.sum() == 4


@pytest.mark.skipif(HAS_TE, reason="checks the error when Transformer Engine is absent")
def test_fp8_autocast_without_te_is_one_line_error():
    with pytest.raises(RuntimeError, match=r"^FP8Config\.enabled: FP8 needs Transformer Engine") as e:
        fp8_autocast(FP8Config(enabled=True))
    _one_line(e)


# ----------------------------------------------------------------------------
# Gates (any machine)
# ----------------------------------------------------------------------------

@pytest.mark.skipif(HAS_TE, reason="checks the error when Transformer Engine is absent")
def test_te_impl_without_te_is_one_line_error(megatron_cpu):
    with pytest.raises(RuntimeError, match=r"transformer_impl='transformer_engine' needs Transformer Engine") as e:
        build_model(MMDiTConfig(**TINY, transformer_impl="transformer_engine"), device="cpu")
    assert "transformer_impl='local'" in _one_line(e)


def test_fp8_refuses_a_model_without_te_modules(megatron_cpu):
    model = build_model(MMDiTConfig(**TINY), device="cpu")
    check_fp8_model(None, model)
    check_fp8_model(FP8Config(), model)
    with pytest.raises(ValueError, match=r"^FP8Config\.enabled:.*transformer_impl=transformer_engine") as e:
        check_fp8_model(FP8Config(enabled=True), model)
    _one_line(e)


def test_fp8_batch_shape_check():
    on = FP8Config(enabled=True)
    good, _ = make_batch([SESSION16], "block_causal", 64, 64)
    check_fp8_batch(on, good)                                   # 32 + 48 tokens
    check_fp8_batch(None, good)
    with pytest.raises(ValueError, match=r"^FP8Config\.enabled: the image stream has 48 tokens.*pad_multiple") as e:
        check_fp8_batch(on, good, tp_size=2, sequence_parallel=True)   # 24 rows per rank
    _one_line(e)
    check_fp8_batch(on, good, tp_size=2, sequence_parallel=False)      # no sequence split: fine
    odd, _ = make_batch([SESSION16 + [("text", 5, 2)]], "block_causal", 64, 64)
    with pytest.raises(ValueError, match=r"the text stream has 37 tokens, not a multiple of 16"):
        check_fp8_batch(on, odd)
    check_fp8_batch(FP8Config(), odd)                           # FP8 off: nothing to check


# ----------------------------------------------------------------------------
# Transformer Engine on a GPU
# ----------------------------------------------------------------------------

def _fwd_bwd(model, batch, fp8=None):
    for p in model.parameters():
        p.grad = None
    with fp8_autocast(fp8):
        out = model(batch.img_x0, batch)
    out.float().pow(2).mean().backward()
    return out.detach().float(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
                                  if p.grad is not None}


@needs_te
def test_te_spec_matches_local_spec(megatron_cpu):
    """TE linears + TE RMSNorm give the local spec's outputs and gradients with the same weights (fp32)."""
    from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TERowParallelLinear
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    local = build_model(MMDiTConfig(**TINY), device="cuda")
    te = build_model(MMDiTConfig(**TINY, transformer_impl="transformer_engine"), device="cuda")
    attn = te.layers[0].attention.txt
    assert isinstance(attn.linear_qkv, TEColumnParallelLinear) and isinstance(attn.linear_proj, TERowParallelLinear)
    assert type(attn.q_layernorm).__module__.startswith("transformer_engine")
    missing, unexpected = te.load_state_dict(local.state_dict(), strict=False)
    assert all(k.endswith("_extra_state") for k in list(missing) + list(unexpected)), (missing, unexpected)
    batch = make_batch([SESSION16], "block_causal", 64, 64)[0].to("cuda")
    o_ref, g_ref = _fwd_bwd(local, batch)
    o_te, g_te = _fwd_bwd(te, batch)
    assert o_ref.abs().max() > 0
    # a wiring error (layout, fused bias, norm axis) is an O(1) error; 2e-3 leaves room for TF32 GEMMs
    assert float((o_te - o_ref).norm() / o_ref.norm()) < 2e-3
    assert set(g_te) == set(g_ref)
    for n in g_ref:
        assert float((g_te[n] - g_ref[n]).norm() / g_ref[n].norm().clamp_min(1e-12)) < 2e-3, n


@needs_te
@pytest.mark.parametrize("recipe", ["delayed", "current"])
def test_fp8_recipes_close_to_bf16(megatron_cpu, recipe):
    from vincie_mcore.model.fp8 import fp8_supported
    ok, why = fp8_supported()
    if not ok:
        pytest.skip(f"FP8 unsupported on this GPU: {why}")
    torch.manual_seed(0)
    model = build_model(MMDiTConfig(**TINY, transformer_impl="transformer_engine"), device="cuda",
                        params_dtype=torch.bfloat16)
    batch = make_batch([SESSION16, SESSION16], "block_causal", 64, 64)[0].to("cuda")
    o_bf16, _ = _fwd_bwd(model, batch)
    fp8 = FP8Config(enabled=True, recipe=recipe)
    for _ in range(3):                  # delayed scaling needs a few steps of amax history
        o_fp8, g_fp8 = _fwd_bwd(model, batch, fp8)
    rel = float((o_fp8 - o_bf16).norm() / o_bf16.norm())
    assert 0 < rel < 0.15, rel          # FP8 ran (differs from bf16) and stayed close
    assert g_fp8 and all(torch.isfinite(g).all() for g in g_fp8.values())


@needs_te
def test_trainer_steps_in_fp8(megatron_cpu):
    from vincie_mcore.model.fp8 import fp8_supported
    from vincie_mcore.train.trainer import Trainer
    pytest.importorskip("tqdm", reason="the trainer's progress bar needs tqdm")
    ok, why = fp8_supported()
    if not ok:
        pytest.skip(f"FP8 unsupported on this GPU: {why}")
    torch.manual_seed(0)
    model = build_model(MMDiTConfig(**TINY, transformer_impl="transformer_engine"), device="cuda",
                        params_dtype=torch.bfloat16)
    batch = make_batch([SESSION16, SESSION16], "block_causal", 64, 64)[0]

    def loss_fn(m, b, gen):
        out = m(b.img_x0, b)
        return (out.float() - b.img_x0.float()).pow(2).mean(), {}

    cfg = TrainConfig(steps=4, lr=1e-3, dtype="bf16", progress=False, log_every=100,
                      fp8={"enabled": True, "recipe": "current"})
    losses = Trainer(cfg, model, loss_fn, repeat(batch)).train()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
