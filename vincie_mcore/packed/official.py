"""The released VINCIE-3B/7B's inputs: a session in the release's layout as a ``PackedBatch``, and its texts.

One token per image carrying [x_t | clean latent | flag] (``official_image_tokens``), every block of a
session under its t, the full mask within a session (``official_session_batch``, read back by
``official_frames``), and the release's turn template and negative prompt. Layout only: the model that
reads it is ``model/official.py`` (docs/official.md), the training stream ``data/official_pack.py``.
"""
from __future__ import annotations

import torch

from .batch import PackedBatch
from .maskspec import KIND_CLEAN, KIND_NOISY, KIND_TEXT, MaskSpec
from .patches import patchify, unpatchify


def official_image_tokens(x_t: torch.Tensor, latents: torch.Tensor, p: int) -> torch.Tensor:
    """One session: x_t, latents [T, C, H, W] (latents' last frame, the target, is not read) ->
    [T * h * w, p*p*(2C + 1)]: per pixel [x_t | clean latent | 1] for context frames, [x_t | 0 | 0] for the
    last (the release's ``get_condition``), patchified like every image token here."""
    T, C, H, W = latents.shape
    cond = torch.zeros(T, C + 1, H, W, dtype=x_t.dtype, device=x_t.device)
    cond[:-1, :C] = latents[:-1]
    cond[:-1, C] = 1.0
    frames = torch.cat([x_t, cond], 1)                                                   # (T, 2C+1, H, W)
    return torch.cat([patchify(f, p) for f in frames])                                   # (T*h*w, (2C+1)p^2)


def official_session_batch(sessions: list[dict], cfg, p: int) -> PackedBatch:
    """Sessions in the release's layout -> a PackedBatch for ``OfficialMMDiT``.

    Each session: ``texts`` (one [L_j, text_dim] tensor of text-encoder rows per turn), ``latents``
    [T, C, H, W] (clean; the last frame is the one generated) and ``t`` (float in [0, 1]). Turn j's text is a
    ``<TURN>_j`` row and its L_j rows; text token k of the session sits at RoPE (k, k, k), frame i's tokens at
    (L_text + i, h, w) or (i, h, w) (``cfg.rope_image_origin``). All of a session's blocks carry its t; the
    mask is full within a session. Joint layout: every session's text, then every session's images."""
    txt_emb, txt_turn, txt_pos, img_x0, img_pos, loss = [], [], [], [], [], []
    txt_blocks, img_blocks = [], []        # (length, order, kind, session, t)
    for s, sess in enumerate(sessions):
        latents, t = sess["latents"], float(sess["t"])
        T, C, H, W = latents.shape
        h, w = H // p, W // p
        n_txt = 0
        for j, rows in enumerate(sess["texts"]):
            if rows.dim() != 2 or rows.shape[1] != cfg.text_dim:
                raise ValueError(f"session {s} turn {j}: text rows must be [L, text_dim={cfg.text_dim}], "
                                 f"got {tuple(rows.shape)}")
            txt_emb += [rows.new_zeros(1, cfg.text_dim), rows]
            txt_turn.append(torch.tensor([j] + [-1] * rows.shape[0]))
            txt_blocks.append((rows.shape[0] + 1, j, KIND_TEXT, s, t))
            n_txt += rows.shape[0] + 1
        txt_pos.append(torch.arange(n_txt)[:, None].expand(-1, 3))
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        start = n_txt if cfg.rope_image_origin == "after_text" else 0
        for i in range(T):
            img_x0.append(patchify(latents[i], p))
            img_pos.append(torch.stack([torch.full((h * w,), start + i), hh.flatten(), ww.flatten()], 1))
            last = i == T - 1
            loss.append(torch.full((h * w,), last))
            img_blocks.append((h * w, i, KIND_NOISY if last else KIND_CLEAN, s, t))
    blocks = txt_blocks + img_blocks
    lens = torch.tensor([b[0] for b in blocks])
    spec = MaskSpec(block_offsets=torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).int(),
                    block_order=torch.tensor([b[1] for b in blocks], dtype=torch.int32),
                    block_kind=torch.tensor([b[2] for b in blocks], dtype=torch.int32),
                    block_session=torch.tensor([b[3] for b in blocks], dtype=torch.int32), mask_type="full")
    return PackedBatch(txt_emb=torch.cat(txt_emb).float(), txt_turn=torch.cat(txt_turn).long(),
                       txt_pos=torch.cat(txt_pos).long(), img_x0=torch.cat(img_x0), img_pos=torch.cat(img_pos).long(),
                       img_loss_mask=torch.cat(loss), spec=spec,
                       block_t=torch.tensor([b[4] for b in blocks], dtype=torch.float32),
                       num_sessions=len(sessions))


