"""Parallel layouts train like one device, and impossible layouts fail with one clear line.

The parity runs use ``vincie_mcore/parallel/parity.py`` (tiny model, ~400 tokens per step,
2 optimizer steps, spawned gloo ranks vs one process); the split itself is checked against
the dense mask oracle of ``kernels/vincie_kernels/reference.py``.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from vincie_kernels.reference import KIND_TEXT, dense_mask, random_blocks, spec_from_blocks
from vincie_mcore.config import build
from vincie_mcore.packed import shard as cpm
from vincie_mcore.packed.maskspec import MaskSpec
from vincie_mcore.parallel.parity import Layout, check_layouts

TOL = 1e-5


@pytest.fixture
def megatron_cpu():
    from vincie_mcore.parallel import groups
    dims = groups.init_distributed(tp=1, cp=1)
    yield dims
    groups.destroy()


def _spec(blocks, mask_type):
    return MaskSpec(*spec_from_blocks(blocks), mask_type)


def _joint(gen, mask_type):
    """A random awkward layout in the joint order (all text blocks first)."""
    return _spec(random_blocks(gen, max_tokens=300, text_first=True), mask_type)


# ----------------------------------------------------------------------------- the split

@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
def test_partition_balances_mask_area_against_the_dense_oracle(mask_type):
    gen = torch.Generator().manual_seed(3)
    for _ in range(8):
        spec = _joint(gen, mask_type)
        S = spec.seq_len
        rows = dense_mask(*spec.tensors(), mask_type).sum(1).double()        # oracle: keys per query row
        assert torch.allclose(cpm.row_area(spec)[spec.token_blocks()], rows)
        for cp in (2, 3, 4):
            bounds = cpm.partition(spec, cp)
            assert bounds[0] == 0 and bounds[-1] == S and all(a < b for a, b in zip(bounds, bounds[1:]))
            areas = [float(rows[a:b].sum()) for a, b in zip(bounds, bounds[1:])]
            # a cut can miss its target by at most one row's area (the nearest token boundary)
            assert max(areas) - min(areas) <= 2 * float(rows.max()) + 1e-9, (bounds, areas)


def test_partition_cuts_on_tp_multiples_inside_each_stream():
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        spec = _joint(gen, "block_causal")
        s_txt = cpm.stream_split(spec)
        for cut in cpm.partition(spec, 3, multiple=2)[1:-1]:
            assert (cut % 2 == 0) if cut <= s_txt else ((cut - s_txt) % 2 == 0)


def test_shards_cover_both_streams_and_may_hold_one_stream_only():
    # text 4 tokens, one image of 30: with cp=3, rank 0 holds text (+ maybe a little image), the rest image only
    spec = _spec([(4, 1, KIND_TEXT, 0), (30, 0, 1, 0)], "full")
    shards = [cpm.shard_of(spec, 3, r) for r in range(3)]
    txt = [s.txt_rows.stop - s.txt_rows.start for s in shards]
    img = [s.img_rows.stop - s.img_rows.start for s in shards]
    assert sum(txt) == 4 and sum(img) == 30 and txt[1] == txt[2] == 0
    assert [s.img_rows.start for s in shards[1:]] == [shards[0].img_rows.stop, shards[1].img_rows.stop]


def test_cp_too_large_for_the_sequence_is_one_line():
    spec = _spec([(2, 1, KIND_TEXT, 0), (2, 0, 1, 0)], "full")
    with pytest.raises(ValueError, match=r"4 tokens \(text 2, image 2\), too short to cut into cp=5"):
        cpm.partition(spec, 5)
    with pytest.raises(ValueError, match=r"cp=3 non-empty chunks at multiples of tp=2"):
        cpm.partition(spec, 3, multiple=2)
    with pytest.raises(ValueError, match="text block after an image block"):
        cpm.stream_split(_spec([(2, 0, 1, 0), (2, 1, KIND_TEXT, 0)], "full"))


# ----------------------------------------------------------------------------- layouts that cannot be

def test_impossible_layouts_are_one_line_errors(megatron_cpu):
    import yaml

    from vincie_mcore.model import MMDiTConfig, build_model
    from vincie_mcore.parallel import groups
    d = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/model/tiny.yaml").read_text())
    with pytest.raises(ValueError, match=r"num_heads=4 is not divisible by tp=3"):
        build_model(build(MMDiTConfig, d, "model"), tensor_model_parallel_size=3, device="cpu")
    with pytest.raises(ValueError, match=r"ffn_hidden_size=390 is not divisible by tp=4"):
        build_model(build(MMDiTConfig, dict(d, ffn_hidden_size=390), "model"), tensor_model_parallel_size=4, device="cpu")
    with pytest.raises(ValueError, match=r"model.hidden_size: 130 is not divisible by num_heads=4"):
        build(MMDiTConfig, dict(d, hidden_size=130, rope_axes_dim=None), "model")
    with pytest.raises(RuntimeError, match=r"already initialised as tp=1 cp=1 dp=1"):
        groups.init_distributed(tp=2, cp=1)
    with pytest.raises(ValueError, match="--sp .* needs --tp > 1"):
        Layout(sp=True)


def test_world_size_must_equal_tp_cp_dp():
    from vincie_mcore.parallel import groups
    try:
        with pytest.raises(ValueError, match=r"world size 1 is not divisible by tp\*cp = 2"):
            groups.init_distributed(tp=1, cp=2)
    finally:
        groups.destroy()
    try:
        with pytest.raises(ValueError, match=r"world size 1 != tp\*cp\*dp = 1\*1\*2 = 2"):
            groups.init_distributed(tp=1, cp=1, dp=2)
    finally:
        groups.destroy()


# ----------------------------------------------------------------------------- parity runs

def _assert_parity(results):
    for r in results:
        line = {k: r[k] for k in ("layout", "mask", "cp_local_tokens", "max_rel_diff_loss", "max_rel_diff_grad",
                                  "max_rel_diff_param", "seconds")}
        print(line)
        assert r["sequence_parallel"] == r["layout"]["sp"]
        assert len(r["cp_local_tokens"]) == r["layout"]["cp"]
        assert r["flops_rel_diff"] < 1e-9, f"{r['layout']}: per-device FLOPs do not add up to one device's"
        for k in ("loss", "grad", "param"):
            v = r[f"max_rel_diff_{k}"]
            assert not math.isnan(v) and v <= TOL, f"{r['layout']} {r['mask']}: {k} diff {v:.3g} at {r[f'worst_{k}']}"


def test_block_causal_layouts_match_one_device():
    """TP2, TP2+SP, CP2, DP2 with the distributed optimizer, TP2xCP2 and TP2xCP2+SP against one reference."""
    layouts = [Layout(tp=2), Layout(tp=2, sp=True), Layout(cp=2), Layout(dp=2, dist_opt=True),
               Layout(tp=2, cp=2), Layout(tp=2, cp=2, sp=True)]
    _assert_parity(check_layouts(layouts, "block_causal", steps=2, tokens=400, seed=0, tol=TOL))


def test_full_mask_context_parallel_matches_one_device():
    res = check_layouts([Layout(cp=2)], "full", steps=2, tokens=400, seed=1, tol=TOL)
    _assert_parity(res)
    # with this seed one rank holds image tokens only: its local text stream is empty
    assert any(0 in t for t in res[0]["cp_local_tokens"]), res[0]["cp_local_tokens"]


def test_tool_prints_json_last_and_fails_when_the_target_is_missed(capsys):
    from vincie_tools.check_parallel_parity import main
    rc = main(["--tp", "2", "--steps", "1", "--tokens", "200", "--tol", "0"])   # TP sums in another order: diff > 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 1 and res["ok"] is False and res["layout"]["tp"] == 2 and res["max_rel_diff_grad"] > 0
