"""Turn-after-turn editing with the released VINCIE-3B/7B (``model.variant: official``), as the release's
``generate.py`` runs a session (docs/official.md, "Editing").

Turn k (k = 0, 1, ...) of a session with images I0..Ik and instructions P0..Pk:

* every instruction is written in the release's template, ``Based on <IMG{j}>, {Pj}. Output <IMG{j+1}>: ``
  (``official_turn_texts``), and each is one sentence of the session's text (turn tokens 0..k);
* the unconditional branch of CFG is the release's fixed negative prompt (one sentence, turn 0);
* I0..Ik are encoded by the image encoder (the released VAE); the frame to generate is a zero latent;
* noise for *every* frame is drawn as ``torch.randn((T, h, w, C))`` from a generator seeded with
  ``sampler.seed`` on each turn (the release's ``fix_seed: True``: one seed for every turn), laid out as
  [T, C, h, w] here;
* ``official_sample`` runs ``sampler.steps`` Euler steps at ``sampler.shift`` / ``sampler.guidance``, and
  the last frame is decoded; that image is I_{k+1}, the context of the next turn.

The start image is fitted the release's way: resized (bicubic) to the area ``area``^2 keeping its aspect
ratio, then centre-cropped to a multiple of patch x VAE factor (``AreaResize`` + ``DivisibleCrop``).
``EditSession`` (infer/editor.py) holds the history; this editor only supplies its turns.

``sampler.release_io`` copies what ``generate.py`` does to images between turns, where the default keeps
them unresampled (docs/official.md, "Editing"): each turn re-reads every context image from its file (the
start image as given, each generated one as saved: ``* 255`` truncated to uint8), resizes every image after
the first to the *original* start image's size (PIL, bicubic), then fits each on floats (``ToTensor``,
``AreaResize``: torchvision's bicubic with antialiasing, ``DivisibleCrop``, ``Normalize(0.5, 0.5)``;
``release_pixels``). What stays apart: the VAE encodes the posterior's mode (the release draws a sample).

Multi-concept composition (the release's README, ``pad_img_placehoder=False``): ``compose_session`` starts a
session from several reference images, every later image resized to the first's size (bicubic) before the
fitting, as ``generate.py`` loads them; its editor (``with_template(False)``) takes every text verbatim
(``official_compose_texts`` writes them), for the composed turn and any edit after it.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ..encoders.image import to_uint8
from ..model.official import OFFICIAL_NEGATIVE_PROMPT, official_sample, official_turn_texts
from ..parallel import cpu_compat
from ..packed.official import official_compose_texts
from .editor import EditSession, SamplerConfig, _inner_model


class _Progress:
    """The model (any wrapper) with the ``cfg`` ``official_sample`` reads, reporting each finished Euler step to ``callback(done, steps)``
    (``calls_per_step`` model calls per step: 2 with CFG)."""

    def __init__(self, model, cfg, callback, steps: int, calls_per_step: int):
        self.model, self.cfg, self.callback, self.steps, self.per = model, cfg, callback, steps, calls_per_step
        self.calls = 0

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.calls += 1
        if self.callback is not None and self.calls % self.per == 0:
            self.callback(self.calls // self.per, self.steps)
        return out


class OfficialEditor:
    """The ``Editor`` interface (``start``, ``edit_turn``, ``kv_cache_reason``) for an official-variant model.

    pack_cfg: the data group's PackConfig (its ``patch_size``); area: side of the square area images are
    fitted to (the release: 256 for the 3B; None keeps the start image's size, cropped to the multiple);
    negative_prompt / prefix: the release's negative prompt and ``CAMERA_PREFIX`` (empty by default);
    template: write each instruction in the release's template (its ``pad_img_placehoder``, on for editing),
    or take the texts verbatim (off: composition)."""

    mask_type = "full"          # the release attends over the whole session
    flow_cfg = None             # the release's sampler is fixed (official_sample), not the FlowConfig's

    def __init__(self, model, text_encoder, image_encoder, pack_cfg, sampler: SamplerConfig | None = None,
                 area: int | None = None, device="cpu", negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
                 prefix: str = "", template: bool = True):
        inner = _inner_model(model) or model         # a Megatron model (maybe wrapped) or hf's VincieMMDiT
        if getattr(getattr(inner, "cfg", None), "variant", None) != "official":
            raise ValueError(f"model.variant: the official editor needs an official-variant model, got "
                             f"{getattr(getattr(inner, 'cfg', None), 'variant', type(model).__name__)!r}")
        if text_encoder.dim != inner.cfg.text_dim:
            raise ValueError(f"data.text_encoder: gives {text_encoder.dim}-d rows, the model's text_dim is "
                             f"{inner.cfg.text_dim}")
        if area is not None and area < 1:
            raise ValueError(f"area: must be >= 1 or None, got {area}")
        self.model, self.inner, self.text, self.image = model, inner, text_encoder, image_encoder
        self.pack_cfg = pack_cfg
        self.sampler = sampler or SamplerConfig()
        self.area, self.device = area, torch.device(device)
        self.release_io = bool(getattr(self.sampler, "release_io", False))
        self.negative_prompt, self.prefix, self.template = negative_prompt, prefix, bool(template)
        self.step_callback = None       # callback(done, steps) after each sampling step (progress in a UI)

    @property
    def multiple(self) -> int:
        return self.pack_cfg.patch_size * getattr(self.image, "downsample", 1)

    def kv_cache_reason(self) -> str:
        if hasattr(self.inner, "kv_cache_support"):
            return self.inner.kv_cache_support()
        return "kv_cache: the official variant attends over every frame of a session under one t (full mask)"

    def fitting(self, h: int, w: int) -> tuple[tuple[int, int], tuple[slice, slice]]:
        """The release's fitting of an H x W image: the area-resized size (AreaResize to ``area``^2, or as it
        is without an area) and the centre crop to the patch x VAE multiple in it (torchvision's center_crop)."""
        if self.area is not None:
            scale = math.sqrt(self.area * self.area / (h * w))
            h, w = round(h * scale), round(w * scale)
        m = self.multiple
        ch, cw = h - h % m, w - w % m
        if ch < m or cw < m:
            raise ValueError(f"image: {w}x{h} (WxH) after fitting is smaller than the patch x VAE factor {m}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return (h, w), (slice(top, top + ch), slice(left, left + cw))

    def fit(self, image) -> np.ndarray:
        """uint8 [H, W, 3] -> the release's model input size: area resize (bicubic), centre crop to the multiple."""
        from PIL import Image

        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"image: expected uint8 [H, W, 3], got {a.dtype} {list(a.shape)}")
        (h, w), crop = self.fitting(*a.shape[:2])
        if (h, w) != a.shape[:2]:
            a = np.asarray(Image.fromarray(a).resize((w, h), Image.BICUBIC))
        return np.ascontiguousarray(a[crop])

    def start(self, image) -> EditSession:
        sess = EditSession(self, [torch.from_numpy(self.fit(image))], [])
        if self.release_io:                  # the image as given: each turn fits it again, as generate.py
            sess.files = [np.ascontiguousarray(np.asarray(image))]
        return sess

    def release_pixels(self, images, files=None) -> torch.Tensor:
        """A session's context images as ``generate.py``'s ``load_image_latent_v2i`` reads them -> float
        [N, 3, H, W] (Normalize(0.5, 0.5): about -1..1, bicubic may overshoot). ``files[j]``: image j as
        given (None, or no ``files``: ``images[j]`` itself, an image made here and saved as it is). Every
        image after the first is first resized to the first's size (PIL bicubic, the release's
        ``img.resize(ori_size)``), then each goes through ToTensor, AreaResize (torchvision's bicubic on
        floats, with antialiasing) and DivisibleCrop (torchvision's ``center_crop``)."""
        from PIL import Image

        files = list(files) if files is not None else [None] * len(images)
        arrays = [np.asarray(f if f is not None else im) for im, f in zip(images, files)]
        ori = (arrays[0].shape[1], arrays[0].shape[0])                  # PIL's (W, H)
        out = []
        for j, a in enumerate(arrays):
            if j > 0 and (a.shape[1], a.shape[0]) != ori:               # PIL returns a copy at the same size
                a = np.asarray(Image.fromarray(a).resize(ori, Image.BICUBIC))
            x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div(255)   # ToTensor
            size, (rows, cols) = self.fitting(*a.shape[:2])
            if size != a.shape[:2]:                                     # torchvision returns it as it is
                x = torch.nn.functional.interpolate(x[None], size=size, mode="bicubic", align_corners=False,
                                                    antialias=True)[0]
            out.append(x[:, rows, cols].sub(0.5).div(0.5))              # Normalize(0.5, 0.5)
        return torch.stack(out)

    def with_template(self, template: bool) -> "OfficialEditor":
        """This editor (the same model and encoders) with the release's template on or off."""
        other = copy.copy(self)
        other.template = bool(template)
        return other

    def turn_texts(self, texts: list[str]) -> list[str]:
        """A session's texts as the model reads them: templated per turn, or verbatim after ``prefix``."""
        if self.template:
            return official_turn_texts(list(texts), self.prefix)
        return [self.prefix + t for t in texts]

    def compose_session(self, references, prompt: str,
                        captions: list[str] | None = None) -> tuple[EditSession, str]:
        """A verbatim-text session over ``references`` (uint8 [H, W, 3], any sizes: each later one is resized to
        the first's size, bicubic, then all are fitted) with their captions as its texts; ``.edit(text)`` with
        the returned prompt text makes the composed image. -> (session, the prompt's text)."""
        from PIL import Image

        refs = [np.asarray(r) for r in (references or [])]
        texts = official_compose_texts(len(refs), prompt, captions)
        for i, r in enumerate(refs, 1):
            if r.dtype != np.uint8 or r.ndim != 3 or r.shape[2] != 3:
                raise ValueError(f"references: reference {i}: expected uint8 [H, W, 3], got {r.dtype} {list(r.shape)}")
        h, w = refs[0].shape[:2]
        same = [r if r.shape[:2] == (h, w) else np.asarray(Image.fromarray(r).resize((w, h), Image.BICUBIC))
                for r in refs]
        ed = self.with_template(False)
        sess = EditSession(ed, [torch.from_numpy(ed.fit(r)) for r in same], texts[:-1])
        if self.release_io:                  # the references as given (release_pixels resizes them again)
            sess.files = [np.ascontiguousarray(r) for r in refs]
        return sess, texts[-1]

    def session_inputs(self, images, texts: list[str], prompt: str,
                       files=None) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """One turn's ``official_sample`` inputs: (session dict, negative rows [L, text_dim], noise [T, C, h, w]).
        ``files``: under ``release_io``, each image as given (``release_pixels``)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: expected a non-empty string")
        if self.release_io:
            lat = self.image.encode_float(self.release_pixels(images, files))                    # (n+1, C, h, w)
        else:
            lat = self.image.encode(torch.stack([torch.as_tensor(np.asarray(im)) for im in images]))
        latents = torch.cat([lat, torch.zeros_like(lat[:1])])          # the frame to generate: zero latent
        rows = self.text.encode(self.turn_texts(list(texts) + [prompt]))
        negative = self.text.encode([self.negative_prompt])[0]
        T, C, h, w = latents.shape
        gen = torch.Generator().manual_seed(int(self.sampler.seed))     # the same seed every turn (fix_seed)
        noise = torch.randn((T, h, w, C), generator=gen).permute(0, 3, 1, 2).contiguous()   # release: (T, h, w, c)
        dev = self.device
        sess = dict(texts=[r.to(dev) for r in rows], latents=latents.to(dev), t=0.0)
        return sess, negative.to(dev), noise.to(dev)

    @torch.no_grad()
    def edit_turn(self, images, texts: list[str], prompt: str, files=None) -> tuple[np.ndarray, torch.Tensor]:
        """One turn from the history (images uint8 [H, W, 3] I0..I_n, instructions T0..T_{n-1}; ``files``:
        ``session_inputs``) -> (image uint8 [H, W, 3], sampled latent [C, h, w])."""
        return self.edit_turns([(images, texts, files)], [prompt])[0]

    @torch.no_grad()
    def edit_turns(self, histories, prompts: list[str], seeds=None) -> list[tuple[np.ndarray, torch.Tensor]]:
        """One turn of several sessions in one ``official_sample`` batch -> per session (image, latent), each
        the one ``edit_turn`` gives it alone (its noise is seeded the same way, the negative prompt shared).
        ``histories[i]``: (images, texts) or (images, texts, files)."""
        if seeds is not None:
            raise ValueError("seeds: the official editor draws every turn's noise from sampler.seed "
                             "(the release's fix_seed), not per edit")
        if len(histories) != len(prompts):
            raise ValueError(f"edit_turns: {len(prompts)} prompts for {len(histories)} histories")
        inputs = [self.session_inputs(*h[:2], prompt, *h[2:]) for h, prompt in zip(histories, prompts)]
        s = self.sampler
        model = _Progress(self.model, self.inner.cfg, self.step_callback, s.steps, 2 if s.guidance != 1.0 else 1)
        with cpu_compat.suspended():                                    # no CUDA-by-name calls in sampling
            frames = official_sample(model, [x[0] for x in inputs], inputs[0][1], [x[2] for x in inputs],
                                     self.pack_cfg.patch_size, steps=s.steps, shift=s.shift, guidance=s.guidance)
        outs = []
        for f in frames:                                                # (T, C, h, w) per session
            lat = f[-1].float().cpu()
            image = to_uint8(self.image.decode_float(lat[None]), truncate=True) if self.release_io \
                else self.image.decode(lat[None])
            outs.append((image[0].numpy(), lat))
        return outs
