"""The only place that chooses implementations for the MM-DiT.

``get_block_specs(cfg)`` returns the ``ModuleSpec`` of the dual-stream and the shared block
and the adaLN class the final layer uses. Backends:

* local: Megatron ``tensor_parallel`` ``ColumnParallelLinear`` / ``RowParallelLinear``,
  Megatron's torch RMSNorm wrapper for the per-head QK norm, Megatron's ``MLP`` (SwiGLU).
* torch: plain single-device linears (``model/torch_linear.py``; TP = 1, no SP) and the local norm;
  the FP8 path that does not need Transformer Engine: ``train.fp8.backend: torchao``.
* transformer_engine: TE linears and TE RMSNorm (``megatron.core.extensions.transformer_engine``);
  also the FP8 path: ``train.fp8`` (``model/fp8.py``) runs the forward under TE's FP8 autocast.
  Needs Transformer Engine (CUDA only).

The attention core is ours in both: ``TorchMaskedAttention`` (per-session SDPA) or
``TritonMaskedAttention`` (the kernel); "auto" picks Triton on CUDA and torch otherwise.
The element-wise ops around the blocks (pre-norm + AdaLN modulate, gated residuals, QK-norm + RoPE)
follow ``model.fused_ops`` (``model/fused_ops.py``): "torch", "triton" (fused kernels,
``kernels/vincie_kernels/fused.py``) or "auto" (triton on CUDA, torch otherwise), passed to the
block and attention specs as their ``fused_ops`` param.
Megatron's own local attention is never used (it is dense and ~5x slower: docs/measured.md).
Measured on one H200 (bf16, 3B width, 4 layers, ~10k-token packs of 2-4 sessions): the torch
core was 10-30 % faster end to end than the Triton kernel of that day; re-measure with
tests/model/gpu_check.py before trusting "auto".
"""
from __future__ import annotations

import importlib.util

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from .attention import JointAttention, JointAttentionSubmodules, TorchMaskedAttention, TritonMaskedAttention
from .blocks import AdaLNLinear, AdaLNTable, DualStreamBlock, MMDiTBlockSubmodules, SharedBlock
from .config import MMDiTConfig
from .fused_ops import resolve_fused_ops


def core_attention_class(backend: str, device: torch.device | str | None = None) -> type:
    """"torch" | "triton" | "auto" -> the core class ("auto": triton when the model lives on CUDA)."""
    if backend == "auto":
        on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        backend = "triton" if on_cuda else "torch"
    if backend == "torch":
        return TorchMaskedAttention
    if backend == "triton":
        return TritonMaskedAttention
    raise ValueError(f"attention_backend: expected 'auto', 'torch' or 'triton', got {backend!r}")


def _adaln_spec(cfg: MMDiTConfig) -> ModuleSpec:
    cls = AdaLNTable if cfg.adaln == "single" else AdaLNLinear
    return ModuleSpec(module=cls, params={"zero_gates": cfg.adaln_zero_init})


def _local_modules():
    return dict(column=ColumnParallelLinear, row=RowParallelLinear, norm=WrappedTorchNorm)


def _torch_modules():
    from .torch_linear import TorchLinear
    return dict(column=TorchLinear, row=TorchLinear, norm=WrappedTorchNorm)


def _te_modules():
    """Megatron's TE wrappers: TEColumnParallelLinear / TERowParallelLinear (qkv, proj, fc1, fc2; the FP8
    GEMMs under ``fp8_autocast``) and TENorm (RMSNorm here, from the TransformerConfig) for the QK norms."""
    if importlib.util.find_spec("transformer_engine") is None:
        raise RuntimeError("transformer_impl='transformer_engine' needs Transformer Engine, which is not installed "
                           "(pip install -e .[gpu] on a CUDA machine); use transformer_impl='local'")
    try:
        import transformer_engine.pytorch  # noqa: F401
        from megatron.core.extensions import transformer_engine as mte
    except Exception as e:    # ImportError, or OSError/RuntimeError when CUDA libraries are missing
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"transformer_impl='transformer_engine' needs Transformer Engine, which failed to "
                           f"import ({msg}); use transformer_impl='local'") from e
    if not getattr(mte, "HAVE_TE", False):
        raise RuntimeError("transformer_impl='transformer_engine': megatron.core.extensions.transformer_engine "
                           "did not find Transformer Engine; use transformer_impl='local'")
    return dict(column=mte.TEColumnParallelLinear, row=mte.TERowParallelLinear, norm=mte.TENorm)


def get_block_specs(cfg: MMDiTConfig, device=None) -> tuple[ModuleSpec, ModuleSpec, ModuleSpec]:
    """-> (dual_stream_block_spec, shared_block_spec, final_layer_adaln_spec)."""
    mods = {"transformer_engine": _te_modules, "torch": _torch_modules}.get(cfg.transformer_impl, _local_modules)()
    core = core_attention_class(cfg.attention_backend, device)
    if core is TritonMaskedAttention:
        core = ModuleSpec(module=core, params={"tilings": cfg.attention_tilings})
    fused = resolve_fused_ops(cfg.fused_ops, device)
    attention = ModuleSpec(
        module=JointAttention, params={"fused_ops": fused},
        submodules=JointAttentionSubmodules(linear_qkv=mods["column"], q_layernorm=mods["norm"],
                                            k_layernorm=mods["norm"], core_attention=core,
                                            linear_proj=mods["row"]))
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=mods["column"], linear_fc2=mods["row"]))
    adaln = _adaln_spec(cfg)
    sub = MMDiTBlockSubmodules(adaln=adaln, attention=attention, mlp=mlp)
    block_params = {"norm_eps": cfg.norm_eps, "fused_ops": fused}
    dual_cls, shared_cls = DualStreamBlock, SharedBlock
    if cfg.variant == "official":       # the released blocks: RMSNorm pre-norms (model/official.py)
        from .official import OfficialDualStreamBlock as dual_cls, OfficialSharedBlock as shared_cls
    dual = ModuleSpec(module=dual_cls, params=block_params, submodules=sub)
    shared = ModuleSpec(module=shared_cls, params=block_params, submodules=sub)
    final_adaln = ModuleSpec(module=adaln.module, params={"zero_gates": False})
    return dual, shared, final_adaln
