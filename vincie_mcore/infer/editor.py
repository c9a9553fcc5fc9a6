"""Turn-after-turn image editing with the in-context model.

Each turn packs the whole history (I0, T0, I1, ..., I_n, T_n) followed by a
noisy I_{n+1} under the mask the model was trained with (``full`` for the
released VINCIE models; ``block_causal``: the history never sees the target),
runs the Euler sampler with CFG, and appends the result to the history: the
model's own outputs become the context of later turns.

Under ``block_causal`` an ``EditSession`` keeps a KV cache per CFG branch
(docs/kv_cache.md): the history's per-layer K/V are computed once, when a turn
first needs them, and every sampling step of every later turn runs only the
noisy target against them. ``use_kv_cache=False``, the ``full`` mask, or a model
without cache support (another attention backend, TP/CP > 1) take the re-packing
path, with the reason in ``EditSession.info``.

    editor = Editor(model, text_encoder, image_encoder, pack_cfg, flow_cfg)
    sess = editor.start(image)          # uint8 [H, W, 3]
    img1 = sess.edit("add a red square at the top left")
    img2 = sess.edit("make the red square blue")
    save_strip(sess, "strip.png")
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.packing import EncodedSession, PackConfig, pack
from ..data.recipe import T2V, SessionSample, camera_prompt, inference_sample, t2i_sample, t2v_sample
from ..diffusion.flow import FlowConfig, euler_sample
from ..packed.patches import unpatchify
from ..parallel import cpu_compat

log = logging.getLogger(__name__)


@dataclass
class SamplerConfig:
    steps: int = 50            # paper: 50
    shift: float = 1.0         # SD3 shift s (docs/design.md, sampler: 10-12 at real resolutions)
    guidance: float = 10.0     # paper: 10; text-only unconditional branch
    camera_prompts: bool = True
    seed: int = 0
    release_io: bool = False   # the official editor only: images between turns as generate.py handles them

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sampler.steps: must be >= 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"sampler.shift: must be > 0, got {self.shift}")


class Editor:
    def __init__(self, model, text_encoder, image_encoder, pack_cfg: PackConfig, flow_cfg: FlowConfig,
                 sampler: SamplerConfig | None = None, device="cpu", mask_type: str = "full",
                 use_kv_cache: bool = True):
        self.model, self.text, self.image = model, text_encoder, image_encoder
        self.pack_cfg, self.flow_cfg = pack_cfg, flow_cfg
        self.sampler = sampler or SamplerConfig()
        if self.sampler.release_io:
            raise ValueError("sampler.release_io: only for a released model (model.variant 'official'): it copies "
                             "the release's generate.py image handling")
        self.device = torch.device(device)
        self.mask_type = mask_type
        self.use_kv_cache = use_kv_cache
        self.gen = torch.Generator().manual_seed(self.sampler.seed)
        self.step_callback = None       # callback(done, steps) after each sampling step (progress in a UI)

    def kv_cache_reason(self) -> str | None:
        """None when ``EditSession.edit`` will use the KV cache, else why not (one line)."""
        if not self.use_kv_cache:
            return "kv_cache: off (use_kv_cache=False)"
        if self.mask_type != "block_causal":
            return (f"kv_cache: not with the {self.mask_type!r} mask (the context attends to the noisy target, "
                    f"so its K/V change every step)")
        inner = _inner_model(self.model)
        if inner is None:
            return f"kv_cache: the model ({type(self.model).__name__}) has no prefill/kv_cache_support"
        return inner.kv_cache_support()

    def _check_image(self, image) -> torch.Tensor:
        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"image: expected uint8 [H, W, 3], got {a.dtype} {list(a.shape)}")
        p = self.pack_cfg.patch_size * getattr(self.image, "downsample", 1)
        if a.shape[0] % p or a.shape[1] % p:
            raise ValueError(f"image: size {a.shape[0]}x{a.shape[1]} must be divisible by {p} (patch x VAE factor)")
        return torch.from_numpy(np.ascontiguousarray(a))

    def start(self, image) -> "EditSession":
        return EditSession(self, [self._check_image(image)], [])

    @torch.no_grad()
    def edit_many(self, histories: list[tuple[list[torch.Tensor], list[str]]], prompts: list[str],
                  seeds: list[int] | None = None) -> list[np.ndarray]:
        """One turn for several sessions at once (packed into one sequence): ``edit_turns``' images."""
        return [im for im, _ in self.edit_turns(histories, prompts, seeds)]

    @torch.no_grad()
    def edit_turns(self, histories: list[tuple[list[torch.Tensor], list[str]]], prompts: list[str],
                   seeds: list[int] | None = None) -> list[tuple[np.ndarray, torch.Tensor]]:
        """One turn for several sessions in one batch (the re-packing path) -> per session (image uint8
        [H, W, 3], sampled latent [C, h, w]). ``histories[i] = (images uint8 [H,W,3] I0..I_n, texts T0..T_{n-1})``.

        ``seeds[i]``: session i's starting noise is what a one-session edit draws after
        ``gen.manual_seed(seeds[i])`` (or from the session's own generator, when ``seeds[i]`` is one:
        ``session_noise``), so each session gets the image it gets alone (up to float reordering in the
        larger matmuls). None: one draw from ``gen`` over the whole batch."""
        if len(histories) != len(prompts):
            raise ValueError(f"edit_turns: {len(prompts)} prompts for {len(histories)} histories")
        if seeds is not None and len(seeds) != len(histories):
            raise ValueError(f"edit_turns: {len(seeds)} seeds for {len(histories)} histories")
        items = [self._item(self.image.encode(torch.stack(list(images))), texts, prompt)
                 for (images, texts), prompt in zip(histories, prompts)]
        batch = pack(items, self.text.encode, self.pack_cfg, self.mask_type).to(self.device)
        noise = None if seeds is None else session_noise(batch, seeds, self.pack_cfg.pad_multiple)
        return self._decode(batch, self._sample(self.model, batch, noise))

    @torch.no_grad()
    def generate(self, sample: SessionSample, sess: EncodedSession, kv: dict | None = None) -> dict:
        """Sample the noisy blocks of one laid-out session (any recipe layout, e.g.
        ``recipe.roe_inference_sample``) -> {ref: (image uint8 [H, W, 3], sampled latent [C, h, w])}.

        ``sess`` holds the clean latents the layout refers to; a noisy block's own latent only sets
        its shape (zeros will do). Under block_causal (``kv_cache_reason()`` None) the context's K/V are
        computed once per CFG branch and every sampling step runs the noisy blocks alone against them;
        otherwise every step runs the whole packed layout (and ``kv`` is unused).

        ``kv``: the caller's ``{"cond", "uncond"}`` caches (``new_kv``), kept from an earlier call whose
        layout this one extends (chain-of-editing's calls: each appends to the last one's context); only
        the context they lack is computed, and it joins them. A layout that does not extend them is
        refused in one line by the caches' signature checks. None: fresh caches for this call."""
        return self.generate_many([(sample, sess)], [kv])[0]

    @torch.no_grad()
    def generate_many(self, layouts: list[tuple[SessionSample, EncodedSession]], kvs: list | None = None,
                      seeds: list | None = None) -> list[dict]:
        """``generate`` for several laid-out sessions packed into one batch -> one dict per session.

        ``kvs[i]``: session i's kept caches (or None: fresh), joined for the call as ``edit_cached_many``
        joins them (``KVCache.join``) and split back into the same dicts afterwards, so a failed call leaves
        them as they were (one session's caches are used, and grown, in place; ``kept_on_failure`` takes them
        back). ``seeds`` as in ``edit_turns`` (a session's own ``torch.Generator`` advances by what its
        one-session call draws, so its next call draws what a one-session run draws next)."""
        from ..model.attention import KVCache

        kvs = [None] * len(layouts) if kvs is None else list(kvs)
        if len(kvs) != len(layouts) or (seeds is not None and len(seeds) != len(layouts)):
            raise ValueError(f"generate_many: {len(layouts)} layouts, {len(kvs)} caches, "
                             f"{'no' if seeds is None else len(seeds)} seeds")
        batch = pack(list(layouts), self.text.encode, self.pack_cfg, self.mask_type).to(self.device)
        noise = None if seeds is None else session_noise(batch, seeds, self.pack_cfg.pad_multiple)
        model, joined = self.model, {}
        if self.kv_cache_reason() is None:
            inner = _inner_model(self.model)
            kvs = [kv if kv is not None else self.new_kv() for kv in kvs]
            if len(kvs) == 1:                               # one session: its caches as they are, no copy
                joined = kvs[0]
            else:
                blk_session = batch.spec.block_session[batch.spec.token_blocks()]
                txt = [int((blk_session[:batch.s_txt] == i).nonzero()[0]) for i in range(len(kvs))]
                img = [int((blk_session[batch.s_txt:] == i).nonzero()[0]) for i in range(len(kvs))]
                joined = {b: KVCache.join([kv[b] for kv in kvs], txt, img) for b in ("cond", "uncond")}
            model = _CachedModel(self.model, inner, batch, joined)
        with kept_on_failure(joined if len(kvs) == 1 else {}):   # several: ``joined`` is a copy
            x = self._sample(model, batch, noise)
        if joined and len(kvs) > 1:
            parts = {b: c.split(txt, img) for b, c in joined.items()}
            for i, kv in enumerate(kvs):
                kv.update({b: parts[b][i] for b in parts})
        outs, per = self._decode(batch, x), []
        blocks = [ib for ib in batch.image_blocks if ib["noisy"]]
        for i in range(len(layouts)):
            per.append({ib["ref"]: o for ib, o in zip(blocks, outs) if ib["session"] == i})
        return per

    @torch.no_grad()
    def text_to_image(self, captions: list[str], size: tuple[int, int], seeds: list | None = None) -> list[np.ndarray]:
        """An image per caption, uint8 [H, W, 3] of ``size`` (H, W), all in one packed batch: the
        text-to-image layout a run learns with ``data.recipe.t2i_prob`` > 0 ([caption, noisy image],
        ``recipe.t2i_sample``). ``seeds`` as in ``edit_turns``."""
        if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
            raise ValueError("captions: expected one or more non-empty strings")
        blank = self._check_image(np.zeros((*size, 3), np.uint8))             # size checked as an edit's image
        shape = self.image.encode(blank[None])[0].shape                        # the latent's (C, h, w)
        layouts = [(t2i_sample(c), EncodedSession(frames=torch.zeros(1, *shape), texts=[], cameras=[]))
                   for c in captions]
        return [out[("t2i", 0)][0] for out in self.generate_many(layouts, seeds=seeds)]

    @torch.no_grad()
    def text_to_video(self, captions: list[str], transitions: list[list[str]], size: tuple[int, int],
                      seeds: list | None = None) -> list[list[np.ndarray]]:
        """A clip per caption: its first frame described by ``captions[i]``, then one frame per text of
        ``transitions[i]``, all frames generated together as one block (uint8 [H, W, 3] each, ``size`` (H, W));
        every clip in one packed batch. The text-to-video layout a run learns with ``data.recipe.t2v_prob`` > 0
        (``recipe.t2v_sample``; texts with the editor's camera tag, as edits). ``seeds`` as in ``edit_turns``."""
        if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
            raise ValueError("captions: expected one or more non-empty strings")
        if len(transitions) != len(captions):
            raise ValueError(f"transitions: {len(transitions)} lists for {len(captions)} captions")
        for texts in transitions:
            if isinstance(texts, str) or any(not isinstance(t, str) or not t.strip() for t in texts):
                raise ValueError("transitions: expected a list of non-empty strings per caption")
        blank = self._check_image(np.zeros((*size, 3), np.uint8))             # size checked as an edit's image
        shape = self.image.encode(blank[None])[0].shape                        # the latent's (C, h, w)
        tag = (lambda t: camera_prompt(t, None)) if self.sampler.camera_prompts else (lambda t: t)
        layouts = [(t2v_sample(c, [tag(t) for t in texts]),
                    EncodedSession(frames=torch.zeros(len(texts) + 1, *shape), texts=list(texts),
                                   cameras=[None] * len(texts)))
                   for c, texts in zip(captions, transitions)]
        made = self.generate_many(layouts, seeds=seeds)
        return [[out[(T2V, j)][0] for j in range(len(texts) + 1)] for out, texts in zip(made, transitions)]

    def new_kv(self) -> dict | None:
        """Empty ``{"cond", "uncond"}`` KV caches for ``generate``, or None where the cache cannot run."""
        if self.kv_cache_reason() is not None:
            return None
        inner = _inner_model(self.model)
        return {"cond": inner.new_kv_cache(), "uncond": inner.new_kv_cache()}

    @torch.no_grad()
    def edit_turn(self, images, texts: list[str], prompt: str) -> tuple[np.ndarray, torch.Tensor]:
        """One turn without the KV cache: history images uint8 [H, W, 3] I0..I_n and texts T0..T_{n-1} ->
        (image uint8 [H, W, 3], sampled latent [C, h, w])."""
        items = [self._item(self.image.encode(torch.stack(images)), texts, prompt)]
        batch = pack(items, self.text.encode, self.pack_cfg, self.mask_type).to(self.device)
        return self._decode(batch, self._sample(self.model, batch))[0]

    def _item(self, lat: torch.Tensor, texts: list[str], prompt: str):
        """One session's turn: latents of I0..I_n (n+1, C, h, w), texts T0..T_{n-1}, the prompt."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: expected a non-empty string")
        frames = torch.cat([lat, torch.zeros_like(lat[:1])])                       # target slot: filled by the sampler
        all_texts = list(texts) + [prompt]
        sess = EncodedSession(frames=frames, texts=all_texts, cameras=[None] * len(all_texts))
        return inference_sample(all_texts, self.sampler.camera_prompts), sess

    def _sample(self, model, batch, noise: torch.Tensor | None = None) -> torch.Tensor:
        s = self.sampler
        with cpu_compat.suspended():                            # no CUDA-by-name calls in sampling
            return euler_sample(model, batch, self.flow_cfg, steps=s.steps, shift=s.shift, guidance=s.guidance,
                                gen=self.gen, callback=self.step_callback, noise=noise)

    def _decode(self, batch, x: torch.Tensor) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Each noisy block of ``x`` -> (uint8 image [H, W, 3], its sampled latent [C, h, w])."""
        outs = []
        for ib in batch.image_blocks:
            if ib["noisy"]:
                tok = x[ib["start"]: ib["start"] + ib["length"]].float().cpu()
                lat = unpatchify(tok, *ib["hw"], self.pack_cfg.patch_size)          # (C, h, w)
                outs.append((self.image.decode(lat[None])[0].numpy(), lat))
        return outs

    @torch.no_grad()
    def edit_cached_many(self, sessions: list["EditSession"], prompts: list[str],
                         seeds: list[int] | None = None) -> list[tuple[np.ndarray, torch.Tensor]]:
        """One turn of several sessions with their KV caches in one batch -> per session (image, latent).

        Each branch's caches are joined for the turn (``KVCache.join``: a session's rows move to its place
        in the batch), prefilled and sampled as one, then split back (``KVCache.split``): ``generate_many``
        on the sessions' next-turn layouts; a failed turn leaves every session's caches as they were.
        ``seeds`` as in ``edit_turns``."""
        reason = self.kv_cache_reason()
        if reason:
            raise ValueError(reason)
        for sess in sessions:                                   # frames are encoded once, when added
            while len(sess.latents_in) < len(sess.images):
                sess.latents_in.append(self.image.encode(sess.images[len(sess.latents_in)][None]))
            if sess.kv is None:
                sess.kv = self.new_kv()
        before = [{b: c.sizes() for b, c in s.kv.items()} for s in sessions]
        made = self.generate_many([self._item(torch.cat(s.latents_in), s.texts, p) for s, p in zip(sessions, prompts)],
                                  [s.kv for s in sessions], seeds)
        for s, sizes in zip(sessions, before):                  # where undo takes the caches back to
            s.kv_marks.append((len(s.texts), sizes))
        return [next(iter(d.values())) for d in made]          # each layout's one noisy block: the next frame

    def edit_cached(self, sess: "EditSession", prompt: str) -> tuple[np.ndarray, torch.Tensor]:
        """One turn of ``sess`` with its KV caches -> (image uint8 [H, W, 3], sampled latent [C, h, w]).

        The batch is packed exactly as ``edit_many`` packs it (so noise draws and positions match);
        only the model calls differ: each branch prefills the context it has not cached yet, then
        every step runs the noisy target alone. A turn cut short leaves the caches as they were."""
        return self.edit_cached_many([sess], [prompt])[0]


