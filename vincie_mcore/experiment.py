"""End-to-end wiring from one resolved config: corpus -> stream -> model -> trainer -> editor -> judge.

Each step is a small function the CLIs in ``tools/`` compose; nothing here
knows about the command line. The config groups are documented in
``configs/config.yaml``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .config import build
from .data.packing import EncodedSession, PackConfig, PackedStream
from .data.recipe import RecipeConfig
from .diffusion.flow import FlowConfig, training_loss
from .encoders import ImageEncoderConfig, TextEncoder, TextEncoderConfig, build_image_encoder
from .infer.editor import Editor, SamplerConfig


@dataclass
class CorpusConfig:
    store: str | None = None          # a session store built beforehand (real data); None: synthesize one
    heldout_store: str | None = None  # sessions for evaluation; None: synthesize one
    videos: int = 2000                # synthetic training videos
    heldout_videos: int = 200         # synthetic held-out videos (other seed)
    sampling: str = "mixed"           # frame sampling for training sessions: equal | fixed | mixed
    interval_s: float = 1.0           # equal-interval sampling period (paper: e.g. 3 s on real video)
    n_frames: tuple = (2, 6)          # fixed-frame sampling: frames per session, [min, max]
    heldout_sampling: str = "fixed"   # held-out sessions (evaluation keeps those with one edit per turn)
    codec: str = "vp9"                # synthetic video codec (DALI decodes VP9/MJPEG on CPU)
    workers: int = 2                  # processes for video writing / session building
    image_size: int | None = None     # DALI resize target (square); None keeps the stored size
    max_sessions: int | None = None   # use at most this many training sessions (data-scaling sweeps)

    def __post_init__(self):
        for k in ("videos", "heldout_videos", "workers"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < (1 if k == "workers" else 0):
                raise ValueError(f"data.corpus.{k}: must be a non-negative int (workers >= 1), got {getattr(self, k)!r}")


# ----------------------------------------------------------------------------- configs

def data_configs(cfg):
    """The data-side dataclasses of a resolved config."""
    from .data.world import WorldConfig

    d = cfg.data
    return dict(
        world=build(WorldConfig, d.world, "data.world"),
        corpus=build(CorpusConfig, d.corpus, "data.corpus"),
        recipe=build(RecipeConfig, d.recipe, "data.recipe"),
        pack=build(PackConfig, d.pack, "data.pack"),
        text=build(TextEncoderConfig, d.text_encoder, "data.text_encoder"),
        image=build(ImageEncoderConfig, d.image_encoder, "data.image_encoder"),
    )


# ----------------------------------------------------------------------------- corpus

def synthesize_store(root: Path, n_videos: int, world, corpus: CorpusConfig, sampling: str, seed: int) -> Path:
    """Write synthetic videos and build their session store (both resumable)."""
    from .data.build import build_sessions
    from .data.sampling import SamplingConfig
    from .data.video import write_synthetic_corpus

    videos, store = root / "videos", root / "store"
    write_synthetic_corpus(videos, n_videos, world, seed=seed, workers=corpus.workers, codec=corpus.codec,
                           progress=True)
    samp = SamplingConfig(strategy=sampling, interval_s=corpus.interval_s, n_frames=tuple(corpus.n_frames))
    build_sessions(videos, store, sampling=samp, workers=corpus.workers, seed=seed)   # prints its summary
    return store


def decode_corpus(store_root, corpus: CorpusConfig, limit: int | None = None):
    """DALI-decode a whole store into memory: list[DecodedSession]."""
    from .data.dali_decode import decode_store
    from .data.store import SessionStore

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
                                      roe_src=mp[:k - 1], roe_tgt=mp[k - 1:], meta={"video_id": s.video_id}))
            i += k
            j += 2 * (k - 1)
    return out


# ----------------------------------------------------------------------------- model + training

def init_parallel(cfg):
    from .parallel import cpu_compat
    from .parallel.groups import init_distributed

    cpu_compat.activate()
    p = cfg.parallel
    return init_distributed(tp=int(p.tp), cp=int(p.cp), dp=p.dp, seed=int(cfg.seed))


def make_model(cfg):
    from .model.config import MMDiTConfig
    from .model.mmdit import build_model

    mcfg = build(MMDiTConfig, cfg.model, "model")
    bf16 = torch.cuda.is_available() and cfg.train.get("dtype", "auto") in ("auto", "bf16")
    torch.manual_seed(int(cfg.seed))
    return build_model(mcfg, tensor_model_parallel_size=int(cfg.parallel.tp),
                       sequence_parallel=bool(cfg.parallel.get("sp", False)),
                       params_dtype=torch.bfloat16 if bf16 else torch.float32)


def make_loss(flow: FlowConfig):
    return partial(_loss, flow)


def _loss(flow, model, batch, gen):
    return training_loss(model, batch, flow, gen)


def make_trainer(cfg, model, stream, run_dir: Path, steps: int | None = None):
    from .train.trainer import TrainConfig, Trainer

    t = dict(cfg.train)
    t.setdefault("ckpt_dir", str(run_dir / "checkpoints"))
    t.setdefault("tensorboard_dir", str(run_dir / "tensorboard"))
    if steps is not None:
        t["steps"] = steps
        t["warmup"] = min(int(t.get("warmup", 0)), max(steps // 10, 0))
    flow = build(FlowConfig, cfg.flow, "flow")
    return Trainer(build(TrainConfig, t, "train"), model, make_loss(flow), stream)


def time_per_step(model, stream, flow: FlowConfig, n: int = 5) -> float:
    """Fwd+bwd seconds per batch on a throwaway copy of the stream (sizes the demo's schedule).

    The fastest of ``n`` probes: on a shared machine a median over-counts; ``max_minutes``
    still stops a run that turns out slower."""
    gen = torch.Generator().manual_seed(0)
    probe = PackedStream(stream.corpus, stream.text_encoder, stream.recipe, stream.cfg, seed=stream.seed + 999)
    batches = [next(probe) for _ in range(n + 1)]
    ts = []
    for b in batches:
        t0 = time.perf_counter()
        loss, _ = training_loss(model, b, flow, gen)
        loss.backward()
        ts.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return float(min(ts[1:]))


def make_editor(cfg, model, text_encoder, image_encoder) -> Editor:
    dc = data_configs(cfg)
    return Editor(model, text_encoder, image_encoder, dc["pack"], build(FlowConfig, cfg.flow, "flow"),
                  build(SamplerConfig, cfg.sampler, "sampler"),
                  device="cuda" if torch.cuda.is_available() else "cpu", mask_type=dc["recipe"].mask_type)


# ----------------------------------------------------------------------------- evaluation

def evaluate(editor: Editor, sessions, world, turns: int = 3, batch: int = 64, progress: bool = True):
    """Multi-turn editing of held-out sessions, judged exactly per turn.

    Turn k edits the model's own output of turn k-1 (the in-context setting);
    the copy baseline returns its input unchanged. Returns (results, strips)
    with results[k] a list of judge dicts for turn k+1.
    """
    from tqdm import tqdm

    from .eval.judge import edit_kinds, judge_edit

    # judged turns must each be exactly one edit (sampling can also give "no change" or several)
    sessions = [s for s in sessions if s.frames.shape[0] > turns and s.states
                and all(len(edit_kinds(s.states[k], s.states[k + 1], world)) == 1 for k in range(turns))]
    results = [[] for _ in range(turns)]
    baseline = [[] for _ in range(turns)]
    strips = []
    for a in tqdm(range(0, len(sessions), batch), desc="edit", disable=not progress):
        chunk = sessions[a:a + batch]
        hist = [([torch.from_numpy(np.ascontiguousarray(s.frames[0]))], []) for s in chunk]
        for k in range(turns):
            prompts = [s.texts[k] for s in chunk]
            outs = editor.edit_many(hist, prompts)
            for s, h, out, prompt in zip(chunk, hist, outs, prompts):
                results[k].append(judge_edit(out, s.states[k], s.states[k + 1], world))
                # the copy baseline returns its input each turn, so its chain stays at I0
                baseline[k].append(judge_edit(s.frames[0], s.states[k], s.states[k + 1], world))
                h[0].append(torch.from_numpy(out))
                h[1].append(prompt)
        if a == 0:
            strips = [(h[0], h[1], s.frames[: turns + 1]) for h, s in zip(hist[:6], chunk[:6])]
    return results, baseline, strips


def summarize_eval(results, baseline) -> dict:
    rate = lambda rs: float(np.mean([r["success"] for r in rs])) if rs else 0.0
    by_edit = {}
    for r in results[0]:
        by_edit.setdefault(r["edit_type"], []).append(r["success"])
    return dict(turn_success=[round(rate(r), 4) for r in results],
                baseline_success=[round(rate(b), 4) for b in baseline],
                success_by_edit={k: round(float(np.mean(v)), 4) for k, v in sorted(by_edit.items())},
                sessions=len(results[0]) if results else 0)


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def plot_losses(losses, path, window: int = 20):
    """Loss curve as PNG (raw and a running mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(losses, lw=0.6, alpha=0.4, label="loss")
    if len(losses) >= window:
        run = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(range(window - 1, len(losses)), run, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- inference from a run

def load_run(run_dir, overrides: list[str] | None = None):
    """(cfg, model, text encoder, image encoder) from a training run's folder: its saved
    config plus the latest checkpoint (model weights only)."""
    from omegaconf import OmegaConf

    from .train import checkpoint

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run_dir: no config.yaml in {run} (is it a training run folder?)")
    cfg = OmegaConf.load(cfg_path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    dc = data_configs(cfg)
    init_parallel(cfg)
    model = make_model(cfg)
    ckpt = Path(cfg.train.get("ckpt_dir") or run / "checkpoints")
    if checkpoint.load(str(ckpt), model) is None:
        raise FileNotFoundError(f"run_dir: no complete checkpoint under {ckpt}")
    model.eval()
    return cfg, model, TextEncoder(dc["text"]), build_image_encoder(dc["image"])