def official_frames(out: torch.Tensor, sessions: list[dict], p: int) -> list[torch.Tensor]:
    """Model output [S_img, patch_dim] -> per session [T, C, H, W] (every frame; the sampler keeps the last)."""
    res, r = [], 0
    for sess in sessions:
        T, C, H, W = sess["latents"].shape
        n = (H // p) * (W // p)
        res.append(torch.stack([unpatchify(out[r + i * n: r + (i + 1) * n], H // p, W // p, p) for i in range(T)]))
        r += T * n
    return res


# configs/generate.yaml and generate_7b.yaml: the unconditional branch's text (one sentence, prompt id 0)
OFFICIAL_NEGATIVE_PROMPT = (
    "Worst quality, Normal quality, Low quality, Low res, Blurry, Jpeg artifacts, Grainy, text, logo, watermark, "
    "banner, extra digits, signature, subtitling, Bad anatomy, Bad proportions, Deformed, Disconnected limbs, "
    "Disfigured, Extra arms, Extra limbs, Extra hands, Fused fingers, Gross proportions, Long neck, Malformed limbs, "
    "Mutated, Mutated hands, Mutated limbs, Missing arms, Missing fingers, Poorly drawn hands, Poorly drawn face, "
    "Nsfw, Uncensored, Cleavage, Nude, Nipples, Overexposed, Plain background, Grainy, Underexposed, "
    "Deformed structures")


def official_turn_texts(prompts: list[str], prefix: str = "") -> list[str]:
    """The release's text of each turn (``generate.py``, ``pad_img_placehoder``): turn k reads
    ``Based on <IMG{k}>, {prefix + prompt, stripped of spaces and dots}. Output <IMG{k+1}>: ``; ``prefix`` is
    its ``CAMERA_PREFIX`` (empty by default)."""
    return [f"Based on <IMG{k}>, {(prefix + p).strip().strip('.')}. Output <IMG{k + 1}>: " for k, p in enumerate(prompts)]


def official_compose_texts(references: int, prompt: str, captions: list[str] | None = None) -> list[str]:
    """The texts of the release's multi-concept composition (its README, ``pad_img_placehoder=False``: every
    text verbatim) for ``references`` images <IMG0>..<IMG{n-1}> and the image to make, <IMG{n}>: a caption
    after each reference but the first (default ``<IMG{i}>: ``, the README's), then the prompt. A prompt that
    names no ``<IMG`` is written the README's way, ``Based on <IMG0>, ..., and <IMG{n-1}>, {prompt}. Output
    <IMG{n}>: ``; one that does is kept as it is."""
    n = int(references)
    if n < 1:
        raise ValueError("references: no reference images")
    if captions is None:
        captions = [f"<IMG{i}>: " for i in range(1, n)]
    if len(captions) != n - 1:
        raise ValueError(f"captions: expected {n - 1} (one after each reference but the first), got {len(captions)}")
    if not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError("captions: expected non-empty strings")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: expected a non-empty string")
    if "<IMG" not in prompt:
        tags = [f"<IMG{i}>" for i in range(n)]
        named = tags[0] if n == 1 else " and ".join(tags) if n == 2 else ", ".join(tags[:-1]) + ", and " + tags[-1]
        prompt = f"Based on {named}, {prompt.strip().strip('.')}. Output <IMG{n}>: "
    return [*captions, prompt]
