"""The KV cache's benchmark: a multi-turn block_causal edit with and without the cache, same
random fp32 model, image, prompts and noise (CPU), timed per turn, with the two paths' largest
differences measured in the same run (docs/kv_cache.md; CLI ``vincie-bench-editor``)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.packing import PackConfig
from ..diffusion.flow import FlowConfig
from ..infer.editor import Editor, SamplerConfig


def bench_editor(hidden: int = 256, layers: int = 4, heads: int = 8, image_tokens: int = 16, steps: int = 10,
                 turns: int = 5, guidance: float = 3.0, seed: int = 0) -> dict:
    """Time per turn of a ``turns``-turn block_causal session with and without the KV cache,
    same random fp32 model, image, prompts and noise (CPU), with the largest difference between
    the two paths' model outputs and samples measured in the same run."""
    from ..encoders.image import PixelEncoder
    from ..encoders.text import TextEncoder, TextEncoderConfig
    from ..config import build
    from ..model import MMDiTConfig, build_model
    from ..parallel import groups
    from ..runinfo import code_version

    if min(hidden, layers, heads, image_tokens, steps, turns) < 1 or hidden % heads or (hidden // heads) % 8:
        raise ValueError(f"bench_editor: need positive sizes and hidden/heads a multiple of 8, got hidden={hidden}, "
                         f"heads={heads}")
    groups.init_distributed(tp=1, cp=1, seed=seed)
    hd = hidden // heads
    ax = (hd // 4 // 2 * 2, hd // 8 * 3, hd - hd // 4 // 2 * 2 - hd // 8 * 3)      # (turn, h, w) split, even
    cfg = build(MMDiTConfig, dict(
        hidden_size=hidden, num_layers=layers, mm_layers=max(layers // 2, 1), num_heads=heads,
        ffn_hidden_size=-(-8 * hidden // 3 // 64) * 64, text_dim=64, patch_dim=192, max_turns=turns + 2,
        rope_axes_dim=list(ax), adaln_zero_init=False, text_adaln=True, attention_backend="torch"), "model")
    torch.manual_seed(seed)
    model = build_model(cfg, device="cpu").eval()
    with torch.no_grad():                                  # zero-init output layer: every output would be 0
        torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    text = TextEncoder(TextEncoderConfig(pool=4, seed=seed))
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (8 * image_tokens, 8 * image_tokens, 3), dtype=np.uint8)
    prompts = [f"turn {i}: move the {c} square to the {p}" for i, (c, p) in
               enumerate(zip(["red", "blue", "green", "yellow", "white"] * turns, ["left", "right", "top"] * turns))][:turns]

    def run(use_kv_cache: bool, n_turns: int, n_steps: int):
        outs = []
        hook = model.register_forward_hook(lambda m, a, o: outs.append(o[a[1].img_loss_mask].clone()))
        try:
            ed = Editor(model, text, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                        SamplerConfig(steps=n_steps, shift=3.0, guidance=guidance, seed=seed),
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
        config=dict(hidden=hidden, layers=layers, heads=heads, image_tokens=f"{image_tokens}x{image_tokens}",
                    steps=steps, guidance=guidance, turns=turns, dtype="float32", device="cpu",
                    parameters=model.num_parameters()),
        turns=rows, ratio_last_turn=rows[-1]["ratio"],
        max_abs_diff_model_outputs=max(float((a - b).abs().max()) for a, b in zip(got_outs, ref_outs)),
        max_abs_diff_samples=max(float((a - b).abs().max()) for a, b in zip(got.latents, ref.latents)),
        model_calls_compared=len(got_outs))
