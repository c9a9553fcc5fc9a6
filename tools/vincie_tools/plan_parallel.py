"""Plan TP x CP x DP layouts for an MM-DiT preset: memory per GPU and step time, ranked.

    vincie-plan-parallel --preset 7b --tokens 11584 --gpu-mem-gb 80 --gpus 64
    vincie-plan-parallel --preset 3b --tokens 45341 --gpu-mem-gb 80 --gpus 16 --recompute --json

A layout is (tp, cp, dp) with tp * cp * dp = gpus; ``--tokens`` is the length of one packed
sequence (one micro-batch of one data-parallel replica). The memory and step-time model is
``vincie_mcore/parallel/plan.py`` (its docstring lists what is counted).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from vincie_mcore.parallel.plan import (PRESETS, ActivationProfile, Hardware, PlanError, Workload, load_preset,
                                        param_counts, plan)


def _table(rows: list[dict], gpu_mem: float) -> str:
    head = f"{'tp':>3} {'cp':>3} {'dp':>4} {'mem GiB':>8} {'w+g+opt':>8} {'act':>7} {'step s':>7} " \
           f"{'tok/s':>9} {'TFLOP/s/GPU':>11}  {'compute/tp/cp/dp s':<24} fits {gpu_mem:g} GB"
    lines = [head]
    for e in rows:
        m, t = e["mem"], e["time"]
        lines.append(f"{e['tp']:>3} {e['cp']:>3} {e['dp']:>4} {e['mem_gib']:>8.1f} "
                     f"{m['weights'] + m['grads'] + m['optimizer']:>8.1f} {m['activations']:>7.1f} "
                     f"{e['step_s']:>7.3f} {e['tokens_per_s']:>9.0f} {e['model_tflops_per_gpu']:>11.0f}  "
                     f"{t['compute']:.3f}/{t['tp']:.3f}/{t['cp']:.3f}/{t['dp']:.3f}{'':<4} {'yes' if e['fits'] else 'no'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", required=True, choices=PRESETS)
    ap.add_argument("--tokens", type=int, required=True, help="tokens of one packed sequence (per DP replica)")
    ap.add_argument("--gpu-mem-gb", type=float, required=True, help="memory of one GPU, GB")
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--recompute", action="store_true", help="full activation recompute per block")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--no-distributed-optimizer", action="store_true")
    ap.add_argument("--core", default="triton", choices=("triton", "torch"), help="attention core")
    ap.add_argument("--transformer-engine", action="store_true", help="TE spec (fused QK RMSNorm)")
    ap.add_argument("--density", type=float, default=0.34, help="allowed attention pairs / S^2")
    ap.add_argument("--text-frac", type=float, default=0.03)
    ap.add_argument("--sessions", type=int, default=1, help="sessions per packed sequence")
    ap.add_argument("--mask", default="block_causal", choices=("block_causal", "full"))
    ap.add_argument("--min-cp-tokens", type=int, default=1024)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--tflops", type=float, default=400.0, help="achieved bf16 matmul TFLOP/s per GPU")
    ap.add_argument("--intra-gbs", type=float, default=300.0, help="NVLink GB/s per GPU")
    ap.add_argument("--inter-gbs", type=float, default=45.0, help="InfiniBand GB/s per GPU")
    ap.add_argument("--overhead-gb", type=float, default=3.0)
    a = ap.parse_args(argv)
    try:
        for name in ("gpus_per_node", "sessions", "top", "min_cp_tokens"):
            if getattr(a, name) < 1:
                raise PlanError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(a, name)}")
        for name in ("tflops", "intra_gbs", "inter_gbs"):
            if not getattr(a, name) > 0:
                raise PlanError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(a, name)}")
        cfg = load_preset(a.preset)
        prof = ActivationProfile(core=a.core, fused_swiglu=a.dtype == "bf16", fused_qk_norm=a.transformer_engine)
        wl = Workload(tokens=a.tokens, recompute=a.recompute, dtype=a.dtype,
                      distributed_optimizer=not a.no_distributed_optimizer, density=a.density,
                      text_frac=a.text_frac, sessions=a.sessions, mask_type=a.mask, profile=prof)
        hw = Hardware(gpu_mem_gb=a.gpu_mem_gb, gpus_per_node=a.gpus_per_node, tflops=a.tflops,
                      intra_gbs=a.intra_gbs, inter_gbs=a.inter_gbs, overhead_gb=a.overhead_gb)
        rows = plan(cfg, a.gpus, wl, hw, a.min_cp_tokens)
    except PlanError as e:
        print(f"plan_parallel: {e}", file=sys.stderr)
        return 2
    fit = [e for e in rows if e["fits"]]
    params = param_counts(cfg)["total"]
    if a.json:
        print(json.dumps(dict(preset=a.preset, params=params, workload=asdict(wl), hardware=asdict(hw),
                              feasible=fit[:a.top], smallest_infeasible=[e for e in rows if not e["fits"]][:3])))
    else:
        print(f"{a.preset}: {params / 1e9:.2f}B parameters, {a.tokens} tokens per sequence, {a.gpus} GPUs, "
              f"{'recompute, ' if a.recompute else ''}{a.dtype}, core={a.core}")
        print(_table(fit[:a.top] if fit else rows[:3], a.gpu_mem_gb))
    if not fit:
        print(f"plan_parallel: no layout fits in {a.gpu_mem_gb:g} GB; the smallest needs {rows[0]['mem_gib']:.1f} GiB "
              f"(tp={rows[0]['tp']} cp={rows[0]['cp']}); try --recompute or more GPUs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
