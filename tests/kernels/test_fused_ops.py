"""Fused Triton element-wise kernels (interpreter on CPU) vs the torch path, forward and every gradient."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from jit_script import run_as_script, script_main

from vincie_kernels.fused import gated_residual, norm_modulate, qk_norm_rope
from vincie_mcore.model.embeddings import apply_rope

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))      # model_batches, for the model tests
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.bfloat16: 5e-2}


def _blocks(runs):
    """Run lengths -> long block ids [S] (block i repeated runs[i] times: the packed layout)."""
    return torch.repeat_interleave(torch.arange(len(runs)), torch.tensor(runs)).to(DEVICE)


def _leaf(t, dtype):
    return t.to(DEVICE, dtype).requires_grad_()


def _close(name, got, want, dtype):
    # relative to the reference's scale: bf16 rounds every intermediate of the torch path
    err = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
    ref = max(want.float().abs().max().item(), 1.0) if want.numel() else 1.0
    assert err <= TOL[dtype] * ref, f"{name}: max error {err:.3g} > {TOL[dtype] * ref:.3g}"


def _grads(out, inputs, seed):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return torch.autograd.grad(out, inputs, g, allow_unused=True)


# a block with one token, a long run, S = 23 not a multiple of the 4- or 8-row tiles
RUNS = [5, 1, 9, 1, 7]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("block_s", [4, None])
def test_norm_modulate(dtype, rms, block_s):
    g = torch.Generator().manual_seed(1)
    blk = _blocks(RUNS)
    S, D, nb = blk.numel(), 40, len(RUNS)
    x = _leaf(torch.randn(S, D, generator=g) * 3 + 1, dtype)
    mods = _leaf(torch.randn(nb, 6, D, generator=g), dtype)
    eps = 1e-6
    # block_s=4: 4-row tiles and, in backward, 16-column chunks (D = 40: the last one partial); None: the
    # defaults (backward: one 32-row tile holding every block)
    out = norm_modulate(x, mods, blk, 3, 4, eps, rms=rms, block_s=block_s, block_dc=16 if block_s else None)
    dx, dm = _grads(out, (x, mods), 2)

    xr, mr = (t.detach().clone().requires_grad_() for t in (x, mods))
    m = mr.index_select(0, blk)
    n = F.rms_norm(xr, (D,), eps=eps) if rms else F.layer_norm(xr, (D,), eps=eps)
    ref = n * (1 + m[:, 4]) + m[:, 3]
    rdx, rdm = _grads(ref, (xr, mr), 2)
    assert out.dtype == dtype
    for name, a, b in (("out", out, ref), ("dx", dx, rdx), ("dmods", dm, rdm)):
        _close(name, a, b, dtype)
    assert dm[:, [0, 1, 2, 5]].abs().max() == 0      # only the shift and scale chunks get gradient


def test_norm_modulate_unsorted_blocks_and_eps():
    """Block ids in any order still reduce correctly; eps matters for a constant row."""
    g = torch.Generator().manual_seed(3)
    blk = torch.tensor([2, 0, 2, 1, 0, 0, 2], device=DEVICE)
    x = _leaf(torch.randn(7, 8, generator=g), torch.float32)
    with torch.no_grad():
        x[3] = 0.5                                     # zero variance: the output is shift, set by eps
    mods = _leaf(torch.randn(3, 2, 8, generator=g), torch.float32)
    out = norm_modulate(x, mods, blk, 0, 1, 1e-2, block_s=4)
    dx, dm = _grads(out, (x, mods), 4)
    xr, mr = (t.detach().clone().requires_grad_() for t in (x, mods))
    m = mr.index_select(0, blk)
    ref = F.layer_norm(xr, (8,), eps=1e-2) * (1 + m[:, 1]) + m[:, 0]
    rdx, rdm = _grads(ref, (xr, mr), 4)
    for name, a, b in (("out", out, ref), ("dx", dx, rdx), ("dmods", dm, rdm)):
        _close(name, a, b, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_residual(dtype):
    g = torch.Generator().manual_seed(5)
    blk = _blocks(RUNS)
    S, D = blk.numel(), 24
    x, y = (_leaf(torch.randn(S, D, generator=g), dtype) for _ in range(2))
    mods = _leaf(torch.randn(len(RUNS), 6, D, generator=g), dtype)
    out = gated_residual(x, y, mods, blk, 5, block_s=8, block_dc=16)             # D = 24: two column chunks
    grads = _grads(out, (x, y, mods), 6)
    xr, yr, mr = (t.detach().clone().requires_grad_() for t in (x, y, mods))
    ref = xr + mr.index_select(0, blk)[:, 5] * yr
    rgrads = _grads(ref, (xr, yr, mr), 6)
    _close("out", out, ref, dtype)
    for name, a, b in zip(("dx", "dy", "dmods"), grads, rgrads):
        _close(name, a, b, dtype)


@pytest.mark.parametrize("dtype,Dh,H", [(torch.float32, 32, 3), (torch.float32, 48, 2), (torch.bfloat16, 32, 2),
                                        (torch.float32, 256, 1)])
def test_qk_norm_rope(dtype, Dh, H):
    """Equals torch.nn.RMSNorm (what Megatron's WrappedTorchNorm builds for RMSNorm) then apply_rope, on a
    strided q slice of a fused qkv tensor (the layout AttentionProjections.qkv hands over)."""
    g = torch.Generator().manual_seed(7)
    S = 13
    qkv = (torch.randn(S, H, 3, Dh, generator=g) * 2).to(DEVICE, dtype).requires_grad_()
    q = qkv[:, :, 1]                                   # strides (3 H Dh, 3 Dh, 1)
    norm = torch.nn.RMSNorm(Dh, eps=1e-6).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(Dh, generator=g) + 0.5)
    ang = torch.randn(S, Dh // 2, generator=g).to(DEVICE) * 3
    cos, sin = torch.cos(ang), torch.sin(ang)
    w = norm.weight.detach().clone().requires_grad_()
    out = qk_norm_rope(q, w, cos, sin, norm.eps, block_r=4)
    dqkv, dw = _grads(out, (qkv, w), 8)

    qkv_r = qkv.detach().clone().requires_grad_()
    ref = apply_rope(norm(qkv_r[:, :, 1]), cos, sin)
    rdqkv, rdw = _grads(ref, (qkv_r, norm.weight), 8)
    assert out.dtype == dtype and out.is_contiguous()
    for name, a, b in (("out", out, ref), ("dq", dqkv, rdqkv), ("dweight", dw, rdw)):
        _close(name, a, b, dtype)


def test_empty_and_bad_inputs():
    x = torch.zeros(0, 16, device=DEVICE, requires_grad=True)
    mods = torch.randn(2, 6, 16, device=DEVICE, requires_grad=True)
    blk = torch.zeros(0, dtype=torch.long, device=DEVICE)
    out = norm_modulate(x, mods, blk, 0, 1, 1e-6) + gated_residual(x, x, mods, blk, 2)
    out.sum().backward()
    assert out.shape == (0, 16) and mods.grad.abs().max() == 0
    q = torch.zeros(0, 2, 32, device=DEVICE, requires_grad=True)
    cs = torch.zeros(0, 16, device=DEVICE)
    assert qk_norm_rope(q, torch.ones(32, device=DEVICE), cs, cs, 1e-6).shape == (0, 2, 32)
    with pytest.raises(ValueError, match="chunk index 6"):
        norm_modulate(torch.zeros(3, 16), mods, torch.zeros(3, dtype=torch.long), 6, 1, 1e-6)
    with pytest.raises(ValueError, match="blk must be"):
        norm_modulate(torch.zeros(3, 16), mods, torch.zeros(4, dtype=torch.long), 0, 1, 1e-6)
    with pytest.raises(ValueError, match="cos/sin"):
        qk_norm_rope(torch.zeros(3, 2, 32), torch.ones(32), torch.zeros(3, 8), torch.zeros(3, 8), 1e-6)


# ----------------------------------------------------------------------------- the model with each path

def test_tiny_model_triton_equals_torch(megatron_cpu):
    """A dual-stream and a shared block (the paper variant), same weights, one step: fused_ops=triton gives
    fused_ops=torch's output and every parameter's gradient (through the GPU benchmark's own comparison,
    vincie_mcore/perf/bench_layers.fused_vs_unfused, which also times both)."""
    from model_batches import BLOCK_CAUSAL_SESSION, FULL_SESSION, make_batch, tiny_cfg
    from vincie_mcore.model import build_model
    from vincie_mcore.model.fused_ops import TorchOps, TritonOps
    from vincie_mcore.perf.bench_layers import fused_vs_unfused

    m = build_model(tiny_cfg(num_layers=2, mm_layers=1, fused_ops="triton"), device=DEVICE)
    assert m.layers[0].ops is TritonOps and m.layers[1].attention.ops is TritonOps
    assert m.layers[1].attention.ops.fuses_qk([m.layers[1].attention.joint])
    assert build_model(tiny_cfg(num_layers=2, mm_layers=1, fused_ops="torch"), device=DEVICE).layers[0].ops is TorchOps
    arch = {k: v for k, v in tiny_cfg().to_dict().items()
            if k not in ("num_layers", "mm_layers", "attention_backend", "transformer_impl", "fused_ops")}
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION, FULL_SESSION[:2]], "block_causal", 64, 192, seed=2)
    res = fused_vs_unfused(arch, 2, "torch", batch.to(DEVICE), torch.device(DEVICE), torch.float32, warmup=0, iters=1)
    assert res["fwd_max_rel"] < 1e-5 and res["bwd_max_rel"] < 1e-4 and not res["grads_missing"], res
    assert res["triton"]["ms"] > 0 and res["speedup"] > 0


def test_official_block_triton_equals_torch(megatron_cpu):
    """The official variant's block (RMSNorm pre-norms, a RoPE tail left unrotated): fused = torch."""
    import yaml
    from model_batches import BLOCK_CAUSAL_SESSION, CONFIGS, make_batch
    from vincie_mcore.model import MMDiTConfig, build_model
    d = dict(yaml.safe_load((CONFIGS / "official_tiny.yaml").read_text()), num_layers=1, mm_layers=1,
             attention_backend="torch")
    batch, _ = make_batch([BLOCK_CAUSAL_SESSION], "block_causal", 64, 192, seed=3)
    x = torch.randn(batch.s_img, d["image_in_dim"], generator=torch.Generator().manual_seed(0)).to(DEVICE)
    models, outs, grads = {}, {}, {}
    for f in ("torch", "triton"):
        torch.manual_seed(0)
        models[f] = m = build_model(MMDiTConfig(**dict(d, fused_ops=f)), device=DEVICE)
        if f == "triton":
            assert m.layers[0].pre_norm == "rms"
            m.load_state_dict(models["torch"].state_dict())
        outs[f] = m(x, batch.to(DEVICE))
        outs[f].pow(2).mean().backward()
        grads[f] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}   # one block: no text-proj grad
    _close("out", outs["triton"], outs["torch"], torch.float32)
    assert grads["triton"].keys() == grads["torch"].keys()
    for n, g in grads["torch"].items():
        _close(f"grad {n}", grads["triton"][n], g, torch.float32)


