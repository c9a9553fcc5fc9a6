"""Masked attention cores against a dense oracle written out here: the mask rule token by token
(docs/masks.md, in words), then plain masked softmax attention in float64.

The mask is deliberately not built with ``block_visibility`` / ``token_block_ids``: the torch core
reads those, so an oracle made of them would share any fault in them. The softmax runs in float64
(``vincie_kernels.reference.attention_reference`` computes in float32), so on float64 inputs the
oracle is exact to ~1e-15 and any difference beyond the tolerance is the core's. Output gradients
come from seeded generators: a test's inputs never depend on which tests ran before it."""
import math

import pytest
import torch

from model_batches import BLOCK_CAUSAL_SESSION, FULL_SESSION, make_batch, random_sessions
from vincie_mcore.model.attention import TorchMaskedAttention, TritonMaskedAttention, _build_plan
from vincie_mcore.packed.maskspec import KIND_NOISY


def rule_mask(spec, q_start=0, q_len=None, k_start=0, k_len=None):
    """[Sq, Sk] bool, one (query, key) pair at a time, from the rule in words:

    * never across sessions;
    * "full": everything in the session;
    * "block_causal": the query's own block, or a key that is not noisy and whose order is
      <= the query's (a noisy query: strictly <, so not its own clean twin)."""
    offsets = spec.block_offsets.tolist()
    order, kind, session = spec.block_order.tolist(), spec.block_kind.tolist(), spec.block_session.tolist()
    toks = []                                             # per token: (session, order, block, noisy)
    for b in range(len(order)):
        toks += [(session[b], order[b], b, kind[b] == KIND_NOISY)] * (offsets[b + 1] - offsets[b])
    S = len(toks)
    q_len = S - q_start if q_len is None else q_len
    k_len = S - k_start if k_len is None else k_len
    m = torch.zeros(q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        sq, oq, bq, nq = toks[q_start + i]
        for j in range(k_len):
            sk, ok, bk, nk = toks[k_start + j]
            if sq != sk:
                continue
            if spec.mask_type == "full" or bq == bk:
                m[i, j] = True
            elif not nk:
                m[i, j] = ok < oq if nq else ok <= oq
    return m


def dense_attention(q, k, v, mask):
    """Dense masked softmax(q k^T / sqrt(D)) v in float64; rows that see no key give 0. -> (out, None)."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    s = torch.einsum("qhd,khd->hqk", q64, k64) / math.sqrt(q.shape[-1])     # (H, Sq, Sk)
    seen = mask.any(1)                                                        # (Sq,)
    s = torch.where(mask[None], s, float("-inf"))
    s = torch.where(seen[None, :, None], s, 0.0)          # blind rows: any finite row, zeroed below
    p = torch.softmax(s, dim=-1) * seen[None, :, None]
    return torch.einsum("hqk,khd->qhd", p, v64).to(q.dtype), None


def _qkv(S, H=3, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(S, H, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def _spec(mask_type, seed=0):
    sessions = [BLOCK_CAUSAL_SESSION if mask_type == "block_causal" else FULL_SESSION,
                random_sessions(1, 40, mask_type, seed=seed)[0],
                BLOCK_CAUSAL_SESSION[:4] if mask_type == "block_causal" else FULL_SESSION[:2] + [("noisy", 1, 2, 1)]]
    return make_batch(sessions, mask_type, 8, 8, seed=seed)[0].spec


def test_rule_mask_reproduces_the_docs_table():
    """The oracle itself: the block_causal example table of docs/masks.md (one token per block)."""
    from vincie_kernels.reference import KIND_CLEAN, KIND_TEXT, spec_from_blocks
    from vincie_mcore.packed.maskspec import MaskSpec
    blocks = [(1, 1, KIND_TEXT, 0), (1, 3, KIND_TEXT, 0), (1, 0, KIND_CLEAN, 0), (1, 2, KIND_CLEAN, 0),
              (1, 2, KIND_NOISY, 0), (1, 4, KIND_NOISY, 0)]                  # T0 T1 I0 I1 I1* I2*
    table = ["x.x...", "xxxx..", "..x...", "x.xx..", "x.x.x.", "xxxx.x"]
    want = torch.tensor([[c == "x" for c in row] for row in table])
    assert torch.equal(rule_mask(MaskSpec(*spec_from_blocks(blocks), "block_causal")), want)
    assert rule_mask(MaskSpec(*spec_from_blocks(blocks + [(2, 0, KIND_CLEAN, 1)]), "full")).sum() == 36 + 4


@pytest.mark.parametrize("mask_type", ["block_causal", "full"])
@pytest.mark.parametrize("q_slice,k_slice", [((0, None), (0, None)), ((7, 23), (0, None)), ((5, 30), (11, 40))])
def test_torch_core_matches_reference(mask_type, q_slice, k_slice):
    spec = _spec(mask_type)
    S = spec.seq_len
    q_start, q_len = q_slice[0], (q_slice[1] or S) - q_slice[0]
    k_start, k_len = k_slice[0], (k_slice[1] or S) - k_slice[0]
    q, k, v = _qkv(S)
    qs, ks, vs = q[q_start:q_start + q_len], k[k_start:k_start + k_len], v[k_start:k_start + k_len]
    core = TorchMaskedAttention()
    out = core(qs, ks, vs, spec, q_start=q_start, k_start=k_start)
    mask = rule_mask(spec, q_start=q_start, q_len=q_len, k_start=k_start, k_len=k_len)
    ref, _ = dense_attention(qs, ks, vs, mask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    g1 = torch.autograd.grad(out, (q, k, v), go)
    g2 = torch.autograd.grad(ref, (q, k, v), go)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_type", ["block_causal", "full"])
def test_torch_core_blind_rows_give_zero(mask_type):
    """Keys = the last 6 tokens only: most queries see nothing and must give 0 (reference: out 0)."""
    spec = _spec(mask_type)
    S = spec.seq_len
    q, k, v = _qkv(S)
    out = TorchMaskedAttention()(q, k[S - 6:], v[S - 6:], spec, k_start=S - 6)
    mask = rule_mask(spec, k_start=S - 6, k_len=6)
    ref, _ = dense_attention(q, k[S - 6:], v[S - 6:], mask)
    blind = ~mask.any(1)
    assert blind.sum() > S // 2 and (out[blind] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and (q.grad[blind] == 0).all()


def test_plan_never_builds_a_packed_square():
    """Buckets hold per-session masks only: total mask area stays near sum of session areas."""
    spec = make_batch(random_sessions(50, 3000, "block_causal", seed=1), "block_causal", 8, 8)[0].spec
    plan = _build_plan(spec, 0, spec.seq_len, 0, spec.seq_len, torch.device("cpu"))
    area = sum(b.q_rows.numel() * b.k_rows.shape[1] for b in plan)
    per_session = {}                                      # tokens per session, from the block lengths
    for b, sid in enumerate(spec.block_session.tolist()):
        per_session[sid] = per_session.get(sid, 0) + int(spec.block_offsets[b + 1] - spec.block_offsets[b])
    true_area = sum(n * n for n in per_session.values())
    assert area <= 1.3 * true_area < spec.seq_len ** 2 / 10
    assert len(plan) < 20


def test_bf16_runs_close_to_reference():
    spec = _spec("block_causal")
    q, k, v = (t.detach().to(torch.bfloat16) for t in _qkv(spec.seq_len))
    out = TorchMaskedAttention()(q, k, v, spec)
    ref, _ = dense_attention(q.double(), k.double(), v.double(), rule_mask(spec))      # float64 oracle
    torch.testing.assert_close(out.double(), ref, rtol=3e-2, atol=3e-2)


def test_core_rejects_bad_shapes():
    spec = _spec("full")
    q, k, v = (t.detach() for t in _qkv(spec.seq_len))
    with pytest.raises(ValueError, match="outside the spec"):
        TorchMaskedAttention()(q, k, v, spec, q_start=3)
    with pytest.raises(ValueError, match="expected q"):
        TorchMaskedAttention()(q[:, 0], k, v, spec)


def test_triton_core_matches_reference_or_names_backend():
    spec = _spec("block_causal")
    q, k, v = (t.detach().float() for t in _qkv(spec.seq_len))
    try:
        import vincie_kernels.masked_attention  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="backend 'triton'"):
            TritonMaskedAttention()(q, k, v, spec)
        return
    out = TritonMaskedAttention()(q, k, v, spec)
    ref, _ = dense_attention(q, k, v, rule_mask(spec))
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("seed", range(6))
def test_torch_core_on_awkward_random_layouts(seed):
    """Single-token blocks, padding blocks, session-contiguous or joint layouts, random slices."""
    from vincie_kernels.reference import random_blocks, spec_from_blocks
    from vincie_mcore.packed.maskspec import MaskSpec
    g = torch.Generator().manual_seed(seed)
    mask_type = ("block_causal", "full")[seed % 2]
    spec = MaskSpec(*spec_from_blocks(random_blocks(g, max_tokens=160, max_sessions=4)), mask_type)
    S = spec.seq_len
    q_start = int(torch.randint(0, S // 2, (1,), generator=g))
    q_len = int(torch.randint(1, S - q_start + 1, (1,), generator=g))
    k_start = int(torch.randint(0, S // 4, (1,), generator=g)) if seed >= 3 else 0
    q, k, v = _qkv(S, H=2, D=8, seed=seed)
    qs, ks, vs = q[q_start:q_start + q_len], k[k_start:], v[k_start:]
    out = TorchMaskedAttention()(qs, ks, vs, spec, q_start=q_start, k_start=k_start)
    mask = rule_mask(spec, q_start=q_start, q_len=q_len, k_start=k_start)
    ref, _ = dense_attention(qs, ks, vs, mask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    go = torch.randn(out.shape, generator=g, dtype=out.dtype)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("core", ["torch", "triton"])
def test_cores_on_a_text_to_video_clip(core):
    """A text-to-video clip is one noisy block of several frames (docs/text_to_image.md): both cores, forward
    and backward, against the rule in words, beside an edit session, under block_causal."""
    from vincie_mcore.packed.builder import BatchBuilder
    from vincie_mcore.packed.maskspec import KIND_CLEAN

    b = BatchBuilder("block_causal")
    b.session()
    t = b.text(0, 0, length=5)
    b.text(1, 0, length=3)
    for f in range(3):
        b.image(2 + f, KIND_NOISY, (3, 4), rope_turn=3 * f, text_block=t, joins=f > 0)
    b.session()
    b.image(0, KIND_CLEAN, (2, 3), rope_turn=0)
    t2 = b.text(1, 0, length=4)
    b.image(2, KIND_CLEAN, (2, 3), rope_turn=3, text_block=t2)
    b.image(2, KIND_NOISY, (2, 3), rope_turn=3, text_block=t2)
    spec = b.build(torch.Generator().manual_seed(0), text_dim=4, patch_dim=4).spec
    mask = rule_mask(spec)
    clip = slice(12, 12 + 36)                               # both sessions' 12 text rows, then the clip's
    assert mask[clip, clip].all() and mask[clip, :8].all() and not mask[:12, clip].any()
    q, k, v = _qkv(spec.seq_len, H=2, D=16, seed=1)
    ref, _ = dense_attention(q, k, v, mask)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=ref.dtype)
    want = torch.autograd.grad(ref, (q, k, v), go)
    if core == "torch":
        out = TorchMaskedAttention()(q, k, v, spec)
        tol = dict(rtol=1e-4, atol=1e-5)
    else:
        pytest.importorskip("vincie_kernels.masked_attention", reason="the Triton kernels need triton")
        out = TritonMaskedAttention()(q.float(), k.float(), v.float(), spec)
        tol = dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(out.double(), ref, **tol)
    for a, w in zip(torch.autograd.grad(out, (q, k, v), go.to(out.dtype)), want):
        torch.testing.assert_close(a.double(), w, **tol)
