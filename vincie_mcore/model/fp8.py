"""FP8 training: the config, and its two backends (Transformer Engine, torchao).

FP8 is a precision choice, not architecture: ``FP8Config`` lives in the train config
(``train.fp8``) and is read by the trainer and ``vincie_mcore/perf/bench_layers.py``. The
attention core (ours: per-session SDPA or the Triton kernel) and the adaLN/embedder linears
stay in bf16 with either backend.

* ``backend: te`` (clusters): Transformer Engine's linears run in FP8 inside ``fp8_autocast``;
  needs ``model.transformer_impl: transformer_engine``. TP, SP and the recipes below.
* ``backend: torchao``: ``prepare_fp8_model`` gives every ``model/torch_linear.TorchLinear`` a
  torchao ``Float8Linear`` over the same parameters (dynamic scaling: ``tensorwise`` or
  ``rowwise``); needs ``model.transformer_impl: torch`` (one device). It is the FP8 path a GPU
  check can carry (a 3 MB wheel, where TE's is too large), and it runs on CPU too, which is how
  the tests check it (torch._scaled_mm has a CPU kernel).

Recipes:

* ``delayed``: per-tensor scales from a rolling amax history (``DelayedScaling``;
  ``margin``, ``amax_history_len``, ``amax_compute_algo`` apply).
* ``current``: per-tensor scales from the tensor being cast (``Float8CurrentScaling``,
  TE >= 2.2): one extra amax pass per cast, no history.

Caveat for ``delayed``: a shared MM-DiT block applies one weight set to the text and then the
image stream, i.e. each of its TE linears runs twice per forward. TE documents that a module
called twice inside one autocast region with ``reduce_amax=True`` keeps only the last call's
amax. With a single rank we turn ``reduce_amax`` off (each call then records its own amax);
with several ranks the text stream's amax is not seen by the scale. ``current`` has no such
issue, hence it is the default.

TE Linear in FP8 also needs every GEMM input to have a multiple of 16 rows: each stream's
token count (per rank under sequence parallelism) must be a multiple of 16; pad with
``data.pack.pad_multiple`` (``check_fp8_batch`` says so before TE asserts deep inside).
"""
from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import asdict, dataclass
from typing import Literal

import torch

FP8_BACKENDS = ("te", "torchao")
FP8_RECIPES = ("delayed", "current")                      # te
TORCHAO_RECIPES = ("tensorwise", "rowwise")               # torchao (Float8LinearConfig.from_recipe_name)
FP8_FORMATS = ("hybrid", "e4m3")
AMAX_ALGOS = ("max", "most_recent")
FP8_ROW_MULTIPLE = 16       # TE FP8 GEMMs: rows % 8 (fprop) and % 16 (wgrad, transposed) must be 0


