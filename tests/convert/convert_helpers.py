"""Shared pieces of the export/import tests: a tiny model config, a fixed packed batch."""
from __future__ import annotations

import torch

from vincie_mcore.packed.builder import BatchBuilder
from vincie_mcore.packed.maskspec import KIND_CLEAN, KIND_NOISY
from vincie_mcore.parallel.parity import _model_dict


def tiny_dict(**over) -> dict:
    """configs/model/tiny.yaml, torch core, random gates (as the parity runs use)."""
    d = _model_dict()
    d.update(over)
    return d


def fixed_batch(mask_type: str = "block_causal", text_dim: int = 64, patch_dim: int = 192, seed: int = 0):
    """Two sessions (2 and 1 turns, 2x3 / 3x2-token images), instructions linked for text_adaln.
    -> (batch, x_t [S_img, patch_dim], target)."""
    from vincie_mcore.diffusion.flow import FlowConfig, noise_batch

    b = BatchBuilder(mask_type, pad_multiple=8)
    for turns, hw in ((2, (2, 3)), (1, (3, 2))):
        b.session()
        b.image(0, KIND_CLEAN, hw, rope_turn=0)
        for t in range(turns):
            txt = b.text(2 * t + 1, t, length=4 + t)
            last = t == turns - 1
            if mask_type == "block_causal" or not last:
                b.image(2 * t + 2, KIND_CLEAN, hw, rope_turn=t + 1, text_block=txt)
            if mask_type == "block_causal" or last:
                b.image(2 * t + 2, KIND_NOISY, hw, rope_turn=t + 1, text_block=txt)
    gen = torch.Generator().manual_seed(seed)
    batch = b.build(gen, text_dim=text_dim, patch_dim=patch_dim, random_t=True)
    x_t, target, batch = noise_batch(batch, FlowConfig(prediction="v", text_drop=0.0), gen)
    return batch, x_t, target


def randomize_(model, seed: int = 1) -> None:
    """Every parameter random (biases, norm gains and zero-initialised tables included), so no path is trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = 1.0 if "layernorm" in name else 0.0           # RMSNorm gains near 1, as trained ones are
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + gain)
