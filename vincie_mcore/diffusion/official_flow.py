"""The training loss of ``model.variant: official`` (docs/official.md, "Fine-tuning the released models").

The release (ByteDance-Seed/VINCIE ``configs/generate*.yaml``) names its objective but ships no trainer:

* schedule ``lerp`` (T = 1000): x_t = (1 - t) x_0 + t eps with t = timestep / T in [0, 1];
* prediction and loss ``v_lerp``: the model predicts v = eps - x_0 (``convert_to_pred``), MSE against it;
* training timesteps ``logitnormal``: t = sigmoid(z), z ~ N(loc 0, scale 1.0 for the 3B / 1.25 for
  the 7B): ``flow.t_loc`` / ``flow.t_scale``;
* text dropout 0.1 (``flow.text_drop``), applied by the data stream (``data/official_pack.py``).

Reconstructed from the inference layout (``generate.py``): one t per session for every token (its
``timestep`` is one value per sample); every frame's x_t part is noised at that t, context frames
included, exactly as the sampler feeds them (it Euler-integrates every frame from noise), and each
context frame also carries its clean latent and flag 1; the target (the last frame) carries zeros
there. The loss is on the target frame (``flow.loss_frames: target``) or, as an option, on every
frame (``all``: the sampler integrates every frame, so the context frames' v is also defined).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch

from ..packed.batch import PackedBatch
from ..packed.maskspec import KIND_CLEAN
from .flow import FlowConfig, prediction_loss

LOSS_FRAMES = ("target", "all")


@dataclass
class OfficialFlowConfig(FlowConfig):
    """``flow`` for the official variant: FlowConfig's keys (``prediction`` must be "v", the release's
    v_lerp) plus where the loss is taken and what a dropped session's text is."""
    loss_frames: str = "target"    # "target": the last frame only; "all": every frame of the session
    uncond_text: str = "negative"  # text dropout: "negative" (the release's CFG text) | "empty" ("" per turn)

    def __post_init__(self):
        super().__post_init__()
        if self.prediction != "v":
            raise ValueError(f"flow.prediction: the official variant predicts v (the release's v_lerp), "
                             f"got {self.prediction!r}")
        if self.loss_frames not in LOSS_FRAMES:
            raise ValueError(f"flow.loss_frames: expected one of {LOSS_FRAMES}, got {self.loss_frames!r}")
        if self.uncond_text not in ("negative", "empty"):
            raise ValueError(f"flow.uncond_text: expected 'negative' or 'empty', got {self.uncond_text!r}")


def official_noise(batch: PackedBatch, cfg: OfficialFlowConfig, gen: torch.Generator, patch_size: int):
    """Draw one t per session and build the model's input.

    Returns (tokens [S_img, p*p*(2C+1)], target v = eps - x_0 [S_img, C*p*p], batch with block_t and the
    loss mask set). tokens per row: [x_t | clean latent | flag] in the (c, ph, pw) feature order of
    ``official_image_tokens`` (channel-major, so the three parts are contiguous)."""
    spec, x0 = batch.spec, batch.img_x0
    dev = x0.device
    sess = spec.block_session.long()
    z = torch.randn(int(sess.max()) + 1, generator=gen) * cfg.t_scale + cfg.t_loc    # one per session id
    t_sess = torch.sigmoid(z).clamp(cfg.t_min, 1.0)
    block_t = t_sess[sess.cpu()].to(dev)
    tok_block = spec.token_blocks()[batch.s_txt:].to(dev)                            # (S_img,)
    t = block_t[tok_block].unsqueeze(1).to(x0.dtype)                                  # (S_img, 1)
    eps = torch.randn(x0.shape, generator=gen).to(dev, x0.dtype)
    x_t = (1 - t) * x0 + t * eps
    real = sess.to(dev)[tok_block] < batch.num_sessions                               # padding rows: False
    context = (spec.block_kind.to(dev)[tok_block] == KIND_CLEAN) & real
    flag = context.to(x0.dtype).unsqueeze(1)                                          # (S_img, 1)
    tokens = torch.cat([x_t, x0 * flag, flag.expand(-1, patch_size * patch_size)], 1)
    mask = batch.img_loss_mask if cfg.loss_frames == "target" else real
    return tokens, eps - x0, replace(batch, block_t=block_t, img_loss_mask=mask)


def official_training_loss(model, batch: PackedBatch, cfg: OfficialFlowConfig, gen: torch.Generator, patch_size: int):
    """v_lerp MSE on the loss frames (mean over their elements, over every DP/CP rank:
    ``flow.prediction_loss``). Returns (loss, metrics dict)."""
    tokens, target, batch = official_noise(batch, cfg, gen, patch_size)
    return prediction_loss(model, tokens, target, batch)


def make_official_loss(cfg: OfficialFlowConfig, patch_size: int):
    """The trainer's ``loss_fn(model, batch, gen)`` for the official variant."""
    return partial(_loss, cfg, patch_size)


def _loss(cfg, patch_size, model, batch, gen):
    return official_training_loss(model, batch, cfg, gen, patch_size)
