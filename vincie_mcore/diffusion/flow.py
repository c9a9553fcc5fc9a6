"""Rectified flow (docs/design.md, "Timesteps, flow matching and the sampler").

    x_t = (1 - t) * x0 + t * eps,     v = dx_t/dt = eps - x0,   t in [0, 1]

t ~ logit-normal(loc, scale) per *noisy block*; clean and text blocks sit at
t = 0. The network may predict ``v`` or ``x0`` (``prediction``); the loss is
the MSE of that prediction on noisy tokens only, and the sampler turns either
into a velocity: v = (x_t - x0_hat) / t. A prototype measured (docs/measured.md) that with 8-px
patches in pixel space velocity prediction stalled while x0 prediction
learned, so the demo predicts x0.

Sampling: Euler from t = 1 to 0 on SD3-shifted times s*t / (1 + (s-1)*t),
with classifier-free guidance whose unconditional branch drops the text only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..packed.batch import PackedBatch
from ..packed.maskspec import KIND_NOISY

PREDICTIONS = ("v", "x0")

# The loss split the trainer logs per window (``loss/<name>``). A target's task follows from the
# image it predicts (data/recipe.py: NIP -> ("frame", j+1), CSP -> ("roe_src", j), NSP -> ("roe_tgt", j),
# text-to-image -> ("t2i", j), text-to-video -> ("t2v", j)); its turn is the edit it belongs to: frame j is
# turn j, transition j's maps are turn j + 1; a text-to-image or -video target is no edit and has no turn.
LOSS_TASKS = ("task_nip", "task_csp", "task_nsp", "task_t2i", "task_t2v")
LOSS_TURNS = ("turn_1", "turn_2", "turn_3plus")
_TASK_OF_REF = {"frame": 0, "roe_src": 1, "roe_tgt": 2, "t2i": 3, "t2v": 4}


@dataclass
class FlowConfig:
    prediction: str = "v"          # what the network outputs: "v" or "x0"
    t_loc: float = 0.0             # logit-normal location of training t
    t_scale: float = 1.0           # logit-normal scale
    text_drop: float = 0.1         # P(drop a session's texts) in training, so CFG has an unconditional model
    t_min: float = 1e-3            # keeps v = (x_t - x0)/t finite

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"flow.prediction: expected one of {PREDICTIONS}, got {self.prediction!r}")
        if self.t_scale <= 0:
            raise ValueError(f"flow.t_scale: must be > 0, got {self.t_scale}")
        if not 0 <= self.text_drop <= 1:
            raise ValueError(f"flow.text_drop: must be in [0, 1], got {self.text_drop}")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 resolution shift: pushes sampling time towards the noisy end for s > 1."""
    return shift * t / (1 + (shift - 1) * t)


def _image_token_t(batch: PackedBatch) -> torch.Tensor:
    """[S_img] t of every image token (via its block)."""
    tok_block = batch.spec.token_blocks()[batch.s_txt:]
    return batch.block_t.to(batch.img_x0.device)[tok_block.to(batch.img_x0.device)]


def drop_text(batch: PackedBatch, sessions: torch.Tensor) -> PackedBatch:
    """Zero the text embeddings of the given sessions (bool [num_sessions+pads]); <TURN> tokens stay."""
    tok_block = batch.spec.token_blocks()[: batch.s_txt]
    sess = batch.spec.block_session.long()[tok_block]
    n_ids = int(batch.spec.block_session.max()) + 1                       # padding blocks have their own ids
    chosen = torch.zeros(max(n_ids, sessions.numel()), dtype=torch.bool)
    chosen[: sessions.numel()] = sessions.bool().cpu()
    drop = chosen.to(sess.device)[sess]
    return replace(batch, txt_emb=batch.txt_emb * (~drop).unsqueeze(1).to(batch.txt_emb.dtype))


def noise_batch(batch: PackedBatch, cfg: FlowConfig, gen: torch.Generator):
    """Draw t per noisy block and noise the image stream.

    Returns (x_t [S_img, P], target [S_img, P], batch with block_t set).
    """
    spec = batch.spec
    noisy = (spec.block_kind == KIND_NOISY).cpu()          # t is drawn on the CPU (the generator's device)
    t_blocks = torch.zeros(spec.num_blocks)
    z = torch.randn(int(noisy.sum()), generator=gen) * cfg.t_scale + cfg.t_loc
    t_blocks[noisy] = torch.sigmoid(z).clamp(cfg.t_min, 1.0)
    batch = replace(batch, block_t=t_blocks.to(batch.img_x0.device))
    x0 = batch.img_x0
    eps = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
    t = _image_token_t(batch).unsqueeze(1).to(x0.dtype)                  # (S_img, 1)
    m = batch.img_loss_mask.unsqueeze(1)
    x_t = torch.where(m, (1 - t) * x0 + t * eps, x0)
    target = (eps - x0) if cfg.prediction == "v" else x0
    return x_t, target, batch


def training_loss(model, batch: PackedBatch, cfg: FlowConfig, gen: torch.Generator):
    """MSE of the prediction on noisy tokens. Returns (loss, metrics dict)."""
    if cfg.text_drop > 0:
        batch = drop_text(batch, torch.rand(batch.num_sessions, generator=gen) < cfg.text_drop)
    x_t, target, batch = noise_batch(batch, cfg, gen)
    return prediction_loss(model, x_t, target, batch)


