"""Triton masked attention (interpreter on CPU, fp32; natively on GPU) vs the dense oracle, forward and backward."""
import pytest
import torch

from vincie_kernels.masked_attention import KernelConfig, masked_attention, masked_attention_forward
from vincie_kernels.reference import (KIND_CLEAN, KIND_NOISY, KIND_TEXT, attention_reference, dense_mask,
                               random_blocks, spec_from_blocks)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 everywhere: exact enough to hold 1e-4 (the GPU uses IEEE fp32 dots for fp32 inputs)
ATOL = 1e-4
CONFIGS = {
    "32x16/16x32": (KernelConfig(32, 16), KernelConfig(16, 32)),
    "16x16/16x16": (KernelConfig(16, 16), KernelConfig(16, 16)),
    # dK/dV on its own tiling, dQ on the forward's (the GPU default's shape: lists shared with the forward)
    "32x16/dkdv16x32/dq32x16": (KernelConfig(32, 16), KernelConfig(16, 32), KernelConfig(32, 16)),
    # every kernel streaming through tensor descriptors (TMA on sm_90; the interpreter runs them too)
    "tma": (KernelConfig(32, 16, tma=True), KernelConfig(16, 32, tma=True), KernelConfig(32, 16, tma=True)),
    # no dQ kernel: the dK/dV kernel adds dQ up with fp32 atomic adds (dq=None)
    "atomic_dq": (KernelConfig(32, 16), KernelConfig(16, 32), None),
    "atomic_dq_tma": (KernelConfig(32, 16, tma=True), KernelConfig(32, 32, tma=True), None),
}


def _run(blocks, mask_type, q_start=0, q_len=None, k_start=0, k_len=None, H=2, D=16, seed=0, configs=None,
         scale=None):
    spec = spec_from_blocks(blocks)
    S = int(spec[0][-1])
    q_len = S - q_start if q_len is None else q_len
    k_len = S - k_start if k_len is None else k_len
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(n, H, D, generator=g).to(DEVICE) for n in (q_len, k_len, k_len, q_len))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    spec_dev = [t.to(DEVICE) for t in spec]
    out = masked_attention(q, k, v, *spec_dev, mask_type, q_start=q_start, k_start=k_start,
                           softmax_scale=scale, configs=configs)
    grads = torch.autograd.grad(out, (q, k, v), do)
    mask = dense_mask(*spec, mask_type, q_start, q_len, k_start, k_len).to(DEVICE)
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref, _ = attention_reference(qr, kr, vr, mask, softmax_scale=scale)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do)
    return out, grads, ref, ref_grads, mask


def _assert_close(out, grads, ref, ref_grads):
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = (a - b).abs().max().item()
        assert err <= ATOL, f"{name}: max error {err:.3g} > {ATOL}"


# one hand-written layout with every awkward feature: text-first joint order, single-token blocks,
# a long text turn, noisy copies, a mask image, two sessions, a padding block
HAND = [(3, 1, KIND_TEXT, 0), (61, 3, KIND_TEXT, 0), (1, 5, KIND_TEXT, 0), (20, 1, KIND_TEXT, 1),
        (17, 0, KIND_CLEAN, 0), (25, 2, KIND_CLEAN, 0), (1, 4, KIND_CLEAN, 0), (25, 2, KIND_NOISY, 0),
        (1, 4, KIND_NOISY, 0), (33, 0, KIND_CLEAN, 1), (33, 0, KIND_NOISY, 1), (9, 0, KIND_CLEAN, 2)]


@pytest.mark.parametrize("mask_type,cfg", [("block_causal", "32x16/16x32"), ("full", "16x16/16x16"),
                                            ("block_causal", "16x16/16x16"),
                                            ("block_causal", "32x16/dkdv16x32/dq32x16"),
                                            ("block_causal", "tma"), ("full", "tma"),
                                            ("block_causal", "atomic_dq"), ("full", "atomic_dq"),
                                            ("block_causal", "atomic_dq_tma")])
def test_hand_layout(mask_type, cfg):
    _assert_close(*_run(HAND, mask_type, configs=CONFIGS[cfg])[:4])


