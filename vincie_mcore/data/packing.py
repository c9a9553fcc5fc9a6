"""Where a session is packed: samples -> one token sequence + compact mask spec.

Several sessions share one packed sequence (never attending across sessions).
``pack`` feeds the recipe's blocks (text through the frozen encoder, images
patchified) to ``packed/builder.py``, which owns the layout: streams and joint
coordinates (``packed/__init__.py``), RoPE positions, and padding (to
``pad_multiple``, for TP/SP/CP splits: a block of its own session, so it sees
only itself and carries no loss). What is decided here: which RoPE turn slot
an image takes (``image_slot``) and which texts condition it.

Also here: the in-memory encoded corpus, and the batch
stream whose whole state is its step counter (so a resumed run draws exactly
the batches an uninterrupted run would).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..packed.batch import PackedBatch
from ..packed.builder import ROPE_MODES, BatchBuilder
from ..packed.patches import patchify
from .recipe import T2V, RecipeConfig, SessionSample, build_sample, camera_prompt, draw_plan, pairwise_sessions


@dataclass
class PackConfig:
    patch_size: int = 8
    rope_mode: str = "separate"      # "separate": text 1D and image 3D both from 0; "interleaved": one counter;
                                     # "text_then_image": images after the session's text (full mask only)
    pad_multiple: int = 1            # pad each stream to a multiple of this (TP*CP for SP/CP splits)
    token_budget: int = 4096         # stream: add sessions until the next would exceed this

    def __post_init__(self):
        if self.rope_mode not in ROPE_MODES:
            raise ValueError(f"pack.rope_mode: expected one of {ROPE_MODES}, got {self.rope_mode!r}")
        if self.patch_size < 1 or self.pad_multiple < 1 or self.token_budget < 1:
            raise ValueError("pack.patch_size, pack.pad_multiple and pack.token_budget must be >= 1")


@dataclass
class EncodedSession:
    """A session with its images already through the (frozen) image encoder."""
    frames: torch.Tensor                  # [K, C, h, w]
    texts: list[str]                      # K-1 transitions
    cameras: list[str | None]
    roe_src: torch.Tensor | None = None   # [K-1, C, h, w]
    roe_tgt: torch.Tensor | None = None   # [K-1, C, h, w]
    meta: dict = field(default_factory=dict)
    captions: list[str] | None = None     # K frame captions (text-to-image samples), or None

    _patches: dict = field(default_factory=dict, init=False, repr=False, compare=False)   # patches() memo

    def latent(self, ref) -> torch.Tensor:
        kind, j = ref
        src = {"frame": self.frames, "t2i": self.frames, "t2v": self.frames, "roe_src": self.roe_src,
               "roe_tgt": self.roe_tgt}[kind]
        return src[j]

    def patches(self, ref, p: int) -> tuple[torch.Tensor, int, int]:
        """(tokens [h*w, C*p*p], h, w) of one image, patchified once (every epoch re-packs it)."""
        key = (ref, p)
        if key not in self._patches:
            lat = self.latent(ref).float()
            self._patches[key] = (patchify(lat, p), lat.shape[1] // p, lat.shape[2] // p)
        return self._patches[key]


def _text_ids(blocks):
    return [b for b in blocks if b.modality == "text"]


SLOTS = {"frame": 0, "roe_src": 1, "roe_tgt": 2, "t2v": 0}


def image_slot(ref: tuple) -> int:
    """Turn coordinate of an image block under "separate" RoPE: frame j at 3j, its transition's
    RoE maps at 3j+1 (source) and 3j+2 (target). Frames keep the same relative positions whether
    or not a session carries RoE maps or drops context, so training (maps, dropout) and editing
    (frames only) agree on where the previous frame is. A text-to-image frame is the session's
    first image, whichever frame of its video it was: slot 0, as I0 of an edit. A text-to-video clip's
    frame j, counted from the clip's first (``pack`` passes ("t2v", j)), sits where frame j of an edit does
    (3j), so a T2V base learns the positions edits use."""
    kind, j = ref
    return 0 if kind == "t2i" else 3 * j + SLOTS[kind]


def pack(items: list[tuple[SessionSample, EncodedSession]], encode_text, cfg: PackConfig,
         mask_type: str) -> PackedBatch:
    """Pack sessions into one PackedBatch (layout, positions and padding: ``packed/builder.py``).

    ``encode_text(list[str]) -> list[Tensor [L, text_dim]]`` (a cached frozen
    encoder). Noisy blocks carry their clean target in ``img_x0``; the
    diffusion code noises them and sets ``block_t``.
    """
    p = cfg.patch_size
    builder = BatchBuilder(mask_type, rope_mode=cfg.rope_mode, pad_multiple=cfg.pad_multiple)
    all_texts = [b.text for s, _ in items for b in _text_ids(s.blocks)]
    embs = iter(encode_text(all_texts)) if all_texts else iter(())
    for sample, sess in items:
        builder.session()
        last_text = last_prompt = caption = -1   # text-block ids; a prompt counts only after the latest transition text
        clip0 = None                    # a text-to-video clip's first frame: its frames sit at slots from 0
        for b in sample.blocks:
            if b.modality == "text":
                t = builder.text(b.order, b.turn, next(embs))                 # <TURN>_turn + (L, text_dim)
                if b.role == "mask_prompt":
                    last_prompt = t
                else:
                    last_text, last_prompt = t, -1
                caption = t if b.role == "caption" else caption
            else:
                tok, h, w = sess.patches(b.image, p)                          # (h*w, C*p*p)
                clip = b.role == T2V                                          # one block, conditioned on the caption
                in_clip = clip and clip0 is not None                          # a later frame: joins the block
                clip0 = (clip0 if in_clip else b.image[1]) if clip else None
                slot = image_slot((T2V, b.image[1] - clip0)) if clip else image_slot(b.image)
                builder.image(b.order, b.kind, (h, w), tok, rope_turn=slot, text_block=caption if clip else last_text,
                              prompt_block=last_prompt if b.role.startswith("roe") else -1, joins=in_clip,
                              ref=b.image)
    return builder.build()


def sample_tokens(sample: SessionSample, sess: EncodedSession, text_len, p: int) -> int:
    """Joint tokens a sample will take (text_len(str) -> encoder tokens)."""
    n = 0
    for b in sample.blocks:
        if b.modality == "text":
            n += text_len(b.text) + 1
        else:
            _, h, w = sess.latent(b.image).shape
            n += (h // p) * (w // p)
    return n


class PackedStream:
    """Endless, seeded stream of PackedBatches drawn from an in-memory corpus.

    Batch ``k`` depends only on (seed, k): the stream's state is ``{"step": k}``.
    """

    def __init__(self, corpus: list[EncodedSession], text_encoder, recipe: RecipeConfig, pack_cfg: PackConfig,
                 seed: int = 0):
        if not corpus:
            raise ValueError("PackedStream: the corpus is empty")
        if recipe.pairwise:                      # Table 5's pairwise arm: sample pairs, not sessions
            corpus = pairwise_sessions(corpus)
        self.corpus, self.text_encoder, self.recipe, self.cfg, self.seed = corpus, text_encoder, recipe, pack_cfg, seed
        self.step = 0
        self._warm_text_cache()

    def _warm_text_cache(self, chunk: int = 256):
        """Encode every text the recipe can emit once, in large batches (the encoder is frozen)."""
        texts = {self.recipe.mask_prompt_src, self.recipe.mask_prompt_tgt}
        for s in self.corpus:
            for t, c in zip(s.texts, s.cameras):
                texts.add(camera_prompt(t, c) if self.recipe.camera_prompts else t)
            if self.recipe.captioned:
                texts.update(s.captions or ())
        texts = sorted(texts)
        for a in range(0, len(texts), chunk):
            self.text_encoder.encode(texts[a:a + chunk])

    def _text_len(self, text: str) -> int:
        return self.text_encoder.encode([text])[0].shape[0]

    def __iter__(self):
        return self

    def __next__(self) -> PackedBatch:
        rng = np.random.default_rng([self.seed, self.step])
        items, used = [], 0
        while True:
            sess = self.corpus[int(rng.integers(len(self.corpus)))]
            plan = draw_plan(len(sess.frames), self.recipe, rng, has_roe=sess.roe_src is not None,
                             has_captions=sess.captions is not None)
            sample = build_sample(sess.texts, sess.cameras, plan, self.recipe, sess.captions)
            n = sample_tokens(sample, sess, self._text_len, self.cfg.patch_size)
            if items and used + n > self.cfg.token_budget:
                break
            items.append((sample, sess))
            used += n
        self.step += 1
        return pack(items, self.text_encoder.encode, self.cfg, self.recipe.mask_type)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict):
        self.step = int(state["step"])
        self.seed = int(state.get("seed", self.seed))
