"""The element-wise ops around an MM-DiT block, torch or fused Triton (``model.fused_ops``).

A block calls, per stream: ``modulation`` (its [nb, 6, D] AdaLN table -> a per-token handle),
``norm_modulate`` (pre-norm + shift/scale), ``gated_residual`` (x + gate * y); the attention calls
``fuses_qk`` / ``qk_norm_rope`` (per-head RMSNorm with weight, then RoPE). ``specs.py`` picks the
implementation (``resolve_fused_ops``); blocks and attention never branch on the name.

* ``TorchOps``: the arithmetic the model always had (index_select gather of the six chunks,
  ``blocks.modulate``, ``embeddings.apply_rope``), unchanged.
* ``TritonOps``: ``kernels/vincie_kernels/fused.py``; the per-token modulation rows are read inside
  the kernels, never gathered into an [S, 6, D] tensor. Q/K norms that are not ``torch.nn.RMSNorm``
  (Transformer Engine's TENorm) keep the torch norm and RoPE.

``blocks.py`` and ``attention.py`` import this module inside ``__init__`` (it imports ``blocks``).
"""
from __future__ import annotations

import torch

from .blocks import modulate
from .config import FUSED_OPS


def resolve_fused_ops(name: str, device: torch.device | str | None = None) -> str:
    """"auto" | "torch" | "triton" -> "torch" | "triton".

    "auto" is the torch path everywhere for now: the kernels have run only in Triton's interpreter
    and compiled for sm_90, never on a GPU. Once ``tools/gpu_check.sh`` records them equal and faster
    (``vincie-bench-layers``' ``fused_ops`` entry), "auto" becomes triton on CUDA (``device`` is kept for that)."""
    if name == "auto":
        return "torch"
    if name not in FUSED_OPS:
        raise ValueError(f"fused_ops: expected 'auto', 'torch' or 'triton', got {name!r}")
    return name


class TorchOps:
    """Today's torch code. ``m`` is the six gathered chunks, each (S_i, 1, D)."""
    name = "torch"

    @staticmethod
    def modulation(table: torch.Tensor, blk: torch.Tensor):
        # index_select, not table[blk]: its backward is index_add_, where table[blk]'s is a serial index_put
        return table.index_select(0, blk).unsqueeze(1).unbind(2)            # 6 x (S_i, 1, D)

    @staticmethod
    def norm_modulate(block, x: torch.Tensor, m, shift: int, scale: int) -> torch.Tensor:
        return modulate(block._norm(x), m[shift], m[scale])

    @staticmethod
    def gated_residual(x: torch.Tensor, y: torch.Tensor, m, gate: int) -> torch.Tensor:
        return x + m[gate] * y

    @staticmethod
    def fuses_qk(projs) -> bool:
        return False


class TritonOps:
    """Fused kernels. ``m`` is ``(table [nb, C, D], blk [S_i])``: rows are read in the kernels."""
    name = "triton"

    @staticmethod
    def _kernels():
        try:
            from vincie_kernels import fused
        except ImportError as e:
            raise RuntimeError(f"fused_ops 'triton' needs vincie_kernels.fused, which failed to import ({e}); "
                               f"use fused_ops='torch'") from e
        return fused

    @staticmethod
    def modulation(table: torch.Tensor, blk: torch.Tensor):
        return table, blk

    @classmethod
    def norm_modulate(cls, block, x: torch.Tensor, m, shift: int, scale: int) -> torch.Tensor:
        table, blk = m
        S, _, D = x.shape
        y = cls._kernels().norm_modulate(x.reshape(S, D), table, blk, shift, scale, block.norm_eps,
                                         rms=block.pre_norm == "rms")
        return y.view(S, 1, D)

    @classmethod
    def gated_residual(cls, x: torch.Tensor, y: torch.Tensor, m, gate: int) -> torch.Tensor:
        table, blk = m
        S, _, D = x.shape
        return cls._kernels().gated_residual(x.reshape(S, D), y.reshape(S, D), table, blk, gate).view(S, 1, D)

    @staticmethod
    def fuses_qk(projs) -> bool:
        return all(isinstance(n, torch.nn.RMSNorm) for p in projs for n in (p.q_layernorm, p.k_layernorm))

    @classmethod
    def qk_norm_rope(cls, qkvs, projs, cos: torch.Tensor, sin: torch.Tensor):
        """Per stream: raw (q, k, v) of ``projs[i]`` -> joint q, k normed with that stream's weights and
        rotated by its rows of the joint cos/sin (streams are consecutive spans in joint order)."""
        f = cls._kernels()
        qs, ks, row = [], [], 0
        for (q, k, _), p in zip(qkvs, projs):
            c, s = cos[row:row + q.shape[0]], sin[row:row + q.shape[0]]
            row += q.shape[0]
            for x, norm, out in ((q, p.q_layernorm, qs), (k, p.k_layernorm, ks)):
                w = norm.weight if norm.weight is not None else torch.ones(x.shape[-1], dtype=x.dtype,
                                                                             device=x.device)
                eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
                out.append(f.qk_norm_rope(x, w, c, s, eps))
        return torch.cat(qs, dim=0), torch.cat(ks, dim=0)


def get_fused_ops(name: str):
    """"torch" | "triton" (already resolved) -> the ops class."""
    ops = {"torch": TorchOps, "triton": TritonOps}.get(name)
    if ops is None:
        raise ValueError(f"fused_ops: expected a resolved 'torch' or 'triton', got {name!r}")
    return ops