@contextmanager
def kept_on_failure(caches: dict):
    """Caches grown in place by a call (``{"cond", "uncond"}`` KVCaches) taken back to what they held before
    it when it fails (an error, an interrupt): the context it added (a prompt that is not kept) would
    otherwise make the session's next call refuse them."""
    sizes = {b: c.sizes() for b, c in caches.items()}
    try:
        yield
    except BaseException:
        for b, c in caches.items():
            c.truncate(sizes[b])
        raise


def session_noise(batch, seeds: list, pad_multiple: int = 1) -> torch.Tensor:
    """[S_img, P] starting noise of a packed batch, session i's rows drawn as ``euler_sample`` draws them
    for session i alone: row-major from its first image row (a batch's padding sits after every session, so
    no session's draw moves), ``seeds[i]`` an int (a generator seeded with it) or a session's own
    ``torch.Generator``, advanced by the rows of its one-session batch (its tokens padded to
    ``pad_multiple``), so its next turn draws what a one-session run draws next."""
    x0 = batch.img_x0
    if len(seeds) != batch.num_sessions:
        raise ValueError(f"seeds: {len(seeds)} for a batch of {batch.num_sessions} sessions")
    noise = torch.zeros(x0.shape)
    for i, seed in enumerate(seeds):
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        blocks = [ib for ib in batch.image_blocks if ib["session"] == i]
        a, b = min(ib["start"] for ib in blocks), max(ib["start"] + ib["length"] for ib in blocks)
        noise[a:b] = torch.randn((b - a + (a - b) % pad_multiple, x0.shape[1]), generator=gen)[:b - a]
    return noise


