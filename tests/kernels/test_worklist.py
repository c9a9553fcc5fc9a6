"""Work lists vs a dense classification of tiles built from ``dense_mask`` (small S)."""
import pytest
import torch

from vincie_kernels.reference import KIND_CLEAN, KIND_NOISY, KIND_TEXT, dense_mask, random_blocks, spec_from_blocks
from vincie_kernels.worklist import (FULL, PARTIAL, SKIP, build_worklists, classify_tiles, first_difference,
                                     token_attributes)


def dense_tile_classes(mask: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """[Sq, Sk] bool -> [Tq, Tk] exact classes; incomplete key tiles count as partial when not empty."""
    Sq, Sk = mask.shape
    Tq, Tk = -(-Sq // bm), -(-Sk // bn)
    out = torch.empty(Tq, Tk, dtype=torch.int8)
    for i in range(Tq):
        for j in range(Tk):
            t = mask[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
            complete = (j + 1) * bn <= Sk
            out[i, j] = SKIP if not t.any() else (FULL if t.all() and complete else PARTIAL)
    return out


def _layouts():
    gen = torch.Generator().manual_seed(123)
    for n in range(10):
        yield random_blocks(gen, max_tokens=220)


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
@pytest.mark.parametrize("bm,bn", [(16, 16), (32, 16), (16, 64)])
def test_classification_is_safe(mask_type, bm, bn):
    """SKIP only where nothing is visible, FULL only where everything is (never wrong, maybe conservative)."""
    n_partial_needless = n_pairs = 0
    for i, blocks in enumerate(_layouts()):
        spec = spec_from_blocks(blocks)
        S = int(spec[0][-1])
        q_start, k_start = (0, 0) if i % 2 == 0 else (S // 3, S // 5)
        q_len, k_len = S - q_start, S - k_start - (i % 3)
        attrs = token_attributes(*spec, mask_type, q_start, q_len, k_start, k_len)
        cls = classify_tiles(attrs, bm, bn)
        exact = dense_tile_classes(dense_mask(*spec, mask_type, q_start, q_len, k_start, k_len), bm, bn)
        assert cls.shape == exact.shape
        assert not ((cls == SKIP) & (exact != SKIP)).any(), "a tile with visible pairs was skipped"
        assert not ((cls == FULL) & (exact != FULL)).any(), "a tile with hidden pairs was marked full"
        n_partial_needless += int(((cls == PARTIAL) & (exact != PARTIAL)).sum())
        n_pairs += cls.numel()
    assert n_partial_needless < 0.25 * n_pairs      # conservative, but not uselessly so


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_classification_exact_when_blocks_align_with_tiles(mask_type):
    """With every block a multiple of the tile, each tile lies in one block: the classes must be exact."""
    t = 16
    blocks = [(2 * t, 1, KIND_TEXT, 0), (3 * t, 3, KIND_TEXT, 0), (t, 0, KIND_CLEAN, 0), (2 * t, 2, KIND_CLEAN, 0),
              (2 * t, 2, KIND_NOISY, 0), (t, 4, KIND_CLEAN, 0), (t, 4, KIND_NOISY, 0),
              (t, 1, KIND_TEXT, 1), (2 * t, 0, KIND_CLEAN, 1), (2 * t, 0, KIND_NOISY, 1)]
    spec = spec_from_blocks(blocks)
    S = int(spec[0][-1])
    attrs = token_attributes(*spec, mask_type, 0, S, 0, S)
    cls = classify_tiles(attrs, t, t)
    exact = dense_tile_classes(dense_mask(*spec, mask_type), t, t)
    assert torch.equal(cls, exact)
    assert (cls == FULL).any() and (cls == SKIP).any()


def _expand(start, end, n):
    return [t for a, b in zip(start[:n].tolist(), end[:n].tolist()) for t in range(a, b)]


def test_runs_and_transpose():
    """Runs expand to exactly the full / partial tiles of each row, sorted and maximal; transposed likewise."""
    gen = torch.Generator().manual_seed(7)
    spec = spec_from_blocks(random_blocks(gen, max_tokens=250))
    S = int(spec[0][-1])
    attrs, wl = build_worklists(*spec, "block_causal", 10, S - 10, 0, S, 32, 16)
    cls = classify_tiles(attrs, 32, 16)
    for runs, c in ((wl.q, cls), (wl.k, cls.t())):
        assert runs.full_start.dtype == torch.int32 and runs.full_start.shape[0] == c.shape[0]
        assert sorted(runs.perm.tolist()) == list(range(c.shape[0]))
        for r in range(c.shape[0]):
            for start, end, n, kind in ((runs.full_start, runs.full_end, runs.n_full_runs, FULL),
                                        (runs.part_start, runs.part_end, runs.n_part_runs, PARTIAL)):
                n = int(n[r])
                assert _expand(start[r], end[r], n) == torch.nonzero(c[r] == kind).flatten().tolist()
                ends, starts = end[r, :max(n - 1, 0)], start[r, 1:max(n, 1)]
                assert (starts > ends).all(), "runs must be maximal (separated by a gap)"
        work = (runs.n_full + 2 * runs.n_part)[runs.perm.long()]
        assert (work[:-1] >= work[1:]).all(), "tiles must be listed heaviest first"
    counts = wl.counts()
    assert counts["full"] + counts["partial"] + counts["skip"] == wl.num_q_tiles * wl.num_k_tiles
    assert counts["full"] == int((cls == FULL).sum()) and counts["partial"] == int((cls == PARTIAL).sum())


def test_empty_blocks_and_bad_specs():
    # a zero-length block between two others must not own any token
    spec = spec_from_blocks([(5, 0, KIND_CLEAN, 0), (0, 1, KIND_TEXT, 0), (4, 2, KIND_NOISY, 0)])
    attrs = token_attributes(*spec, "block_causal", 0, 9, 0, 9)
    assert attrs.q_blk.tolist() == [0] * 5 + [2] * 4
    off, order, kind, sess = spec
    with pytest.raises(ValueError, match="mask_type"):
        token_attributes(*spec, "causal", 0, 9, 0, 9)
    with pytest.raises(TypeError, match="block_order must be int32"):
        token_attributes(off, order.long(), kind, sess, "full", 0, 9, 0, 9)
    with pytest.raises(ValueError, match="block_kind must be 1-D with 3 entries"):
        token_attributes(off, order, kind[:2], sess, "full", 0, 9, 0, 9)
    with pytest.raises(ValueError, match="beyond the spec's sequence length 9"):
        token_attributes(*spec, "full", 5, 5, 0, 9)


def test_first_difference_names_the_tensor_that_differs():
    """The one comparison of two builds (tests and the GPU bench): it names a changed value, a changed
    dtype, a view that lost its 16-byte alignment, and another tiling."""
    import dataclasses
    gen = torch.Generator().manual_seed(7)
    spec = spec_from_blocks(random_blocks(gen, max_tokens=200))
    S = int(spec[0][-1])
    a, w = build_worklists(*spec, "block_causal", 0, S, 0, S, 16, 16, backend="torch")
    b, w2 = build_worklists(*spec, "block_causal", 0, S, 0, S, 16, 16, backend="torch")
    assert first_difference(w, w2, a, b) is None
    end = w2.k.part_end.clone()
    end.view(-1)[0] += 1
    assert first_difference(w, dataclasses.replace(w2, k=dataclasses.replace(w2.k, part_end=end))) == "k.part_end"
    assert first_difference(w, dataclasses.replace(w2, q=dataclasses.replace(w2.q, perm=w2.q.perm.long()))) == "q.perm"
    buf = torch.empty(b.k_rank.numel() + 1, dtype=torch.int32)[1:]          # 4 bytes off: not 16-byte aligned
    buf.copy_(b.k_rank)
    assert first_difference(w, w2, a, dataclasses.replace(b, k_rank=buf)) == "attrs.k_rank (alignment)"
    assert first_difference(w, build_worklists(*spec, "block_causal", 0, S, 0, S, 16, 32)[1]) == "tiling"


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_fused_triton_build_matches_torch(mask_type):
    """The fused Triton build (the CUDA path; here under the interpreter) equals the torch build exactly."""
    if not torch.cuda.is_available():
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs TRITON_INTERPRET=1 on CPU")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(31 if mask_type == "full" else 32)
    for i, (bm, bn) in enumerate(((16, 32), (64, 16))):
        spec = [t.to(dev) for t in spec_from_blocks(random_blocks(gen, max_tokens=300))]
        S = int(spec[0][-1])
        qs, ql, ks, kl = (0, S, 0, S) if i == 0 else (S // 3, S - S // 3 - 1, 5, S - 9)
        a1, w1 = build_worklists(*spec, mask_type, qs, ql, ks, kl, bm, bn, backend="torch")
        a2, w2 = build_worklists(*spec, mask_type, qs, ql, ks, kl, bm, bn, backend="triton")
        # equal tensors, each starting 16-byte aligned whatever the length: Triton specialises pointers on
        # it, so a view that lost it at a new length would recompile the attention kernels (the fused
        # build's views did: 3.7 s and 2.1 s first calls at a new length on an H200)
        assert first_difference(w1, w2, a1, a2) is None, (bm, bn, first_difference(w1, w2, a1, a2))
        assert (w2.q.n_full.sum() > 0) or (w2.q.n_part.sum() > 0)
    with pytest.raises(ValueError, match="power-of-two tiles"):
        build_worklists(*spec, mask_type, 0, S, 0, S, 24, 16, backend="triton")
    with pytest.raises(ValueError, match="backend must be"):
        build_worklists(*spec, mask_type, 0, S, 0, S, 16, 16, backend="cuda")


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_fused_build_rows_longer_than_a_chunk(mask_type, monkeypatch):
    """Rows spanning several classification chunks (the fused build walks a row _CHUNK tiles at a time):
    a run open across a chunk boundary must keep its end in the same slot as its start. At the real
    _CHUNK (256 tiles) this is S >= 4k at 16-token tiles, too slow for the interpreter, so the chunk
    is shrunk to 16 tiles here; the code path is the same. This case once stored such ends one slot
    late, so the attention kernels skipped whole runs of key tiles (H200 case b at S = 45k read above
    the chip's peak: docs/measured.md)."""
    import vincie_kernels.worklist as wlmod
    if not torch.cuda.is_available():
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs TRITON_INTERPRET=1 on CPU")
    monkeypatch.setattr(wlmod, "_CHUNK", 16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(41 if mask_type == "full" else 42)
    crossed = 0
    for i, (bm, bn) in enumerate(((16, 16), (32, 16))):
        blocks = random_blocks(gen, max_tokens=500, max_sessions=1 + i, image_scale=4)
        spec = [t.to(dev) for t in spec_from_blocks(blocks)]
        S = int(spec[0][-1])
        a1, w1 = build_worklists(*spec, mask_type, 0, S, 0, S, bm, bn, backend="torch")
        a2, w2 = build_worklists(*spec, mask_type, 0, S, 0, S, bm, bn, backend="triton")
        assert w1.num_k_tiles > 16, "the layout must span several chunks"
        assert first_difference(w1, w2, a1, a2) is None, (bm, bn, first_difference(w1, w2, a1, a2))
        for side in ("q", "k"):
            r1 = getattr(w1, side)
            # a run that crosses a chunk boundary: what this test is about
            for st, en in ((r1.full_start, r1.full_end), (r1.part_start, r1.part_end)):
                crossed += int((((st // 16) != ((en - 1) // 16)) & (en > st)).sum())
    assert crossed > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU sizes: the interpreter would take minutes")
@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_fused_build_matches_torch_at_the_benchmark_sizes(case):
    """The benchmark's own layouts (S up to 45k: rows of 700+ key tiles at 64) on the GPU, every tiling
    the kernels use: the fused build must equal the torch build there too, not only on small specs."""
    from vincie_kernels.bench import case_blocks
    blocks, mask_type = case_blocks(case)
    spec = [t.cuda() for t in spec_from_blocks(blocks)]
    S = int(spec[0][-1])
    from vincie_tools.check_worklists import TILINGS                    # every tuner tiling, and 16x16
    for bm, bn in (tuple(int(n) for n in t.split("x")) for t in TILINGS.split(",")):
        a1, w1 = build_worklists(*spec, mask_type, 0, S, 0, S, bm, bn, backend="torch")
        a2, w2 = build_worklists(*spec, mask_type, 0, S, 0, S, bm, bn, backend="triton")
        assert first_difference(w1, w2, a1, a2) is None, (bm, bn, first_difference(w1, w2, a1, a2))
