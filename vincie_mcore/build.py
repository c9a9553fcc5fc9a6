"""A run's objects from one resolved config: data configs, process groups, model, trainer, editor.

Each step is a small function the CLIs (``vincie_tools``) and ``demo.py`` compose; nothing
here knows about the command line. ``build_training`` is the whole of ``vincie-train`` up to
``trainer.train()``; ``load_run`` is the inverse for inference: a training run's folder back to
its model and encoders. The config groups are documented in ``configs/config.yaml``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import ConfigError, build, load_config
from .data.corpus import CorpusConfig, decode_corpus, encode_corpus, synthesize_store
from .data.packing import PackConfig
from .data.recipe import RecipeConfig
from .diffusion.flow import FlowConfig, training_loss
from .encoders import ImageEncoderConfig, TextEncoder, TextEncoderConfig, build_image_encoder
from .infer.editor import Editor, SamplerConfig, editor_for

if TYPE_CHECKING:                    # imported where used: Megatron loads with the trainer
    from .model.config import MMDiTConfig
    from .train.trainer import TrainConfig


# ----------------------------------------------------------------------------- configs

def data_sections() -> dict:
    """name -> (config group, the dataclass it is built into), for ``data_configs``."""
    from .data.world import WorldConfig

    return {"world": ("data.world", WorldConfig), "corpus": ("data.corpus", CorpusConfig),
            "recipe": ("data.recipe", RecipeConfig), "pack": ("data.pack", PackConfig),
            "text": ("data.text_encoder", TextEncoderConfig), "image": ("data.image_encoder", ImageEncoderConfig)}


def data_configs(cfg):
    """The data-side dataclasses of a resolved config, and the pairs no single one can check."""
    out = {name: build(cls, cfg.data[group.split(".")[1]], group) for name, (group, cls) in data_sections().items()}
    rope = out["pack"].rope_mode
    if rope == "text_then_image" and out["recipe"].mask_type != "full":
        raise ConfigError(f"data.pack.rope_mode: text_then_image needs data.recipe.mask_type=full, got "
                          f"{out['recipe'].mask_type!r} (an image's position counts its session's later text)")
    if is_official(cfg) and rope != "separate":     # its packer never reads rope_mode
        raise ConfigError(f"data.pack.rope_mode: the official variant places images by model.rope_image_origin "
                          f"(after_text or zero); leave rope_mode at separate, got {rope!r}")
    return out


# ----------------------------------------------------------------------------- model + training

def init_parallel(cfg):
    from .parallel import cpu_compat
    from .parallel.groups import init_distributed

    cpu_compat.activate()
    p = cfg.parallel
    return init_distributed(tp=int(p.tp), cp=int(p.cp), dp=p.dp, seed=int(cfg.seed))


def make_model(cfg):
    """The model of ``cfg``, parallelized with the layout ``init_parallel`` set up (call that first)."""
    from .model.config import MMDiTConfig
    from .model.mmdit import build_model
    from .parallel.dims import ParallelDims, parallelize
    from .train.trainer import precision

    mcfg = build(MMDiTConfig, cfg.model, "model")
    # the trainer's TrainConfig.params_dtype goes through the same function (a bf16 run on a CPU: float32)
    dtype = precision(cfg.train.get("dtype", "auto"))
    sp = bool(cfg.parallel.get("sp", False))
    torch.manual_seed(int(cfg.seed))
    model = build_model(mcfg, tensor_model_parallel_size=int(cfg.parallel.tp), sequence_parallel=sp,
                        params_dtype=dtype)
    return parallelize(model, ParallelDims.current(sp=sp))


def make_loss(flow: FlowConfig, official_patch: int | None = None):
    """The trainer's loss_fn; ``official_patch``: the patch size of a ``model.variant: official`` run, whose
    loss is the release's v_lerp on its token layout (``diffusion/official_flow.py``)."""
    if official_patch is not None:
        from .diffusion.official_flow import make_official_loss
        return make_official_loss(flow, official_patch)
    return partial(_loss, flow)


def _loss(flow, model, batch, gen):
    return training_loss(model, batch, flow, gen)


def is_official(cfg) -> bool:
    return cfg.model.get("variant", "paper") == "official"


def flow_config(cfg) -> FlowConfig:
    """``flow``: FlowConfig, or for ``model.variant: official`` its OfficialFlowConfig (extra keys)."""
    if is_official(cfg):
        from .diffusion.official_flow import OfficialFlowConfig
        return build(OfficialFlowConfig, cfg.flow, "flow")
    return build(FlowConfig, cfg.flow, "flow")


