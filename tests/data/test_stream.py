"""The streaming loader over a latent store: what it packs, its order, resume and elasticity.

Batches are checked against ``pack`` fed from the in-memory reference (``encode_corpus`` + a
separate text encoder); order properties are checked on the pack indices and rows the stream
reports, and on the batches' tensors.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_latents import IMG, TXT, make_latents

from vincie_mcore.data.corpus import CorpusConfig, decode_corpus, encode_corpus
from vincie_mcore.data.latents import LatentMismatch
from vincie_mcore.data.packing import PackConfig, pack
from vincie_mcore.data.recipe import RecipeConfig, build_sample
from vincie_mcore.data.stream import PAIR_STRIDE, LatentStream, stream_from_config, subset_rows
from vincie_mcore.encoders import TextEncoder, build_image_encoder

RECIPE = RecipeConfig(mask_type="block_causal")
PACK = PackConfig(patch_size=4, token_budget=400)
N = 20


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    return tmp, make_latents(tmp, N, block_rows=6, px=8)


def _stream(root, **kw):
    kw.setdefault("num_workers", 0)
    return LatentStream(root, RECIPE, PACK, seed=5, **kw)


def _take(s, n):
    """n batches with the pack index each one was."""
    out = []
    for _ in range(n):
        b = next(s)
        out.append((s.last_pack, b))
    return out


def _same(a, b) -> bool:
    return (a.num_sessions == b.num_sessions and torch.equal(a.img_x0, b.img_x0) and torch.equal(a.txt_emb, b.txt_emb)
            and torch.equal(a.img_loss_mask, b.img_loss_mask) and torch.equal(a.img_pos, b.img_pos)
            and torch.equal(a.txt_pos, b.txt_pos) and torch.equal(a.spec.block_kind, b.spec.block_kind))


def test_batches_equal_pack_of_the_in_memory_corpus(made):
    tmp, root = made
    ref = encode_corpus(decode_corpus(tmp / "sessions", CorpusConfig()), build_image_encoder(IMG))
    text = TextEncoder(TXT)
    s = _stream(root)
    walk = s.planner.packs(0, 0, 0)
    seen, sizes = [], []
    for k in range(40):
        kk, epoch, start, items = next(walk)
        if epoch == 1 and k >= 12:                           # past the end of epoch 0
            break
        b = next(s)
        assert (kk, s.last_pack) == (k, k)
        want = pack([(build_sample(ref[row].texts, ref[row].cameras, plan, RECIPE), ref[row]) for _, row, plan in items],
                    text.encode, PACK, RECIPE.mask_type)
        assert torch.equal(b.img_x0, want.img_x0) and torch.equal(b.spec.block_kind, want.spec.block_kind)
        torch.testing.assert_close(b.txt_emb, want.txt_emb)
        # the planner's token count is the packed length; greedy: the next session would not fit
        assert b.spec.seq_len == sum(s.planner.tokens(row, plan) for _, row, plan in items)
        assert b.spec.seq_len <= PACK.token_budget or len(items) == 1
        if epoch == 0:
            seen += [row for _, row, _ in items]
            sizes.append(b.spec.seq_len)
    assert sorted(seen) == list(range(N))                  # one epoch: every session once
    assert len(sizes) >= 4 and max(sizes) > PACK.token_budget // 2


def test_pairwise_units_are_the_transitions_of_the_same_sessions(made):
    # paper Table 5's pairwise arm from the same store: each pair (I_i, T_i, I_i+1) a unit, packed as
    # the in-memory recipe cuts it (pairwise_sessions), every transition once an epoch
    from vincie_mcore.data.recipe import pairwise_sessions
    from vincie_mcore.data.stream import unit_of

    tmp, root = made
    rec = RecipeConfig(mask_type="block_causal", pairwise=True)
    ref = encode_corpus(decode_corpus(tmp / "sessions", CorpusConfig()), build_image_encoder(IMG))
    text = TextEncoder(TXT)
    s = LatentStream(root, rec, PACK, seed=5, num_workers=1, max_sessions=12)
    assert s.num_sessions == 12 and s.num_units == sum(len(ref[r].texts) for r in s.planner.rows)
    walk, seen = s.planner.packs(0, 0, 0), []
    for k in range(60):
        _, epoch, _, items = next(walk)
        if epoch == 1:
            break
        b = next(s)
        assert s.last_pack == k
        units = [(unit_of(key, True), plan) for _, key, plan in items]
        cut = [(pairwise_sessions([ref[row]])[pair], plan) for (row, pair), plan in units]
        assert all(sess.frames.shape[0] == 2 and plan.num_turns == 1 for sess, plan in cut)
        want = pack([(build_sample(sess.texts, sess.cameras, plan, rec), sess) for sess, plan in cut],
                    text.encode, PACK, rec.mask_type)
        assert torch.equal(b.img_x0, want.img_x0) and torch.equal(b.spec.block_kind, want.spec.block_kind)
        torch.testing.assert_close(b.txt_emb, want.txt_emb)
        assert b.spec.seq_len == sum(s.planner.tokens(key, plan) for _, key, plan in items)
        seen += [u for u, _ in units]
    assert sorted(seen) == sorted((int(r), i) for r in s.planner.rows for i in range(len(ref[r].texts)))
    assert len(s.planner.order(0)) == s.num_units


def _parent_pid(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def test_workers_give_the_inline_batches(made):
    _, root = made
    inline, workers = _stream(root, num_workers=0), _stream(root, num_workers=2)
    a, b = _take(inline, 6), _take(workers, 6)
    assert [k for k, _ in a] == [k for k, _ in b] == list(range(6))
    assert all(_same(x, y) for (_, x), (_, y) in zip(a, b))
    # workers are not forks of this (threaded) process but of the clean fork server
    parents = {_parent_pid(w.pid) for w in workers._it._workers}
    assert os.getpid() not in parents and len(parents) == 1


_SIGNALLED = """
import json, os, signal, subprocess, sys
import psutil, torch
from vincie_mcore.data.packing import PackConfig
from vincie_mcore.data.recipe import RecipeConfig
from vincie_mcore.data.stream import LatentStream