@pytest.mark.parametrize("case", range(4))
def test_random_layouts(case):
    gen = torch.Generator().manual_seed(1000 + case)
    blocks = random_blocks(gen, max_tokens=180)
    mask_type = ("block_causal", "full")[case % 2]
    D = (16, 32)[(case // 2) % 2]
    _assert_close(*_run(blocks, mask_type, D=D, seed=case)[:4])


@pytest.mark.parametrize("mask_type", ["block_causal", "full"])
def test_context_parallel_slice(mask_type):
    """A CP rank: queries [q_start, q_start+Sq) of the joint sequence against all keys, and a key slice."""
    S = sum(b[0] for b in HAND)
    _assert_close(*_run(HAND, mask_type, q_start=70, q_len=77, seed=3)[:4])
    _assert_close(*_run(HAND, mask_type, q_start=41, q_len=100, k_start=13, k_len=150, seed=4)[:4])
    # descriptors bound each slice at its own length: tiles past Sq / Sk read zeros
    _assert_close(*_run(HAND, mask_type, q_start=41, q_len=100, k_start=13, k_len=150, seed=4,
                        configs=CONFIGS["tma"])[:4])
    # atomic dQ: query rows past Sq (a tile's padding) must not be written into the accumulator
    _assert_close(*_run(HAND, mask_type, q_start=41, q_len=100, k_start=13, k_len=150, seed=4,
                        configs=CONFIGS["atomic_dq"])[:4])
    assert S == 229


def test_tma_streams_contiguous_heads_and_falls_back_for_strided_ones():
    """A TMA descriptor addresses [S, H * D]: q/k/v split from a fused projection (stride_h = 3D) take
    the pointer loads instead, with the same answer."""
    from vincie_kernels.masked_attention import AttentionConfigs, tma_active
    cfgs = AttentionConfigs(*CONFIGS["tma"])
    spec = spec_from_blocks(HAND)
    S = int(spec[0][-1])
    qkv = torch.randn(S, 2, 3 * 16, device=DEVICE, requires_grad=True)
    q, k, v = qkv.split(16, dim=-1)
    do = torch.randn(S, 2, 16, device=DEVICE)
    out = masked_attention(q, k, v, *[t.to(DEVICE) for t in spec], "block_causal", configs=cfgs)
    (g,) = torch.autograd.grad(out, qkv, do)
    x = qkv.detach().clone().requires_grad_()
    ref, _ = attention_reference(*x.split(16, dim=-1), dense_mask(*spec, "block_causal").to(DEVICE))
    (rg,) = torch.autograd.grad(ref, x, do)
    assert (out - ref).abs().max() <= ATOL and (g - rg).abs().max() <= ATOL
    assert tma_active(cfgs, q, k, v) == {"fwd": False, "dkdv": False, "dq": False}
    has_tma = DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9     # the interpreter, or sm_90+
    assert tma_active(cfgs, *(t.contiguous() for t in (q, k, v))) == dict.fromkeys(("fwd", "dkdv", "dq"), has_tma)
    assert tma_active(AttentionConfigs(*CONFIGS["16x16/16x16"], CONFIGS["16x16/16x16"][1]),
                      q.contiguous(), k.contiguous(), v.contiguous()) == {"fwd": False, "dkdv": False, "dq": False}


@pytest.mark.parametrize("cfg", [None, "atomic_dq"])
def test_empty_rows_give_zero_and_finite_grads(cfg):
    """Queries of session 0 against keys of session 1 only: they see nothing -> out 0, lse -inf, grads finite."""
    blocks = [(40, 0, KIND_CLEAN, 0), (19, 1, KIND_TEXT, 0), (37, 0, KIND_CLEAN, 1), (5, 1, KIND_TEXT, 1)]
    out, grads, ref, ref_grads, mask = _run(blocks, "full", q_start=30, q_len=40, k_start=59, k_len=42,
                                            configs=CONFIGS.get(cfg))
    empty = ~mask.any(1)
    assert 0 < int(empty.sum()) < 40               # rows of session 0 (30..58) see nothing, session 1 rows do
    assert (out[empty] == 0).all() and (grads[0][empty] == 0).all()
    _assert_close(out, grads, ref, ref_grads)
    if cfg is not None:
        return
    spec = [t.to(DEVICE) for t in spec_from_blocks(blocks)]
    q = torch.randn(40, 2, 16, device=DEVICE)
    kv = torch.randn(42, 2, 16, device=DEVICE)
    _, lse = masked_attention_forward(q, kv, kv, *spec, "full", q_start=30, k_start=59)
    _, ref_lse = attention_reference(q, kv, kv, mask)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and torch.isinf(lse[:, empty]).all()
    fin = torch.isfinite(ref_lse)
    assert (lse[fin] - ref_lse[fin]).abs().max() <= ATOL


def test_softmax_scale_and_strided_inputs():
    """q/k/v as views of a fused [S, H, 3D] projection (non-standard strides) and a custom scale."""
    spec = spec_from_blocks(HAND)
    S = int(spec[0][-1])
    qkv = torch.randn(S, 2, 3 * 32, device=DEVICE, requires_grad=True)
    q, k, v = qkv.split(32, dim=-1)                                            # (S, H, D) each, strided
    do = torch.randn(S, 2, 32, device=DEVICE)
    out = masked_attention(q, k, v, *[t.to(DEVICE) for t in spec], "block_causal", softmax_scale=0.3)
    (g,) = torch.autograd.grad(out, qkv, do)
    x = qkv.detach().clone().requires_grad_()
    ref, _ = attention_reference(*x.split(32, dim=-1), dense_mask(*spec, "block_causal").to(DEVICE), 0.3)
    (rg,) = torch.autograd.grad(ref, x, do)
    assert (out - ref).abs().max() <= ATOL and (g - rg).abs().max() <= ATOL


def test_backward_is_deterministic():
    gen = torch.Generator().manual_seed(5)
    blocks = random_blocks(gen, max_tokens=160)
    a = _run(blocks, "block_causal", seed=9)
    b = _run(blocks, "block_causal", seed=9)
    for x, y in zip((a[0], *a[1]), (b[0], *b[1])):
        assert torch.equal(x, y)


def test_no_grad_path_and_errors():
    spec = [t.to(DEVICE) for t in spec_from_blocks(HAND)]
    S = int(spec[0][-1])
    q = torch.randn(S, 2, 16, device=DEVICE)
    with torch.no_grad():
        out = masked_attention(q, q, q, *spec, "full")
    assert out.shape == (S, 2, 16)
    with pytest.raises(ValueError, match="mask_type"):
        masked_attention(q, q, q, *spec, "causal")
    with pytest.raises(ValueError, match="head dim must be a power of two"):
        x = torch.randn(S, 2, 24, device=DEVICE)
        masked_attention(x, x, x, *spec, "full")
    with pytest.raises(ValueError, match="disagree on H, D"):
        masked_attention(q, q[:, :1], q[:, :1], *spec, "full")
    with pytest.raises(TypeError, match="block_session must be int32"):
        masked_attention(q, q, q, *spec[:3], spec[3].long(), "full")
    if DEVICE == "cpu":
        with pytest.raises(TypeError, match="interpreter computes fp16/bf16 wrongly"):
            masked_attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), *spec, "full")