def test_fused_ops_choice():
    from vincie_mcore.model import MMDiTConfig
    from vincie_mcore.model.fused_ops import resolve_fused_ops
    # auto stays on torch until a GPU run confirms the kernels (fused_ops.resolve_fused_ops)
    assert resolve_fused_ops("auto", "cpu") == "torch" and resolve_fused_ops("auto", "cuda") == "torch"
    assert resolve_fused_ops("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="MMDiTConfig.fused_ops"):
        MMDiTConfig(fused_ops="cuda")



# ----------------------------------------------------------------------------- compiled for an H100, without one

def _compile_sm90() -> dict:
    """Every fused kernel through Triton's real compiler for sm_90 (bf16, 3B-width tiles); run in a fresh
    process without TRITON_INTERPRET. -> shared memory per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import vincie_kernels.fused as fu
    f32 = {"mean_ptr", "rstd_ptr", "dmods_ptr", "dw_part_ptr", "cos_ptr", "sin_ptr"}
    out = {}
    for name, fn, consts, warps in (
            ("norm_modulate_fwd", fu._norm_modulate_fwd, {"IS_RMS": False, "BLOCK_S": 1, "BLOCK_D": 4096}, 8),
            ("norm_modulate_bwd", fu._norm_modulate_bwd,
             {"IS_RMS": True, "MODS_GRAD": True, "BLOCK_S": 32, "BLOCK_DC": 128}, 8),
            ("gated_residual_fwd", fu._gated_residual_fwd, {"BLOCK_S": 1, "BLOCK_D": 4096}, 8),
            ("gated_residual_bwd", fu._gated_residual_bwd,
             {"Y_GRAD": True, "MODS_GRAD": True, "BLOCK_S": 32, "BLOCK_D": 128}, 8),
            ("qk_norm_rope_fwd", fu._qk_norm_rope_fwd, {"BLOCK_R": 16, "BLOCK_J": 64}, 4),
            ("qk_norm_rope_bwd", fu._qk_norm_rope_bwd, {"W_GRAD": True, "BLOCK_R": 16, "BLOCK_J": 64}, 4)):
        sig = {n: "constexpr" if n in consts else "*i64" if n == "blk_ptr" else "*fp32" if n in f32
               else "*bf16" if n.endswith("_ptr") else "fp32" if n == "eps" else "i32" for n in fn.arg_names}
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        out[name] = k.metadata.shared
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the tests above JIT the kernels for real")
def test_kernels_compile_for_sm90():
    """Catches what the interpreter cannot: lowering errors (dynamic loop bounds from block ids, the
    branch inside the per-block loop) and shared memory over an H100's 227 KiB."""
    pytest.importorskip("triton.compiler")
    shared = run_as_script(__file__, "this Triton has no ASTSource/GPUTarget")
    assert len(shared) == 6 and all(v <= 227 * 1024 for v in shared.values()), shared


if __name__ == "__main__":
    script_main(_compile_sm90, "triton.backends.compiler:GPUTarget", "triton.compiler:ASTSource")
