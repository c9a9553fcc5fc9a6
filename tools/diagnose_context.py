"""Does a trained run use its context? x0 error at fixed t against the copy-the-source error.

For held-out first turns (I0, T0 -> I1), noise I1 at each t and compare the model's x0
prediction with I1 (``model``), against predicting I0 unchanged (``copy_source``) and against the
model with the context image replaced by another session's (``shuffled_context``). A model that
edits in context must beat copy_source at high t; DESIGN's in-context problem shows up here first.

    python -m tools.diagnose_context --run runs/demo --sessions 40 --t 0.5 0.8 0.95

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

    def x0_error(src, tgt, txt, t, seed):
        sess = EncodedSession(frames=torch.stack([src, tgt]), texts=[txt], cameras=[None])
        b = pack([(inference_sample([txt], dc["recipe"].camera_prompts), sess)], text.encode, dc["pack"], mask_type)
        noisy = b.spec.block_kind == 2
        b = replace(b, block_t=torch.where(noisy, torch.tensor(t), torch.tensor(0.0)))
        m = b.img_loss_mask.unsqueeze(1)
        eps = torch.randn(b.img_x0.shape, generator=torch.Generator().manual_seed(seed))
        x = torch.where(m, (1 - t) * b.img_x0 + t * eps, b.img_x0)
        with torch.no_grad():
            pred = model(x, b)
        return float((pred - b.img_x0)[b.img_loss_mask].pow(2).mean())

    out = {"run": a.run, "sessions": len(held), "mask_type": mask_type, "t": {}}
    for t in a.t:
        mod = [x0_error(l[0], l[1], s.texts[0], t, i) for i, (l, s) in enumerate(zip(lat, held))]
        shuf = [x0_error(lat[(i + 1) % len(lat)][0], l[1], s.texts[0], t, i) for i, (l, s) in enumerate(zip(lat, held))]
        copy = [float((l[0] - l[1]).pow(2).mean()) for l in lat]
        out["t"][str(t)] = {"model": round(float(np.mean(mod)), 5), "shuffled_context": round(float(np.mean(shuf)), 5),
                            "copy_source": round(float(np.mean(copy)), 5)}
        print(f"t={t}: model {np.mean(mod):.4f}  shuffled context {np.mean(shuf):.4f}  copy source {np.mean(copy):.4f}",
              flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
