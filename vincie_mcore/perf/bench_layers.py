"""Benchmark a 3B-width MM-DiT layer stack on one session-length packed sequence (GPU).

Stack: hidden 2560, 20 heads x 128, FFN 6144 (configs/model/3b.yaml), 4 layers (2 dual-stream +
2 shared), bf16 parameters. Sequences:

* block_causal: one 5-turn 512-px session, I0 T0 [I1 I1*] T1 ... (11 images of 32 x 32 tokens,
  5 text turns of 64 tokens: S = 11 584; the paper's training layout).
* full: two packed 5-turn sessions with one noisy target each (6 images + 5 texts per session:
  S = 12 928; the layout of the released checkpoints).

Text turns are 64 tokens (not ~57) so both streams are multiples of 16, as TE's FP8 GEMMs need.

For each case: forward + backward step time (CUDA events, median after warm-up), model TFLOP/s
(``MMDiT.flops_per_step``), its share of a bf16 matmul peak measured in the same run (8192^3
matmuls), and peak memory (``torch.cuda.max_memory_allocated``). Runs attention_backend torch and
triton with Megatron's local linears; where Transformer Engine imports: TE linears in bf16 and in
FP8 (delayed and current scaling) with the faster attention core (block_causal cases first, then
TE/FP8, then full, so a time limit cuts the least new numbers; ``out`` is rewritten after each case). Needs torch, triton and
megatron-core only (no DALI, zarr, hydra, transformers). ``smoke``: tiny widths on the CPU, a dry
run of the same code path. The CLI is ``vincie-bench-layers``.

Fused element-wise ops: the block-causal stack with ``fused_ops`` torch and triton (same weights,
faster core): both step times, the speed-up, and the fused stack's max forward and backward error
(``fused_vs_unfused``), on CUDA (on a CPU only under ``TRITON_INTERPRET=1``).

Also, where the time goes: a per-op profile (torch profiler, top ops by self device time) of the
first block-causal case. And FP8 without Transformer Engine: where torchao imports (and the GPU
has FP8, or on CPU with ``smoke``), the stack with plain linears (``transformer_impl: torch``) in
bf16 and in torchao FP8 (tensorwise, rowwise scaling), the step-time ratio, and ``fp8_loss``: the
tiny config trained the same 200 steps (same init, batches and noise) in bf16 and in each FP8
recipe, with the final losses side by side (a speed figure beside a correctness check).
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
import traceback

import torch

from ..packed.builder import BatchBuilder
from ..packed.maskspec import KIND_CLEAN, KIND_NOISY

WIDE_3B = dict(hidden_size=2560, num_heads=20, ffn_hidden_size=6144, text_dim=4096, patch_dim=64,
               max_turns=16, rope_axes_dim=[32, 48, 48])
TINY = dict(hidden_size=128, num_heads=4, ffn_hidden_size=384, text_dim=64, patch_dim=64,
            max_turns=16, rope_axes_dim=[8, 12, 12])


# ----------------------------------------------------------------------------
# The packed sequence
# ----------------------------------------------------------------------------

def session_batch(mask_type: str, turns: int, hw: int, txt_len: int, n_sessions: int, text_dim: int,
                  patch_dim: int, seed: int = 0):
    """A PackedBatch of ``n_sessions`` identical-shape sessions of ``turns`` edits with hw x hw-token images.

    block_causal: I0 T0 [I1 I1*] T1 [I2 I2*] ... (a clean and a noisy copy of every target);
    full: I0 T0 I1 T1 ... I_{turns-1} T_{turns-1} I_turns* (one noisy target, every earlier image clean).
    Joint layout: every session's text blocks, then every session's image blocks.
    """
    b = BatchBuilder(mask_type)
    for _ in range(n_sessions):
        b.session()
        b.image(0, KIND_CLEAN, (hw, hw), rope_turn=0)
        for t in range(turns):
            b.text(2 * t + 1, t, length=txt_len)
            if mask_type == "block_causal":
                b.image(2 * t + 2, KIND_CLEAN, (hw, hw), rope_turn=t + 1)
                b.image(2 * t + 2, KIND_NOISY, (hw, hw), rope_turn=t + 1)
            else:
                b.image(2 * t + 2, KIND_NOISY if t == turns - 1 else KIND_CLEAN, (hw, hw), rope_turn=t + 1)
    return b.build(torch.Generator().manual_seed(seed), text_dim=text_dim, patch_dim=patch_dim, random_t=True)


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------

class Timer:
    """CUDA events on a GPU, perf_counter on a CPU; median of the timed iterations, in seconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def median(self, fn, warmup: int, iters: int) -> float:
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(iters):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                ts.append(a.elapsed_time(b) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        return statistics.median(ts)


def matmul_peak(device: torch.device, n: int, warmup: int, iters: int) -> dict:
    """bf16 (CUDA) / fp32 (CPU) n^3 matmul throughput: the peak the model is compared with."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = Timer(device).median(lambda: a @ b, warmup, iters)
    return dict(n=n, dtype=str(dtype).replace("torch.", ""), ms=1e3 * t, tflops=2 * n ** 3 / t / 1e12)


def time_case(model, batch, device, warmup: int, iters: int, fp8_cfg=None) -> dict:
    """Forward (under FP8 autocast when given) + a scalar loss + backward; grads dropped each step."""
    from ..model.fp8 import fp8_autocast

    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        with fp8_autocast(fp8_cfg):
            out = model(batch.img_x0, batch)
        out.float().pow(2).mean().backward()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = Timer(device).median(step, warmup, iters)
    flops = model.flops_per_step(batch)
    res = dict(ms=1e3 * t, tflops=flops / t / 1e12, flops_per_step=flops)
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return res


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------

def op_profile(model, batch, device, steps: int = 3, top: int = 15) -> dict:
    """Top ops of ``steps`` forward+backward steps by self device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def step():
        for p in model.parameters():
            p.grad = None
        model(batch.img_x0, batch).float().pow(2).mean().backward()

    step()                                                     # warm (autotune, caches) outside the profile
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ev = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in ev) or 1.0
    ev.sort(key=lambda e: -getattr(e, key))
    return {"by": key, "ms_per_step_total": total / 1e3 / steps,
            "ops": [{"name": e.key, "calls_per_step": e.count / steps, "ms_per_step": getattr(e, key) / 1e3 / steps,
                     "pct": 100.0 * getattr(e, key) / total} for e in ev[:top]]}