def _inner_model(model):
    """The MMDiT inside wrappers such as Megatron's Float16Module (``.module``), or None."""
    while model is not None and not (hasattr(model, "prefill") and hasattr(model, "kv_cache_support")):
        model = getattr(model, "module", None)
    return model


class _CachedModel:
    """``euler_sample``'s model with KV caches: the conditional branch is the batch itself (same
    ``txt_emb`` object; ``euler_sample`` only replaces ``block_t``), the unconditional one is its
    text-dropped copy. A mix-up cannot pass silently: each cache checks the text rows it was built from."""

    def __init__(self, model, inner, batch, caches: dict):
        self.model, self.inner, self.cond_txt, self.caches = model, inner, batch.txt_emb, caches
        self.ready: set[str] = set()

    def __call__(self, x, b):
        branch = "cond" if b.txt_emb is self.cond_txt else "uncond"
        cache = self.caches[branch]
        if branch not in self.ready:                            # once per turn: the new context only
            self.inner.prefill(b, cache)
            self.ready.add(branch)
        return self.model(x, b, kv_cache=cache)


@dataclass
class EditSession:
    editor: Editor
    images: list = field(default_factory=list)   # uint8 tensors [H, W, 3]: I0, I1, ...
    texts: list = field(default_factory=list)    # T0, T1, ...
    info: list = field(default_factory=list)     # per edit: turn, kv_cache, reason, cache_bytes, seconds
    latents: list = field(default_factory=list)  # per edit: the sampled target latent [C, h, w] (before decode)
    # (an add_turn turn is given, not sampled: it adds to images and texts only)
    latents_in: list = field(default_factory=list, repr=False)   # KV path: encoded I0, I1, ... [1, C, h, w]
    # the official editor's release_io: per image, the image as given before fitting (None: made here)
    files: list | None = field(default=None, repr=False)
    # per turn made through the cache: (texts before it, its caches' sizes before it), for pop_turn
    kv_marks: list = field(default_factory=list, repr=False)
    kv: dict | None = field(default=None, repr=False)            # KV path: {"cond", "uncond"} KVCache

    def add_turn(self, prompt: str, image, own: bool = False) -> None:
        """Append a turn whose result is given, not generated now: the next ``edit`` sees it as context.

        An image from elsewhere (a benchmark's ground truth) passes the editor's input rule, as ``start``
        applies it (size divisible by the patch x VAE factor; the official editor fits it to its area).
        ``own=True``: an image this model made earlier (a resumed run), taken as it is, as ``edit`` keeps
        its outputs (fitting it again would resample it)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: expected a non-empty string")
        if own:
            a = np.asarray(image)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"image: expected uint8 [H, W, 3], got {a.dtype} {list(a.shape)}")
            self.images.append(torch.from_numpy(np.ascontiguousarray(a)))
        else:
            given = self.editor.start(image)
            self.images.append(given.images[0])
        if self.files is not None:
            self.files.append(None if own else given.files[0])
        self.texts.append(prompt)

    def pop_turn(self) -> None:
        """Drop the last turn's image, text, sample and info row (the web editor's undo). A turn made through
        the KV cache added its context (the frame it edited, its prompt): the caches go back to what they
        held before it. Any other turn (given, a drag, a chain-of-editing turn) left them as they were, a
        prefix of the history that stays."""
        for name in ("images", "texts", "latents", "info"):
            getattr(self, name).pop()
        if self.files is not None:
            self.files.pop()
        del self.latents_in[len(self.images):]      # encoded frames of the kept images stay
        if self.kv is not None and self.kv_marks and self.kv_marks[-1][0] == len(self.texts):
            sizes = self.kv_marks.pop()[1]
            for b, c in self.kv.items():
                c.truncate(sizes[b])

    def edit(self, prompt: str) -> np.ndarray:
        t0 = time.perf_counter()
        reason = self.editor.kv_cache_reason()
        if reason is None:
            out, lat = self.editor.edit_cached(self, prompt)
        elif self.files is not None:      # the official editor's release_io: the images as given, too
            out, lat = self.editor.edit_turn(self.images, self.texts, prompt, files=self.files)
        else:       # the re-packing path (the official variant's editor has only this one)
            out, lat = self.editor.edit_turn(self.images, self.texts, prompt)
        return self._record(prompt, out, lat, reason, time.perf_counter() - t0)

    def _record(self, prompt: str, out: np.ndarray, lat: torch.Tensor, reason: str | None, seconds: float,
                batch: int = 1) -> np.ndarray:
        """Append one made turn and its ``info`` row (``seconds``: the edit's, or its whole batch's)."""
        self.images.append(torch.from_numpy(out))
        self.texts.append(prompt)
        self.latents.append(lat)
        if self.files is not None:
            self.files.append(None)
        nbytes = sum(c.nbytes() for c in self.kv.values()) if self.kv else 0
        self.info.append(dict(turn=len(self.texts), kv_cache=reason is None, reason=reason, cache_bytes=nbytes,
                              seconds=seconds, batch=batch))
        log.info("edit turn %d: kv_cache=%s%s, cache %d bytes, %.2f s%s", len(self.texts), reason is None,
                 f" ({reason})" if reason else "", nbytes, seconds, f" (a batch of {batch})" if batch > 1 else "")
        return out


def editor_for(variant: str, model, text_encoder, image_encoder, pack_cfg: PackConfig, flow_cfg: FlowConfig | None,
               sampler: SamplerConfig, device="cpu", mask_type: str = "full", area: int | None = None):
    """The editor of a model variant, the one place that chooses it (a run, an export, the web editor):
    ``Editor`` (the paper's layout and sampler) or, for ``official`` (the released weights), ``OfficialEditor``
    (the release's layout, sampler and area fitting; ``flow_cfg`` and ``mask_type`` unused)."""
    if variant == "official":
        from .official_editor import OfficialEditor           # imports model/official.py only when needed
        return OfficialEditor(model, text_encoder, image_encoder, pack_cfg, sampler, area=area, device=device)
    return Editor(model, text_encoder, image_encoder, pack_cfg, flow_cfg, sampler, device=device, mask_type=mask_type)


def edit_batch(sessions: list[EditSession], prompts: list[str], seeds: list[int] | None = None) -> list[np.ndarray]:
    """The next turn of several sessions of one editor at once: what ``sessions[i].edit(prompts[i])``
    does, after ``editor.gen.manual_seed(seeds[i])`` when seeds are given (or drawing from ``seeds[i]``
    itself when it is a session's own ``torch.Generator``: ``session_noise``), with the sessions packed
    into one batch so a GPU runs them together (``Editor.edit_turns``, ``OfficialEditor.edit_turns``).

    Each session's image is the one it gets alone, up to float reordering (tests/infer/test_edit_batch.py);
    under block_causal each keeps its own KV caches, joined for the batch's turn (``Editor.edit_cached_many``)."""
    if not sessions:
        return []
    editor = sessions[0].editor
    if any(s.editor is not editor for s in sessions):
        raise ValueError("edit_batch: the sessions belong to different editors")
    if len(prompts) != len(sessions) or (seeds is not None and len(seeds) != len(sessions)):
        raise ValueError(f"edit_batch: {len(sessions)} sessions, {len(prompts)} prompts, "
                         f"{'no' if seeds is None else len(seeds)} seeds")
    t0 = time.perf_counter()
    reason = editor.kv_cache_reason()
    if reason is None:
        made = editor.edit_cached_many(sessions, prompts, seeds)
    else:
        made = editor.edit_turns([(s.images, s.texts) if s.files is None else (s.images, s.texts, s.files)
                                  for s in sessions], prompts, seeds)
    seconds = time.perf_counter() - t0
    return [s._record(p, out, lat, reason, seconds, len(sessions)) for s, p, (out, lat) in zip(sessions, prompts, made)]


def save_strip(images, path, texts=None, scale: int = 4, labels=None):
    """Write an edit strip (I0 | I1 | ...) as PNG, captions under each turn when given.

    ``texts``: one per turn (panel i > 0 gets texts[i - 1]); ``labels``: one per panel instead."""
    import textwrap

    from PIL import Image, ImageDraw

    if isinstance(images, EditSession):
        images, texts = images.images, images.texts
    if labels is not None:
        if len(labels) != len(images):
            raise ValueError(f"save_strip: {len(labels)} labels for {len(images)} panels")
    elif texts:
        labels = [""] + list(texts)
    ims = [Image.fromarray(np.asarray(im)).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST)
           for im in images]
    w, h = ims[0].size
    per_line = max(w // 6, 1)                        # PIL's default font is ~6 px wide
    lines = [textwrap.wrap(t, per_line) or [""] for t in (labels or [])][:len(ims)]
    cap = 12 * max((len(x) for x in lines), default=0) + 4 if labels else 0
    strip = Image.new("RGB", (len(ims) * (w + 4), h + cap), "white")
    d = ImageDraw.Draw(strip)
    for i, im in enumerate(ims):
        strip.paste(im, (i * (w + 4), 0))
        for k, line in enumerate(lines[i] if i < len(lines) else []):   # the whole caption, wrapped at words
            d.text((i * (w + 4) + 2, h + 2 + 12 * k), line, fill="black")
    strip.save(path)
    return path


# ----------------------------------------------------------------------------
# Benchmark: the KV cache against re-packing (vincie-bench-editor)
# ----------------------------------------------------------------------------
