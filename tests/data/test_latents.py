"""The latent store (vincie-precompute) against the in-memory path it replaces.

Reference: ``data/corpus.py`` ``decode_corpus`` + ``encode_corpus`` and a separately built text
encoder, the way training encoded before the store existed. A tiny session store of random PNGs
is written directly (no videos), so the whole file runs in seconds.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from slurm_cluster import REPO, slurm_cluster  # noqa: F401,F811 - the fixture

from vincie_mcore.data.build import encode_png
from vincie_mcore.data.corpus import CorpusConfig, decode_corpus, encode_corpus
from vincie_mcore.data.latents import LatentMismatch, LatentStore, encoder_identity, finalize, precompute
from vincie_mcore.data.recipe import RecipeConfig, camera_prompt
from vincie_mcore.data.store import RawSession, SessionWriter
from vincie_mcore.encoders import ImageEncoderConfig, TextEncoder, TextEncoderConfig, build_image_encoder

IMG, TXT = ImageEncoderConfig(), TextEncoderConfig(d_model=32, num_layers=1)


def make_session_store(root: Path, n: int, px: int = 16, seed: int = 0, prefix: str = "v", captions=None) -> Path:
    """n sessions (ids ``prefix``0, 1, ...) of 2-5 random frames (px x px) with random RoE masks and varied texts;
    ``captions(i, k)``: session i's frame captions (a list of k, or None), when given."""
    rng = np.random.default_rng(seed)
    with SessionWriter(root, shard_size=5) as w:
        for i in range(n):
            k = 2 + (i * 7 + seed) % 4
            w.add(RawSession(
                f"{prefix}{i}", [encode_png(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)) for _ in range(k)],
                [encode_png(rng.integers(0, 2, (px, px), dtype=np.uint8) * 255) for _ in range(k - 1)],
                [encode_png(rng.integers(0, 2, (px, px), dtype=np.uint8) * 255) for _ in range(k - 1)],
                [f"move the {'red ' * (i % 3)}object {i} step {j}" for j in range(k - 1)],
                ["pan left" if (i + j) % 2 else "None" for j in range(k - 1)],
                captions=captions(i, k) if captions else None))
    return root


def make_latents(tmp: Path, n: int, block_rows: int, px: int = 16, **kw) -> Path:
    store = make_session_store(tmp / "sessions", n, px)
    precompute(store, tmp / "latents", IMG, TXT, RecipeConfig(), block_rows=block_rows, **kw)
    return tmp / "latents"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latents")
    return tmp, make_latents(tmp, 11, block_rows=4)


def _arrays(root: Path) -> dict:
    """Every array of the store (blocks and index) as numpy, by path."""
    g = zarr.open_group(str(root), mode="r")
    out = {}
    with warnings.catch_warnings():              # done/ holds the markers, not zarr nodes
        warnings.simplefilter("ignore")
        members = list(g.members(max_depth=None))
    for name, node in members:
        if isinstance(node, zarr.Array):
            out[name] = node[:]
    return out


def _same_store(a: Path, b: Path):
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


@pytest.mark.parametrize("resident_mb", [0, 512])        # read a row at a time / the small store held in RAM
def test_rows_equal_encode_corpus_and_the_text_encoder(made, resident_mb, monkeypatch):
    import vincie_mcore.data.latents as latents

    monkeypatch.setattr(latents, "RESIDENT_MB", resident_mb)
    tmp, root = made
    ref = encode_corpus(decode_corpus(tmp / "sessions", CorpusConfig()), build_image_encoder(IMG))
    text = TextEncoder(TXT)
    ls = LatentStore(root, expect=encoder_identity(IMG, TXT, RecipeConfig(), None, "float32"))
    assert len(ls) == 11 and len(ref) == 11 and ls.resident == (resident_mb > 0)
    for row in range(11):
        sess, embs = ls.session(row)
        r = ref[row]
        for f in ("frames", "roe_src", "roe_tgt"):
            assert torch.equal(getattr(sess, f), getattr(r, f)), (row, f)
        assert sess.texts == r.texts and sess.cameras == r.cameras and sess.meta["video_id"] == f"v{row}"
        emitted = [camera_prompt(t, c) for t, c in zip(r.texts, r.cameras)]
        assert list(embs) == emitted
        for t in emitted:
            torch.testing.assert_close(embs[t], text.encode([t])[0])
    rc = RecipeConfig()
    for t in (rc.mask_prompt_src, rc.mask_prompt_tgt, ""):          # "" is the text-dropout prompt
        torch.testing.assert_close(ls.prompts()[t], text.encode([t])[0])
    idx = ls.index()
    assert idx["n_frames"].tolist() == [r.frames.shape[0] for r in ref]
    assert idx["txt_len"].tolist() == [text.encode([t])[0].shape[0] for r in ref
                                       for t in (camera_prompt(a, c) for a, c in zip(r.texts, r.cameras))]


def test_a_resident_store_hands_out_copies(made):
    import pickle

    _, root = made
    ls = LatentStore(root)
    assert ls.resident                                     # 11 tiny rows
    (a, ea), (b, eb) = ls.session(5), ls.session(5)
    first, text = a.frames.clone(), next(iter(ea))
    a.frames.add_(1.0)
    ea[text].zero_()                                       # a caller writing into what it got
    (c, ec) = ls.session(5)
    assert torch.equal(c.frames, first) and torch.equal(ec[text], eb[text]) and ec[text].abs().sum() > 0
    ls.index()
    sent = pickle.loads(pickle.dumps(ls))                  # to a worker: no handle, no cached block, no index
    assert sent._g is None and not sent._blocks and sent._index is None
    assert torch.equal(sent.session(5)[0].frames, first)


