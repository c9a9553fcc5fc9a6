"""MM-DiT blocks: dual-stream (separate text/image weights) and shared (one weight set).

A block sees the streams as a list ``[text [S_txt, 1, D], image [S_img, 1, D]]`` and does,
per stream, with the stream's weight set::

    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = adaln(c, shared)[token blocks]
    x = x + gate_a * attn(modulate(norm(x), shift_a, scale_a))     # attention is joint
    x = x + gate_m * mlp(modulate(norm(x), shift_m, scale_m))      # SwiGLU

AdaLN modulation is computed for the ``nb`` blocks of the packed sequence (their timesteps)
and gathered per token by block id: never a per-token MLP. Under sequence parallelism the
streams are the local chunks and ``stream_blocks`` holds the local tokens' block ids.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from vincie_mcore.packed.maskspec import MaskSpec

GATE_CHUNKS = (2, 5)    # indices of gate_a and gate_m among the six modulation vectors


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def mark_sequence_parallel(module: torch.nn.Module) -> None:
    """Tag parameters that are replicated over TP but applied to sequence-parallel (local) tokens:
    their gradients are partial per rank and finalize_model_grads sums them over TP."""
    for p in module.parameters():
        p.sequence_parallel = True


# ----------------------------------------------------------------------------
# AdaLN modulation (per block, gathered per token)
# ----------------------------------------------------------------------------

class AdaLNTable(MegatronModule):
    """adaLN-single: modulation = shared(c) + a learned [num_chunks, D] table of this layer/stream."""

    def __init__(self, config, num_chunks: int = 6, zero_gates: bool = True):
        super().__init__(config=config)
        self.num_chunks = num_chunks
        table = torch.randn(num_chunks, config.hidden_size) / config.hidden_size ** 0.5
        if zero_gates and num_chunks == 6:
            table[list(GATE_CHUNKS)] = 0.0
        self.table = torch.nn.Parameter(table.to(config.params_dtype))
        mark_sequence_parallel(self)

    def forward(self, c: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """c [nb, D] (unused), shared [nb, num_chunks*D] -> [nb, num_chunks, D]."""
        return shared.reshape(shared.shape[0], self.num_chunks, -1) + self.table   # (nb, chunks, D)


class AdaLNLinear(MegatronModule):
    """Per-layer adaLN (DiT): modulation = Linear(SiLU(c)) owned by this layer/stream."""

    def __init__(self, config, num_chunks: int = 6, zero_gates: bool = True):
        super().__init__(config=config)
        self.num_chunks = num_chunks
        D = config.hidden_size
        self.linear = torch.nn.Linear(D, num_chunks * D, dtype=config.params_dtype)
        with torch.no_grad():
            torch.nn.init.normal_(self.linear.weight, std=config.init_method_std)
            self.linear.bias.zero_()
            if zero_gates and num_chunks == 6:
                w = self.linear.weight.view(num_chunks, D, D)
                w[list(GATE_CHUNKS)] = 0.0
        mark_sequence_parallel(self)

    def forward(self, c: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """c [nb, D] -> [nb, num_chunks, D]."""
        return self.linear(F.silu(c)).reshape(c.shape[0], self.num_chunks, -1)     # (nb, chunks, D)


# ----------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------

@dataclass
class MMDiTBlockSubmodules:
    adaln: ModuleSpec | type = None       # AdaLNTable / AdaLNLinear, one per weight set
    attention: ModuleSpec | type = None   # JointAttention with its JointAttentionSubmodules
    mlp: ModuleSpec | type = None         # Megatron MLP (linear_fc1 / linear_fc2), one per weight set


@dataclass
class BlockContext:
    """Per-forward inputs every block reads; built once by MMDiT.forward."""
    c: torch.Tensor                       # [nb, D] block timestep embeddings
    shared_mod: torch.Tensor | None       # [nb, 6D] adaLN-single shared modulation (None for per_layer)
    stream_blocks: list[torch.Tensor]     # per stream, long [S_i(local)]: block id of every token
    rope: tuple[torch.Tensor, torch.Tensor]   # cos, sin [S_local, head_dim/2]: rows of this rank's joint tokens
    spec: MaskSpec
    q_start: int = 0                      # joint index of the first local token (context parallelism)
    kv: list | None = None                # KV-cache path: one attention.LayerKV per layer (None: no cache)


class PerStream(MegatronModule):
    """A named set of modules, one per weight set (checkpoint keys ``<parent>.<name>.*``)."""

    def __init__(self, config, modules: dict[str, torch.nn.Module]):
        super().__init__(config=config)
        self.names = tuple(modules)
        for name, m in modules.items():
            self.add_module(name, m)

    def __getitem__(self, i: int) -> torch.nn.Module:
        return getattr(self, self.names[i])


class _MMDiTBlock(MegatronModule):
    weight_names: tuple[str, ...] = ()
    stream_weights: list[int] = []        # weight set of stream 0 (text) and stream 1 (image)

    pre_norm = "layer"                    # weightless LayerNorm ("rms" in model/official.py): the fused kernel's norm

    def __init__(self, config, submodules: MMDiTBlockSubmodules, layer_number: int, norm_eps: float = 1e-6,
                 tp_group=None, fused_ops: str = "torch"):
        super().__init__(config=config)
        from .fused_ops import get_fused_ops   # here: fused_ops imports this module
        self.layer_number = layer_number
        self.norm_eps = norm_eps
        self.ops = get_fused_ops(fused_ops)   # element-wise ops: torch or fused Triton (model/fused_ops.py)
        names = self.weight_names
        self.adaln = PerStream(config, {n: build_module(submodules.adaln, config=config) for n in names})
        self.attention = build_module(submodules.attention, config=config, weight_names=names, tp_group=tp_group)
        self.mlp = PerStream(config, {n: build_module(submodules.mlp, config=config,
                                                      ffn_hidden_size=config.ffn_hidden_size, tp_group=tp_group)
                                      for n in names})

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=self.norm_eps)

    def forward(self, streams: list[torch.Tensor], ctx: BlockContext) -> list[torch.Tensor]:
        """streams: [text [S_txt, 1, D], image [S_img, 1, D]] -> same shapes."""
        w, ops = self.stream_weights, self.ops
        # per stream: the [nb, 6, D] table and the tokens' block ids (torch: the gathered 6 x (S_i, 1, D))
        mods = [ops.modulation(self.adaln[w[i]](ctx.c, ctx.shared_mod), ctx.stream_blocks[i])
                for i in range(len(streams))]
        h = [ops.norm_modulate(self, x, m, 0, 1) for x, m in zip(streams, mods)]
        kv = None if ctx.kv is None else ctx.kv[self.layer_number - 1]
        attn = self.attention(h, w, ctx.rope, ctx.spec, q_start=ctx.q_start, kv=kv)
        streams = [ops.gated_residual(x, a, m, 2) for x, m, a in zip(streams, mods, attn)]
        out = []
        for i, (x, m) in enumerate(zip(streams, mods)):
            y, bias = self.mlp[w[i]](ops.norm_modulate(self, x, m, 3, 4))          # (S_i, 1, D)
            if bias is not None:
                y = y + bias
            out.append(ops.gated_residual(x, y, m, 5))
        return out


class DualStreamBlock(_MMDiTBlock):
    """Separate weights for the text and the image stream; joint attention."""
    weight_names = ("txt", "img")
    stream_weights = [0, 1]


class SharedBlock(_MMDiTBlock):
    """One weight set applied to both streams; joint attention."""
    weight_names = ("joint",)
    stream_weights = [0, 0]


# ----------------------------------------------------------------------------
# Final layer (image stream only)
# ----------------------------------------------------------------------------

class FinalLayer(MegatronModule):
    """norm -> modulate(shift, scale from the block timestep) -> Linear(D, patch_dim)."""

    def __init__(self, config, adaln: ModuleSpec | type, out_dim: int, norm_eps: float = 1e-6,
                 zero_init: bool = True):
        super().__init__(config=config)
        self.norm_eps = norm_eps
        self.adaln = build_module(adaln, config=config, num_chunks=2)
        self.linear = torch.nn.Linear(config.hidden_size, out_dim, dtype=config.params_dtype)
        with torch.no_grad():
            if zero_init:
                self.linear.weight.zero_()
            else:
                torch.nn.init.normal_(self.linear.weight, std=config.init_method_std)
            self.linear.bias.zero_()
        mark_sequence_parallel(self)

    def forward(self, x: torch.Tensor, c: torch.Tensor, token_blocks: torch.Tensor) -> torch.Tensor:
        """x [S, 1, D], c [nb, D], token_blocks [S] -> [S, 1, out_dim]."""
        shift, scale = self.adaln(c, torch.cat([c, c], dim=-1)).index_select(0, token_blocks).unsqueeze(1).unbind(2)
        x = modulate(F.layer_norm(x, (x.shape[-1],), eps=self.norm_eps), shift, scale)
        return self.linear(x)                                                    # (S, 1, out_dim)