def test_plan_reuse_and_mismatch():
    """A plan built once serves several calls (as every layer of a model would); a wrong plan is refused."""
    from vincie_kernels.masked_attention import plan_masked_attention
    spec = [t.to(DEVICE) for t in spec_from_blocks(HAND)]
    S = int(spec[0][-1])
    plan = plan_masked_attention(*spec, "block_causal", 70, 77, 0, S, 16, torch.float32)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(77, 2, 16, generator=g).to(DEVICE)
    k, v = (torch.randn(S, 2, 16, generator=g).to(DEVICE) for _ in range(2))
    ref = masked_attention(q, k, v, *spec, "block_causal", q_start=70)
    out = masked_attention(q, k, v, *spec, "block_causal", q_start=70, plan=plan)
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="plan was built for"):
        masked_attention(q, k, v, *spec, "block_causal", q_start=0, plan=plan)


def test_config_forms_and_list_sharing():
    """configs as (fwd, bwd), (fwd, dkdv, dq) or AttentionConfigs; kernels with one tiling share one list."""
    from vincie_kernels.masked_attention import AttentionConfigs, as_configs, plan_masked_attention
    f, b, c = KernelConfig(32, 16), KernelConfig(16, 32), KernelConfig(32, 16, 8, 3)
    assert as_configs((f, b)) == AttentionConfigs(f, b, b)
    assert as_configs((f, b, c)) == AttentionConfigs(f, b, c)
    with pytest.raises(TypeError, match="configs must be"):
        as_configs((f,))
    with pytest.raises(TypeError, match="configs must be"):
        as_configs((f, (16, 32)))
    spec = [t.to(DEVICE) for t in spec_from_blocks(HAND)]
    S = int(spec[0][-1])
    plan = plan_masked_attention(*spec, "block_causal", 0, S, 0, S, 16, torch.float32, configs=(f, b, c))
    assert plan.wl_dq is plan.wl_fwd and plan.wl_dkdv is not plan.wl_fwd
    assert (plan.wl_dkdv.block_m, plan.wl_dkdv.block_n) == (16, 32) and plan.wl_bwd is plan.wl_dkdv
    plan = plan_masked_attention(*spec, "block_causal", 0, S, 0, S, 16, torch.float32, need_bwd=False)
    assert plan.wl_dkdv is None and plan.wl_dq is None
    # atomic dQ: no dQ kernel, so no dQ lists; the plan still serves a backward
    assert as_configs((f, b, None)) == AttentionConfigs(f, b, None) and AttentionConfigs(f, b, None).dq_atomic
    plan = plan_masked_attention(*spec, "block_causal", 0, S, 0, S, 16, torch.float32, configs=(f, b, None))
    assert plan.wl_dq is None and plan.wl_dkdv is not None and plan.cfgs.dq_atomic
    q, k, v, do = (torch.randn(S, 2, 16, device=DEVICE, requires_grad=True) for _ in range(4))
    out = masked_attention(q, k, v, *spec, "block_causal", plan=plan)
    split = masked_attention(q, k, v, *spec, "block_causal", configs=(f, b, c))
    assert torch.equal(out, split)             # one forward; the backward differs only in how dQ is summed
    for got, want in zip(torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(split, (q, k, v), do)):
        assert (got - want).abs().max() <= ATOL