def test_two_shards_equal_one_run(made, tmp_path):
    tmp, root = made
    out = tmp_path / "latents"
    s0 = precompute(tmp / "sessions", out, IMG, TXT, shard=(0, 2), block_rows=4)
    assert "finalized" not in s0 and s0["blocks"] == 2            # blocks 0 and 2 of 3
    with pytest.raises(ValueError, match="incomplete"):
        LatentStore(out)
    s1 = precompute(tmp / "sessions", out, IMG, TXT, shard=(1, 2), block_rows=4)
    assert s1["finalized"]["rows"] == 11
    # each block names where it was decoded and encoded (gpu_check's train smoke checks it on a GPU)
    cpu = {"decoder": "dali", "dali": [{"device": "cpu", "device_id": None}], "encoder_device": "cpu"}
    g = zarr.open_group(str(out), mode="r")
    assert s1["made"] == cpu and all(g["blocks"][f"b_{b:07d}"].attrs["made"] == cpu for b in range(3))
    _same_store(out, root)


def test_an_interrupted_run_resumes(made, tmp_path):
    tmp, root = made
    out = tmp_path / "latents"
    shutil.copytree(root, out)
    # a task died while writing block 1: its arrays half there, no done marker
    (out / "done" / "b_0000001.json").unlink()
    shutil.rmtree(out / "blocks" / "b_0000001" / "txt")
    g = zarr.open_group(str(out), mode="r+")
    g.attrs["complete"] = False
    s = precompute(tmp / "sessions", out, IMG, TXT, block_rows=4)
    assert (s["skipped"], s["rows_written"]) == (2, 4)               # only block 1 again
    _same_store(out, root)
    assert LatentStore(out).session(5)[0].frames.shape[0] == LatentStore(root).session(5)[0].frames.shape[0]


def test_other_encoders_or_precision_are_refused_in_one_line(made, tmp_path):
    tmp, root = made
    with pytest.raises(LatentMismatch, match=r"text_encoder\.hash"):
        precompute(tmp / "sessions", root, IMG, TextEncoderConfig(d_model=64), block_rows=4)
    with pytest.raises(LatentMismatch, match=r"dtype: 'float32' there, 'bfloat16' now"):
        LatentStore(root, expect=encoder_identity(IMG, TXT, RecipeConfig(), None, "bfloat16"))
    with pytest.raises(LatentMismatch, match=r"image_size: None there, 8 now"):
        LatentStore(root, expect=encoder_identity(IMG, TXT, RecipeConfig(), 8, "float32"))
    # the CLI: same refusal, one line, exit 2 (before any encoder loads)
    cli = Path(sys.executable).parent / "vincie-precompute"
    r = subprocess.run([str(cli), "run", "--store", str(tmp / "sessions"), "--out", str(root), "--block-rows", "4",
                        "--quiet", "data.text_encoder.d_model=48"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "text_encoder.hash" in r.stderr, r.stderr[-2000:]


def test_bfloat16_store_holds_rounded_latents(made, tmp_path):
    tmp, root = made
    out = tmp_path / "bf16"
    precompute(tmp / "sessions", out, IMG, TXT, dtype="bfloat16", block_rows=16, limit=3)
    bf, f32 = LatentStore(out), LatentStore(root)
    assert json.loads((out / "zarr.json").read_text())["attributes"]["identity"]["dtype"] == "bfloat16"
    for row in range(3):
        (a, ea), (b, eb) = bf.session(row), f32.session(row)
        assert torch.equal(a.roe_src, b.roe_src.bfloat16().float())
        for t in ea:
            assert torch.equal(ea[t], eb[t].bfloat16().float())
    with pytest.raises(RuntimeError, match="1 of 1 blocks not written"):
        (out / "done" / "b_0000000.json").unlink()
        finalize(out)


def _job_state(env, job) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=env, capture_output=True, text=True).stdout
    return " ".join(sorted({f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")}))


def test_slurm_array_then_check_equals_one_run(slurm_cluster, made, tmp_path):  # noqa: F811
    tmp, root = made
    env = dict(slurm_cluster, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = tmp_path / "latents"
    r = subprocess.run(["bash", str(REPO / "slurm" / "precompute.sh"), str(tmp / "sessions"), str(out), "2",
                        "--block-rows=4", "data.text_encoder.d_model=32", "+data.text_encoder.num_layers=1",
                        f"--chdir={tmp_path}", "--cpus-per-task=1"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    array, check = (int(t) for t in re.findall(r"job (\d+)", r.stdout))
    end = time.monotonic() + 240
    while _job_state(env, check) not in ("COMPLETED", "FAILED", "CANCELLED") and time.monotonic() < end:
        time.sleep(0.2)
    logs = " ".join(p.read_text()[-800:] for p in tmp_path.glob("vincie-precompute*.out"))
    assert _job_state(env, check) == "COMPLETED" and _job_state(env, array) == "COMPLETED", logs
    _same_store(out, root)