def loss_groups(batch: PackedBatch) -> torch.Tensor | None:
    """[2, S_img] long: each image token's task (index into LOSS_TASKS) and turn bucket (into
    LOSS_TURNS), -1 off targets. None when no noisy block names its image (``ref``, set by the packer)."""
    task, turn, lengths, named = [], [], [], False
    for ib in batch.image_blocks:                     # in stream order, contiguous from row 0
        ref = ib.get("ref")
        kind = ref[0] if isinstance(ref, tuple) and len(ref) == 2 else None
        if ib.get("noisy") and kind in _TASK_OF_REF:
            named = True
            task.append(_TASK_OF_REF[kind])
            turn.append(-1 if kind in ("t2i", "t2v") else min(ref[1] + (kind != "frame"), 3) - 1)
        else:
            task.append(-1)
            turn.append(-1)
        lengths.append(ib["length"])
    if not named:
        return None
    lengths.append(batch.s_img - sum(lengths))        # padding rows
    per_block = torch.tensor([task + [-1], turn + [-1]], dtype=torch.long)
    return torch.repeat_interleave(per_block, torch.tensor(lengths), dim=1)


def prediction_loss(model, x_t: torch.Tensor, target: torch.Tensor, batch: PackedBatch):
    """MSE of ``model(x_t, batch)`` against ``target`` on noisy tokens. Returns (loss, metrics dict).

    The mean runs over every noisy element of the global batch (all data- and context-parallel
    ranks): each rank sums its own squared errors and the count is all-reduced
    (``parallel.context_parallel.data_parallel_mean``), so any layout trains like one device.
    The layout is the one the model was given (``parallel.dims.parallelize``; a model or callable
    never parallelized is one device). Under context parallelism the model returns only this
    rank's image rows.
    metrics["loss_parts"] (when the batch names its targets, see ``loss_groups``): {name: [2]
    tensor (this rank's squared-error sum, element count)} per task and turn, from the same errors
    (no second forward); the trainer sums them over ranks and a logging window.
    """
    from ..parallel.context_parallel import data_parallel_mean, image_rows
    from ..parallel.dims import dims_of

    groups = loss_groups(batch)
    pred = model(x_t, batch)                                             # (S_img_local, P)
    dims = dims_of(model)
    rows = image_rows(batch.spec, dims)
    m = batch.img_loss_mask[rows]
    diff = (pred.float() - target[rows].float())[m]                      # (n_noisy_local, P)
    sq = diff.pow(2).sum()
    err, count = data_parallel_mean(sq, m.sum() * pred.shape[-1], dims)
    metrics = {"loss": err.detach(), "noisy_tokens": int(count) // pred.shape[-1],
               "tokens": batch.s_txt + batch.s_img, "loss_count": count.detach()}   # count: gradient accumulation
    if groups is not None:
        metrics["loss_parts"] = _group_sums(diff.detach(), groups.to(m.device)[:, rows][:, m])
    return err, metrics


def _group_sums(diff: torch.Tensor, groups: torch.Tensor) -> dict:
    """{name: tensor([sum of squared errors, elements])} over LOSS_TASKS + LOSS_TURNS.

    diff [n, P] errors of the noisy tokens, groups [2, n] their task / turn-bucket ids (-1: none)."""
    tok_sq = diff.double().pow(2).sum(1)                                 # (n,); float64: counts pass 2^24
    untagged = len(LOSS_TASKS) + len(LOSS_TURNS)                         # a last bin for tokens without a group
    ids = torch.cat([groups[0], torch.where(groups[1] >= 0, groups[1] + len(LOSS_TASKS), -1)])   # (2n,)
    ids = torch.where(ids >= 0, ids, untagged)
    vals = torch.stack([tok_sq, torch.full_like(tok_sq, diff.shape[1])], 1).repeat(2, 1)        # (2n, 2)
    parts = torch.zeros(untagged + 1, 2, dtype=torch.float64, device=diff.device).index_add_(0, ids, vals)
    return dict(zip(LOSS_TASKS + LOSS_TURNS, parts.unbind(0)))


def velocity(pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, cfg: FlowConfig) -> torch.Tensor:
    if cfg.prediction == "v":
        return pred
    return (x_t - pred) / t.clamp(min=cfg.t_min)


@torch.no_grad()
def euler_sample(model, batch: PackedBatch, cfg: FlowConfig, steps: int = 50, shift: float = 1.0,
                 guidance: float = 1.0, gen: torch.Generator | None = None,
                 callback: Callable[[int, int], None] | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Denoise every noisy block of ``batch``; returns the image stream [S_img, P] with
    noisy tokens replaced by samples (clean tokens untouched). ``callback(done, steps)`` runs
    after each step (progress bars; it must not touch the tensors). ``noise`` [S_img, P]: the
    starting noise (read on noisy rows only) instead of a draw from ``gen``."""
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    x0 = batch.img_x0
    m = batch.img_loss_mask.unsqueeze(1)
    noisy = batch.spec.block_kind == KIND_NOISY
    if noise is None:
        noise = torch.randn(x0.shape, generator=gen)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise: expected shape {list(x0.shape)} (the batch's image stream), got {list(noise.shape)}")
    x = torch.where(m, noise.to(x0.device, x0.dtype), x0)
    uncond = drop_text(batch, torch.ones(batch.num_sessions, dtype=torch.bool)) if guidance != 1.0 else None
    ts = shift_time(torch.linspace(1.0, 0.0, steps + 1), shift)
    for i in range(steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        block_t = torch.where(noisy.to(x0.device), torch.tensor(t, device=x0.device), torch.zeros((), device=x0.device))
        b = replace(batch, block_t=block_t)
        tt = torch.full((x.shape[0], 1), t, device=x.device, dtype=x.dtype)
        v = velocity(model(x, b), x, tt, cfg)
        if uncond is not None:
            v_u = velocity(model(x, replace(uncond, block_t=block_t)), x, tt, cfg)
            v = v_u + guidance * (v - v_u)
        x = torch.where(m, x + (t_next - t) * v, x0)
        if callback is not None:
            callback(i + 1, steps)
    return x
