"""Patchify, RoPE and the text/turn embedder."""
import pytest
import torch

from vincie_mcore.model.embeddings import TextEmbedder, apply_rope, rope_cos_sin
from vincie_mcore.packed.patches import patchify, unpatchify


def test_patchify_layout_and_roundtrip():
    lat = torch.randn(3, 16, 24)
    tok = patchify(lat, 8)
    assert tok.shape == (2 * 3, 3 * 8 * 8)
    # token (row 1, col 2) is the patch lat[:, 8:16, 16:24], flattened as (c, py, px)
    torch.testing.assert_close(tok[1 * 3 + 2], lat[:, 8:16, 16:24].reshape(-1))
    torch.testing.assert_close(unpatchify(tok, 2, 3, 8), lat)


def test_patchify_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiples of the patch size"):
        patchify(torch.randn(3, 10, 16), 8)
    with pytest.raises(ValueError, match="unpatchify"):
        unpatchify(torch.randn(5, 192), 2, 3, 8)


def test_rope_matches_complex_rotation():
    """Independent formula: pair (x0, x1) as x0 + i x1 times exp(i * pos * theta^(-2j/d)) per axis."""
    S, H, axes, theta = 5, 2, (4, 6, 6), 100.0
    x = torch.randn(S, H, sum(axes), dtype=torch.float64)
    pos = torch.randint(0, 9, (S, 3))
    cos, sin = rope_cos_sin(pos, axes, theta)
    out = apply_rope(x.float(), cos, sin).double()
    xc = torch.view_as_complex(x.reshape(S, H, -1, 2).contiguous())
    angles = torch.cat([pos[:, a, None].double() * theta ** (-torch.arange(0, d, 2).double() / d)
                        for a, d in enumerate(axes)], dim=1)
    ref = torch.view_as_real(xc * torch.polar(torch.ones_like(angles), angles)[:, None]).reshape(S, H, -1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    axes = (8, 12, 12)
    q, k = torch.randn(1, 1, 32), torch.randn(1, 1, 32)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), axes, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([pk]), axes, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    a = score([1, 2, 3], [0, 5, 1])
    b = score([4, 7, 10], [3, 10, 8])      # both shifted by (3, 5, 7)
    c = score([1, 2, 3], [0, 5, 2])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - c).abs() > 1e-3


def test_text_embedder_turn_rows():
    emb = TextEmbedder(text_dim=6, hidden_size=8, max_turns=3, std=0.02)
    x = torch.randn(4, 6)
    turn = torch.tensor([2, -1, -1, 0])
    h = emb(x, turn)
    torch.testing.assert_close(h[0], emb.turn_embedding.weight[2])
    torch.testing.assert_close(h[3], emb.turn_embedding.weight[0])
    torch.testing.assert_close(h[1:3], emb.proj(x[1:3]))
    with pytest.raises(ValueError, match="max_turns"):
        emb(x, torch.tensor([3, -1, -1, 0]))
