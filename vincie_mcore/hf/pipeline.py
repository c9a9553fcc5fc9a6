"""VincieEditPipeline: multi-turn editing from an export folder, with no Megatron-Core model.

The plain ``VincieMMDiT`` goes into the library's own editor (``vincie_mcore/infer/editor.py``:
the same packing, batch contract and Euler + CFG sampler as training and ``vincie-edit``);
the encoders and the sampler settings come from config.json's ``"pipeline"`` section, which an
export from a run folder writes (docs/export.md).

    pipe = VincieEditPipeline.from_pretrained("exports/demo")
    images = pipe(image, ["add a red square at the top left", "make it blue"], steps=20, guidance=3.0, seed=0)
    drawn = pipe.text_to_image(["a large red square at the top left"], (24, 24))   # a run trained with T2I
    clip = pipe.text_to_video("a large red square at the top left", ["make the red square blue"], (24, 24))
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from vincie_mcore.config import build
from vincie_mcore.data.packing import PackConfig
from vincie_mcore.data.recipe import RecipeConfig
from vincie_mcore.diffusion.flow import FlowConfig
from vincie_mcore.encoders import ImageEncoderConfig, TextEncoder, TextEncoderConfig, build_image_encoder
from vincie_mcore.infer.editor import SamplerConfig, editor_for

from .files import ExportError, read_config
from .modeling import VincieMMDiT

PIPELINE_KEYS = ("text_encoder", "image_encoder", "pack", "flow", "sampler", "mask_type")


def pipeline_section(cfg) -> dict:
    """The "pipeline" entry of config.json from a resolved run config (what editing needs besides the weights)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    d = c["data"]
    out = {"text_encoder": d["text_encoder"], "image_encoder": d["image_encoder"], "pack": d["pack"],
           "flow": c["flow"], "sampler": c["sampler"], "mask_type": d["recipe"]["mask_type"]}
    if c["model"].get("variant") == "official":      # the area images are fitted to (infer/official_editor.py)
        out["area"] = d["corpus"].get("image_size")
    else:                                            # the applications' layouts: mask prompts, camera tags
        out["recipe"] = d["recipe"]
    return out