@dataclass
class FP8Config:
    enabled: bool = False
    """Run the linears in FP8 (an FP8-capable GPU: compute capability >= 8.9; torchao also on CPU)."""
    backend: Literal["te", "torchao"] = "te"
    """"te" (Transformer Engine; transformer_impl='transformer_engine') or "torchao"
    (transformer_impl='torch', one device)."""
    recipe: str | None = None
    """None: the backend's default ("current" for te, "tensorwise" for torchao). te: "delayed" (scales from an amax history) or "current" (scales from the tensor itself); see
    the module docstring for why "current" is the default. torchao: "tensorwise" or "rowwise"."""
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"
    """"hybrid": E4M3 forward, E5M2 gradients (the usual training choice); "e4m3": E4M3 everywhere."""
    margin: int = 0
    """Delayed scaling: scale = fp8_max / amax / 2**margin (headroom in powers of two)."""
    amax_history_len: int = 1024
    """Delayed scaling: length of the amax history window."""
    amax_compute_algo: Literal["max", "most_recent"] = "max"
    """Delayed scaling: "max" over the history or the "most_recent" amax."""

    def __post_init__(self):
        def bad(key, why):
            raise ValueError(f"FP8Config.{key}: {why}, got {getattr(self, key)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(self.enabled, bool):
            bad("enabled", "must be a bool")
        if self.backend not in FP8_BACKENDS:
            bad("backend", f"must be one of {FP8_BACKENDS}")
        if self.recipe is None:
            self.recipe = "tensorwise" if self.backend == "torchao" else "current"
        if self.backend == "torchao":
            if self.recipe not in TORCHAO_RECIPES:
                bad("recipe", f"must be one of {TORCHAO_RECIPES} with backend='torchao'")
            return                                  # the remaining knobs are TE's
        if self.recipe not in FP8_RECIPES:
            bad("recipe", f"must be one of {FP8_RECIPES}")
        if self.fp8_format not in FP8_FORMATS:
            bad("fp8_format", f"must be one of {FP8_FORMATS}")
        if not is_int(self.margin) or self.margin < 0:
            bad("margin", "must be an int >= 0")
        if not is_int(self.amax_history_len) or self.amax_history_len < 1:
            bad("amax_history_len", "must be an int >= 1")
        if self.amax_compute_algo not in AMAX_ALGOS:
            bad("amax_compute_algo", f"must be one of {AMAX_ALGOS}")
        if self.recipe == "current" and (self.margin != 0 or self.amax_history_len != 1024
                                         or self.amax_compute_algo != "max"):
            # these knobs mean nothing to current scaling: silently ignoring them would mislead
            key = next(k for k, d in (("margin", 0), ("amax_history_len", 1024), ("amax_compute_algo", "max"))
                       if getattr(self, k) != d)
            bad(key, "only applies to recipe='delayed'")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------
# Transformer Engine access (imported lazily: TE cannot even be imported without CUDA)
# ----------------------------------------------------------------------------

def te_available() -> bool:
    """True when ``transformer_engine`` is installed (it may still fail to import without CUDA)."""
    return importlib.util.find_spec("transformer_engine") is not None


def _import_te():
    try:
        import transformer_engine.common.recipe as te_recipe
        import transformer_engine.pytorch as te_pt
    except Exception as e:   # ImportError, or OSError/RuntimeError from a CUDA-less machine
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"FP8Config.enabled: FP8 needs Transformer Engine, which failed to import ({msg})") from e
    return te_pt, te_recipe


