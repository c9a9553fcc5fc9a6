"""MMDiTConfig: the architecture of the MM-DiT, and nothing else.

Parallel sizes, dtypes and devices are not architecture: they enter through
``to_transformer_config(...)``, which builds the Megatron ``TransformerConfig``
the parallel linears (and Megatron's MLP) read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vincie_kernels.tilings import parse_tilings, tilings_text

ATTENTION_BACKENDS = ("auto", "torch", "triton")
FUSED_OPS = ("auto", "torch", "triton")
TRANSFORMER_IMPLS = ("local", "transformer_engine", "torch")
ADALN_MODES = ("single", "per_layer")
VARIANTS = ("paper", "official")
TEXT_PROJS = ("linear", "mlp_norm")
ROPE_IMAGE_ORIGINS = ("after_text", "zero")


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


@dataclass
class MMDiTConfig:
    hidden_size: int = 128
    """Width D of both streams."""
    num_layers: int = 4
    """Total number of transformer blocks."""
    mm_layers: int = 2
    """The first ``mm_layers`` blocks keep separate weights for the text and image stream
    (dual-stream); the remaining ``num_layers - mm_layers`` share one set over both."""
    num_heads: int = 4
    """Attention heads."""
    head_dim: int | None = None
    """Channels per head. None: hidden_size / num_heads. May differ from it (7B: 32 x 128 over hidden 3584):
    linear_qkv is D -> 3 * num_heads * head_dim and linear_proj num_heads * head_dim -> D."""
    ffn_hidden_size: int | None = None
    """SwiGLU inner width F (fc1 is D -> 2F, fc2 is F -> D). None: 8/3 * D rounded up to 64."""
    text_dim: int = 64
    """Width of the frozen text-encoder outputs (``PackedBatch.txt_emb``)."""
    patch_dim: int = 192
    """Width of one patchified latent token: latent_channels * patch_size**2."""
    max_turns: int = 8
    """Number of learnable ``<TURN>_i`` embeddings (i in [0, max_turns))."""
    rope_theta: float = 10000.0
    """RoPE base frequency (text 1D and image 3D alike)."""
    image_abs_pos_grid: int = 0
    """0 (the paper): image tokens carry position through 3D RoPE only. N > 0: also add a learned
    absolute (h, w) embedding for token grids up to N x N (a DiT/SD3-style aid for tiny models)."""
    text_adaln: bool = False
    """False (the paper's description): text reaches image tokens through joint attention only.
    True: each block's AdaLN conditioning also gets a projection of the mean text-encoder embedding of
    the instruction that produced it (its transition text, plus its own prompt for RoE maps), the
    pooled-text vector of SD3/FLUX MM-DiTs, here per block (``PackedBatch.block_text``)."""
    rope_axes_dim: tuple[int, int, int] | None = None
    """Head-dim split across the image axes (turn, h, w); even entries summing to head_dim.
    None: turn gets head_dim/4 (rounded down to even), h and w share the rest."""
    softmax_scale: float | None = None
    """Attention logit scale. None: 1/sqrt(head_dim). With QK RMSNorm a logit is at most
    scale * head_dim (norm gains 1), so small heads start with blunt attention: sqrt(32) = 5.7."""
    adaln: str = "single"
    """"single": one shared SiLU->Linear(D, 6D) over the block-timestep embedding plus a learned
    per-layer, per-stream [6, D] table (adaLN-single, PixArt-alpha / Seaweed); "per_layer": every
    block and stream owns a SiLU->Linear(D, 6D) (DiT). The nominal 3B/7B counts imply "single"."""
    adaln_zero_init: bool = True
    """Start every residual gate at 0 so each block begins as the identity (adaLN-Zero)."""
    norm_eps: float = 1e-6
    """Epsilon of the parameter-free pre-norms (LayerNorm) and the final norm."""
    qk_norm_eps: float = 1e-6
    """Epsilon of the per-head RMSNorm on queries and keys."""
    frequency_embedding_size: int = 256
    """Width of the sinusoidal timestep features fed to the timestep MLP."""
    timestep_scale: float = 1000.0
    """t in [0, 1] is multiplied by this before the sinusoidal features."""
    init_method_std: float = 0.02
    """Std of the normal init of every linear weight (output projections scaled by 1/sqrt(2L))."""
    attention_backend: str = "auto"
    """Core attention: "torch" (per-session SDPA), "triton" (kernels/vincie_kernels/masked_attention.py),
    "auto" (triton on CUDA, torch otherwise)."""
    fused_ops: str = "auto"
    """Element-wise ops around each block (pre-norm + AdaLN modulate, gated residuals, QK RMSNorm + RoPE):
    "torch" (separate torch ops), "triton" (fused kernels, kernels/vincie_kernels/fused.py),
    "auto" (triton on CUDA, torch otherwise)."""
    attention_tilings: str = "default"
    """Tilings of the Triton attention kernels for bf16/fp16 on CUDA (``kernels/vincie_kernels/tilings.py``):
    "default", a preset ("legacy", "fa2"), "fwd=128x64x8x3,dkdv=32x128x8x2,dq=128x64x8x2"
    (block_m x block_n x warps x stages per kernel; "+tma" after one streams its tiles through TMA on
    sm_90+) or "tuned=<vincie-tune-attention JSON>" (read once,
    here, and kept as the explicit text, so a saved config stands without the file). fp32 and the CPU
    interpreter keep the kernels' defaults; the torch core ignores it. It changes speed, never the math."""
    transformer_impl: str = "local"
    """Linear/norm implementations: "local" (Megatron tensor_parallel), "transformer_engine", or "torch"
    (plain single-device linears, model/torch_linear.py: the FP8 path through torchao)."""
    variant: str = "paper"
    """"paper": the paper-faithful model (clean context in the sequence at t = 0, LayerNorm pre-norms).
    "official": the released VINCIE-3B/7B (``model/official.py``, docs/official.md): one token per image
    carrying [x_t | clean latent | flag], every token under the sample's t, RMSNorm pre-norms and final
    norm, the turn table in the text encoder's space, 3-axis RoPE with an unrotated tail, no MLP biases."""
    image_in_dim: int | None = None
    """Width of an image-stream input token. None: patch_dim. The official variant reads, per pixel of a
    patch in (ph, pw, c) order, [x_t (C) | clean latent (C) | flag (1)]: patch_size**2 * (2C + 1)."""
    text_proj: str = "linear"
    """Official variant: "linear" (3B) or "mlp_norm" (7B: Linear, GELU(tanh), Linear, then RMSNorm)."""
    rope_image_origin: str = "after_text"
    """Official variant: image i of a session sits at (L_text + i, h, w) ("after_text", 3B) or at
    (i, h, w) ("zero", 7B); text token j at (j, j, j)."""

    def __post_init__(self):
        if isinstance(self.rope_axes_dim, list):
            self.rope_axes_dim = tuple(self.rope_axes_dim)
        for name in ("hidden_size", "num_layers", "num_heads", "text_dim", "patch_dim", "max_turns",
                     "frequency_embedding_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MMDiTConfig.{name}: expected a positive int, got {v!r}")
        if not isinstance(self.image_abs_pos_grid, int) or isinstance(self.image_abs_pos_grid, bool) \
                or self.image_abs_pos_grid < 0:
            raise ValueError(f"MMDiTConfig.image_abs_pos_grid: expected an int >= 0, got {self.image_abs_pos_grid!r}")
        if self.softmax_scale is not None and not (isinstance(self.softmax_scale, (int, float))
                                                   and not isinstance(self.softmax_scale, bool) and self.softmax_scale > 0):
            raise ValueError(f"MMDiTConfig.softmax_scale: expected a positive number or null, got {self.softmax_scale!r}")
        if not isinstance(self.mm_layers, int) or not 0 <= self.mm_layers <= self.num_layers:
            raise ValueError(f"MMDiTConfig.mm_layers: expected an int in [0, num_layers={self.num_layers}], "
                             f"got {self.mm_layers!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"MMDiTConfig.hidden_size: {self.hidden_size} is not divisible by "
                                 f"num_heads={self.num_heads} (or set head_dim)")
            self.head_dim = self.hidden_size // self.num_heads
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"MMDiTConfig.head_dim: expected an even int >= 2 (RoPE rotates pairs), got {self.head_dim!r}")
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = _round_up(int(self.hidden_size * 8 / 3), 64)
        if not isinstance(self.ffn_hidden_size, int) or self.ffn_hidden_size < 1:
            raise ValueError(f"MMDiTConfig.ffn_hidden_size: expected a positive int or None, got {self.ffn_hidden_size!r}")
        if self.rope_axes_dim is None:
            t = self.head_dim // 4 // 2 * 2
            h = (self.head_dim - t) // 4 * 2
            self.rope_axes_dim = (t, h, self.head_dim - t - h)
        ax = self.rope_axes_dim
        # the official variant leaves the channels after sum(rope_axes_dim) unrotated
        bad_sum = sum(ax) > self.head_dim if self.variant == "official" else sum(ax) != self.head_dim
        if len(ax) != 3 or any((not isinstance(a, int)) or a < 0 or a % 2 for a in ax) or bad_sum:
            raise ValueError(f"MMDiTConfig.rope_axes_dim: expected 3 non-negative even ints summing to "
                             f"head_dim={self.head_dim}, got {ax!r}")
        if self.rope_theta <= 0:
            raise ValueError(f"MMDiTConfig.rope_theta: expected > 0, got {self.rope_theta!r}")
        if self.adaln not in ADALN_MODES:
            raise ValueError(f"MMDiTConfig.adaln: expected one of {ADALN_MODES}, got {self.adaln!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"MMDiTConfig.attention_backend: expected one of {ATTENTION_BACKENDS}, "
                             f"got {self.attention_backend!r}")
        if self.fused_ops not in FUSED_OPS:
            raise ValueError(f"MMDiTConfig.fused_ops: expected one of {FUSED_OPS}, got {self.fused_ops!r}")
        try:
            self.attention_tilings = tilings_text(parse_tilings(self.attention_tilings))
        except ValueError as e:
            raise ValueError(f"MMDiTConfig.attention_tilings: {e}") from None
        if self.transformer_impl not in TRANSFORMER_IMPLS:
            raise ValueError(f"MMDiTConfig.transformer_impl: expected one of {TRANSFORMER_IMPLS}, "
                             f"got {self.transformer_impl!r}")
        for name, allowed in (("variant", VARIANTS), ("text_proj", TEXT_PROJS),
                              ("rope_image_origin", ROPE_IMAGE_ORIGINS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"MMDiTConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.image_in_dim is not None and (not isinstance(self.image_in_dim, int) or self.image_in_dim < 1):
            raise ValueError(f"MMDiTConfig.image_in_dim: expected a positive int or null, got {self.image_in_dim!r}")
        if self.variant == "official":
            for name, want in (("adaln", "single"), ("text_adaln", False), ("image_abs_pos_grid", 0)):
                if getattr(self, name) != want:
                    raise ValueError(f"MMDiTConfig.{name}: the official variant needs {want!r}, got "
                                     f"{getattr(self, name)!r}")
        for name in ("norm_eps", "qk_norm_eps", "init_method_std", "timestep_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MMDiTConfig.{name}: expected > 0, got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ factories
    # (built from a mapping by ``vincie_mcore.config.build(MMDiTConfig, d, "model")``)
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rope_axes_dim"] = list(self.rope_axes_dim)
        return d

    def to_transformer_config(self, tensor_model_parallel_size: int = 1, sequence_parallel: bool = False,
                              params_dtype: torch.dtype = torch.float32,
                              use_cpu_initialization: bool | None = None,
                              perform_initialization: bool = True):
        """Megatron's TransformerConfig for the parallel linears and the MLP.

        use_cpu_initialization: None means "when CUDA is absent". perform_initialization=False
        skips weight init (meta-device builds for parameter counting).
        """
        from megatron.core.transformer.transformer_config import TransformerConfig

        cuda = torch.cuda.is_available()
        if params_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"to_transformer_config: params_dtype must be float32/bfloat16/float16, got {params_dtype}")
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_heads,
            kv_channels=self.head_dim,
            ffn_hidden_size=self.ffn_hidden_size,
            gated_linear_unit=True,            # SwiGLU
            activation_func=F.silu,
            add_bias_linear=self.variant == "paper",   # paper: biases act as modality embeddings (§3.2);
                                               # the release's SwiGLU has none
            bias_activation_fusion=cuda,       # jit-fused bias+swiglu on GPU; plain ops on CPU
            qk_layernorm=True,                 # makes finalize_model_grads sum q/k_layernorm grads over TP
            softmax_scale=self.softmax_scale,
            normalization="RMSNorm",
            layernorm_epsilon=self.qk_norm_eps,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=tensor_model_parallel_size,
            sequence_parallel=sequence_parallel,
            params_dtype=params_dtype,
            bf16=params_dtype == torch.bfloat16,
            fp16=params_dtype == torch.float16,
            use_cpu_initialization=(not cuda) if use_cpu_initialization is None else use_cpu_initialization,
            perform_initialization=perform_initialization,
            persist_layer_norm=False,
            masked_softmax_fusion=False,
            apply_rope_fusion=False,
            gradient_accumulation_fusion=False,
        )
