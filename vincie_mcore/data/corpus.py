"""The training and held-out corpora: synthesize a session store, DALI-decode it, encode it once.

``CorpusConfig`` is the ``data.corpus`` group: a session store built beforehand (real data)
or, when none is given, a synthetic one written here (videos, then sessions; both
resumable). ``decode_corpus`` DALI-decodes a store into memory and ``encode_corpus`` passes
its frames and RoE maps once through the frozen image encoder, giving the
``EncodedSession`` list that ``data.packing.PackedStream`` packs.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .packing import EncodedSession


@dataclass
class CorpusConfig:
    store: str | None = None          # a session store built beforehand (real data); None: synthesize one
    heldout_store: str | None = None  # sessions for evaluation; None: synthesize one
    videos: int = 2000                # synthetic training videos
    heldout_videos: int = 200         # synthetic held-out videos (other seed)
    sampling: str = "mixed"           # frame sampling for training sessions: equal | fixed | mixed
    interval_s: float = 1.0           # equal-interval sampling period (paper: e.g. 3 s on real video)
    n_frames: tuple = (2, 6)          # fixed-frame sampling: frames per session, [min, max]
    min_change: float = 0.0           # training sessions: drop static frames (data/sampling.py drop_static); 0: off
    heldout_sampling: str = "fixed"   # held-out sessions (evaluation keeps those with one edit per turn)
    codec: str = "vp9"                # synthetic video codec (DALI decodes VP9/MJPEG on CPU)
    workers: int = 2                  # processes for video writing / session building
    image_size: int | None = None     # DALI resize target (square); None keeps the stored size
    max_sessions: int | None = None   # use at most this many training sessions (data-scaling sweeps)
    latents: str | None = None        # a latent store (vincie-precompute): stream it instead (data/stream.py)
    latents_dtype: str | None = None  # the precision the latent store must hold; None: whatever it holds
    mix: dict[str, float] | None = None   # weights of a union's sources ({name: w}; data/stream.py mix_quotas);
                                          # None: each source by its size

    def __post_init__(self):
        for k in ("videos", "heldout_videos", "workers"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < (1 if k == "workers" else 0):
                raise ValueError(f"data.corpus.{k}: must be a non-negative int (workers >= 1), got {getattr(self, k)!r}")
        if self.mix is not None and (not self.mix or any(w < 0 for w in self.mix.values())
                                     or not sum(self.mix.values()) > 0):
            raise ValueError(f"data.corpus.mix: weights must be >= 0 with a positive sum, got {self.mix!r}")
        if self.latents_dtype not in (None, "float32", "float16", "bfloat16"):
            raise ValueError(f"data.corpus.latents_dtype: expected float32, float16, bfloat16 or null, "
                             f"got {self.latents_dtype!r}")


def synthesize_store(root: Path, n_videos: int, world, corpus: CorpusConfig, sampling: str, seed: int,
                     min_change: float = 0.0) -> Path:
    """Write synthetic videos and build their session store (both resumable); ``min_change``:
    the static-frame filter (0: off)."""
    from .build import build_sessions
    from .sampling import SamplingConfig
    from .store import StoreMismatch
    from .video import write_synthetic_corpus

    videos, store = root / "videos", root / "store"
    write_synthetic_corpus(videos, n_videos, world, seed=seed, workers=corpus.workers, codec=corpus.codec,
                           progress=True)
    samp = SamplingConfig(strategy=sampling, interval_s=corpus.interval_s, n_frames=tuple(corpus.n_frames),
                          min_change=min_change)
    try:
        build_sessions(videos, store, sampling=samp, workers=corpus.workers, seed=seed)   # prints its summary
    except StoreMismatch as e:                 # synthetic sessions are derived data: rebuild, do not mix
        print(f"   {e}: rebuilding it", flush=True)
        shutil.rmtree(store)
        build_sessions(videos, store, sampling=samp, workers=corpus.workers, seed=seed)
    return store


def decode_corpus(store_root, corpus: CorpusConfig, limit: int | None = None):
    """DALI-decode a whole store into memory: list[DecodedSession]."""
    from .dali_decode import decode_store
    from .store import SessionStore

    store = SessionStore(store_root)
    n = len(store) if limit is None else min(limit, len(store))
    size = corpus.image_size
    device = "mixed" if torch.cuda.is_available() else "cpu"
    return decode_store(store, range(n), size=(size, size) if size else None, device=device)


def encode_corpus(decoded, image_encoder, batch: int = 256) -> list[EncodedSession]:
    """Frames and RoE maps through the frozen image encoder (maps as 3-channel images)."""
    out = []
    for a in range(0, len(decoded), batch):
        chunk = decoded[a:a + batch]
        imgs = [torch.from_numpy(np.ascontiguousarray(s.frames)) for s in chunk]
        maps = [torch.from_numpy(np.concatenate([s.roe_src, s.roe_tgt])).unsqueeze(-1).expand(-1, -1, -1, 3)
                for s in chunk]
        lat_f = image_encoder.encode(torch.cat(imgs))
        lat_m = image_encoder.encode(torch.cat(maps).contiguous())
        i = j = 0
        for s, f in zip(chunk, imgs):
            k = f.shape[0]
            fr, mp = lat_f[i:i + k], lat_m[j:j + 2 * (k - 1)]
            out.append(EncodedSession(frames=fr, texts=list(s.texts), cameras=list(s.cameras),
                                      roe_src=mp[:k - 1], roe_tgt=mp[k - 1:], meta={"video_id": s.video_id},
                                      captions=s.captions))
            i += k
            j += 2 * (k - 1)
    return out
