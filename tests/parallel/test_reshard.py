"""Checkpoints re-shard: save under one layout, resume under another, match the uninterrupted run.

All runs see the same global batches (``vincie_mcore/parallel/parity.py``'s ``ParityStream``: two parts
per step, split over DP or united) from the same initial weights. The saved checkpoint is
Megatron ``dist_checkpointing`` via ``train/checkpoint.py`` (distributed optimizer state saved
``fully_reshardable``: ``dp_reshardable`` cannot change TP).
"""
import torch

from vincie_mcore.parallel.parity import Layout, full_tensors, rel_diff, run_layout

TOL = 1e-5
STEPS, SPLIT = 4, 2


def _resume_matches(tmp_path, first: Layout, second: Layout, mask: str):
    common = dict(parts=2, tokens=400, seed=2, lr=1e-3, adam_eps=1e-6, init_dir=str(tmp_path / "init"))
    (tmp_path / "init").mkdir()
    ref = run_layout(Layout(dist_opt=first.dist_opt), mask, STEPS, str(tmp_path), save_init=True, **common)[0]
    ckpt = str(tmp_path / "ckpt")
    a = run_layout(first, mask, STEPS, str(tmp_path), ckpt_dir=ckpt, until=SPLIT, **common)
    b = run_layout(second, mask, STEPS, str(tmp_path), ckpt_dir=ckpt, **common)
    ref_losses = torch.tensor(ref["losses"])
    for r in a:
        assert r["resumed_from"] is None and len(r["losses"]) == SPLIT
        assert rel_diff(torch.tensor(r["losses"]), ref_losses[:SPLIT]) <= TOL
    for r in b:
        assert r["resumed_from"] == SPLIT and len(r["losses"]) == STEPS - SPLIT, r["losses"]
        d = rel_diff(torch.tensor(r["losses"]), ref_losses[SPLIT:])
        assert d <= TOL, f"rank {r['rank']}: resumed losses {r['losses']} vs {ref['losses'][SPLIT:]} ({d:.3g})"
    for rep, name, t in full_tensors(b, "params"):
        d = rel_diff(t, ref["params"][name])
        assert d <= TOL, f"{rep} {name}: {d:.3g}"


def test_tp2_dp2_distributed_optimizer_resumes_as_cp2(tmp_path):
    """4 ranks (TP2 x DP2, distributed optimizer) save; 2 ranks (CP2, one DP rank) load and continue."""
    _resume_matches(tmp_path, Layout(tp=2, dp=2, dist_opt=True), Layout(cp=2, dist_opt=True), "block_causal")


def test_tp2_resumes_in_one_process(tmp_path):
    """TP2 saves (plain Megatron optimizer); one process loads it unsharded and continues."""
    _resume_matches(tmp_path, Layout(tp=2), Layout(), "full")