got = []
for sig in (signal.SIGUSR1, signal.SIGTERM):      # as the trainer: a request to stop and save
    signal.signal(sig, lambda n, f: got.append(n))
make = lambda w: LatentStream(sys.argv[1], RecipeConfig(mask_type="block_causal"),
                              PackConfig(patch_size=4, token_budget=400), seed=5, num_workers=w)
ref, s = make(0), make(2)
same = [torch.equal(next(ref).img_x0, next(s).img_x0) for _ in range(2)]
helpers = psutil.Process().children(recursive=True)  # fork server, workers, resource tracker
for sig in ("USR1", "TERM"):     # what slurmstepd does: every process of the step (from another process)
    subprocess.run(["kill", "-s", sig, str(os.getpid())] + [str(p.pid) for p in helpers], check=True)
try:
    same += [torch.equal(next(ref).img_x0, next(s).img_x0) for _ in range(12)]   # past the prefetched ones
    error = None
except Exception as e:
    error = " ".join(str(e).split())[:300]
print(json.dumps({"same": same, "error": error, "helpers": [p.pid for p in helpers], "got": got,
                  "alive": sum(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in helpers)}), flush=True)
if len(sys.argv) > 2:                            # then die outright, as under the OOM killer
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _left(helpers: list[int]) -> list[int]:
    import psutil
    return [p for p in helpers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_slurm_stop_signals_to_every_process_leave_the_workers_running(made):
    # Slurm signals every process of the step (SIGUSR1 before the time limit; SIGTERM on preemption,
    # scancel, requeue); the trainer (its handler) decides what a stop means. A worker, or the fork
    # server behind them, that died of one failed the next batch (a Slurm preemption test, once).
    # In a fresh process: the fork server is the stream's own.
    _, root = made
    r = subprocess.run([sys.executable, "-c", _SIGNALLED, str(root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] is None and out["same"] == [True] * 14, out
    assert len(out["helpers"]) >= 3 and out["alive"] == len(out["helpers"]), out
    assert out["got"] == [int(signal.SIGUSR1), int(signal.SIGTERM)], out
    # and the owner still ends them, as it exits (its own SIGTERM, or their queues closing)
    t0 = time.monotonic()
    while _left(out["helpers"]) and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    assert not _left(out["helpers"]), out


def test_a_trainer_killed_outright_leaves_no_workers_behind(made):
    # the workers are the fork server's children, not the trainer's: they must still go with it
    import psutil

    tmp, root = made
    with open(tmp / "killed.out", "w") as out:          # a file, not a pipe: a helper left behind holds it open
        r = subprocess.run([sys.executable, "-c", _SIGNALLED, str(root), "then-sigkill"], stdout=out,
                           stderr=subprocess.STDOUT, timeout=300)
    text = (tmp / "killed.out").read_text()
    assert r.returncode == -signal.SIGKILL, text[-3000:]
    helpers = json.loads(text.strip().splitlines()[-1])["helpers"]
    t0 = time.monotonic()
    while _left(helpers) and time.monotonic() - t0 < 60:       # torch's worker watchdog looks every 5 s
        time.sleep(0.5)
    assert not _left(helpers), [psutil.Process(p).cmdline()[-1][:80] for p in _left(helpers)]


def test_resume_mid_epoch_continues_at_the_next_pack(made):
    _, root = made
    whole = _take(_stream(root), 11)
    first = _stream(root, num_workers=2)                    # workers run ahead; the state must not
    _take(first, 4)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["pos"] > 0
    again = _stream(root, num_workers=2)
    again.load_state_dict(state)
    rest = _take(again, 7)
    assert [k for k, _ in rest] == list(range(4, 11))
    assert all(_same(x, y) for (_, x), (_, y) in zip(rest, whole[4:]))
    with pytest.raises(ValueError, match="sessions=20 in the checkpoint, 10 now"):
        _stream(root, max_sessions=10).load_state_dict(state)


def test_dp2_ranks_together_are_dp1_order_and_dp_size_can_change(made):
    _, root = made
    dp1 = _take(_stream(root, micro_batches=2), 12)          # global batch: 2 packs a step
    r0, r1 = _stream(root, dp_rank=0, dp_size=2), _stream(root, dp_rank=1, dp_size=2)
    for step in range(3):
        (k0, b0), (k1, b1) = _take(r0, 1)[0], _take(r1, 1)[0]
        assert (k0, k1) == (2 * step, 2 * step + 1)
        assert _same(b0, dp1[2 * step][1]) and _same(b1, dp1[2 * step + 1][1])
        assert r0.state_dict() == r1.state_dict()           # every rank saves the same state
    state = r0.state_dict()
    # resume on 1 rank (2 micro-batches: the same global batch) and on 4 ranks: the next packs
    one = _stream(root, micro_batches=2)
    one.load_state_dict(state)
    assert [k for k, _ in _take(one, 4)] == [6, 7, 8, 9]
    four = [_stream(root, dp_rank=r, dp_size=4) for r in range(4)]
    for s in four:
        s.load_state_dict(state)
    got = [_take(s, 1)[0] for s in four]
    assert [k for k, _ in got] == [6, 7, 8, 9]
    assert all(_same(b, dp1[k][1]) for k, b in got)
    # DP2 x 2 micro-batches: micro-batch a of rank r is pack h + 2a + r; the ranks agree on the state
    a, b = (_stream(root, dp_rank=r, dp_size=2, micro_batches=2) for r in (0, 1))
    ka, kb = [k for k, _ in _take(a, 4)], [k for k, _ in _take(b, 4)]
    assert (ka, kb) == ([0, 2, 4, 6], [1, 3, 5, 7]) and a.state_dict() == b.state_dict()
    # a save between micro-batches (same layout) resumes inside its step
    mid = _stream(root, micro_batches=2)
    _take(mid, 3)
    back = _stream(root, micro_batches=2)
    back.load_state_dict(mid.state_dict())
    assert [k for k, _ in _take(back, 3)] == [3, 4, 5]
    with pytest.raises(ValueError, match="between micro-batches of a 2-pack step"):
        next(_stream_loaded(root, mid.state_dict(), dp_size=3))


def _stream_loaded(root, state, **kw):
    s = _stream(root, **kw)
    s.load_state_dict(state)
    return s


def test_nested_subsets(made):
    _, root = made
    for n in (3, 7, 10):
        small, large = subset_rows(N, n), subset_rows(N, 2 * n)
        assert np.array_equal(small, large[:n]) and len(set(large.tolist())) == 2 * n
    s = _stream(root, max_sessions=7)
    rows = []
    for _k, _e, _p, items in s.planner.packs(0, 0, 0):
        if _e > 0:
            break
        rows += [r for _, r, _ in items]
    assert sorted(rows) == sorted(subset_rows(N, 7).tolist())
    assert set(rows) < set(subset_rows(N, 14).tolist())


def test_config_wiring_checks_the_store(made):
    from vincie_mcore.build import data_configs
    from vincie_mcore.config import load_config
    from vincie_mcore.parallel.groups import ParallelDims

    _, root = made
    dims = ParallelDims(tp=1, cp=1, dp=2, world_size=2, rank=1, backend="gloo")
    base = [f"data.corpus.latents={root}", "data.text_encoder.d_model=32", "+data.text_encoder.num_layers=1",
            "data.pack.patch_size=4", "data.corpus.max_sessions=9", "data.corpus.workers=1"]
    s = stream_from_config(data_configs(load_config(base)), 3, dims)
    assert (s.rank, s.dp_size, s.num_sessions, s.num_workers) == (1, 2, 9, 1)
    next(s)
    assert s.last_pack == 1
    with pytest.raises(LatentMismatch, match="dtype: 'float32' there, 'bfloat16' now"):
        stream_from_config(data_configs(load_config(base + ["data.corpus.latents_dtype=bfloat16"])), 3, dims)
    with pytest.raises(LatentMismatch, match="camera_prompts"):
        stream_from_config(data_configs(load_config(base + ["data.recipe.camera_prompts=false"])), 3, dims)


# ----------------------------------------------------------------------------- weighted sources (data.corpus.mix)

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A union of a 12-session store named big and a 3-session one named small, encoded (rows 0-11, 12-14)."""
    from test_latents import make_session_store

    from vincie_mcore.data.latents import precompute
    from vincie_mcore.data.sharded import union

    tmp = tmp_path_factory.mktemp("mixed")
    big = make_session_store(tmp / "big", 12, px=8, seed=1, prefix="b")
    small = make_session_store(tmp / "small", 3, px=8, seed=2, prefix="s")
    union(tmp / "all", [f"big={big}", f"small={small}"])
    precompute(tmp / "all", tmp / "lat", IMG, TXT, RecipeConfig(), block_rows=6)
    return tmp / "lat"


def _rows(planner, epoch):
    return planner.order(epoch).astype(np.int64)


def test_mix_draws_each_source_its_share_every_session_before_repeats(mixed):
    s = _stream(mixed, mix={"big": 1, "small": 1})
    p = s.planner
    assert s.store.sources() == [("big", 0, 12), ("small", 12, 15)]
    assert [(d["source"], d["draws_per_epoch"]) for d in p.mix_summary()] == [("big", 8), ("small", 7)]
    epochs = [_rows(p, e) for e in range(6)]
    assert all(len(o) == 15 and (o < 12).sum() == 8 for o in epochs)     # 15 draws an epoch, shared 8 / 7
    assert np.array_equal(_rows(p, 2), epochs[2])                        # an epoch's order is a function of it
    big = np.concatenate(epochs[:3])
    big = big[big < 12]                                                  # 24 draws: two whole passes
    assert np.array_equal(np.bincount(big, minlength=12), np.full(12, 2))
    small = np.concatenate(epochs[:3])
    small = small[small >= 12]                                           # 21 draws: seven passes over 3
    assert np.array_equal(np.bincount(small - 12, minlength=3), np.full(3, 7))
    # epochs 0 and 3 both start a pass over big (8 draws of 12 a pass): each pass is shuffled anew
    assert set(epochs[0][epochs[0] < 12].tolist()) != set(epochs[3][epochs[3] < 12].tolist())
    first = np.bincount(epochs[0][epochs[0] >= 12] - 12, minlength=3)    # 7 draws of 3: twice or three times
    assert first.min() >= 2 and first.max() <= 3
    only = _stream(mixed, mix={"big": 1}).planner                        # a source left out is not drawn
    assert sorted(_rows(only, 0).tolist()) == list(range(12))
    heavy = _stream(mixed, mix={"big": 3, "small": 1}).planner           # 11.25 / 3.75 -> 11 / 4
    assert [d["draws_per_epoch"] for d in heavy.mix_summary()] == [11, 4]
    pairs = LatentStream(mixed, RecipeConfig(mask_type="block_causal", pairwise=True), PACK, num_workers=0,
                         mix={"big": 0, "small": 1}).planner                # the pairwise arm: transitions
    keys = pairs.order(0).astype(np.int64)
    assert (keys // PAIR_STRIDE).min() >= 12
    assert sorted(keys.tolist()) == sorted(r * PAIR_STRIDE + i for r in range(12, 15)
                                           for i in range(int(pairs.idx["n_frames"][r]) - 1))


def test_drawn_counts_each_sources_sessions_as_consumed(mixed, made):
    """What the training log reports: over one epoch's packs, each source's consumed sessions are its quota
    (with workers, which run ahead: only consumed packs count); counts reset on reading; one store: {}."""
    s = _stream(mixed, num_workers=2, mix={"big": 1, "small": 1})
    n = next(k for k, epoch, _, _ in s.planner.packs(0, 0, 0) if epoch == 1)      # epoch 0's packs
    _take(s, n)
    assert s.drawn() == {"big": 8, "small": 7} and s.drawn() == {"big": 0, "small": 0}
    plain = _stream(made[1])
    _take(plain, 1)
    assert plain.drawn() == {}


def test_mix_weighs_a_joined_union_whole_or_by_its_sources():
    """A union made of a union keeps its sources as NAME.<source>; a mix key NAME weighs all of them, shared
    by their sizes as if one source; a key and one of its sources both weighed is one line."""
    from vincie_mcore.config import ConfigError
    from vincie_mcore.data.stream import check_mix, mix_quotas

    src = [("sft.mb", 0, 30), ("sft.ip2p", 30, 40), ("videos", 40, 100)]
    counts = {"sft.mb": 30, "sft.ip2p": 10, "videos": 60}
    assert check_mix({"sft": 1, "videos": 3}, src, counts) == {"sft.mb": 0.75, "sft.ip2p": 0.25, "videos": 3.0}
    assert check_mix({"sft.ip2p": 2}, src, counts) == {"sft.ip2p": 2.0}
    # 100 draws: sft 50 (mb 37.5, ip2p 12.5), videos 50; the tied remainders go in source order
    assert mix_quotas({"sft": 1, "videos": 1}, src, counts) == {"sft.mb": 38, "sft.ip2p": 12, "videos": 50}
    for mix, msg in (({"sft": 1, "sft.mb": 1}, r"'sft' and 'sft.mb' weigh the same sessions; give one of them"),
                     ({"sft.mb": 1, "sft": 1}, r"'sft' and 'sft.mb' weigh the same sessions"),
                     ({"sf": 1}, r"no source 'sf' in the corpus")):
        with pytest.raises(ConfigError, match=r"^data.corpus.mix: " + msg):
            check_mix(mix, src, counts)


def test_mix_errors_name_the_key(mixed, made):
    from vincie_mcore.config import ConfigError

    _, plain = made
    for mix, msg in (({"nope": 1}, r"data.corpus.mix: no source 'nope' in the corpus \(its sources: big, small\)"),
                     ({"big": 0}, "data.corpus.mix: every weight is 0"),
                     ({"big": 1000, "small": 0.001}, r"data.corpus.mix.small: its weight gives it 0 of an epoch's "
                                                     r"15 draws"),
                     ({"small": -1}, r"data.corpus.mix.small: a weight must be a number >= 0")):
        with pytest.raises(ConfigError, match=msg):
            _stream(mixed, mix=mix)
    with pytest.raises(ConfigError, match="the corpus is one store, not a union"):
        _stream(plain, mix={"v": 1})
    with pytest.raises(ConfigError, match=r"data.corpus.mix.small: the source has no sessions in this run"):
        _stream(mixed, mix={"small": 1}, max_sessions=1, subset_seed=_subset_without(range(12, 15)))


def _subset_without(rows) -> int:
    """A subset seed whose one-session subset of 15 rows holds none of ``rows``."""
    return next(k for k in range(100) if int(subset_rows(15, 1, k)[0]) not in rows)


def test_mix_resume_continues_and_a_changed_mix_is_refused(mixed):
    kw = {"mix": {"big": 1, "small": 2}}
    walk = _stream(mixed, **kw).planner.packs(0, 0, 0)
    n = next(k for k, epoch, _, _ in walk if epoch == 2) + 1      # into the third epoch: new draws twice
    whole = _take(_stream(mixed, **kw), n)
    first = _stream(mixed, num_workers=2, **kw)
    _take(first, 3)
    state = first.state_dict()
    again = _stream(mixed, **kw)
    again.load_state_dict(state)
    rest = _take(again, n - 3)
    assert [k for k, _ in rest] == list(range(3, n)) and all(_same(x, y) for (_, x), (_, y) in zip(rest, whole[3:]))
    assert again.state_dict()["epoch"] == 2
    with pytest.raises(ValueError, match=r'data stream state: mix \{"big": 1, "small": 2\} in the checkpoint, '
                                         r'\{"big": 1, "small": 3\} now'):
        _stream(mixed, mix={"big": 1, "small": 3}).load_state_dict(state)
    with pytest.raises(ValueError, match="mix none in the checkpoint"):
        _stream(mixed, **kw).load_state_dict(_stream(mixed).state_dict())


def test_mix_from_the_config(mixed, capsys):
    from vincie_mcore.build import data_configs
    from vincie_mcore.config import load_config
    from vincie_mcore.parallel.groups import ParallelDims

    dims = ParallelDims(tp=1, cp=1, dp=1, world_size=1, rank=0, backend="gloo")
    cfg = load_config([f"data.corpus.latents={mixed}", "data.text_encoder.d_model=32", "+data.text_encoder.num_layers=1",
                       "data.pack.patch_size=4", "data.corpus.workers=1", "data.corpus.mix={big:3,small:1}"])
    s = stream_from_config(data_configs(cfg), 3, dims)
    assert [d["draws_per_epoch"] for d in s.planner.mix_summary()] == [11, 4]
    out = capsys.readouterr().out
    assert "mix: big: weight 0.750, 11 draws an epoch from 12 units (0.92 passes)" in out
    assert "mix: small: weight 0.250, 4 draws an epoch from 3 units (1.33 passes)" in out
    next(s)


def test_the_epoch_order_benchmark_checks_its_own_draws():
    from vincie_tools.bench_loader import main

    from vincie_mcore.perf.bench_loader import epoch_order

    r = epoch_order(3000, shares=(0.7, 0.3), weights=(1, 3), repeats=1)
    assert r["check_plain_is_a_permutation"] and r["check_mixed_counts_equal_quotas"]
    assert r["sources"] == {"s0": 2100, "s1": 900} and r["mixed_draws"] == {"s0": 750, "s1": 2250}
    assert main(["--epoch-order", "500"]) == 0


@pytest.mark.parametrize("resident_mb", [0, 512])        # read a row at a time / held in RAM
def test_latent_union_reads_every_row_of_its_sources(tmp_path, resident_mb, monkeypatch):
    """`vincie-precompute union`: two latent stores encoded apart (blocks of 5 and 4 rows, short last blocks) as
    one, nothing encoded again: every row equals its source's row (latents, texts, embeddings), the index is
    theirs end to end, blocks are the sources' files, sources named for `mix`; a store of another precision,
    an existing folder, finalizing a union and a block table that does not tile the rows are refused."""
    import vincie_mcore.data.latents as latents
    from test_latents import make_session_store
    from vincie_tools.precompute import main as precompute_main

    from vincie_mcore.data.latents import LatentStore, finalize, precompute, union

    monkeypatch.setattr(latents, "RESIDENT_MB", resident_mb)
    a = make_session_store(tmp_path / "sa", 7, px=8, seed=3, prefix="a")
    b = make_session_store(tmp_path / "sb", 6, px=8, seed=4, prefix="b")
    precompute(a, tmp_path / "la", IMG, TXT, RecipeConfig(), block_rows=5)
    precompute(b, tmp_path / "lb", IMG, TXT, RecipeConfig(), block_rows=4)
    assert precompute_main(["union", "--out", str(tmp_path / "lu"), "--from", f"vid={tmp_path / 'la'}",
                            f"sft={tmp_path / 'lb'}"]) == 0
    u, la, lb = LatentStore(tmp_path / "lu"), LatentStore(tmp_path / "la"), LatentStore(tmp_path / "lb")
    assert len(u) == 13 and u.n_blocks == 4 and u.sources() == [("vid", 0, 7), ("sft", 7, 13)]
    for row in range(13):
        src, r = (la, row) if row < 7 else (lb, row - 7)
        (x, ex), (y, ey) = u.session(row), src.session(r)
        assert x.meta["video_id"] == y.meta["video_id"] and x.texts == y.texts
        assert torch.equal(x.frames, y.frames) and torch.equal(x.roe_src, y.roe_src) and torch.equal(x.roe_tgt, y.roe_tgt)
        assert ex.keys() == ey.keys() and all(torch.equal(ex[k], ey[k]) for k in ex)
    for k in ("n_frames", "hw", "txt_len"):
        assert np.array_equal(u.index()[k], np.concatenate([la.index()[k], lb.index()[k]]))
    assert u.prompts().keys() == la.prompts().keys()
    lat = next((tmp_path / "lb" / "blocks" / "b_0000001").rglob("c/*"))
    assert any(p.stat().st_ino == lat.stat().st_ino for p in (tmp_path / "lu" / "blocks" / "b_0000003").rglob("c/*"))
    s = LatentStream(tmp_path / "lu", RECIPE, PACK, seed=5, num_workers=0, mix={"vid": 1, "sft": 1})
    assert [d["draws_per_epoch"] for d in s.planner.mix_summary()] == [7, 6] and next(s).num_sessions > 0
    # a union of that union and a third store: its sources kept apart as vid.* , weighed whole or apart
    c = make_session_store(tmp_path / "sc", 3, px=8, seed=5, prefix="c")
    precompute(c, tmp_path / "lc", IMG, TXT, RecipeConfig(), block_rows=4)
    nested = union(tmp_path / "ln", [f"old={tmp_path / 'lu'}", f"new={tmp_path / 'lc'}"])
    assert nested["named"] == [("old.vid", 0, 7), ("old.sft", 7, 13), ("new", 13, 16)]
    assert LatentStore(tmp_path / "ln").sources() == nested["named"]
    whole = LatentStream(tmp_path / "ln", RECIPE, PACK, seed=5, num_workers=0, mix={"old": 1, "new": 1}).planner
    assert [(d["source"], d["draws_per_epoch"]) for d in whole.mix_summary()] == \
        [("old.vid", 4), ("old.sft", 4), ("new", 8)]                 # 16 draws: old's 8 shared 7 : 6 (4.31 / 3.69)
    with pytest.raises(ValueError, match=r"union: two sources are named 'old.vid' once unions in it are opened up"):
        union(tmp_path / "clash", [f"old={tmp_path / 'lu'}", f"old.vid={tmp_path / 'lc'}"])
    assert not (tmp_path / "clash").exists()
    precompute(b, tmp_path / "lh", IMG, TXT, RecipeConfig(), dtype="float16", block_rows=4)
    with pytest.raises(LatentMismatch, match=r"dtype: 'float16' there, 'float32' now"):
        union(tmp_path / "mixed_dtype", [tmp_path / "la", tmp_path / "lh"])
    with pytest.raises(ValueError, match=r"union: .*/lu exists already; give a new folder"):
        union(tmp_path / "lu", [tmp_path / "la", tmp_path / "lb"])
    with pytest.raises(ValueError, match="is a union of latent stores: complete as made"):
        finalize(tmp_path / "lu")
    import zarr

    zarr.open_group(str(tmp_path / "lu"), mode="r+")["index"]["block_first"][-1] = 12
    with pytest.raises(ValueError, match="its block table does not tile its 13 rows"):
        LatentStore(tmp_path / "lu")
    shutil.rmtree(tmp_path / "lu" / "index" / "block_first")
    with pytest.raises(ValueError, match=r"a union without its block table \(index/block_first\)"):
        LatentStore(tmp_path / "lu")
