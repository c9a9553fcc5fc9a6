"""Does a trained model use its context and its instruction? x0 error at fixed t, taken apart.

For held-out first turns (I0, T0 -> I1), noise I1 at each t and compare the model's x0
prediction with I1 (``model``), against predicting I0 unchanged (``copy_source``), against the
model with the context image replaced by another session's (``shuffled_context``) and with the
instruction replaced by another session's (``shuffled_text``). ``unchanged`` / ``changed`` split
the model's error over the tokens the edit leaves alone (copying) and the ones it changes (the
edit itself). A model that edits in context must beat copy_source at high t, and its ``changed``
error must depend on the text; the in-context problem (docs/measured.md) shows up here first. The CLI is
``vincie-diagnose-context``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..data.packing import EncodedSession, pack
from ..data.recipe import inference_sample


def diagnose_context(model, text_encoder, image_encoder, held, recipe, pack_cfg, ts, on_t=None) -> dict:
    """x0 errors of ``model`` on the first turn of each decoded session in ``held`` (at least 2),
    at every t of ``ts``. ``recipe`` / ``pack_cfg``: the run's ``RecipeConfig`` / ``PackConfig``;
    ``on_t(t, errors)`` is called as each t is done, with the unrounded errors.

    -> {"sessions", "mask_type", "t": {str(t): {model, shuffled_context, shuffled_text,
    copy_source, unchanged, changed}}} (mean squared errors, rounded to 5 digits).
    """
    mask_type = recipe.mask_type
    lat = [image_encoder.encode(torch.from_numpy(np.ascontiguousarray(s.frames[:2]))) for s in held]   # (2, C, H, W)

    def x0_error(src, tgt, txt, t, seed, split=False):
        sess = EncodedSession(frames=torch.stack([src, tgt]), texts=[txt], cameras=[None])
        b = pack([(inference_sample([txt], recipe.camera_prompts), sess)], text_encoder.encode, pack_cfg, mask_type)
        noisy = b.spec.block_kind == 2
        b = replace(b, block_t=torch.where(noisy, torch.tensor(t), torch.tensor(0.0)))
        m = b.img_loss_mask.unsqueeze(1)
        eps = torch.randn(b.img_x0.shape, generator=torch.Generator().manual_seed(seed))
        x = torch.where(m, (1 - t) * b.img_x0 + t * eps, b.img_x0)
        with torch.no_grad():
            pred = model(x, b)
        err = (pred - b.img_x0)[b.img_loss_mask].pow(2).mean(1)                      # per target token
        if not split:
            return float(err.mean())
        same = (b.img_x0[~b.img_loss_mask] - b.img_x0[b.img_loss_mask]).abs().amax(1) < 1e-6   # I0 vs I1 token
        return float(err.mean()), err[same].sum().item(), int(same.sum()), err[~same].sum().item(), int((~same).sum())

    out = {"sessions": len(held), "mask_type": mask_type, "t": {}}
    n = len(held)
    for t in ts:
        parts = np.array([x0_error(l[0], l[1], s.texts[0], t, i, split=True) for i, (l, s) in enumerate(zip(lat, held))])
        shuf = [x0_error(lat[(i + 1) % n][0], l[1], s.texts[0], t, i) for i, (l, s) in enumerate(zip(lat, held))]
        # another session's instruction, skipping any that happen to read the same
        other = [next((held[(i + k) % n].texts[0] for k in range(1, n) if held[(i + k) % n].texts[0] != s.texts[0]),
                      s.texts[0]) for i, s in enumerate(held)]
        shuf_txt = [x0_error(l[0], l[1], o, t, i) for i, (l, o) in enumerate(zip(lat, other))]
        copy = [float((l[0] - l[1]).pow(2).mean()) for l in lat]
        r = {"model": float(parts[:, 0].mean()), "shuffled_context": float(np.mean(shuf)),
             "shuffled_text": float(np.mean(shuf_txt)), "copy_source": float(np.mean(copy)),
             "unchanged": parts[:, 1].sum() / max(parts[:, 2].sum(), 1), "changed": parts[:, 3].sum() / max(parts[:, 4].sum(), 1)}
        out["t"][str(t)] = {k: round(float(v), 5) for k, v in r.items()}
        if on_t is not None:
            on_t(t, r)
    return out