@dataclass
class RunConfig:
    """Every section of a resolved config, built (``build_run_config``)."""
    model: MMDiTConfig
    train: TrainConfig
    flow: FlowConfig
    sampler: SamplerConfig
    data: dict                       # data_configs(cfg)


def build_run_config(cfg) -> RunConfig:
    """Build every section of ``cfg`` the way the run will, so that a bad key of any section is one
    ``ConfigError`` before process groups, data or models are made (``vincie-train``, ``vincie-demo``)."""
    from .model.config import MMDiTConfig
    from .train.trainer import TrainConfig

    from .eval.magicbrush import MagicBrushEvalConfig

    if "eval" in cfg and "magicbrush" in cfg.eval:
        build(MagicBrushEvalConfig, cfg.eval.magicbrush, "eval.magicbrush")
    return RunConfig(model=build(MMDiTConfig, cfg.model, "model"), train=build(TrainConfig, cfg.train, "train"),
                     flow=flow_config(cfg), sampler=build(SamplerConfig, cfg.sampler, "sampler"),
                     data=data_configs(cfg))


def init_weights(cfg, model, ckpt_dir: str) -> None:
    """``train.init_from``: a checkpoint folder (e.g. ``vincie-convert import-official --out``) whose model
    weights start a run at step 0; skipped when the run's own ``ckpt_dir`` already holds a checkpoint
    (a resume). Loaded before the trainer wraps the model, so the optimizer's fp32 copies start from it."""
    from .train import checkpoint

    src = cfg.train.get("init_from")
    if not src or (cfg.train.get("resume", True) and checkpoint.latest_step(ckpt_dir) is not None):
        return
    if checkpoint.load(str(src), model) is None:
        raise ConfigError(f"train.init_from: no complete checkpoint under {src}")
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(f"train.init_from: model weights of {src} at step {checkpoint.latest_step(str(src))}", flush=True)


def make_trainer(cfg, model, stream, run_dir: Path, steps: int | None = None, warmup: int | None = None):
    """The run's Trainer. ``steps`` / ``warmup`` replace ``train.steps`` / ``train.warmup`` as given: a caller
    that shortens a run passes the warmup it wants too (warmup >= steps is train.warmup's one-line error)."""
    from .train.trainer import TrainConfig, Trainer

    t = dict(cfg.train)
    t.setdefault("ckpt_dir", str(run_dir / "checkpoints"))
    t.setdefault("tensorboard_dir", str(run_dir / "tensorboard"))
    for k, v in (("steps", steps), ("warmup", warmup)):
        if v is not None:
            t[k] = v
    flow = flow_config(cfg)
    official_patch = int(cfg.data.pack.patch_size) if is_official(cfg) else None
    tcfg = build(TrainConfig, t, "train")
    init_weights(cfg, model, t["ckpt_dir"])
    return Trainer(tcfg, model, make_loss(flow, official_patch), stream, run_dir=str(run_dir),
                   hooks=make_hooks(cfg, tcfg, run_dir))


def make_hooks(cfg, tcfg, run_dir: Path) -> list:
    """The trainer hooks the config asks for: ``train.eval_every`` > 0 evaluates into
    ``<run_dir>/eval_<step>.json``: MagicBrush sessions when ``eval.magicbrush.data`` is set (fine-tuning on
    editing data), else the held-out sessions of ``train.eval_store`` (default ``<run_dir>/heldout/store``)."""
    from .train.hooks import EvalHook

    if not tcfg.eval_every:
        return []
    mb = (cfg.get("eval") or {}).get("magicbrush") or {}
    if mb.get("data"):
        return [EvalHook(tcfg.eval_every, magicbrush_evaluator(cfg), run_dir)]
    store = tcfg.eval_store or str(Path(run_dir) / "heldout" / "store")
    return [EvalHook(tcfg.eval_every, synthetic_evaluator(cfg, store, tcfg.eval_sessions), run_dir)]


