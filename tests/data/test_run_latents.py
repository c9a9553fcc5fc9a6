"""The default training data path (build.run_latents): a synthetic session store encoded once into
``<run_dir>/latents``, reused while it matches, encoded again when the store or the encoders change,
resumed when cut short; and on 2 gloo ranks, rank 0 synthesizes, both encode their blocks, rank 0
finalizes. Reference for the rows: ``decode_corpus`` + ``encode_corpus`` (the in-memory path)."""
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vincie_mcore.build import data_configs, run_latents
from vincie_mcore.config import load_config
from vincie_mcore.data.corpus import decode_corpus, encode_corpus, synthesize_store
from vincie_mcore.data.latents import LatentStore, done_blocks
from vincie_mcore.data.store import SessionStore
from vincie_mcore.encoders import build_image_encoder

SMALL = ["experiment=demo", "data.corpus.videos=6", "data.corpus.workers=1"]


def small_dc(*extra):
    return data_configs(load_config(SMALL + list(extra)))


def synth(root: Path, dc, seed: int) -> Path:
    c = dc["corpus"]
    return synthesize_store(root, c.videos, dc["world"], c, c.sampling, seed, c.min_change)


def stamps(latents: Path) -> dict:
    """mtime of each block's done marker: a rewritten block gets a new one."""
    return {p.name: p.stat().st_mtime_ns for p in (latents / "done").glob("b_*.json")}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("synth") / "train", small_dc(), seed=0)


def test_encoded_once_streamed_and_reused(store, tmp_path, capsys):
    dc = small_dc()
    out = run_latents(dc, store, tmp_path, block_rows=4)
    assert out == tmp_path / "latents"
    lat = LatentStore(out)
    n = len(SessionStore(store))
    assert len(lat) == n and n > 4 and len(done_blocks(out)) == -(-n // 4)
    # rows as the in-memory path encodes them
    want = encode_corpus(decode_corpus(store, dc["corpus"]), build_image_encoder(dc["image"]))
    for row in (0, n - 1):
        got, _ = lat.session(row)
        assert torch.equal(got.frames, want[row].frames) and got.texts == want[row].texts
    first = stamps(out)
    capsys.readouterr()
    assert run_latents(dc, store, tmp_path, block_rows=4) == out       # same store, same encoders: reused
    assert "reusing the latent store" in capsys.readouterr().out and stamps(out) == first

    # cut short (a block's marker gone, not finalized): only that block is encoded again
    import zarr
    zarr.open_group(str(out), mode="r+").attrs["complete"] = False
    os.remove(out / "done" / "b_0000001.json")
    run_latents(dc, store, tmp_path, block_rows=4)
    again = stamps(out)
    assert LatentStore(out).attrs["complete"] and again.keys() == first.keys()
    assert [k for k in first if again[k] != first[k]] == ["b_0000001.json"]

    # other encoder settings: encoded again, with the new identity
    pooled = small_dc("data.text_encoder.pool=4")
    run_latents(pooled, store, tmp_path, block_rows=4)
    assert LatentStore(out).identity != lat.identity and all(stamps(out)[k] != again[k] for k in again)
    assert "encoding it again" in capsys.readouterr().out


def test_a_rebuilt_session_store_is_encoded_again(store, tmp_path):
    """Same path, same number of sessions, other content (another seed): the fingerprint differs."""
    dc = small_dc()
    import shutil
    root = tmp_path / "train"
    shutil.copytree(store.parent, root)
    out = run_latents(dc, root / "store", tmp_path, block_rows=4)
    before = LatentStore(out).session(0)[0].frames
    shutil.rmtree(root)
    other = synth(root, dc, seed=1)
    run_latents(dc, other, tmp_path, block_rows=4)
    after = LatentStore(out).session(0)[0].frames
    assert len(SessionStore(other)) and not (before.shape == after.shape and torch.equal(before, after))


def _two_rank_worker(rank, folder):
    import torch.distributed as dist

    from vincie_mcore.build import _on_every_rank, _on_rank0
    from vincie_mcore.data.stream import stream_from_config

    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    try:
        dc = small_dc()
        run = Path(folder) / "run"
        store = _on_rank0(lambda: synth(run / "train", dc, seed=0))
        out = run_latents(dc, store, run, block_rows=2)
        dims = type("Dims", (), {"dp_rank": rank, "dp": 2})
        stream = stream_from_config(dc | {"corpus": replace(dc["corpus"], latents=str(out), workers=1)}, 0, dims)
        batch = next(stream)
        Path(folder, f"ok{rank}").write_text(f"{stream.last_pack} {batch.num_sessions > 0 and bool(batch.img_loss_mask.any())}")
        try:                                           # a rank's failure reaches every rank, none waits forever
            _on_every_rank(lambda: 1 / (rank - 1), "divide")
        except (RuntimeError, ZeroDivisionError) as e:
            Path(folder, f"error{rank}").write_text(f"{type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_encoding_and_stream_their_packs(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_two_rank_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    out = tmp_path / "run" / "latents"
    assert LatentStore(out).attrs["complete"]
    tasks = {json.loads(p.read_text())["task"] for p in (out / "done").glob("b_*.json")}
    assert tasks == {"0/2", "1/2"}                                  # both ranks wrote blocks
    assert (tmp_path / "ok0").read_text() == "0 True" and (tmp_path / "ok1").read_text() == "1 True"
    msg = "RuntimeError: rank 1 failed to divide: ZeroDivisionError: division by zero"
    assert (tmp_path / "error0").read_text() == msg and (tmp_path / "error1").read_text() == msg


def test_the_pairwise_arm_streams_the_same_store(megatron_cpu, store, tmp_path):
    # paper Table 5's pairwise arm: the run's latent store cut into pairs by the stream, not decoded into RAM
    from vincie_mcore.build import build_training
    from vincie_mcore.data.stream import LatentStream

    over = SMALL + [f"run_dir={tmp_path}", f"data.corpus.store={store}", "data.recipe.pairwise=true",
                    "train.steps=2", "train.warmup=0", "train.progress=false", "train.save_every=0",
                    "model.num_layers=1", "model.mm_layers=1", "data.pack.token_budget=400"]
    _, trainer = build_training(load_config(over))
    s = trainer.stream
    sessions = decode_corpus(store, small_dc()["corpus"])
    assert isinstance(s, LatentStream) and s.planner.pairwise
    assert s.num_sessions == len(sessions) and s.num_units == sum(len(x.texts) for x in sessions)
    losses = trainer.train()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
