"""The released VINCIE DiT weights (``dit.pth`` / ``ema.pth``) -> this library (docs/official.md).

* ``plan_import(dit, cfg)``: reads names and shapes only (``torch.load(mmap=True, weights_only=True)`` or
  safetensors) and checks every tensor against the official variant of ``cfg`` before anything is read
  or written: unknown, missing and wrongly shaped tensors are listed one line each.
* ``converted(dit, plan)``: yields (our name, full tensor) one target at a time (memory-mapped source).
* ``load_official(model, dit)``: into a built ``OfficialMMDiT`` (any TP rank: each takes its slice).
* ``import_official(dit, out, ...)``: a step-0 training checkpoint at the layout of a composed config,
  written by the real trainer on ``tp x cp x dp`` spawned ranks (as ``convert/hf.py`` imports an export).

Layout conversions (release -> ours):
  fused QKV rows [all q; all k; all v] -> per head [q, k, v]; no QKV bias in the release -> zeros;
  adaLN-single's output rows (d, layer, gate) -> (chunk = 3 * layer + gate, d); per-layer offsets
  {attn,mlp}_{shift,scale,gate} -> table rows with scale - 1 (ours modulates by 1 + scale);
  timestep features [sin | cos] -> [cos | sin] (the columns of the first timestep linear);
  patch features (ph, pw, c) -> (c, ph, pw) (input columns and output rows);
  SwiGLU proj_in_gate, proj_in -> linear_fc1 [gate; up]; the prompt-id table -> the turn table.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


class OfficialImportError(ValueError):
    """A release file that does not fit the config: one problem per line."""


STREAMS = {"vid": "img", "txt": "txt", "all": "joint"}
CHUNKS = ("attn_shift", "attn_scale", "attn_gate", "mlp_shift", "mlp_scale", "mlp_gate")
IGNORED = re.compile(r"blocks\.\d+\.attn\.rope\.rope\.freqs")      # RoPE frequency buffers: recomputed here


@dataclass
class Target:
    sources: list[str]          # official keys read (in the order ``fn`` takes them)
    fn: object                  # (*tensors) -> our full tensor
    shape: tuple                # our full shape


@dataclass
class ImportPlan:
    targets: dict[str, Target] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    zero: dict[str, tuple] = field(default_factory=dict)   # ours with no release counterpart: zeros


# ----------------------------------------------------------------------------
# Reading names, shapes and tensors
# ----------------------------------------------------------------------------

class _Source:
    """Name -> shape and name -> tensor of a release file, memory-mapped; safe loaders only."""

    @classmethod
    def of_shapes(cls, shapes: dict) -> "_Source":
        """Names and shapes only (checking a mapping without the data, e.g. the full-size release's)."""
        src = cls.__new__(cls)
        src.path, src.shapes = None, {k: tuple(v) for k, v in shapes.items()}
        src.get = lambda k: (_ for _ in ()).throw(OfficialImportError(f"{k}: a shapes-only source has no data"))
        return src

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise OfficialImportError(f"--dit: {self.path} is not a file")
        if self.path.suffix == ".safetensors":
            from safetensors import safe_open
            self._f = safe_open(str(self.path), "pt")
            self.shapes = {k: tuple(self._f.get_slice(k).get_shape()) for k in self._f.keys()}
            self.get = self._f.get_tensor
        else:
            try:
                sd = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:       # a pickle that needs code, or not a torch file at all
                raise OfficialImportError(f"--dit: {self.path} is not a weights-only torch file "
                                          f"({str(e).splitlines()[0][:200]})") from None
            if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
            if not isinstance(sd, dict):
                raise OfficialImportError(f"--dit: {self.path} holds a {type(sd).__name__}, not a state dict")
            # the release's FLOPs-counting wrapper prefixes module names
            sd = {k.replace("_flops_wrap_module.", ""): v for k, v in sd.items() if torch.is_tensor(v)}
            self._sd = sd
            self.shapes = {k: tuple(v.shape) for k, v in sd.items()}
            self.get = lambda k: self._sd[k]


# ----------------------------------------------------------------------------
# The mapping
# ----------------------------------------------------------------------------

def _geometry(cfg) -> tuple[int, int]:
    """(patch size p, latent channels C) from patch_dim = C p^2 and image_in_dim = (2C + 1) p^2."""
    p2 = (cfg.image_in_dim or cfg.patch_dim) - 2 * cfg.patch_dim
    p = int(round(p2 ** 0.5)) if p2 > 0 else 0
    if p < 1 or p * p != p2 or cfg.patch_dim % p2:
        raise OfficialImportError(f"model: image_in_dim={cfg.image_in_dim} and patch_dim={cfg.patch_dim} are not "
                                  f"(2C + 1) p^2 and C p^2 for integers C, p")
    return p, cfg.patch_dim // p2


def _targets(cfg, src_keys: set[str]) -> tuple[dict[str, Target], dict[str, tuple]]:
    """-> (our name -> Target, our name -> shape of the tensors the release lacks, written as zeros)."""
    D, H, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    p, C = _geometry(cfg)
    half = cfg.frequency_embedding_size // 2
    t: dict[str, Target] = {}
    zero: dict[str, tuple] = {}
    first = lambda *names: next((n for n in names if n + ".weight" in src_keys), names[0])

    def add(ours, sources, fn, shape):
        t[ours] = Target(list(sources), fn, tuple(shape))

    ident = lambda x: x
    cin = 2 * C + 1
    vin = first("vid_in.proj", "vid_in.img_proj")
    add("img_embedder.weight", [vin + ".weight"],
        lambda w: w.reshape(D, p, p, cin).permute(0, 3, 1, 2).reshape(D, cin * p * p), (D, cin * p * p))
    add("img_embedder.bias", [vin + ".bias"], ident, (D,))
    vout = first("vid_out.proj", "vid_out.img_proj")
    add("final_layer.linear.weight", [vout + ".weight"],
        lambda w: w.reshape(p, p, C, D).permute(2, 0, 1, 3).reshape(C * p * p, D), (C * p * p, D))
    add("final_layer.linear.bias", [vout + ".bias"],
        lambda b: b.reshape(p, p, C).permute(2, 0, 1).reshape(-1), (C * p * p,))
    add("final_layer.norm.weight", ["vid_out_norm.weight"], ident, (D,))
    add("final_layer.table", ["vid_out_ada.out_shift", "vid_out_ada.out_scale"],
        lambda sh, sc: torch.stack([sh, sc - 1]), (2, D))
    add("txt_embedder.turn_embedding.weight", ["prompt_id_embedding.embedding.weight"], ident,
        (cfg.max_turns, cfg.text_dim))
    if cfg.text_proj == "linear":
        for x in ("weight", "bias"):
            add(f"txt_embedder.proj.{x}", [f"txt_in.{x}"], ident, (D, cfg.text_dim) if x == "weight" else (D,))
    else:
        for x in ("weight", "bias"):
            add(f"txt_embedder.fc1.{x}", [f"txt_in.0.0.0.{x}"], ident,
                (cfg.text_dim, cfg.text_dim) if x == "weight" else (cfg.text_dim,))
            add(f"txt_embedder.proj.{x}", [f"txt_in.0.0.2.{x}"], ident, (D, cfg.text_dim) if x == "weight" else (D,))
        add("txt_embedder.norm.weight", ["txt_in.0.1.weight"], ident, (D,))
    # timestep MLP: sinusoid [sin | cos] in the release, [cos | sin] here
    add("t_embedder.linear_1.weight", ["emb_in.proj_in.weight"], lambda w: torch.cat([w[:, half:], w[:, :half]], 1),
        (D, 2 * half))
    add("t_embedder.linear_1.bias", ["emb_in.proj_in.bias"], ident, (D,))
    add("t_embedder.linear_2.weight", ["emb_in.proj_hid.weight"], ident, (D, D))
    add("t_embedder.linear_2.bias", ["emb_in.proj_hid.bias"], ident, (D,))
    add("adaln_single.weight", ["emb_in.proj_out.weight"],
        lambda w: w.reshape(D, 6, D).transpose(0, 1).reshape(6 * D, D), (6 * D, D))
    add("adaln_single.bias", ["emb_in.proj_out.bias"], lambda b: b.reshape(D, 6).t().reshape(-1), (6 * D,))

    qkv = lambda w: w.reshape(3, H, d, -1).transpose(0, 1).reshape(3 * H * d, -1).squeeze(-1)
    for i in range(cfg.num_layers):
        dual = i < cfg.mm_layers
        for rel, ours in ([("vid", "img"), ("txt", "txt")] if dual else [("all", "joint")]):
            b, o = f"blocks.{i}", f"layers.{i}"
            add(f"{o}.adaln.{ours}.table", [f"{b}.ada.{rel}.{c}" for c in CHUNKS],
                lambda *v: torch.stack([x - 1 if k in (1, 4) else x for k, x in enumerate(v)]), (6, D))
            add(f"{o}.attention.{ours}.linear_qkv.weight", [f"{b}.attn.proj_qkv.{rel}.weight"], qkv, (3 * H * d, D))
            if f"{b}.attn.proj_qkv.{rel}.bias" in src_keys:
                add(f"{o}.attention.{ours}.linear_qkv.bias", [f"{b}.attn.proj_qkv.{rel}.bias"], qkv, (3 * H * d,))
            else:                                                    # qk_bias: False in the release
                zero[f"{o}.attention.{ours}.linear_qkv.bias"] = (3 * H * d,)
            add(f"{o}.attention.{ours}.q_layernorm.weight", [f"{b}.attn.norm_q.{rel}.weight"], ident, (d,))
            add(f"{o}.attention.{ours}.k_layernorm.weight", [f"{b}.attn.norm_k.{rel}.weight"], ident, (d,))
            add(f"{o}.attention.{ours}.linear_proj.weight", [f"{b}.attn.proj_out.{rel}.weight"], ident, (D, H * d))
            add(f"{o}.attention.{ours}.linear_proj.bias", [f"{b}.attn.proj_out.{rel}.bias"], ident, (D,))
            F_ = cfg.ffn_hidden_size
            if dual and rel == "txt" and i == cfg.num_layers - 1:   # the release has none: its output is unused
                zero[f"{o}.mlp.{ours}.linear_fc1.weight"] = (2 * F_, D)
                zero[f"{o}.mlp.{ours}.linear_fc2.weight"] = (D, F_)
            else:
                add(f"{o}.mlp.{ours}.linear_fc1.weight", [f"{b}.mlp.{rel}.proj_in_gate.weight",
                                                          f"{b}.mlp.{rel}.proj_in.weight"],
                    lambda g, u: torch.cat([g, u]), (2 * F_, D))
                add(f"{o}.mlp.{ours}.linear_fc2.weight", [f"{b}.mlp.{rel}.proj_out.weight"], ident, (D, F_))
    return t, zero


def plan_import(dit, cfg, expected: dict[str, tuple] | None = None) -> tuple[ImportPlan, _Source]:
    """Check the release file ``dit`` (a path, or a ``_Source``) against the official variant ``cfg`` (an MMDiTConfig), and against
    ``expected`` (a built model's full parameter shapes) when given; only names and shapes are read.
    Raises OfficialImportError listing every problem, one per line."""
    if cfg.variant != "official":
        raise OfficialImportError(f"model.variant: import-official needs 'official', got {cfg.variant!r}")
    src = dit if isinstance(dit, _Source) else _Source(dit)
    targets, zero = _targets(cfg, set(src.shapes))
    problems, used = [], set()
    for name, tg in targets.items():
        used.update(tg.sources)
        miss = [s for s in tg.sources if s not in src.shapes]
        if miss:
            problems += [f"missing tensor {s} (for {name})" for s in miss]
            continue
        try:    # the conversion on meta tensors: the output shape without reading data
            ok = tuple(tg.fn(*[torch.empty(src.shapes[s], device="meta") for s in tg.sources]).shape) == tg.shape
        except RuntimeError:
            ok = False
        if not ok:
            got = " / ".join(str(list(src.shapes[s])) for s in tg.sources)
            problems.append(f"tensor {', '.join(tg.sources)}: shape {got} does not give {name} {list(tg.shape)} "
                            f"(model {cfg.hidden_size} wide, {cfg.num_heads} x {cfg.head_dim} heads, "
                            f"ffn {cfg.ffn_hidden_size}, text {cfg.text_dim})")
    ignored = []
    for k in sorted(set(src.shapes) - used):
        if IGNORED.fullmatch(k):
            ignored.append(k)
        else:
            problems.append(f"unknown tensor {k} {list(src.shapes[k])} (not in an official {cfg.num_layers}-layer "
                            f"model with {cfg.mm_layers} dual-stream layers)")
    if expected is not None:
        ours = {**{n: tg.shape for n, tg in targets.items()}, **zero}
        for name, shape in expected.items():
            if ours.get(name) != shape:
                problems.append(f"model tensor {name} {list(shape)}: the release mapping gives "
                                f"{list(ours[name]) if name in ours else 'nothing'}")
    if problems:
        raise OfficialImportError("\n".join(problems))
    return ImportPlan(targets=targets, ignored=ignored, zero=zero), src


def converted(plan: ImportPlan, src: _Source, names=None):
    """Yield (our name, full fp32 tensor) for ``names`` (default: every target), one at a time."""
    for name in (names if names is not None else list(plan.targets) + list(plan.zero)):
        if name in plan.zero:
            yield name, torch.zeros(plan.zero[name])
            continue
        tg = plan.targets[name]
        yield name, tg.fn(*[src.get(s).float() for s in tg.sources]).contiguous()


def load_official(model, dit) -> ImportPlan:
    """Copy the release file ``dit`` into a built OfficialMMDiT (this rank's TP slice of every tensor)."""
    from megatron.core.utils import get_pg_rank, get_pg_size

    from .hf import _local_slice

    params = dict(model.named_parameters())
    tp, r = get_pg_size(model.tp_group), get_pg_rank(model.tp_group)
    full_shape = lambda n, p: tuple(s * (tp if getattr(p, "tensor_model_parallel", False) and d == p.partition_dim
                                         else 1) for d, s in enumerate(p.shape))
    plan, src = plan_import(dit, model.cfg, expected={n: full_shape(n, p) for n, p in params.items()})
    with torch.no_grad():
        for name, full in converted(plan, src):
            p = params[name]
            p.copy_(_local_slice(name, full, p, tp, r).to(p.dtype))
    return plan


# ----------------------------------------------------------------------------
# A training checkpoint at any layout
# ----------------------------------------------------------------------------

# The release's sampler (configs/generate.yaml, generate_7b.yaml), written into an import's config.yaml so
# ``vincie-edit`` / ``vincie-app`` on the folder sample as ``generate.py`` does (docs/official.md).
RELEASE_SAMPLER = {"official_3b": dict(steps=50, shift=12.0, guidance=7.5),
                   "official_7b": dict(steps=50, shift=10.0, guidance=10.0)}


def _compose(preset: str | None, model_config, overrides):
    from omegaconf import OmegaConf

    from ..config import CONFIG_DIR, load_config
    ov = list(overrides or [])
    if preset:
        # the preset's encoders (data group of the same name) and sampler; the user's overrides come after
        data = [f"data={preset}"] if (Path(CONFIG_DIR) / "data" / f"{preset}.yaml").is_file() else []
        ov = [f"model={preset}"] + data + [f"sampler.{k}={v}" for k, v in RELEASE_SAMPLER.get(preset, {}).items()] + ov
    cfg = load_config(ov)
    if model_config is not None:
        OmegaConf.set_struct(cfg, False)
        cfg.model = OmegaConf.load(model_config)
    return cfg


def _fill_official(model, job: dict, dims) -> None:
    """The release file's tensors into this rank's model (a ``hf.write_step0`` fill)."""
    load_official(model, job["dit"])


def import_official(dit, out, preset: str | None = None, model_config=None, overrides: list[str] | None = None) -> dict:
    """Write a step-0 training checkpoint into ckpt_dir ``out`` from the release file ``dit``.

    preset: a model group (``official_3b`` / ``official_7b``) or model_config: a YAML file of the model
    group; overrides: Hydra overrides of the run (``parallel.tp=2``, ``parallel.cp=2``, ...). Every tensor
    is checked before any process starts or any file is written."""
    from omegaconf import OmegaConf

    from ..config import build
    from ..model.config import MMDiTConfig
    from .hf import write_step0

    t0 = time.perf_counter()
    if (preset is None) == (model_config is None):
        raise OfficialImportError("import-official: give exactly one of --preset and --model-config")
    cfg = _compose(preset, model_config, overrides)
    mcfg = build(MMDiTConfig, cfg.model, "model")
    plan, _ = plan_import(dit, mcfg)
    lay = write_step0(cfg, out, _fill_official, "import-official", dit=str(dit))
    cfg = OmegaConf.merge(cfg, {"parallel": {"dp": lay["dp"]}})
    _write_run_config(cfg, out)
    return {"ckpt_dir": str(out), "step": 0, **lay,
            "tensors": len(plan.targets), "zeros": len(plan.zero), "ignored": len(plan.ignored),
            "seconds": round(time.perf_counter() - t0, 2)}


def _write_run_config(cfg, out) -> None:
    """``out/config.yaml``: makes the import a run folder (``build.load_run``, ``vincie-edit --run``,
    ``vincie-app --run``). The checkpoint loads at any layout, so the file holds the one-process layout an
    editor runs at (a training launch sets its own); ``train.ckpt_dir`` is left unset: ``load_run`` finds
    the checkpoint beside the file. Encoder paths the user did not give stay ``???`` and are named by
    ``load_run`` when it needs them."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(cfg, {"parallel": {"tp": 1, "cp": 1, "dp": None, "sp": False},
                                "train": {"ckpt_dir": None}, "run_dir": str(out)})
    (Path(out) / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
