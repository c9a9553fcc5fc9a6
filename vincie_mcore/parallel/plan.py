"""Plan TP x CP x DP layouts for an MM-DiT preset: memory per GPU and step time, ranked.

A layout is (tp, cp, dp) with tp * cp * dp = gpus; tp divides heads, FFN and hidden width and stays
inside a node (<= 8); every CP rank keeps at least ``min_cp_tokens`` query tokens. ``Workload.tokens`` is the
length of one packed sequence (one micro-batch of one data-parallel replica). Sequence parallelism is
assumed on whenever tp > 1 (it is what makes TP shrink activations).

Memory per GPU (bytes; P = parameters this rank holds; n = dp * cp, the ranks the distributed
optimizer shards over, as Megatron's data-parallel-with-CP group):

* weights: 2P (bf16) or 4P (fp32); main gradients: 4P (fp32, ``grad_reduce_in_fp32``);
* optimizer: fp32 master + Adam m, v = 12P (bf16) or m, v = 8P (fp32), divided by n with the
  distributed optimizer;
* activations: ``activation_bytes`` below, counted tensor by tensor from blocks.py / attention.py
  (what autograd saves per layer), checked against the tensors autograd really saves in
  tests/test_plan_parallel.py; with ``Workload.recompute`` each layer keeps only its input and one layer's
  activations are live again during its backward;
* a fixed ``Hardware.overhead_gb`` (CUDA context, NCCL buffers, allocator slack).

Step time: matmul FLOPs (the formula of ``MMDiT.flops_per_step``, attention pairs = density * S^2)
at ``Hardware.tflops`` per GPU, plus TP (sequence-parallel all-gather / reduce-scatter), CP (K/V all-gather)
and DP (gradient reduction) traffic at NVLink or InfiniBand bandwidth, with no overlap: a
conservative model for ranking, not a prediction to the millisecond. The CLI is
``vincie-plan-parallel``; a ``PlanError`` message names the CLI option it is about.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import CONFIG_DIR, build
from ..model.config import MMDiTConfig  # pure Python: no Megatron needed

PRESETS = ("tiny", "3b", "7b")
CONFIGS = CONFIG_DIR / "model"
GiB = 2 ** 30


class PlanError(ValueError):
    """Impossible planner input; the message is one line naming the option."""


def load_preset(name: str) -> MMDiTConfig:
    if name not in PRESETS:
        raise PlanError(f"--preset: expected one of {PRESETS}, got {name!r}")
    import yaml
    return build(MMDiTConfig, yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()), "model")


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def param_counts(cfg: MMDiTConfig, tp: int = 1) -> dict:
    """Parameters of the model and of one TP rank.

    Column-parallel qkv/fc1 (weight and bias) and row-parallel proj/fc2 weights are split over tp;
    row biases, QK norms, adaLN tables/linears, embedders and the final layer are replicated.
    """
    D, A, F, hd = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.ffn_hidden_size, cfg.head_dim
    split = (D * 3 * A + 3 * A) + A * D + (D * 2 * F + 2 * F) + F * D        # per weight set
    adaln = 6 * D if cfg.adaln == "single" else D * 6 * D + 6 * D
    repl = D + 2 * hd + D + adaln                                             # proj/fc2 biases, q/k norms, adaLN
    sets = 2 * cfg.mm_layers + (cfg.num_layers - cfg.mm_layers)               # dual blocks own two sets
    final_adaln = 2 * D if cfg.adaln == "single" else D * 2 * D + 2 * D
    outside = ((cfg.patch_dim * D + D)                                        # img_embedder
               + (cfg.text_dim * D + D + cfg.max_turns * D)                   # txt_embedder + <TURN>
               + (cfg.frequency_embedding_size * D + D + D * D + D)           # t_embedder
               + ((D * 6 * D + 6 * D) if cfg.adaln == "single" else 0)        # adaln_single
               + final_adaln + D * cfg.patch_dim + cfg.patch_dim)             # final layer
    total = sets * (split + repl) + outside
    return dict(total=total, local=sets * (split // tp + repl) + outside, split=sets * split,
                replicated=sets * repl + outside)


def static_bytes(params_local: int, dtype: str = "bf16", shard: int = 1, distributed_optimizer: bool = True) -> dict:
    """Weights, fp32 main grads and Adam state of one rank (see the module docstring)."""
    if dtype not in ("bf16", "fp32"):
        raise PlanError(f"--dtype: expected 'bf16' or 'fp32', got {dtype!r}")
    w, opt = (2, 12) if dtype == "bf16" else (4, 8)
    n = shard if distributed_optimizer else 1
    return dict(weights=w * params_local, grads=4 * params_local, optimizer=opt * params_local / n)


# ----------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------

@dataclass
class ActivationProfile:
    """Which implementation fills each slot; it changes what autograd keeps."""
    core: str = "triton"            # "torch": per-session SDPA (gathers q/k/v, a dense float mask); "triton"
    fused_swiglu: bool = True       # Megatron's bias_swiglu (CUDA) keeps fc1's output only; unfused glu keeps 5F
    fused_qk_norm: bool = False     # TE RMSNorm keeps input + rstd; torch RMSNorm also keeps its normalised copy


def layer_activation_bytes(cfg: MMDiTConfig, tokens: int, kv_tokens: int, tp: int = 1, bytes_per_el: int = 2,
                           prof: ActivationProfile = ActivationProfile(), sessions: int = 1,
                           mask_type: str = "block_causal") -> float:
    """Bytes autograd keeps for one block on one rank (dual and shared blocks alike: each token meets one
    weight set). tokens: this rank's queries (S / cp); kv_tokens: keys it attends (S with our CP's
    K/V all-gather); with sequence parallelism every per-token tensor is split over tp.

    Per token (elements):  16D = adaLN modulation (6D) + per sub-block: pre-norm input, normed x,
    (1 + scale), linear input, gate operand (2 x 5D);  3A = the qkv output (q/k norm inputs and v);
    +2A normalised q, k (unfused RMSNorm);  core: torch 4A (gathered q, o, index_copy source and
    output) + 2A per key (gathered k, v) + a float mask of kv_tokens / sessions per query,
    triton 2A (q, o) + 2A per key (the torch core's mask only exists for block_causal: a "full"
    session sees all of itself and SDPA runs unmasked);  SwiGLU: 5F unfused (fc1 out 2F, silu, x_linear + 0, product),
    3F fused;  fp32 stats: 4 (layer-norm mean/rstd) + 2H (q/k rstd) + H (log-sum-exp).
    """
    D, A, F, H = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.ffn_hidden_size, cfg.num_heads
    per_q = 16 * D + 3 * A + (0 if prof.fused_qk_norm else 2 * A) + (3 if prof.fused_swiglu else 5) * F
    per_q += 4 * A if prof.core == "torch" else 2 * A
    per_kv = 2 * A
    b = bytes_per_el * (tokens * per_q + kv_tokens * per_kv) / tp + 4 * tokens * (4 + 3 * H) / tp
    if prof.core == "torch" and mask_type == "block_causal":   # (n, 1, Lq, Lk) mask in the activation dtype, shared by the heads (not split)
        b += bytes_per_el * tokens * kv_tokens / max(sessions, 1)
    return b


def head_activation_bytes(cfg: MMDiTConfig, s_txt: int, s_img: int, tp: int = 1, bytes_per_el: int = 2) -> float:
    """Embedders and final layer, once per sequence: the embedding linears' inputs (full streams); per image
    token the final layer's norm input, normed x, (1 + scale) and linear input (4D); RoPE cos/sin (fp32,
    head_dim per token, shared by all blocks) and ~4 int64 block-id / gather indices per token."""
    D, hd, S = cfg.hidden_size, cfg.head_dim, s_txt + s_img
    return (bytes_per_el * (s_img * cfg.patch_dim + s_txt * cfg.text_dim + s_img * 4 * D / tp)
            + S * (4 * hd + 32))


def activation_bytes(cfg: MMDiTConfig, tokens: int, cp: int = 1, tp: int = 1, recompute: bool = False,
                     bytes_per_el: int = 2, prof: ActivationProfile = ActivationProfile(), text_frac: float = 0.03,
                     sessions: int = 1, mask_type: str = "block_causal") -> float:
    """All activation bytes of one rank for a packed sequence of ``tokens`` tokens."""
    q = math.ceil(tokens / cp)
    kv = tokens if cp > 1 else q
    layer = layer_activation_bytes(cfg, q, kv, tp, bytes_per_el, prof, sessions, mask_type)
    if recompute:   # each checkpointed block keeps its input streams; one block is re-run at a time
        layers = cfg.num_layers * bytes_per_el * q * cfg.hidden_size / tp + layer
    else:
        layers = cfg.num_layers * layer
    s_txt = round(q * text_frac)
    return layers + head_activation_bytes(cfg, s_txt, q - s_txt, tp, bytes_per_el)


# ----------------------------------------------------------------------------
# FLOPs and time
# ----------------------------------------------------------------------------

def step_flops(cfg: MMDiTConfig, s_txt: int, s_img: int, pairs: float, training: bool = True) -> float:
    """The formula of ``MMDiT.flops_per_step`` with the allowed (q, k) pair count given."""
    D, F, L, A = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers, cfg.num_heads * cfg.head_dim
    linear = 2 * (s_txt + s_img) * L * (4 * D * A + 3 * D * F)
    embed = 2 * (s_txt * cfg.text_dim * D + 2 * s_img * cfg.patch_dim * D)
    fwd = linear + embed + 4 * pairs * A * L
    return 3 * fwd if training else fwd


@dataclass
class Hardware:
    gpu_mem_gb: float              # GiB, as torch.cuda reports memory (an "80 GB" H100 holds ~79 GiB)
    gpus_per_node: int = 8
    tflops: float = 400.0          # achieved dense bf16 matmul TFLOP/s per GPU (H100 SXM: ~600-750 peak measured)
    intra_gbs: float = 300.0       # NVLink GB/s per GPU (bus bandwidth of a ring collective)
    inter_gbs: float = 45.0        # InfiniBand GB/s per GPU (one 400 Gb/s NIC per GPU)
    overhead_gb: float = 3.0       # CUDA context, NCCL buffers, allocator slack


@dataclass
class Workload:
    tokens: int
    recompute: bool = False
    dtype: str = "bf16"
    distributed_optimizer: bool = True
    density: float = 0.34          # allowed (q, k) pairs / S^2: 0.34 for a 5-turn block-causal session (docs/measured.md)
    text_frac: float = 0.03        # share of text tokens in the packed sequence
    sessions: int = 1              # sessions per packed sequence (only the torch core's mask depends on it)
    mask_type: str = "block_causal"   # or "full" (one noisy target per session, no mask inside a session)
    profile: ActivationProfile = field(default_factory=ActivationProfile)


def estimate(cfg: MMDiTConfig, tp: int, cp: int, dp: int, wl: Workload, hw: Hardware) -> dict:
    """Memory per GPU (GiB) and step-time pieces (s) of one layout."""
    b = 2 if wl.dtype == "bf16" else 4
    pc = param_counts(cfg, tp)
    st = static_bytes(pc["local"], wl.dtype, dp * cp, wl.distributed_optimizer)
    act = activation_bytes(cfg, wl.tokens, cp, tp, wl.recompute, b, wl.profile, wl.text_frac, wl.sessions,
                           wl.mask_type)
    mem = {k: v / GiB for k, v in st.items()}
    mem["activations"] = act / GiB
    mem["overhead"] = hw.overhead_gb
    mem_total = sum(mem.values())

    S = wl.tokens
    s_txt = round(S * wl.text_frac)
    flops = step_flops(cfg, s_txt, S - s_txt, wl.density * S * S)          # model FLOPs of one sequence
    t_compute = flops * (4 / 3 if wl.recompute else 1) / (tp * cp) / (hw.tflops * 1e12)   # + re-run forward
    L, D, A = cfg.num_layers, cfg.hidden_size, cfg.num_heads * cfg.head_dim
    q = S / cp
    bw = lambda span: (hw.intra_gbs if span <= hw.gpus_per_node else hw.inter_gbs) * 1e9   # noqa: E731
    # SP: all-gather before qkv/fc1, reduce-scatter after proj/fc2 (4 fwd), their transposes + 2 input
    # re-gathers for the weight gradients (6 bwd), + 4 when the forward is recomputed.
    n_tp = 10 + (4 if wl.recompute else 0)
    t_tp = n_tp * L * q * D * b * (tp - 1) / tp / bw(tp) if tp > 1 else 0.0
    # CP: all-gather K and V per layer, reduce-scatter their gradients (+1 gather when recomputing).
    n_cp = 2 + (1 if wl.recompute else 0)
    t_cp = n_cp * L * 2 * S * (A / tp) * b * (cp - 1) / cp / bw(tp * cp) if cp > 1 else 0.0
    # DP (with CP): fp32 gradient all-reduce, or reduce-scatter + bf16 param all-gather (distributed optimizer).
    n = dp * cp
    per_param = (4 + 2) if wl.distributed_optimizer else 8
    t_dp = per_param * pc["local"] * (n - 1) / n / bw(tp * cp * dp) if n > 1 else 0.0
    t_step = t_compute + t_tp + t_cp + t_dp
    return dict(tp=tp, cp=cp, dp=dp, mem_gib=mem_total, mem=mem, fits=mem_total <= hw.gpu_mem_gb,
                headroom_gib=hw.gpu_mem_gb - mem_total, params_local=pc["local"],
                step_s=t_step, time=dict(compute=t_compute, tp=t_tp, cp=t_cp, dp=t_dp),
                tokens_per_s=dp * S / t_step, flops_per_step=flops,
                model_tflops_per_gpu=flops * dp / t_step / (tp * cp * dp) / 1e12)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan(cfg: MMDiTConfig, gpus: int, wl: Workload, hw: Hardware, min_cp_tokens: int = 1024,
         max_tp: int = 8) -> list[dict]:
    """Every valid layout with its estimate: feasible ones first by tokens/s, then the rest by memory."""
    if gpus < 1:
        raise PlanError(f"--gpus: must be >= 1, got {gpus}")
    if wl.tokens < 1:
        raise PlanError(f"--tokens: must be >= 1, got {wl.tokens}")
    if not hw.gpu_mem_gb > 0:
        raise PlanError(f"--gpu-mem-gb: must be > 0, got {hw.gpu_mem_gb}")
    if not 0 < wl.density <= 1:
        raise PlanError(f"--density: must be in (0, 1], got {wl.density}")
    if not 0 <= wl.text_frac < 1:
        raise PlanError(f"--text-frac: must be in [0, 1), got {wl.text_frac}")
    if wl.mask_type not in ("block_causal", "full"):
        raise PlanError(f"--mask: expected 'block_causal' or 'full', got {wl.mask_type!r}")
    if wl.profile.core not in ("torch", "triton"):
        raise PlanError(f"--core: expected 'torch' or 'triton', got {wl.profile.core!r}")
    A = cfg.num_heads * cfg.head_dim
    out = []
    for tp in divisors(gpus):
        if tp > min(max_tp, hw.gpus_per_node) or cfg.num_heads % tp or cfg.ffn_hidden_size % tp \
                or cfg.hidden_size % tp or A % tp:
            continue
        for cp in divisors(gpus // tp):
            if cp > 1 and wl.tokens / cp < min_cp_tokens:
                continue
            out.append(estimate(cfg, tp, cp, gpus // (tp * cp), wl, hw))
    fit = sorted((e for e in out if e["fits"]), key=lambda e: (-e["tokens_per_s"], -e["headroom_gib"]))
    rest = sorted((e for e in out if not e["fits"]), key=lambda e: e["mem_gib"])
    return fit + rest
