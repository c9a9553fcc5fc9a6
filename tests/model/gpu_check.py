"""Device check of the MM-DiT (not collected by pytest): writes JSON to $OUT (or /tmp).

    python tests/model/gpu_check.py gpu     # torch core vs Triton core, 3B-width timings (CUDA)
    taskset -c 0,1 python tests/model/gpu_check.py cpu   # tiny model on 2 cores (CUDA hidden)

GPU boxes lack Megatron-Core: carry the venv's ``megatron`` package and put it on PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from model_batches import make_batch, random_sessions  # noqa: E402

TINY = dict(hidden_size=128, num_layers=4, mm_layers=2, num_heads=4, ffn_hidden_size=384, text_dim=64,
            patch_dim=192, max_turns=8, rope_axes_dim=[8, 12, 12])
WIDE_3B = dict(hidden_size=2560, num_layers=4, mm_layers=2, num_heads=20, ffn_hidden_size=6144, text_dim=4096,
               patch_dim=64, max_turns=16, rope_axes_dim=[32, 48, 48])


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def time_step(model, batch, dev, warmup=2, iters=5):
    def step():
        out = model(batch.img_x0, batch)
        out.float().pow(2).mean().backward()
    for _ in range(warmup):
        step()
    _sync(dev)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        _sync(dev)
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def big_sessions(mask_type, n_sessions, hw, n_txt):
    if mask_type == "full":
        sess = [("clean", hw, hw, 0), ("text", n_txt, 0), ("noisy", hw, hw, 1)]
    else:
        sess = [("clean", hw, hw, 0), ("text", n_txt, 0), ("clean", hw, hw, 1), ("noisy", hw, hw, 1),
                ("text", n_txt, 1), ("clean", hw, hw, 2), ("noisy", hw, hw, 2)]
    return [sess] * n_sessions


def gpu(res):
    from vincie_mcore.model import MMDiTConfig, build_model
    dev = "cuda"
    res["env"] = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(), python=sys.version.split()[0])
    # 1. Same weights, torch core vs Triton core, fp32: outputs and gradients.
    cores = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        cores[backend] = build_model(MMDiTConfig(**TINY, attention_backend=backend, adaln_zero_init=False), device=dev)
    cores["triton"].load_state_dict(cores["torch"].state_dict())
    res["auto_backend_on_cuda"] = type(build_model(MMDiTConfig(**TINY), device=dev).layers[0].attention.core_attention).__name__
    for mt in ("block_causal", "full"):
        batch = make_batch(random_sessions(50, 3000, mt, seed=0), mt, 64, 192)[0].to(dev)
        outs, grads = {}, {}
        for name, m in cores.items():
            m.zero_grad(set_to_none=True)
            out = m(batch.img_x0, batch)
            out.pow(2).mean().backward()
            outs[name] = out.detach()
            grads[name] = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
        gerr = max(float((grads["triton"][n] - g).abs().max() / (g.abs().max() + 1e-12))
                   for n, g in grads["torch"].items())
        res[f"tiny_fp32_{mt}"] = dict(
            out_max_abs_diff=float((outs["triton"] - outs["torch"]).abs().max()),
            out_max_abs=float(outs["torch"].abs().max()), grad_max_rel_diff=gerr,
            ms_torch_core=1e3 * time_step(cores["torch"], batch, dev),
            ms_triton_core=1e3 * time_step(cores["triton"], batch, dev))
        print(mt, res[f"tiny_fp32_{mt}"], flush=True)
    del cores
    # 2. 3B width, 4 layers, bf16, ~10k-token packs: step time and model TFLOP/s.
    for mt, n_sess in (("block_causal", 2), ("full", 4)):
        batch = make_batch(big_sessions(mt, n_sess, 32, 64), mt, 4096, 64)[0].to(dev)
        for backend in ("triton", "torch"):
            torch.manual_seed(0)
            m = build_model(MMDiTConfig(**WIDE_3B, attention_backend=backend), device=dev, params_dtype=torch.bfloat16)
            b = batch
            t = time_step(m, b, dev, warmup=3, iters=10)
            res[f"3b_width_4layers_bf16_{mt}_{backend}"] = dict(
                tokens=b.spec.seq_len, ms=1e3 * t, tflops=m.flops_per_step(b) / t / 1e12,
                params=m.num_parameters(), peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
            print(mt, backend, res[f"3b_width_4layers_bf16_{mt}_{backend}"], flush=True)
            del m
            torch.cuda.empty_cache()


def cpu(res):
    from vincie_mcore.model import MMDiTConfig, build_model
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    res["env"] = dict(torch=torch.__version__, threads=torch.get_num_threads(), python=sys.version.split()[0])
    torch.manual_seed(0)
    m = build_model(MMDiTConfig(**TINY, attention_backend="torch", adaln_zero_init=False), device="cpu")
    for mt in ("block_causal", "full"):
        batch = make_batch(random_sessions(50, 3000, mt, seed=0), mt, 64, 192)[0]
        t = time_step(m, batch, "cpu", warmup=2, iters=5)
        res[f"tiny_cpu_{mt}"] = dict(tokens=batch.spec.seq_len, sessions=50, ms_fwd_bwd=1e3 * t,
                                     gflops=m.flops_per_step(batch) / t / 1e9)
        print(mt, res[f"tiny_cpu_{mt}"], flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "gpu"
    from vincie_mcore.parallel import groups
    groups.init_distributed(tp=1)
    res = {"mode": mode}
    try:
        (gpu if mode == "gpu" else cpu)(res)
    finally:
        out = os.environ.get("OUT", "/tmp")
        with open(os.path.join(out, f"model_check_{mode}.json"), "w") as f:
            json.dump(res, f, indent=1)
        groups.destroy()
