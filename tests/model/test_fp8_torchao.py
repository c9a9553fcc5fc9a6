"""``transformer_impl: torch`` (plain single-device linears) and FP8 through torchao, on CPU.

torchao's Float8Linear runs on CPU (torch._scaled_mm has a CPU kernel), so the FP8 path is checked
here for real: converted linears, numerics near fp32, gradients, training that learns, an unchanged
state dict. The reference for the torch linears is Megatron's local spec with the same weights.
"""
import importlib.util

import pytest
import torch

from model_batches import make_batch
from vincie_mcore.model import MMDiTConfig, build_model
from vincie_mcore.model.fp8 import FP8Config, check_fp8_batch, prepare_fp8_model
from vincie_mcore.model.torch_linear import TorchLinear

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")

# every GEMM dim a multiple of 16 (FP8); qkv 384, fc1 768, patch 64
TINY = dict(hidden_size=128, num_layers=2, mm_layers=1, num_heads=4, ffn_hidden_size=384, text_dim=64,
            patch_dim=64, max_turns=8, rope_axes_dim=[8, 12, 12], attention_backend="torch",
            adaln_zero_init=False)
# streams of 32 text and 48 image tokens (multiples of 16: the weight-gradient GEMM contracts over tokens)
SESSION16 = [("clean", 4, 4, 0), ("text", 16, 0), ("clean", 4, 4, 1), ("noisy", 4, 4, 1), ("text", 16, 1)]


def _pair(megatron_cpu):
    """(local model, torch-impl model holding the local model's weights)."""
    torch.manual_seed(0)
    local = build_model(MMDiTConfig(**TINY), device="cpu")
    plain = build_model(MMDiTConfig(**TINY, transformer_impl="torch"), device="cpu")
    plain.load_state_dict(local.state_dict(), strict=True)       # same names and shapes as Megatron's linears
    return local, plain


def _forward(model, batch):
    return model(batch.img_x0, batch)


def test_torch_linears_equal_megatrons_local_linears(megatron_cpu):
    local, plain = _pair(megatron_cpu)
    assert any(isinstance(m, TorchLinear) for m in plain.modules())
    assert not any(isinstance(m, TorchLinear) for m in local.modules())
    batch, _ = make_batch([SESSION16], "block_causal", 64, 64)
    a, b = _forward(local, batch), _forward(plain, batch)
    assert a.abs().max() > 0
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    a.pow(2).mean().backward()
    b.pow(2).mean().backward()
    ga, gb = dict(local.named_parameters()), dict(plain.named_parameters())
    for name in ga:
        torch.testing.assert_close(gb[name].grad, ga[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torch_linears_refuse_tensor_parallelism():
    from types import SimpleNamespace
    cfg = SimpleNamespace(tensor_model_parallel_size=2, sequence_parallel=False, params_dtype=torch.float32)
    with pytest.raises(ValueError, match=r"^model\.transformer_impl: 'torch' linears are single-device"):
        TorchLinear(8, 8, config=cfg, init_method=torch.nn.init.zeros_)


@needs_torchao
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_torchao_fp8_converts_every_linear_and_stays_near_fp32(megatron_cpu, recipe):
    local, plain = _pair(megatron_cpu)
    keys = set(plain.state_dict())
    n_params = sum(1 for _ in plain.parameters())
    n = prepare_fp8_model(FP8Config(enabled=True, backend="torchao", recipe=recipe), plain)
    linears = [m for m in plain.modules() if isinstance(m, TorchLinear)]
    assert n == len(linears) == 4 * 3      # qkv, proj, fc1, fc2 per weight set: txt + img (dual block), joint (shared)
    assert all(type(m._fp8).__name__ == "Float8Linear" for m in linears)
    assert set(plain.state_dict()) == keys and sum(1 for _ in plain.parameters()) == n_params   # nothing doubled

    batch, _ = make_batch([SESSION16], "block_causal", 64, 64)
    check_fp8_batch(FP8Config(enabled=True, backend="torchao"), batch)
    ref, out = _forward(local, batch), _forward(plain, batch)
    rel = float((out - ref).norm() / ref.norm())
    assert 0.0 < rel < 0.1, rel                       # FP8 really ran (not bit-equal), and stays close
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in plain.parameters() if p.requires_grad)


@needs_torchao
def test_torchao_fp8_learns_like_fp32(megatron_cpu):
    """The same 8 AdamW steps on one fixed objective (one batch, the same t and noise each step): the FP8
    model's loss falls as the fp32 model's does. (torch._scaled_mm's CPU kernel is slow: few steps.)"""
    from vincie_mcore.diffusion.flow import FlowConfig, training_loss
    batch, _ = make_batch([SESSION16], "block_causal", 64, 64)
    curves = {}
    for name in ("fp32", "fp8"):
        _, model = _pair(megatron_cpu)
        if name == "fp8":
            prepare_fp8_model(FP8Config(enabled=True, backend="torchao"), model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(8):
            opt.zero_grad()
            loss, _ = training_loss(model, batch, FlowConfig(text_drop=0.0), torch.Generator().manual_seed(0))
            loss.backward()
            opt.step()
            losses.append(float(loss))
        curves[name] = losses
    f32, f8 = curves["fp32"], curves["fp8"]
    assert f8[-1] < 0.7 * f8[0] and f32[-1] < 0.7 * f32[0], (f32, f8)
    assert abs(f8[-1] - f32[-1]) / f32[-1] < 0.15, (f32, f8)


@needs_torchao
def test_torchao_fp8_refusals(megatron_cpu):
    local, _ = _pair(megatron_cpu)
    with pytest.raises(ValueError, match=r"^FP8Config\.backend: 'torchao' converts the plain linears; "
                                         r"set model\.transformer_impl=torch$"):
        prepare_fp8_model(FP8Config(enabled=True, backend="torchao"), local)
    with pytest.raises(ValueError, match=r"^FP8Config\.recipe: must be one of \('tensorwise', 'rowwise'\)"):
        FP8Config(enabled=True, backend="torchao", recipe="delayed")
    with pytest.raises(ValueError, match=r"^FP8Config\.backend: must be one of"):
        FP8Config(backend="tensorrt")
    assert FP8Config(backend="torchao").recipe == "tensorwise" and FP8Config().recipe == "current"
