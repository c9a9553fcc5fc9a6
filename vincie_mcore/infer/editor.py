"""Turn-after-turn image editing with the in-context model.

Each turn packs the whole history (I0, T0, I1, ..., I_n, T_n) followed by a
noisy I_{n+1} under the mask the model was trained with (``full`` for the
released VINCIE models; ``block_causal``: the history never sees the target),
runs the Euler sampler with CFG, and appends the result to the history: the
model's own outputs become the context of later turns.

    editor = Editor(model, text_encoder, image_encoder, pack_cfg, flow_cfg)
    sess = editor.start(image)          # uint8 [H, W, 3]
    img1 = sess.edit("add a red square at the top left")
    img2 = sess.edit("make the red square blue")
    save_strip(sess, "strip.png")
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.packing import EncodedSession, PackConfig, pack
from ..data.recipe import inference_sample
from ..diffusion.flow import FlowConfig, euler_sample
from ..packed.patches import unpatchify
from ..parallel import cpu_compat


@dataclass
class SamplerConfig:
    steps: int = 50            # paper: 50
    shift: float = 1.0         # SD3 shift s (docs/design.md, sampler: 10-12 at real resolutions)
    guidance: float = 10.0     # paper: 10; text-only unconditional branch
    camera_prompts: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sampler.steps: must be >= 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"sampler.shift: must be > 0, got {self.shift}")


class Editor:
    def __init__(self, model, text_encoder, image_encoder, pack_cfg: PackConfig, flow_cfg: FlowConfig,
                 sampler: SamplerConfig | None = None, device="cpu", mask_type: str = "full"):
        self.model, self.text, self.image = model, text_encoder, image_encoder
        self.pack_cfg, self.flow_cfg = pack_cfg, flow_cfg
        self.sampler = sampler or SamplerConfig()
        self.device = torch.device(device)
        self.mask_type = mask_type
        self.gen = torch.Generator().manual_seed(self.sampler.seed)

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
    def edit_many(self, histories: list[tuple[list[torch.Tensor], list[str]]], prompts: list[str]) -> list[np.ndarray]:
        """One turn for several sessions at once (packed into one sequence).

        ``histories[i] = (images uint8 [H,W,3] I0..I_n, texts T0..T_{n-1})``.
        """
        if len(histories) != len(prompts):
            raise ValueError("edit_many: one prompt per history")
        items = []
        for (images, texts), prompt in zip(histories, prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("prompt: expected a non-empty string")
            lat = self.image.encode(torch.stack(images))                           # (n+1, C, h, w)
            frames = torch.cat([lat, torch.zeros_like(lat[:1])])                   # target slot: filled by the sampler
            all_texts = list(texts) + [prompt]
            sess = EncodedSession(frames=frames, texts=all_texts, cameras=[None] * len(all_texts))
            items.append((inference_sample(all_texts, self.sampler.camera_prompts), sess))
        batch = pack(items, self.text.encode, self.pack_cfg, self.mask_type).to(self.device)
        s = self.sampler
        with cpu_compat.suspended():                            # no CUDA-by-name calls in sampling
            x = euler_sample(self.model, batch, self.flow_cfg, steps=s.steps, shift=s.shift, guidance=s.guidance,
                             gen=self.gen)
        outs = []
        for ib in batch.image_blocks:
            if ib["noisy"]:
                tok = x[ib["start"]: ib["start"] + ib["length"]].float().cpu()
                lat = unpatchify(tok, *ib["hw"], self.pack_cfg.patch_size)          # (C, h, w)
                outs.append(self.image.decode(lat[None])[0].numpy())
        return outs


@dataclass
class EditSession:
    editor: Editor
    images: list = field(default_factory=list)   # uint8 tensors [H, W, 3]: I0, I1, ...
    texts: list = field(default_factory=list)    # T0, T1, ...

    def edit(self, prompt: str) -> np.ndarray:
        out = self.editor.edit_many([(self.images, self.texts)], [prompt])[0]
        self.images.append(torch.from_numpy(out))
        self.texts.append(prompt)
        return out


def save_strip(images, path, texts=None, scale: int = 4):
    """Write an edit strip (I0 | I1 | ...) as PNG, captions under each turn when given."""
    import textwrap

    from PIL import Image, ImageDraw

    if isinstance(images, EditSession):
        images, texts = images.images, images.texts
    ims = [Image.fromarray(np.asarray(im)).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST)
           for im in images]
    w, h = ims[0].size
    per_line = max(w // 6, 1)                        # PIL's default font is ~6 px wide
    lines = [textwrap.wrap(t, per_line) or [""] for t in (texts or [])]
    cap = 12 * max((len(x) for x in lines), default=0) + 4 if texts else 0
    strip = Image.new("RGB", (len(ims) * (w + 4), h + cap), "white")
    d = ImageDraw.Draw(strip)
    for i, im in enumerate(ims):
        strip.paste(im, (i * (w + 4), 0))
        if texts and i > 0 and i - 1 < len(texts):
            for k, line in enumerate(lines[i - 1]):   # the whole prompt, wrapped at word boundaries
                d.text((i * (w + 4) + 2, h + 2 + 12 * k), line, fill="black")
    strip.save(path)
    return path
