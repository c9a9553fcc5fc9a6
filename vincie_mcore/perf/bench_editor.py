"""The editor's benchmarks (CLI ``vincie-bench-editor``), each with its correctness check in the same run:

* ``bench_editor``: a multi-turn block_causal edit with and without the KV cache, same random model,
  image, prompts and noise (fp32 on CPU, bf16 on CUDA, where the no-cache path may run another attention
  core: the Triton kernel that ``auto`` picks there), timed per turn, with the two paths' largest
  differences (docs/kv_cache.md);
* ``bench_batched``: benchmark-style chains (``eval.edit_runs.run_chains``) under the full mask, one
  session per model pass against ``batch`` sessions per pass, edits per second and the largest pixel
  difference between the two runs' images (docs/benchmarks.md, "Batched editing")."""
from __future__ import annotations

import numpy as np
import torch

from ..data.packing import PackConfig
from ..diffusion.flow import FlowConfig
from ..infer.editor import Editor, SamplerConfig


def _model(hidden, layers, heads, image_tokens, steps, turns, seed, device="cpu", dtype=torch.float32,
           backend: str = "torch"):
    """A random MM-DiT (the ``backend`` attention core) and text encoder for the editor benchmarks."""
    from ..config import build
    from ..encoders.text import TextEncoder, TextEncoderConfig
    from ..model import MMDiTConfig, build_model
    from ..parallel import groups

    if min(hidden, layers, heads, image_tokens, steps, turns) < 1 or hidden % heads or (hidden // heads) % 8:
        raise ValueError(f"bench_editor: need positive sizes and hidden/heads a multiple of 8, got hidden={hidden}, "
                         f"heads={heads}")
    if not groups.is_initialized():
        groups.init_distributed(tp=1, cp=1, seed=seed)
    hd = hidden // heads
    ax = (hd // 4 // 2 * 2, hd // 8 * 3, hd - hd // 4 // 2 * 2 - hd // 8 * 3)      # (turn, h, w) split, even
    cfg = build(MMDiTConfig, dict(
        hidden_size=hidden, num_layers=layers, mm_layers=max(layers // 2, 1), num_heads=heads,
        ffn_hidden_size=-(-8 * hidden // 3 // 64) * 64, text_dim=64, patch_dim=192, max_turns=turns + 2,
        rope_axes_dim=list(ax), adaln_zero_init=False, text_adaln=True, attention_backend=backend), "model")
    torch.manual_seed(seed)
    model = build_model(cfg, device=device, params_dtype=dtype).eval()
    with torch.no_grad():                                  # zero-init output layer: every output would be 0
        torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    return model, TextEncoder(TextEncoderConfig(pool=4, seed=seed))


def bench_editor(hidden: int = 256, layers: int = 4, heads: int = 8, image_tokens: int = 16, steps: int = 10,
                 turns: int = 5, guidance: float = 3.0, seed: int = 0, device: str = "cpu",
                 baseline_backend: str = "torch") -> dict:
    """Time per turn of a ``turns``-turn block_causal session with and without the KV cache, same random
    model (fp32 on CPU, bf16 on CUDA), image, prompts and noise, with the largest difference between the two
    paths' model outputs and samples measured in the same run. The cache runs on the torch attention core;
    the no-cache path on ``baseline_backend`` (the same weights): "triton" on a GPU answers whether the cache
    beats the kernel that ``attention_backend: auto`` picks there."""
    from ..encoders.image import PixelEncoder
    from ..runinfo import code_version

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model, text = _model(hidden, layers, heads, image_tokens, steps, turns, seed, dev, dtype)
    base = model
    if baseline_backend != "torch":                     # the same weights behind another attention core
        base, _ = _model(hidden, layers, heads, image_tokens, steps, turns, seed, dev, dtype, baseline_backend)
        base.load_state_dict(model.state_dict())
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (8 * image_tokens, 8 * image_tokens, 3), dtype=np.uint8)
    prompts = [f"turn {i}: move the {c} square to the {p}" for i, (c, p) in
               enumerate(zip(["red", "blue", "green", "yellow", "white"] * turns, ["left", "right", "top"] * turns))][:turns]

    def run(use_kv_cache: bool, n_turns: int, n_steps: int):
        outs, m = [], model if use_kv_cache else base
        hook = m.register_forward_hook(lambda _, a, o: outs.append(o[a[1].img_loss_mask].float().clone()))
        try:
            ed = Editor(m, text, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                        SamplerConfig(steps=n_steps, shift=3.0, guidance=guidance, seed=seed), device=dev,
                        mask_type="block_causal", use_kv_cache=use_kv_cache)
            sess = ed.start(image)
            for p in prompts[:n_turns]:
                sess.edit(p)
        finally:
            hook.remove()
        return sess, outs

    run(False, 1, 1), run(True, 1, 1)                      # warm-up: text encoder, allocator
    ref, ref_outs = run(False, turns, steps)
    got, got_outs = run(True, turns, steps)
    if not all(i["kv_cache"] for i in got.info):
        raise RuntimeError(f"bench_editor: the cache path did not run ({got.info[0]['reason']})")
    rows = [dict(turn=a["turn"], seconds_no_cache=round(a["seconds"], 3), seconds_cache=round(b["seconds"], 3),
                 ratio=round(a["seconds"] / b["seconds"], 2), cache_bytes=b["cache_bytes"])
            for a, b in zip(ref.info, got.info)]
    return dict(
        tool="bench_editor", **code_version(), torch=torch.__version__, threads=torch.get_num_threads(),
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        config=dict(hidden=hidden, layers=layers, heads=heads, image_tokens=f"{image_tokens}x{image_tokens}",
                    steps=steps, guidance=guidance, turns=turns, dtype=str(dtype).replace("torch.", ""),
                    device=dev.type, cache_backend="torch", no_cache_backend=baseline_backend,
                    parameters=model.num_parameters()),
        turns=rows, ratio_last_turn=rows[-1]["ratio"],
        max_abs_diff_model_outputs=max(float((a - b).abs().max()) for a, b in zip(got_outs, ref_outs)),
        max_abs_diff_samples=max(float((a - b).abs().max()) for a, b in zip(got.latents, ref.latents)),
        model_calls_compared=len(got_outs))


def bench_batched(batch: int = 4, sessions: int = 8, hidden: int = 256, layers: int = 4, heads: int = 8,
                  image_tokens: int = 16, steps: int = 10, turns: int = 3, guidance: float = 3.0, seed: int = 0,
                  device: str = "cpu") -> dict:
    """``sessions`` chains of ``turns`` edits under the full mask (the released models': no KV cache), run by
    ``run_chains`` at batch 1 and at ``batch``, same model, sources, prompts and per-edit seeds: edits per
    second each way and the largest pixel difference between the two runs' images (float reordering
    only; bf16 on CUDA, fp32 on CPU)."""
    import time

    from ..encoders.image import PixelEncoder
    from ..eval import edit_runs
    from ..runinfo import code_version

    if batch < 2 or sessions < 1:
        raise ValueError(f"bench_batched: need batch >= 2 and sessions >= 1, got batch={batch}, sessions={sessions}")
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model, text = _model(hidden, layers, heads, image_tokens, steps, turns, seed, dev, dtype)
    rng = np.random.default_rng(seed)
    side = 8 * image_tokens
    sources = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(sessions)]
    prompts = [f"turn {i}: move the {c} square to the {p}" for i, (c, p) in
               enumerate(zip(["red", "blue", "green", "yellow", "white"] * turns, ["left", "right", "top"] * turns))][:turns]
    ed = Editor(model, text, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                SamplerConfig(steps=steps, shift=3.0, guidance=guidance, seed=seed), device=dev, mask_type="full")

    def run(b: int, n: int):
        chains = [edit_runs.source_chain(ed, f"s{i}", sources[i], prompts, None) for i in range(n)]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs, made = edit_runs.run_chains(ed, chains, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return outs, made / (time.perf_counter() - t0)

    run(1, 1), run(batch, min(batch, sessions))              # warm-up: text encoder, allocator, kernels
    one, rate1 = run(1, sessions)
    many, rate_b = run(batch, sessions)
    diff = [np.abs(a.astype(int) - b.astype(int)) for x, y in zip(one, many) for a, b in zip(x, y)]
    return dict(
        tool="bench_editor_batched", **code_version(), torch=torch.__version__, threads=torch.get_num_threads(),
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        config=dict(hidden=hidden, layers=layers, heads=heads, image_tokens=f"{image_tokens}x{image_tokens}",
                    steps=steps, guidance=guidance, turns=turns, sessions=sessions, batch=batch, mask_type="full",
                    dtype=str(dtype).replace("torch.", ""), parameters=model.num_parameters()),
        edits=sessions * turns, edits_per_s_batch_1=round(rate1, 3), edits_per_s_batched=round(rate_b, 3),
        speedup=round(rate_b / rate1, 2),
        max_abs_diff_pixels=int(max(d.max() for d in diff)),
        pixels_differing=round(float(sum((d > 0).sum() for d in diff) / sum(d.size for d in diff)), 6))


def bench_chain(hidden: int = 256, layers: int = 4, heads: int = 8, image_tokens: int = 16, steps: int = 10,
                turns: int = 3, guidance: float = 3.0, seed: int = 0) -> dict:
    """Chain-of-editing (``infer/applications.py``: per turn a CSP map, an NSP map, then the frame, each a
    ``Editor.generate`` call on a growing layout) under block_causal three ways, same random fp32 model, image,
    prompts and noise (CPU): no KV cache, fresh caches per call (each call computes its whole context), and the
    chain's one pair of caches (each call computes only the context added since the last). Seconds each way,
    and every call's sampled latent of both cached runs compared with the no-cache run (a map binarized
    differently would show as a large difference)."""
    import time

    from ..encoders.image import PixelEncoder
    from ..infer import applications as apps
    from ..runinfo import code_version

    model, text = _model(hidden, layers, heads, image_tokens, steps, 2 * turns + 2, seed)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (8 * image_tokens, 8 * image_tokens, 3), dtype=np.uint8)
    prompts = [f"turn {i}: make the {c} square {p}" for i, (c, p) in
               enumerate(zip(["red", "blue", "green"] * turns, ["bigger", "darker", "round"] * turns))][:turns]

    def run(mode: str, n_turns: int, n_steps: int):
        ed = Editor(model, text, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                    SamplerConfig(steps=n_steps, shift=3.0, guidance=guidance, seed=seed, camera_prompts=False),
                    mask_type="block_causal", use_kv_cache=mode != "none")
        latents, real = [], ed.generate_many

        def generate_many(layouts, kvs=None, seeds=None):
            out = real(layouts, kvs if mode == "chain" else None, seeds)
            latents.extend(lat for d in out for _, lat in d.values())
            return out
        ed.generate_many = generate_many
        t0 = time.perf_counter()
        res = apps.chain_of_editing(ed, image, prompts[:n_turns])
        return res, latents, time.perf_counter() - t0, ed.kv_cache_reason()

    for mode in ("none", "call", "chain"):                 # warm-up: text encoder, allocator
        run(mode, 1, 1)
    ref, ref_lat, t_ref, _ = run("none", turns, steps)
    per_call, call_lat, t_call, _ = run("call", turns, steps)
    got, got_lat, t_got, reason = run("chain", turns, steps)
    if reason is not None:
        raise RuntimeError(f"bench_chain: the cache path did not run ({reason})")
    px = [np.abs(a.astype(int) - b.astype(int)) for r in (got, per_call) for a, b in zip(r.panels, ref.panels)]
    return dict(
        tool="bench_editor_chain", **code_version(), torch=torch.__version__, threads=torch.get_num_threads(),
        config=dict(hidden=hidden, layers=layers, heads=heads, image_tokens=f"{image_tokens}x{image_tokens}",
                    steps=steps, guidance=guidance, turns=turns, maps="roe_src,roe_tgt", mask_type="block_causal",
                    dtype="float32", device="cpu", parameters=model.num_parameters()),
        generate_calls=len(got_lat), seconds_no_cache=round(t_ref, 3), seconds_cache_per_call=round(t_call, 3),
        seconds_cache=round(t_got, 3), ratio=round(t_ref / t_got, 2), ratio_per_call=round(t_ref / t_call, 2),
        ratio_chain_over_per_call=round(t_call / t_got, 2),
        max_abs_diff_latents=max(float((a - b).abs().max()) for lat in (got_lat, call_lat)
                                 for a, b in zip(lat, ref_lat)),
        maps_equal=all(np.array_equal(a[k], b[k]) for r in (got, per_call) for a, b in zip(r.masks, ref.masks)
                       for k in a),
        max_abs_diff_pixels=int(max(d.max() for d in px)))