def fp8_supported() -> tuple[bool, str]:
    """(supported, reason) for FP8 on the current GPU, as Transformer Engine reports it."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    te_pt, _ = _import_te()
    for name in ("is_fp8_available",):                     # TE >= 2.x public helper
        fn = getattr(te_pt, name, None)
        if fn is not None:
            try:
                ok, why = fn(return_reason=True)
                return bool(ok), str(why or "")
            except TypeError:
                return bool(fn()), ""
    from transformer_engine.pytorch.fp8 import check_fp8_support   # older TE
    ok, why = check_fp8_support()
    return bool(ok), str(why or "")


def make_recipe(cfg: FP8Config, world_size: int = 1):
    """FP8Config -> a Transformer Engine recipe object.

    world_size: ranks in the amax reduction group; with one rank the delayed recipe does not
    reduce amaxes, so a module called twice per forward (shared blocks) keeps both calls' amax.
    """
    _, R = _import_te()
    fmt = R.Format.HYBRID if cfg.fp8_format == "hybrid" else R.Format.E4M3
    if cfg.recipe == "delayed":
        return R.DelayedScaling(fp8_format=fmt, margin=cfg.margin, amax_history_len=cfg.amax_history_len,
                                amax_compute_algo=cfg.amax_compute_algo, reduce_amax=world_size > 1)
    if not hasattr(R, "Float8CurrentScaling"):
        raise RuntimeError("FP8Config.recipe: 'current' needs Transformer Engine >= 2.2 (Float8CurrentScaling); "
                           "use recipe='delayed'")
    return R.Float8CurrentScaling(fp8_format=fmt)


def fp8_autocast(cfg: FP8Config | None, group=None):
    """Context manager running the TE modules inside it in FP8; a no-op when cfg is None or disabled,
    and with the torchao backend (its linears are converted once, by ``prepare_fp8_model``).

    Only the forward goes inside; TE runs the backward in FP8 on its own. ``group``: the amax
    reduction group (``ParallelDims.amax_group``); None on one rank (no reduction).
    """
    if cfg is None or not cfg.enabled or cfg.backend == "torchao":
        return contextlib.nullcontext()
    te_pt, _ = _import_te()
    n = torch.distributed.get_world_size(group) if group is not None else 1
    recipe = make_recipe(cfg, world_size=n)
    if hasattr(te_pt, "autocast"):                          # TE >= 2.8; fp8_autocast is deprecated there
        return te_pt.autocast(enabled=True, recipe=recipe, amax_reduction_group=group)
    return te_pt.fp8_autocast(enabled=True, fp8_recipe=recipe, fp8_group=group)


# ----------------------------------------------------------------------------
# Checks that turn TE's deep asserts into one-line errors naming the setting to change
# ----------------------------------------------------------------------------

def uses_transformer_engine(model: torch.nn.Module) -> bool:
    """True when any submodule is a Transformer Engine module."""
    return any(type(m).__module__.startswith("transformer_engine") for m in model.modules())


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def prepare_fp8_model(cfg: FP8Config | None, model: torch.nn.Module) -> int:
    """Check the model against the FP8 config; with the torchao backend, also give every eligible
    ``TorchLinear`` its ``Float8Linear`` (same parameters; the state dict is unchanged). Returns the
    number of linears that run in FP8 (0 when FP8 is off; TE's are counted by TE)."""
    check_fp8_model(cfg, model)
    if cfg is None or not cfg.enabled or cfg.backend != "torchao":
        return 0
    from types import SimpleNamespace

    from torchao.float8 import Float8LinearConfig
    from torchao.float8.float8_linear import Float8Linear

    from .torch_linear import TorchLinear, fp8_eligible
    ao_cfg = Float8LinearConfig.from_recipe_name(cfg.recipe)
    n = 0
    for m in model.modules():
        if isinstance(m, TorchLinear) and fp8_eligible(m):
            # skip_bias_add: the bias is returned apart (Megatron's contract), so the FP8 GEMM has none
            src = SimpleNamespace(in_features=m.in_features, out_features=m.out_features, weight=m.weight,
                                  bias=None if m.skip_bias_add else m.bias)
            m.set_fp8(Float8Linear.from_float(src, config=ao_cfg))
            n += 1
    if n == 0:
        raise ValueError("FP8Config.enabled: no linear has both dims a multiple of 16, nothing would run in FP8")
    return n


def check_fp8_model(cfg: FP8Config | None, model: torch.nn.Module) -> None:
    """Raise if FP8 is on but nothing in the model would run in FP8, or the GPU cannot."""
    if cfg is None or not cfg.enabled:
        return
    if cfg.backend == "torchao":
        from .torch_linear import TorchLinear
        if not torchao_available():
            raise RuntimeError("FP8Config.backend: 'torchao' needs the torchao package (pip install torchao)")
        if not any(isinstance(m, TorchLinear) for m in model.modules()):
            raise ValueError("FP8Config.backend: 'torchao' converts the plain linears; set model.transformer_impl=torch")
        if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
            raise RuntimeError("FP8Config.enabled: this GPU cannot run FP8 (compute capability < 8.9)")
        return
    if not uses_transformer_engine(model):
        raise ValueError("FP8Config.enabled: the model has no Transformer Engine modules; set "
                         "model.transformer_impl=transformer_engine")
    ok, why = fp8_supported()
    if not ok:
        raise RuntimeError(f"FP8Config.enabled: this device cannot run FP8 ({why or 'compute capability < 8.9'})")


def check_fp8_batch(cfg: FP8Config | None, batch, tp_size: int = 1, sequence_parallel: bool = False) -> None:
    """Raise if a stream's per-rank token count is not a multiple of 16 (FP8 GEMM shapes, both backends:
    the weight-gradient GEMM contracts over the tokens)."""
    if cfg is None or not cfg.enabled or not hasattr(batch, "s_txt"):
        return
    split = tp_size if sequence_parallel else 1
    need = FP8_ROW_MULTIPLE * split
    for name, n in (("text", batch.s_txt), ("image", batch.s_img)):
        if n % need:
            raise ValueError(f"FP8Config.enabled: the {name} stream has {n} tokens, not a multiple of {need} "
                             f"(16 rows per rank); set data.pack.pad_multiple to a multiple of {need}")

