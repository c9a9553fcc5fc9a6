"""The streaming loader's speed and memory (``vincie-bench-loader``; docs/latent_store.md, "Measured").

* Throughput: sessions/s and tokens/s for 0, 1 and 2 DataLoader workers on a latent store of
  VAE-like rows (16 channels, 32x32 latents, 2x2 patches: 256 tokens an image; T5-like texts).
* Memory against corpus size: stores of 1k, 10k and 100k tiny rows (written directly through the
  store's own block writer, not through the encoders), each opened in a fresh process that draws
  batches with 2 workers; RSS and USS of the main process and of the workers, and the bytes of the
  per-row index the planner holds (the one part that grows with the corpus: docs/latent_store.md).
* Resume: seconds from a new stream + ``load_state_dict`` to its first batch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data.latents import (LATENT_FORMAT, _open_or_create, _write_block, done_blocks, encoder_identity,
                            finalize)
from ..data.packing import PackConfig
from ..data.recipe import RecipeConfig

RECIPE = RecipeConfig()
TINY_PACK = PackConfig(patch_size=2, token_budget=256)     # the memory probes' packing


def synthesize_latent_store(root, n: int, channels: int, hw: int, text_dim: int, text_len=(8, 40),
                            block_rows: int = 1024, dtype: str = "float16", seed: int = 0) -> Path:
    """A finalized latent store of ``n`` random rows (2-6 frames each), written block by block
    with the store's writer; skips blocks already there."""
    from ..encoders import ImageEncoderConfig, TextEncoderConfig

    root = Path(root)
    ident = encoder_identity(ImageEncoderConfig(), TextEncoderConfig(d_model=text_dim), RECIPE, None, dtype)
    attrs = {"format": LATENT_FORMAT, "n_rows": n, "block_rows": block_rows, "identity": ident,
             "source": {"store": "synthetic", "sessions": n}, "complete": False}
    g = _open_or_create(root, attrs)
    done = done_blocks(root)
    for b in range(-(-n // block_rows)):
        if b in done:
            continue
        rng = np.random.default_rng([seed, b])
        rows = range(b * block_rows, min((b + 1) * block_rows, n))
        data = dict(imgs=[], shapes=[], img_first=[0], embs=[], n_frames=[], hw=[], records=[])
        for r in rows:
            k = int(rng.integers(2, 7))
            for _ in range(3 * k - 2):
                data["imgs"].append(torch.from_numpy(rng.standard_normal(channels * hw * hw, np.float32)))
                data["shapes"].append((channels, hw, hw))
            data["img_first"].append(data["img_first"][-1] + 3 * k - 2)
            data["embs"] += [torch.from_numpy(rng.standard_normal((int(rng.integers(*text_len)), text_dim), np.float32))
                             for _ in range(k - 1)]
            data["n_frames"].append(k)
            data["hw"].append((hw, hw))
            data["records"].append(json.dumps({"video_id": f"s{r}", "texts": [f"edit {r} {j}" for j in range(k - 1)],
                                               "cameras": ["None"] * (k - 1)}))
        data["prompts"] = [torch.from_numpy(rng.standard_normal((L, text_dim), np.float32)) for L in (12, 12, 1)]
        _write_block(root, g, b, rows, data, dtype)
    finalize(root)
    return root


def _mb(x) -> float:
    return round(x / 2 ** 20, 1)


def throughput(root, workers: int, batches: int, pack_cfg: PackConfig) -> dict:
    from ..data.stream import LatentStream

    s = LatentStream(root, RECIPE, pack_cfg, seed=1, num_workers=workers)
    t0 = time.perf_counter()
    next(s)                                            # worker start, first pack: not counted
    first = time.perf_counter() - t0
    sessions = tokens = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(s)
        sessions += b.num_sessions
        tokens += b.spec.seq_len
    dt = time.perf_counter() - t0
    state = s.state_dict()
    s.close()
    t0 = time.perf_counter()
    r = LatentStream(root, RECIPE, pack_cfg, seed=1, num_workers=workers)
    r.load_state_dict(state)
    next(r)
    resume = time.perf_counter() - t0
    r.close()
    return {"workers": workers, "batches": batches, "sessions_per_s": round(sessions / dt, 1),
            "tokens_per_s": round(tokens / dt), "ms_per_batch": round(1e3 * dt / batches, 1),
            "first_batch_s": round(first, 3), "resume_first_batch_s": round(resume, 3)}


def probe(root, batches: int, pack_cfg: PackConfig) -> dict:
    """In a fresh process: open, draw ``batches`` with 2 workers, measure memory, resume."""
    import psutil

    from ..data.stream import LatentStream

    me = psutil.Process()
    base = me.memory_info().rss
    t0 = time.perf_counter()
    s = LatentStream(root, RECIPE, pack_cfg, seed=1, num_workers=2)
    open_s = time.perf_counter() - t0
    for _ in range(batches):
        next(s)
    kids = me.children(recursive=True)
    idx = s.store.index()
    index_bytes = sum(a.nbytes for a in idx.values()) + s.planner.rows.nbytes + s.planner.order(0).nbytes
    out = {"sessions": len(s.store), "open_s": round(open_s, 3),
           "rss_main_mb": _mb(me.memory_info().rss), "rss_main_growth_mb": _mb(me.memory_info().rss - base),
           "uss_main_mb": _mb(me.memory_full_info().uss),
           "rss_workers_mb": [_mb(k.memory_info().rss) for k in kids],
           "uss_workers_mb": [_mb(k.memory_full_info().uss) for k in kids],
           "index_mb": round(index_bytes / 2 ** 20, 2), "index_bytes_per_session": round(index_bytes / len(s.store), 1)}
    state = s.state_dict()
    s.close()
    t0 = time.perf_counter()
    r = LatentStream(root, RECIPE, pack_cfg, seed=1, num_workers=2)
    r.load_state_dict(state)
    next(r)
    out["resume_first_batch_s"] = round(time.perf_counter() - t0, 3)
    r.close()
    return out


def plan_cost(root, pack_cfg: PackConfig, sessions: int = 2000) -> float:
    """Microseconds the planner spends per session (every rank walks every pack)."""
    from ..data.stream import LatentStream

    s = LatentStream(root, RECIPE, pack_cfg, seed=1, num_workers=0)
    walk, n = s.planner.packs(0, 0, 0), 0
    t0 = time.perf_counter()
    while n < sessions:
        n += len(next(walk)[3])
    return round(1e6 * (time.perf_counter() - t0) / n, 1)


def epoch_order(units: int = 10_000_000, shares=(0.9, 0.09, 0.01), weights=(1, 1, 1), repeats: int = 3) -> dict:
    """Seconds to draw one epoch's order over ``units`` sessions, plain and with ``data.corpus.mix`` over
    sources of ``shares`` of the rows weighed ``weights`` (every rank does this once an epoch), beside a check
    of the same draws: each source's count in the mixed epoch equals its quota, and the plain epoch is a
    permutation. The planner's index is synthetic (two-frame rows): ordering reads no latent."""
    from ..data.stream import PackPlanner

    bounds = np.concatenate([[0], np.cumsum(np.round(np.array(shares) / sum(shares) * units).astype(np.int64))])
    bounds[-1] = units
    sources = [(f"s{k}", int(a), int(b)) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    index = {"n_frames": np.full(units, 2, np.uint16)}
    mix = {n: float(w) for (n, _, _), w in zip(sources, weights)}
    out = {"tool": "epoch_order", "units": units, "sources": {n: b - a for n, a, b in sources}, "weights": mix}
    for name, kw in (("plain", {}), ("mixed", {"mix": mix, "sources": sources})):
        p = PackPlanner(index, {}, RECIPE, TINY_PACK, seed=1, **kw)
        times = []
        for e in range(repeats):
            t0 = time.perf_counter()
            order = p.order(e)
            times.append(time.perf_counter() - t0)
        out[f"{name}_s"] = round(min(times), 3)
        if name == "plain":
            out["check_plain_is_a_permutation"] = bool(np.array_equal(np.sort(order), np.arange(units)))
        else:
            counts = {n: int(((order >= a) & (order < b)).sum()) for n, a, b in sources}
            out["mixed_draws"] = counts
            out["check_mixed_counts_equal_quotas"] = counts == {d["source"]: d["draws_per_epoch"]
                                                                for d in p.mix_summary()}
    return out


def bench_loader(workdir, sizes=(1000, 10000, 100000), throughput_rows: int = 400, batches: int = 40) -> dict:
    work = Path(workdir)
    real_pack = PackConfig(patch_size=2, token_budget=4096)
    big = synthesize_latent_store(work / "vae_like", throughput_rows, channels=16, hw=32, text_dim=512, block_rows=64)
    res = {"tool": "bench_loader", "cpu_count": os.cpu_count(), "load_avg_before": [round(x, 2) for x in os.getloadavg()],
           "throughput_store": {"rows": throughput_rows, "latent": [16, 32, 32], "dtype": "float16", "text_dim": 512,
                                "patch_size": 2, "token_budget": 4096},
           "throughput": [throughput(big, w, batches, real_pack) for w in (0, 1, 2)],
           "plan_us_per_session": plan_cost(big, real_pack)}
    res["memory_pack"] = {"patch_size": TINY_PACK.patch_size, "token_budget": TINY_PACK.token_budget,
                          "latent": [1, 4, 4], "text_dim": 4, "workers": 2, "batches": 200}
    res["memory"] = []
    for n in sizes:
        root = synthesize_latent_store(work / f"tiny_{n}", n, channels=1, hw=4, text_dim=4, text_len=(2, 6))
        cmd = [sys.executable, "-m", "vincie_mcore.perf.bench_loader", "--probe", str(root), "200"]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        res["memory"].append(json.loads(r.stdout.strip().splitlines()[-1]))
    res["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return res


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--probe":
    print(json.dumps(probe(sys.argv[2], int(sys.argv[3]), TINY_PACK)))