def magicbrush_evaluator(cfg):
    """``vincie-benchmark magicbrush`` as an ``EvalHook`` callable: the first ``eval.magicbrush.sessions``
    sessions of ``eval.magicbrush.data`` edited by the trainer's current weights in ``setting`` (each edit's
    noise seeded by session and turn, so evaluations differ only by the weights), scored with CLIP and DINO
    (loaded once, now: a bad folder stops the run before it trains). Returns the per-turn, final-turn and
    all-turn means. Every rank edits (the forward is collective under TP/CP); rank 0 writes."""
    from .eval.magicbrush import MagicBrushEvalConfig, MagicBrushMetrics, read_magicbrush, run_magicbrush
    from .train.hooks import unwrap

    ec = build(MagicBrushEvalConfig, cfg.eval.magicbrush, "eval.magicbrush")
    try:
        sessions = read_magicbrush(ec.data, ec.captions)[:ec.sessions]
        metrics = MagicBrushMetrics(ec.metrics)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"eval.magicbrush: {' '.join(str(e).split())}") from None
    dc = data_configs(cfg)
    cache = {}

    def run(trainer) -> dict:
        if not cache:
            cache.update(text=TextEncoder(dc["text"]), image=build_image_encoder(dc["image"]))
        editor = make_editor(cfg, unwrap(trainer.model), cache["text"], cache["image"])
        res = run_magicbrush(editor, sessions, metrics=metrics, progress=False, setting=ec.setting, batch=ec.batch)
        return {"magicbrush": {k: res[k] for k in ("setting", "sessions", "per_turn", "final_turn", "all_turns")}}

    return run


