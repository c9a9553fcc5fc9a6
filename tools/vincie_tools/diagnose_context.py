"""Does a trained run use its context and its instruction? x0 error at fixed t, taken apart.

For held-out first turns (I0, T0 -> I1), noise I1 at each t and compare the model's x0
prediction with I1 (``model``), against predicting I0 unchanged (``copy_source``), against the
model with the context image replaced by another session's (``shuffled_context``) and with the
instruction replaced by another session's (``shuffled_text``). ``unchanged`` / ``changed`` split
the model's error over the tokens the edit leaves alone (copying) and the ones it changes (the
edit itself). A model that edits in context must beat copy_source at high t, and its ``changed``
error must depend on the text; DESIGN's in-context problem shows up here first.

    vincie-diagnose-context --run runs/demo --sessions 40 --t 0.5 0.8 0.95

Prints a JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="training run folder (config.yaml + checkpoints/)")
    ap.add_argument("--store", default=None, help="session store (default: <run>/heldout/store)")
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--t", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from vincie_mcore import experiment as ex
    from vincie_mcore.data.packing import EncodedSession, pack
    from vincie_mcore.data.recipe import inference_sample

    try:
        cfg, model, text, image = ex.load_run(a.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dc = ex.data_configs(cfg)
    held = ex.decode_corpus(a.store or f"{a.run}/heldout/store", dc["corpus"], a.sessions)
    if len(held) < 2:
        print("error: --store: need at least 2 sessions", file=sys.stderr)
        return 2
    mask_type = dc["recipe"].mask_type
    lat = [image.encode(torch.from_numpy(np.ascontiguousarray(s.frames[:2]))) for s in held]   # (2, C, H, W)

    def x0_error(src, tgt, txt, t, seed, split=False):
        sess = EncodedSession(frames=torch.stack([src, tgt]), texts=[txt], cameras=[None])
        b = pack([(inference_sample([txt], dc["recipe"].camera_prompts), sess)], text.encode, dc["pack"], mask_type)
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

    out = {"run": a.run, "sessions": len(held), "mask_type": mask_type, "t": {}}
    n = len(held)
    for t in a.t:
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
        print(f"t={t}: " + "  ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