class VincieEditPipeline:
    """Model + frozen encoders + sampler settings; ``__call__`` edits an image turn after turn."""

    def __init__(self, model: VincieMMDiT, text_encoder, image_encoder, pack: PackConfig, flow: FlowConfig,
                 sampler: SamplerConfig, mask_type: str, device="cpu", area: int | None = None,
                 recipe: RecipeConfig | None = None):
        self.model, self.text_encoder, self.image_encoder = model, text_encoder, image_encoder
        self.pack, self.flow, self.sampler, self.mask_type, self.device = pack, flow, sampler, mask_type, device
        self.area = area                # official variant: images fitted to area^2 (infer/official_editor.py)
        self.recipe = recipe            # paper variant: the run's recipe (chain and drag's mask prompts)

    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype: torch.dtype | None = None) -> "VincieEditPipeline":
        meta = read_config(folder)
        p = meta.get("pipeline")
        if not isinstance(p, dict) or any(k not in p for k in PIPELINE_KEYS):
            missing = [k for k in PIPELINE_KEYS if not isinstance(p, dict) or k not in p]
            raise ExportError(f"export folder: {folder}/config.json has no pipeline settings ({missing[0]}); "
                              f"export from a run folder (with config.yaml) to get them")
        model = VincieMMDiT.from_pretrained(folder, dtype=dtype, device=device).eval()
        text = TextEncoder(build(TextEncoderConfig, p["text_encoder"], "pipeline.text_encoder"), device=device)
        image = build_image_encoder(build(ImageEncoderConfig, p["image_encoder"], "pipeline.image_encoder"),
                                    device=device)
        recipe = build(RecipeConfig, p["recipe"], "pipeline.recipe") if p.get("recipe") is not None else None
        return cls(model, text, image, build(PackConfig, p["pack"], "pipeline.pack"),
                   build(FlowConfig, p["flow"], "pipeline.flow"),
                   build(SamplerConfig, p["sampler"], "pipeline.sampler"), p["mask_type"], device, p.get("area"),
                   recipe)

    @torch.no_grad()
    def __call__(self, image, prompts: list, steps: int | None = None, guidance: float | None = None,
                 seed: int | None = None, shift: float | None = None) -> list[np.ndarray] | list[list[np.ndarray]]:
        """image uint8 [H, W, 3], one prompt per turn -> the edited image of every turn (uint8 [H, W, 3]).

        Each turn sees the whole history, its own earlier outputs included. steps / guidance / seed /
        shift default to the exported sampler settings.

        Several sessions at once: ``image`` a list of images, ``prompts`` a list of prompt lists (one per
        image, any lengths) -> a list of image lists. Their turns run in one batch per turn
        (``infer.editor.edit_batch``), each session drawing its noise from its own generator seeded with
        ``seed``, so each gets the images a one-image call with that seed gives (up to float reordering).
        """
        # 1. Check inputs
        many = isinstance(image, (list, tuple))
        sessions = list(zip(image, prompts)) if many and len(image) == len(prompts) else None
        if many and sessions is None:
            raise ValueError(f"prompts: expected one list of prompts per image ({len(image)} images), "
                             f"got {len(prompts) if isinstance(prompts, (list, tuple)) else type(prompts).__name__}")
        for p in ([q for _, q in sessions] if many else [prompts]):
            if isinstance(p, str) or not p:
                raise ValueError("prompts: expected a non-empty list of strings, one per turn"
                                 + (" (for each image)" if many else ""))
        # 2. The editor, with this call's sampler settings (a fresh generator: the same seed, the same images)
        editor = self.editor(steps, guidance, seed, shift)
        sampler = editor.sampler
        # 3. Turn after turn
        if not many:
            session = editor.start(image)
            return [session.edit(p) for p in prompts]
        # 4. Several sessions: turn t of every session that has one, in one batch
        from vincie_mcore.infer.editor import edit_batch

        states = [editor.start(im) for im, _ in sessions]
        gens = None if not isinstance(getattr(editor, "gen", None), torch.Generator) else \
            [torch.Generator().manual_seed(sampler.seed) for _ in sessions]    # the official editor seeds itself
        outs: list[list] = [[] for _ in sessions]
        for t in range(max(len(q) for _, q in sessions)):
            live = [i for i, (_, q) in enumerate(sessions) if t < len(q)]
            made = edit_batch([states[i] for i in live], [sessions[i][1][t] for i in live],
                              None if gens is None else [gens[i] for i in live])
            for i, im in zip(live, made):
                outs[i].append(im)
        return outs

    def editor(self, steps: int | None = None, guidance: float | None = None, seed: int | None = None,
               shift: float | None = None, release_io: bool | None = None):
        """The editor over this pipeline's model (``Editor``, or ``OfficialEditor`` for a release) with the
        exported sampler settings, each one given here replacing its own (``release_io``: a release's only)."""
        s = self.sampler
        sampler = dataclasses.replace(s, steps=s.steps if steps is None else int(steps),
                                      guidance=s.guidance if guidance is None else float(guidance),
                                      shift=s.shift if shift is None else float(shift),
                                      seed=s.seed if seed is None else int(seed),
                                      release_io=s.release_io if release_io is None else bool(release_io))
        return editor_for(self.model.cfg.variant, self.model, self.text_encoder, self.image_encoder, self.pack,
                          self.flow, sampler, self.device, self.mask_type, self.area)

    @torch.no_grad()
    def text_to_image(self, captions, size: tuple[int, int], seeds: list[int] | None = None,
                      **sampler) -> list[np.ndarray]:
        """Caption(s) -> an image each, uint8 [H, W, 3] of ``size`` (H, W), all in one batch: for a model trained
        with ``data.recipe.t2i_prob`` > 0 (docs/text_to_image.md). ``seeds``: one per caption (default the
        sampler's seed for each, so a caption gets what it gets alone); sampler settings as in ``__call__``."""
        self._recipe("text_to_image")                    # a release has no text-to-image layout
        captions = [captions] if isinstance(captions, str) else list(captions)
        editor = self.editor(**sampler)
        seeds = [editor.sampler.seed] * len(captions) if seeds is None else list(seeds)
        return editor.text_to_image(captions, tuple(size), seeds=seeds)

    @torch.no_grad()
    def text_to_video(self, caption: str, texts: list[str], size: tuple[int, int], seed: int | None = None,
                      **sampler) -> list[np.ndarray]:
        """A caption and the transition texts -> a clip of ``len(texts) + 1`` frames, uint8 [H, W, 3] each, all
        generated together: for a model trained with ``data.recipe.t2v_prob`` > 0 (docs/text_to_image.md).
        ``seed``: default the sampler's; sampler settings as in ``__call__``."""
        self._recipe("text_to_video")                    # a release has no text-to-video layout
        editor = self.editor(**sampler)
        return editor.text_to_video([caption], [list(texts)], tuple(size),
                                    seeds=[editor.sampler.seed if seed is None else int(seed)])[0]

    # ------------------------------------------------------------------ the paper's applications
    # (infer/applications.py, docs/applications.md); sampler settings as in __call__. Each returns the
    # application's result: its images, and ``panels`` / ``labels`` for ``applications.save`` (an edit strip).

    def _recipe(self, name: str) -> RecipeConfig:
        if self.model.cfg.variant == "official":
            raise ValueError(f"{name}: not for a released model (variant 'official'): it needs a layout the "
                             f"release's inference has no place for (RoE maps, a caption)")
        if self.recipe is None:
            raise ValueError(f"{name}: this export has no recipe in config.json's pipeline section (exported "
                             f"before it was written): export the run again")
        return self.recipe

    @torch.no_grad()
    def compose(self, references: list, prompt: str, captions: list[str] | None = None, **sampler):
        """Multi-concept composition: reference images uint8 [H, W, 3] and a prompt -> ``ComposeResult``
        (``.image``). A released model composes the release's way (verbatim texts naming ``<IMG{i}>``,
        references of any size); a paper-variant model as its run does (captions between the references,
        which must share one size)."""
        from vincie_mcore.infer import applications as apps
        return apps.compose(self.editor(**sampler), references, prompt, captions)

    @torch.no_grad()
    def chain(self, image, prompts: list[str], maps: tuple = ("roe_src", "roe_tgt"), **sampler):
        """Chain-of-editing: per turn the RoE map(s), then the frame -> ``ChainResult`` (``.images``, ``.masks``)."""
        from vincie_mcore.infer import applications as apps
        recipe = self._recipe("chain")
        return apps.chain_of_editing(self.editor(**sampler), image, prompts, recipe, maps=tuple(maps))

    @torch.no_grad()
    def drag(self, image, mask, dx: int = 0, dy: int = 0, prompt: str | None = None, scale: float = 1.0,
             angle: float = 0.0, **sampler):
        """Drag editing: the region ``mask`` (bool [H, W], or None to let the model locate it from ``prompt``)
        scaled, rotated (degrees, counter-clockwise) and moved by (dx, dy) pixels -> ``DragResult`` (``.image``)."""
        from vincie_mcore.infer import applications as apps
        recipe = self._recipe("drag")
        return apps.drag(self.editor(**sampler), image, mask, dx, dy, recipe, prompt=prompt, scale=scale, angle=angle)