def _wait_group():
    """A gloo group with a long time-out for waiting on data work (a synthetic store or a precompute takes
    minutes, longer than NCCL's default collective time-out); None in a single process."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=6))


def _on_rank0(fn, what: str = "build the synthetic store"):
    """``fn()`` on rank 0 only; the other ranks wait for it, then get its (picklable) result.

    The wait is a broadcast on a gloo group with a long time-out, and it carries rank 0's error, if any,
    so the others fail with it instead of waiting forever. Every rank writing the same store at once is
    a race (``FileNotFoundError ... vid_000056.tmp.webm``)."""
    import torch.distributed as dist

    group = _wait_group()
    if group is None:
        return fn()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except Exception as e:                               # the others must not wait for a result forever
            box = [("error", f"{type(e).__name__}: {e}")]
            dist.broadcast_object_list(box, src=0, group=group)
            raise
    dist.broadcast_object_list(box, src=0, group=group)
    kind, value = box[0]
    if kind == "error":
        raise RuntimeError(f"rank 0 failed to {what}: {value}")
    return value


def _on_every_rank(fn, what: str):
    """``fn()`` on every rank, then a wait for all of them (an all-gather of each rank's outcome on a
    long time-out gloo group): a rank that failed makes every rank raise, naming it, not hang."""
    import torch.distributed as dist

    group = _wait_group()
    if group is None:
        return fn()
    try:
        mine, err = fn(), None
    except Exception as e:
        mine, err = None, f"{type(e).__name__}: {e}"
    outcomes = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, (mine, err), group=group)
    bad = [(r, e) for r, (_, e) in enumerate(outcomes) if e is not None]
    if bad:
        r, e = bad[0]
        raise RuntimeError(f"rank {r} failed to {what}: {e}")
    return mine


def run_latents(dc: dict, store, run: Path, block_rows: int = 256) -> Path:
    """The latent store of ``store`` under ``<run>/latents`` (docs/latent_store.md, "The default path"),
    made by every rank together: rank 0 clears a store of other settings or another source (derived data
    of this run folder), each rank encodes its share of blocks (``--shard rank/world``, on
    cuda:LOCAL_RANK when there is a GPU), rank 0 finalizes. A complete store of the same encoders,
    precision, recipe texts and source is reused as it is. -> its path."""
    import shutil

    import torch.distributed as dist
    import zarr

    from .data.latents import encoder_identity, finalize, precompute, reuse_check

    corpus = dc["corpus"]
    out = run / "latents"
    dtype = corpus.latents_dtype or "float32"
    identity = encoder_identity(dc["image"], dc["text"], dc["recipe"], corpus.image_size, dtype)

    def check() -> bool:                   # rank 0: True when a complete store of this source is there
        if not out.exists():
            return False
        why = reuse_check(out, identity, store)
        if why is None:
            attrs = zarr.open_group(str(out), mode="r").attrs
            if attrs.get("complete"):
                return True
            if attrs.get("block_rows") == block_rows:
                return False               # cut short: precompute encodes the blocks not yet done
            why = f"an unfinished latent store {out} of {attrs.get('block_rows')}-row blocks"
        print(f"   {why.splitlines()[0]}: encoding it again", flush=True)
        shutil.rmtree(out)
        return False

    if _on_rank0(check, "check the latent store"):
        print(f"   reusing the latent store {out}", flush=True)
        return out
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    encode = partial(precompute, store, out, dc["image"], dc["text"], dc["recipe"], image_size=corpus.image_size,
                     dtype=dtype, shard=(rank, world), block_rows=block_rows, finalize_when_done=False)
    _on_every_rank(encode, "encode its blocks of the latent store")
    summary = _on_rank0(lambda: finalize(out), "finalize the latent store")
    print(f"   latent store {out}: {summary['rows']} sessions, {summary['images']} images", flush=True)
    return out


def official_layout(cfg, dc: dict, flow):
    """The official variant's sample layout for the latent stream (``data/stream.py`` ``OfficialLayout``);
    a model whose token width does not fit the patches is refused naming the key."""
    from .data.official_pack import check_official_widths
    from .data.stream import OfficialLayout
    from .model.config import MMDiTConfig

    model_cfg = build(MMDiTConfig, cfg.model, "model")
    try:
        check_official_widths(model_cfg, dc["pack"].patch_size)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    return OfficialLayout(model_cfg, text_drop=flow.text_drop, uncond=flow.uncond_text)


def build_training(cfg):
    """Everything ``vincie-train`` runs, built: process groups, ``<run_dir>/config.yaml`` (rank 0), the
    corpus, its stream, the model and the trainer. -> (parallel dims, trainer).

    The corpus is ``data.corpus.store`` or, when that is null, a synthetic store that rank 0 writes into
    ``<run_dir>/train`` while the others wait. The paper variant trains by streaming a latent store
    (``data/stream.py``): ``data.corpus.latents`` when given, else the store encoded once into
    ``<run_dir>/latents`` (``run_latents``); the pairwise ablation (``data.recipe.pairwise``) streams
    the same store cut into pairs. The official variant streams a latent store of its own text layout
    (``data.corpus.latents``, made by ``vincie-precompute`` with the run's config: ``OfficialLayout``);
    without one it decodes the corpus into RAM (``OfficialStream``), fine for a small corpus only.

    Raises ``ConfigError`` naming the key for a bad value, and for an impossible parallel layout
    (``parallel: ...``, the first line of the groups' error)."""
    from omegaconf import OmegaConf

    dc = data_configs(cfg)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    try:
        dims = init_parallel(cfg)
    except ValueError as e:                                      # impossible layout: one line naming it
        raise ConfigError(f"parallel: {str(e).splitlines()[0]}") from None
    if dims.rank == 0:
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    corpus = dc["corpus"]
    official = is_official(cfg)
    flow = flow_config(cfg)                                       # bad flow keys fail before the corpus is built
    for key in ("t2i_prob", "t2v_prob"):
        if official and getattr(dc["recipe"], key) > 0:
            raise ConfigError(f"data.recipe.{key}: the official variant trains the release's session layout only "
                              "(no text-to-image or -video samples); set it to 0")
    if official and dc["recipe"].mask_type != "full":
        raise ConfigError(f"data.recipe.mask_type: the official variant trains one target per session under "
                          f"the full mask, got {dc['recipe'].mask_type!r}")
    micro = int(cfg.train.get("micro_batches", 1))
    if corpus.latents:                    # a latent store made beforehand (vincie-precompute)
        from .data.stream import stream_from_config
        stream = stream_from_config(dc, int(cfg.seed), dims, micro_batches=micro,
                                    official=official_layout(cfg, dc, flow) if official else None)
        return dims, make_trainer(cfg, make_model(cfg), stream, run)
    store = corpus.store or _on_rank0(lambda: synthesize_store(run / "train", corpus.videos, dc["world"], corpus,
                                                               corpus.sampling, int(cfg.seed), corpus.min_change))
    if not official:                      # the default: encode once into the run folder, stream it
        from dataclasses import replace

        from .data.stream import stream_from_config
        latents = run_latents(dc, store, run)
        stream = stream_from_config(dc | {"corpus": replace(corpus, latents=str(latents))}, int(cfg.seed), dims,
                                    micro_batches=micro)
        return dims, make_trainer(cfg, make_model(cfg), stream, run)
    weights = official_weights(store, corpus, dims.rank == 0) if corpus.mix else None   # bad mix: before decoding
    decoded = decode_corpus(store, corpus, corpus.max_sessions)
    train_corpus = encode_corpus(decoded, build_image_encoder(dc["image"]))
    # every DP rank draws its own batches; TP/CP ranks of one replica share them
    seed = int(cfg.seed) + 7919 * dims.dp_rank
    # the official variant: the release's layout (data/official_pack.py)
    from .data.official_pack import OfficialStream
    from .model.config import MMDiTConfig
    try:
        stream = OfficialStream(train_corpus, TextEncoder(dc["text"]), dc["recipe"], dc["pack"],
                                build(MMDiTConfig, cfg.model, "model"), seed=seed, text_drop=flow.text_drop,
                                uncond=flow.uncond_text, weights=weights,
                                mix=json.dumps(corpus.mix, sort_keys=True) if corpus.mix else "")
    except ValueError as e:                                   # widths of model and patches disagree
        raise ConfigError(str(e).splitlines()[0]) from None
    model = make_model(cfg)
    return dims, make_trainer(cfg, model, stream, run)


def official_weights(store, corpus, log: bool = True) -> np.ndarray:
    """The official variant's in-memory corpus under ``data.corpus.mix``: per session (the store's first
    ``max_sessions``), how likely a draw takes it, so that each weighted source gets its weight's share of
    draws, its sessions alike; a source left out weighs 0. Bad mixes: ``check_mix``'s one line."""
    from .data.store import SessionStore
    from .data.stream import check_mix

    st = SessionStore(store)
    n = len(st) if corpus.max_sessions is None else min(corpus.max_sessions, len(st))
    sources = [(name, min(a, n), min(b, n)) for name, a, b in st.sources()]
    used = check_mix(corpus.mix, sources, {name: b - a for name, a, b in sources})
    total = sum(used.values())
    weights = np.zeros(n)
    for name, a, b in sources:
        if name in used:
            weights[a:b] = used[name] / total / (b - a)
            if log:
                print(f"   mix: {name}: weight {used[name] / total:.3f}, {b - a} sessions drawn at random", flush=True)
    return weights


# ----------------------------------------------------------------------------- inference

def make_editor(cfg, model, text_encoder, image_encoder) -> Editor:
    """The editor of a loaded run, with the run's sampler settings (``infer.editor.editor_for``)."""
    dc = data_configs(cfg)
    return editor_for(str(cfg.model.get("variant", "paper")), model, text_encoder, image_encoder, dc["pack"],
                      flow_config(cfg), build(SamplerConfig, cfg.sampler, "sampler"),
                      "cuda" if torch.cuda.is_available() else "cpu", dc["recipe"].mask_type, dc["corpus"].image_size)


def _known_overrides(cfg, overrides: list[str], cfg_path) -> list[str]:
    """``overrides`` for ``OmegaConf.from_dotlist``, each key checked: a key the saved config lacks would be
    added silently (``eval.trns=2`` changing nothing), so it must be one of the default config's (a key newer
    than the run) or be written ``+key=value``."""
    from omegaconf import OmegaConf

    missing, out, defaults = object(), [], None
    for o in overrides:
        key, eq, value = o.partition("=")
        if not eq or not key.lstrip("+"):
            raise ValueError(f"override {o!r}: expected key=value")
        if key.startswith("+"):
            out.append(f"{key[1:]}={value}")
            continue
        if OmegaConf.select(cfg, key, default=missing) is missing:
            if defaults is None:
                defaults = load_config()
            if OmegaConf.select(defaults, key, default=missing) is missing and not _schema_field(key):
                raise ValueError(f"{key}: not a key of {cfg_path} nor of the default config (a typo? "
                                 f"+{key}=... adds it anyway)")
        out.append(o)
    return out


def _schema_field(key: str) -> bool:
    """Whether ``key`` names a field of the dataclass its group is built into (``train.ckpt_dir``: a
    TrainConfig field no YAML sets)."""
    import dataclasses

    from .model.config import MMDiTConfig
    from .train.trainer import TrainConfig

    groups = {"train": TrainConfig, "model": MMDiTConfig, "sampler": SamplerConfig, "flow": FlowConfig,
              **dict(data_sections().values())}
    group, _, field = key.rpartition(".")
    cls = groups.get(group)
    return cls is not None and field in {f.name for f in dataclasses.fields(cls)}


def run_config(run_dir, overrides: list[str] | None = None):
    """A training run's saved config with ``overrides``, checked for what loading it for editing needs
    (the encoders' paths), without building anything."""
    from omegaconf import OmegaConf

    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run_dir: no config.yaml in {run_dir} (is it a training run folder?)")
    cfg = OmegaConf.load(cfg_path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(_known_overrides(cfg, list(overrides), cfg_path)))
    for group in ("text_encoder", "image_encoder"):     # e.g. an import-official folder without encoder paths
        missing = OmegaConf.missing_keys(cfg.data.get(group) or {})
        if missing:
            key = sorted(missing)[0]                     # the full key, e.g. data.text_encoder.path
            raise ValueError(f"{key}: not set in {cfg_path} (give it, e.g. --set {key}=PATH)")
    return cfg


def run_ckpt_dir(run_dir, cfg) -> Path:
    """Where a run folder's checkpoints are: a training run keeps checkpoints/ beside config.yaml; an
    import-official folder is its ckpt_dir itself; ``train.ckpt_dir`` overrides both."""
    run = Path(run_dir)
    return Path(cfg.train.get("ckpt_dir") or (run if (run / "latest").exists() else run / "checkpoints"))


def latest_run_step(run_dir, overrides: list[str] | None = None) -> int | None:
    """The step ``load_run`` would load now (None: no complete checkpoint): pass it back as ``step`` to
    load exactly that one while a training run goes on writing newer ones."""
    from .train import checkpoint

    return checkpoint.latest_step(str(run_ckpt_dir(run_dir, run_config(run_dir, overrides))))


def load_run(run_dir, overrides: list[str] | None = None, step: int | None = None):
    """(cfg, model, text encoder, image encoder) from a training run's folder: its saved
    config plus its latest checkpoint, or ``step``'s (model weights only)."""
    from .train import checkpoint

    cfg = run_config(run_dir, overrides)
    dc = data_configs(cfg)
    init_parallel(cfg)
    model = make_model(cfg)
    ckpt = run_ckpt_dir(run_dir, cfg)
    if checkpoint.load(str(ckpt), model, step=step) is None:
        raise FileNotFoundError(f"run_dir: no complete checkpoint under {ckpt}")
    model.eval()
    return cfg, model, TextEncoder(dc["text"]), build_image_encoder(dc["image"])


def synthetic_evaluator(cfg, store, sessions: int | None = None):
    """``vincie-evaluate``'s evaluation as an ``EvalHook`` callable: multi-turn edits of the held-out
    sessions of ``store`` (decoded once, on first use) by the trainer's current weights, judged exactly
    per turn; returns ``summarize_eval``'s summary."""
    from .data.corpus import decode_corpus
    from .encoders import TextEncoder, build_image_encoder
    from .eval.synthetic import (evaluate, evaluate_t2i, evaluate_t2v, mean_cell_error, summarize_eval,
                                 summarize_t2i, summarize_t2v)
    from .train.hooks import unwrap

    store = Path(store)
    if not store.is_dir():
        raise FileNotFoundError(f"train.eval_store: no session store at {store}")
    dc = data_configs(cfg)
    cache = {}

    def run(trainer) -> dict:
        if not cache:
            cache.update(held=decode_corpus(store, dc["corpus"], sessions), text=TextEncoder(dc["text"]),
                         image=build_image_encoder(dc["image"]))
        editor = make_editor(cfg, unwrap(trainer.model), cache["text"], cache["image"])
        results, baseline, _ = evaluate(editor, cache["held"], dc["world"], turns=int(cfg.eval.turns),
                                        batch=int(cfg.eval.batch), progress=False)
        # plus a continuous figure, which moves with the weights when the success rates do not (early on)
        out = summarize_eval(results, baseline) | {"cell_error": [mean_cell_error(r) for r in results]}
        if dc["recipe"].t2i_prob > 0:                      # what the text-to-image samples taught, too
            out |= summarize_t2i(*evaluate_t2i(editor, cache["held"], dc["world"], batch=int(cfg.eval.batch),
                                               progress=False)[:2])
        if dc["recipe"].t2v_prob > 0:                      # ... and the text-to-video samples
            out |= summarize_t2v(*evaluate_t2v(editor, cache["held"], dc["world"], turns=int(cfg.eval.turns),
                                               batch=int(cfg.eval.batch), progress=False)[:2])
        return out

    return run


# ----------------------------------------------------------------------------- precompute

def precompute_with_config(store, out, overrides: list[str] | None = None, **kw) -> dict:
    """``precompute`` with the encoders, image size and recipe texts of a Hydra config (the same
    keys training reads, so the store matches the run that will open it)."""
    from .data.latents import precompute

    cfg = load_config(list(overrides or []))
    dc = data_configs(cfg)
    kw.setdefault("layout", "official" if is_official(cfg) else "paper")
    return precompute(store, out, dc["image"], dc["text"], dc["recipe"], image_size=dc["corpus"].image_size, **kw)