def fp8_loss(device, dtype, steps: int, recipes=("tensorwise", "rowwise"), lr: float = 1e-3) -> dict:
    """The tiny config trained ``steps`` AdamW steps in plain-linear bf16 and in each torchao FP8 recipe:
    the same initial weights, batches and noise. -> per arm: final loss (mean of the last 10 %), ms/step
    (steps 2..N: the first step of an arm carries its compiles)."""
    from ..diffusion.flow import FlowConfig, training_loss
    from ..model.fp8 import FP8Config, prepare_fp8_model
    batches = [session_batch("block_causal", 3, 4, 16, 2, TINY["text_dim"], TINY["patch_dim"], seed=i).to(device)
               for i in range(8)]
    out = {"steps": steps, "lr": lr, "arms": {}}
    for arm in ("bf16", *recipes):
        model = build(TINY, 4, "torch", "torch", device, dtype)
        if arm != "bf16":
            prepare_fp8_model(FP8Config(enabled=True, backend="torchao", recipe=arm), model)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(0)
        losses, t0 = [], time.perf_counter()
        for i in range(steps):
            if i == 1:            # step 0 carries the arm's compiles (e.g. Megatron's compiled SwiGLU): untimed
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss, _ = training_loss(model, batches[i % len(batches)], FlowConfig(), gen)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - t0) / max(1, steps - 1)
        losses = [float(x) for x in losses]
        k = max(1, steps // 10)
        out["arms"][arm] = {"final_loss": statistics.fmean(losses[-k:]), "first_loss": losses[0], "ms_per_step": ms,
                            "curve_every_10": losses[::10]}
        del model, opt
    ref = out["arms"]["bf16"]["final_loss"]
    for arm in recipes:
        out["arms"][arm]["final_loss_rel_diff_vs_bf16"] = out["arms"][arm]["final_loss"] / ref - 1.0
    return out


def build(arch: dict, layers: int, backend: str, impl: str, device, dtype, fused_ops: str = "torch"):
    from ..model import MMDiTConfig, build_model
    cfg = MMDiTConfig(**arch, num_layers=layers, mm_layers=layers // 2, attention_backend=backend,
                      transformer_impl=impl, fused_ops=fused_ops)
    torch.manual_seed(0)
    return build_model(cfg, device=device, params_dtype=dtype)


def fused_vs_unfused(arch: dict, layers: int, backend: str, batch, device, dtype, warmup: int, iters: int) -> dict:
    """The stack with ``fused_ops`` torch and triton (kernels/vincie_kernels/fused.py), the same weights
    (random gates: adaLN-Zero would zero every residual branch): step times, and the fused stack's max
    error against the unfused one, forward (output) and backward (worst parameter gradient), each also
    relative to the unfused tensor's max magnitude."""
    arch = dict(arch, adaln_zero_init=False)
    models = {f: build(arch, layers, backend, "local", device, dtype, fused_ops=f) for f in ("torch", "triton")}
    models["triton"].load_state_dict(models["torch"].state_dict())
    outs, grads = {}, {}
    for f, m in models.items():
        for p in m.parameters():
            p.grad = None
        out = m(batch.img_x0, batch)
        out.float().pow(2).mean().backward()
        outs[f] = out.detach().float()
        grads[f] = {n: p.grad.detach().float() for n, p in m.named_parameters() if p.grad is not None}
    ref = outs["torch"]
    res = {"fwd_max_err": (outs["triton"] - ref).abs().max().item(),
           "fwd_max_rel": (outs["triton"] - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)}
    common = set(grads["torch"]) & set(grads["triton"])
    errs = {n: ((grads["triton"][n] - grads["torch"][n]).abs().max().item(),
                max(grads["torch"][n].abs().max().item(), 1e-30)) for n in common}
    worst = max(errs, key=lambda n: errs[n][0] / errs[n][1])            # worst relative to its own scale
    res.update(bwd_max_err=errs[worst][0], bwd_max_rel=errs[worst][0] / errs[worst][1], bwd_worst_param=worst,
               grads_missing=sorted(set(grads["torch"]) ^ set(grads["triton"])))
    del outs, grads
    for f, m in models.items():
        res[f] = time_case(m, batch, device, warmup, iters)
    res["speedup"] = res["torch"]["ms"] / res["triton"]["ms"]
    return res


def bench_layers(smoke: bool = False, layers: int = 4, warmup: int = 3, iters: int = 10, out: str | None = None,
                 attention_tilings: str = "default") -> dict:
    """Every case in turn (see the module docstring); ``out`` is rewritten after each case.
    One failing case (OOM, a TE/Triton error) is recorded and the rest still run.
    ``attention_tilings``: ``model.attention_tilings`` of every stack (the Triton core's tilings)."""
    from vincie_kernels.tilings import parse_tilings, tilings_text

    from ..model.fp8 import FP8Config, fp8_supported, prepare_fp8_model, te_available, torchao_available
    from ..parallel import groups

    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # tuned=<json> read once, here: every stack then gets the explicit text
    arch = dict(TINY if smoke else WIDE_3B, attention_tilings=tilings_text(parse_tilings(attention_tilings)))
    hw, txt_len = (4, 16) if smoke else (32, 64)
    res = dict(tool="bench_layers", smoke=smoke, device=torch.cuda.get_device_name() if device.type == "cuda" else
               platform.processor() or "cpu", torch=torch.__version__, python=platform.python_version(),
               dtype=str(dtype).replace("torch.", ""), layers=layers,
               arch={k: arch[k] for k in ("hidden_size", "num_heads", "ffn_hidden_size")}, cases={})
    res["attention_tilings"] = arch["attention_tilings"]
    try:
        import megatron.core
        res["megatron_core"] = megatron.core.__version__
    except Exception:
        pass
    groups.init_distributed(tp=1, cp=1)
    try:
        res["matmul_peak"] = matmul_peak(device, 256 if smoke else 8192, warmup, max(iters, 10))
        peak = res["matmul_peak"]["tflops"]
        batches = {"block_causal": session_batch("block_causal", 5, hw, txt_len, 1, arch["text_dim"], arch["patch_dim"]),
                   "full": session_batch("full", 5, hw, txt_len, 2, arch["text_dim"], arch["patch_dim"])}
        backends = ["torch"] if device.type != "cuda" else ["torch", "triton"]

        def case(name, mask_type, backend, impl, fp8_cfg=None, profile=False):
            batch = batches[mask_type].to(device)
            entry = dict(mask=mask_type, attention_backend=backend, transformer_impl=impl,
                         fp8=f"{fp8_cfg.backend}:{fp8_cfg.recipe}" if fp8_cfg is not None and fp8_cfg.enabled else None,
                         tokens=batch.spec.seq_len, s_txt=batch.s_txt, s_img=batch.s_img)
            model = None
            try:
                model = build(arch, layers, backend, impl, device, dtype)
                entry["params"] = model.num_parameters()
                if fp8_cfg is not None and fp8_cfg.backend == "torchao":
                    entry["fp8_linears"] = prepare_fp8_model(fp8_cfg, model)
                entry.update(time_case(model, batch, device, warmup, iters, fp8_cfg))
                entry["pct_of_matmul_peak"] = 100.0 * entry["tflops"] / peak
                if profile:
                    entry["profile"] = op_profile(model, batch, device)
            except Exception as e:          # one failing case (OOM, a TE/Triton error) must not sink the rest
                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
                entry["traceback_tail"] = traceback.format_exc().splitlines()[-4:]
            finally:
                del model
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            res["cases"][name] = entry
            print(name, json.dumps(entry), flush=True)
            if out:                         # keep what is done if a time limit stops the run
                write_json(out, res)
            return entry

        for i, backend in enumerate(backends):
            case(f"block_causal/{backend}/local", "block_causal", backend, "local", profile=i == 0)

        # fused element-wise ops (model.fused_ops) vs unfused, same weights, with the faster core; on a
        # CPU only under Triton's interpreter (TRITON_INTERPRET=1)
        if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            ok = {b: res["cases"][f"block_causal/{b}/local"].get("ms") for b in backends}
            core = min((b for b in ok if ok[b]), key=ok.get, default="torch")
            try:
                res["fused_ops"] = dict(attention_backend=core, **fused_vs_unfused(
                    arch, layers, core, batches["block_causal"].to(device), device, dtype, warmup, iters))
            except Exception as e:          # a kernel failing to compile must not sink the rest
                res["fused_ops"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400],
                                    "traceback_tail": traceback.format_exc().splitlines()[-4:]}
            print("fused_ops", json.dumps(res["fused_ops"]), flush=True)
            if out:
                write_json(out, res)
        else:
            res["fused_ops"] = "no CUDA device and no TRITON_INTERPRET=1: fused-ops case skipped"

        # Transformer Engine: bf16 linears, then FP8 with the faster core of the block-causal runs.
        if not te_available():
            res["transformer_engine"] = "not installed: TE and FP8 cases skipped"
        elif device.type != "cuda":
            res["transformer_engine"] = "no CUDA device: TE and FP8 cases skipped"
        else:
            ok = {b: res["cases"][f"block_causal/{b}/local"] for b in backends}
            ok = {b: e["ms"] for b, e in ok.items() if "ms" in e}
            core = min(ok, key=ok.get) if ok else "torch"
            res["fp8_attention_backend"] = core
            te = case(f"block_causal/{core}/te", "block_causal", core, "transformer_engine")
            fp8_ok, why = fp8_supported()
            if "error" in te:
                res["transformer_engine"] = "TE bf16 case failed: FP8 cases skipped"
            elif not fp8_ok:
                res["transformer_engine"] = f"FP8 unsupported here ({why}): FP8 cases skipped"
            else:
                for recipe in ("delayed", "current"):
                    case(f"block_causal/{core}/te_fp8_{recipe}", "block_causal", core, "transformer_engine",
                         FP8Config(enabled=True, recipe=recipe))
        # FP8 without TE: plain linears in bf16, then torchao FP8, with the same core; then the loss check
        ok = {b: res["cases"][f"block_causal/{b}/local"].get("ms") for b in backends}
        core = min((b for b in ok if ok[b]), key=ok.get, default="torch")
        if not torchao_available():
            res["torchao"] = "not installed: torchao FP8 cases skipped"
        elif device.type == "cuda" and torch.cuda.get_device_capability() < (8, 9):
            res["torchao"] = "GPU without FP8 (compute capability < 8.9): torchao FP8 cases skipped"
        else:
            plain = case(f"block_causal/{core}/torch", "block_causal", core, "torch")
            for recipe in ("tensorwise", "rowwise"):
                e = case(f"block_causal/{core}/torchao_fp8_{recipe}", "block_causal", core, "torch",
                         FP8Config(enabled=True, backend="torchao", recipe=recipe))
                if "ms" in e and "ms" in plain:
                    e["speedup_vs_plain_bf16"] = plain["ms"] / e["ms"]
            try:
                res["fp8_loss"] = fp8_loss(device, dtype, steps=6 if smoke else 200)
            except Exception as e:
                res["fp8_loss"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]}
            if out:
                write_json(out, res)
        for backend in backends:
            case(f"full/{backend}/local", "full", backend, "local")
    finally:
        groups.destroy()
    return res


def write_json(path: str, res: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
