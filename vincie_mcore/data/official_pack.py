"""Training samples in the released models' layout (``model.variant: official``; docs/official.md,
"Fine-tuning the released models").

The release ships no training code; this is the layout its inference (``generate.py``) feeds the DiT,
applied to a training session (the reconstruction and its choices are in the doc):

* a session of K kept frames is one sequence: its K-1 turn texts, each a ``<TURN>_j`` token and the
  release's template ``Based on <IMG{j}>, {prompt}. Output <IMG{j+1}>: ``, then its K frames;
* ONE target per session, the last kept frame. How many frames are kept is drawn as our full-mask
  recipe draws its target turn (``data/recipe.py`` ``draw_plan``: uniform over the session's
  transitions), so sessions of every length give turn-1, turn-2, ... samples;
* no RoE maps and no context dropout: the template numbers frames ``<IMG{j}>`` consecutively and the
  released model never saw maps;
* text dropout (``flow.text_drop``) is decided here, because it changes the text layout: the session's
  whole text becomes the release's unconditional text (``flow.uncond_text``: "negative", the fixed
  negative prompt as one turn-0 sentence, as its CFG branch; or "empty", every turn's text "").

``official_pack`` lays sessions out with ``model/official.py`` ``official_session_batch`` (all of a
session's blocks share its t, set by the loss; the target frame is the only noisy block) and pads each
stream to ``pack.pad_multiple`` for TP/SP/CP splits (a block of its own session, as ``packed/builder.py``
pads). ``img_x0`` holds every frame's clean latent; ``diffusion/official_flow.py`` builds the
[x_t | clean latent | flag] tokens from it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..packed.batch import PackedBatch
from ..packed.maskspec import KIND_CLEAN, KIND_TEXT, MaskSpec
from ..packed.official import OFFICIAL_NEGATIVE_PROMPT, official_session_batch, official_turn_texts
from .packing import EncodedSession, PackConfig
from .recipe import RecipeConfig, camera_prompt

UNCOND_TEXTS = ("negative", "empty")


def official_texts(prompts: list[str], cameras: list[str | None], camera_prompts: bool) -> list[str]:
    """The release's text of each turn; with ``camera_prompts`` the camera tag prefixes the prompt inside
    the template (the release's ``CAMERA_PREFIX`` slot)."""
    if camera_prompts:
        prompts = [camera_prompt(p, c) for p, c in zip(prompts, cameras)]
    return official_turn_texts(prompts)


def uncond_texts(n_turns: int, uncond: str) -> list[str]:
    """The texts of a dropped session: the negative prompt as one sentence (turn 0), or "" per turn."""
    if uncond not in UNCOND_TEXTS:
        raise ValueError(f"flow.uncond_text: expected one of {UNCOND_TEXTS}, got {uncond!r}")
    return [OFFICIAL_NEGATIVE_PROMPT] if uncond == "negative" else [""] * n_turns


def check_official_widths(model_cfg, patch_size: int) -> None:
    """The model's input token must be [x_t | clean latent | flag] of ``pack.patch_size`` patches:
    image_in_dim = 2 * patch_dim + patch_size**2 (3B: 2 * 64 + 4 = 132; 7B: 2 * 48 + 1 = 97)."""
    want = 2 * model_cfg.patch_dim + patch_size * patch_size
    if (model_cfg.image_in_dim or model_cfg.patch_dim) != want:
        raise ValueError(f"model.image_in_dim: the official layout with patch_dim {model_cfg.patch_dim} and "
                         f"pack.patch_size {patch_size} needs {want}, got {model_cfg.image_in_dim}")


def pad_official(batch: PackedBatch, multiple: int) -> PackedBatch:
    """Pad the text and image streams to a multiple of ``multiple``: one block per stream, each of its own
    session (sees only itself), no loss, zero inputs."""
    pad_t, pad_i = -batch.s_txt % multiple, -batch.s_img % multiple
    if not pad_t and not pad_i:
        return batch
    spec, n = batch.spec, batch.num_sessions
    nt = int((spec.block_kind == KIND_TEXT).sum())                 # text blocks come first (joint layout)
    lens = (spec.block_offsets[1:] - spec.block_offsets[:-1]).long()
    cols = [lens, spec.block_order.long(), spec.block_kind.long(), spec.block_session.long(), batch.block_t]

    def insert(col, at, value):
        return torch.cat([col[:at], torch.tensor([value], dtype=col.dtype), col[at:]])

    if pad_i:                                                       # after every block
        cols = [insert(c, len(c), v) for c, v in zip(cols, (pad_i, 0, KIND_CLEAN, n + 1, 0.0))]
    if pad_t:                                                       # after the last text block
        cols = [insert(c, nt, v) for c, v in zip(cols, (pad_t, 0, KIND_TEXT, n, 0.0))]
    lens, order, kind, sess, block_t = cols
    spec = MaskSpec(block_offsets=torch.cat([lens.new_zeros(1), lens.cumsum(0)]).int(), block_order=order.int(),
                    block_kind=kind.int(), block_session=sess.int(), mask_type=spec.mask_type)
    z = lambda x, k, *rest: torch.cat([x, x.new_zeros(k, *rest)])  # noqa: E731
    return PackedBatch(txt_emb=z(batch.txt_emb, pad_t, batch.txt_emb.shape[1]),
                       txt_turn=torch.cat([batch.txt_turn, batch.txt_turn.new_full((pad_t,), -1)]),
                       txt_pos=z(batch.txt_pos, pad_t, *batch.txt_pos.shape[1:]),
                       img_x0=z(batch.img_x0, pad_i, batch.img_x0.shape[1]),
                       img_pos=z(batch.img_pos, pad_i, 3), img_loss_mask=z(batch.img_loss_mask, pad_i),
                       spec=spec, block_t=block_t.float(), num_sessions=n)


def official_pack(items: list[tuple[torch.Tensor, list[str]]], encode_text, model_cfg, cfg: PackConfig) -> PackedBatch:
    """Sessions -> one official-layout PackedBatch.

    items: (latents [K, C, H, W] of the kept frames, the last being the target; K-1 texts, or the
    unconditional texts of a dropped session); encode_text(list[str]) -> list of [L, text_dim];
    model_cfg: the model's ``MMDiTConfig`` (text_dim, RoPE origin). t is 0 in every block until the loss
    draws it."""
    texts = [t for _, ts in items for t in ts]
    rows = iter(encode_text(texts))
    sessions = [dict(latents=lat.float(), texts=[next(rows) for _ in ts], t=0.0) for lat, ts in items]
    return pad_official(official_session_batch(sessions, model_cfg, cfg.patch_size), cfg.pad_multiple)


class OfficialStream:
    """Endless, seeded stream of official-layout PackedBatches from an in-memory corpus (the
    ``PackedStream`` interface: batch k depends only on (seed, k); the state is ``{"step": k}``).

    recipe: ``max_frames`` and ``camera_prompts`` are read (RoE, dropout and task settings are not:
    see the module docstring); text_drop / uncond: ``flow.text_drop`` / ``flow.uncond_text``."""

    def __init__(self, corpus: list[EncodedSession], text_encoder, recipe: RecipeConfig, pack_cfg: PackConfig,
                 model_cfg, seed: int = 0, text_drop: float = 0.1, uncond: str = "negative",
                 weights=None, mix: str = ""):
        """``weights``: per session, how likely a draw takes it (``data.corpus.mix`` over a union's sources,
        ``build.official_weights``); None: uniform. ``mix``: the setting they came from, kept in the state so
        that a resume with another one is refused."""
        if not corpus:
            raise ValueError("OfficialStream: the corpus is empty")
        self.p = None
        if weights is not None:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(corpus),) or not (np.all(w >= 0) and w.sum() > 0):
                raise ValueError(f"OfficialStream: weights must be {len(corpus)} numbers >= 0 with a positive sum")
            self.p = w / w.sum()
        self.mix = mix
        if recipe.mask_type != "full":
            raise ValueError(f"recipe.mask_type: the official variant trains one target per session under the "
                             f"full mask, got {recipe.mask_type!r}")
        uncond_texts(1, uncond)                                     # validates uncond
        self.corpus, self.text_encoder, self.recipe, self.cfg = corpus, text_encoder, recipe, pack_cfg
        self.model_cfg, self.seed, self.text_drop, self.uncond = model_cfg, seed, text_drop, uncond
        check_official_widths(model_cfg, pack_cfg.patch_size)
        self.step = 0
        self._warm_text_cache()

    def _warm_text_cache(self, chunk: int = 256):
        """Encode every text a sample can hold once, in large batches (the encoder is frozen): turn j's text
        does not depend on how many turns are kept."""
        texts = set(uncond_texts(1, self.uncond)) | {""}
        for s in self.corpus:
            n = min(len(s.frames), self.recipe.max_frames) - 1
            texts.update(official_texts(s.texts[:n], s.cameras[:n], self.recipe.camera_prompts))
        texts = sorted(texts)
        for a in range(0, len(texts), chunk):
            self.text_encoder.encode(texts[a:a + chunk])

    def __iter__(self):
        return self

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, list[str]]:
        """One session's (latents of the kept frames, texts)."""
        i = int(rng.integers(len(self.corpus))) if self.p is None else int(rng.choice(len(self.corpus), p=self.p))
        sess = self.corpus[i]
        n = min(len(sess.frames), self.recipe.max_frames) - 1
        if n < 1:
            raise ValueError(f"session has {len(sess.frames)} frame(s); a training session needs at least 2")
        k = int(rng.integers(n)) + 1                                # turns kept; target = frame k
        if rng.random() < self.text_drop:
            texts = uncond_texts(k, self.uncond)
        else:
            texts = official_texts(sess.texts[:k], sess.cameras[:k], self.recipe.camera_prompts)
        return sess.frames[: k + 1], texts

    def __next__(self) -> PackedBatch:
        rng = np.random.default_rng([self.seed, self.step])
        p = self.cfg.patch_size
        items, used = [], 0
        while True:
            lat, texts = self.draw(rng)
            n = sum(r.shape[0] + 1 for r in self.text_encoder.encode(texts)) \
                + lat.shape[0] * (lat.shape[2] // p) * (lat.shape[3] // p)
            if items and used + n > self.cfg.token_budget:
                break
            items.append((lat, texts))
            used += n
        self.step += 1
        return official_pack(items, self.text_encoder.encode, self.model_cfg, self.cfg)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "mix": self.mix}

    def load_state_dict(self, state: dict):
        if state.get("mix", "") != self.mix:
            raise ValueError(f"data stream state: mix {state.get('mix') or 'none'} in the checkpoint, "
                             f"{self.mix or 'none'} now (a resume must keep data.corpus.mix)")
        self.step = int(state["step"])
        self.seed = int(state.get("seed", self.seed))
