"""What the web editor does, without the web: a model to edit with, and one user's session.

``Backend`` holds the model, its frozen encoders and the sampler defaults, loaded once per server
from a training run folder (``load_run``) or an export folder (``VincieEditPipeline``). Every
browser tab gets a ``WebSession``: the history (I0, T0, I1, ...), undo, and a download of the
session as a zip (images + session.json + the edit strip). The Gradio page (``app/ui.py``) only
wires these to widgets, so all of it is tested here without a browser, and the browser test only
has to show that the page drives it.

Each turn builds a fresh ``Editor`` with that turn's steps, guidance and seed (cheap: no weights
move), so the same history, prompt and settings give the same image. The ``EditSession`` and its
KV cache (docs/kv_cache.md) live across turns; undo drops the cache and the next turn prefills the
shortened history once.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.media import MAX_BYTES, MAX_PIXELS, MediaError, load_image
from ..infer.editor import Editor, EditSession, SamplerConfig, editor_for, save_strip

log = logging.getLogger(__name__)


class AppError(ValueError):
    """Bad input from the page; the message is one line naming the bad thing (shown in the page)."""


@dataclass
class Backend:
    """One loaded model: everything an ``Editor`` needs except the per-turn sampler settings."""
    model: object
    text_encoder: object
    image_encoder: object
    pack_cfg: object
    flow_cfg: object
    sampler: SamplerConfig          # defaults shown in the page
    mask_type: str
    source: str                     # "run <folder>" | "export <folder>", recorded in downloads
    device: str = "cpu"
    image_size: tuple[int, int] | None = None     # (H, W) the model was trained at, when known
    examples: list = field(default_factory=list)  # [(png path, prompt)] for the page's examples
    area: int | None = None         # official variant: the area side images are fitted to (infer/official_editor.py)
    variant: str = "paper"          # model.variant: "official" edits with OfficialEditor
    recipe: object = None           # the run's RecipeConfig (drag's mask prompts); None: the library's defaults

    @classmethod
    def from_run(cls, run_dir, overrides: list[str] | None = None) -> "Backend":
        """A training run folder (config.yaml + checkpoints/), as ``vincie-edit --run`` loads it."""
        from ..build import data_configs, load_run, make_editor

        cfg, model, text, image = load_run(run_dir, overrides)
        ed = make_editor(cfg, model, text, image)
        size = None
        world = cfg.data.get("world") if "data" in cfg else None
        if world is not None and world.get("image_px"):
            size = (int(world.image_px), int(world.image_px))
        return cls(model, text, image, ed.pack_cfg, ed.flow_cfg, ed.sampler, ed.mask_type, f"run {run_dir}",
                   str(ed.device), size, _heldout_examples(Path(run_dir)), area=getattr(ed, "area", None),
                   variant=str(cfg.model.get("variant", "paper")), recipe=data_configs(cfg)["recipe"])

    @classmethod
    def from_export(cls, folder, device: str = "cpu") -> "Backend":
        """An export folder written by ``vincie-convert export`` (plain PyTorch, no Megatron)."""
        from ..hf.pipeline import VincieEditPipeline

        p = VincieEditPipeline.from_pretrained(folder, device=device)
        return cls(p.model, p.text_encoder, p.image_encoder, p.pack, p.flow, p.sampler, p.mask_type,
                   f"export {folder}", device, area=p.area, variant=str(p.model.cfg.variant), recipe=p.recipe)

    @property
    def size_multiple(self) -> int:
        if self.variant == "official":       # its editor fits any start image (area resize + crop), as the release
            return 1
        return self.pack_cfg.patch_size * getattr(self.image_encoder, "downsample", 1)

    def editor(self, steps: int, guidance: float, seed: int) -> Editor:
        try:
            sampler = dataclasses.replace(self.sampler, steps=int(steps), guidance=float(guidance), seed=int(seed))
        except ValueError as e:                       # SamplerConfig names the bad setting
            raise AppError(str(e)) from None
        return editor_for(self.variant, self.model, self.text_encoder, self.image_encoder, self.pack_cfg,
                          self.flow_cfg, sampler, self.device, self.mask_type, self.area)


def _heldout_examples(run: Path, n: int = 4) -> list:
    """First frames and first instructions of a few held-out sessions of the run (the demo writes them)."""
    from PIL import Image

    from ..data.store import SessionStore

    if not (run / "heldout").is_dir():
        return []
    try:
        store = SessionStore(run / "heldout")
        out = []
        folder = run / "app_examples"
        folder.mkdir(exist_ok=True)
        for i in range(min(n, len(store))):
            s = store[i]
            path = folder / f"example_{i}.png"
            Image.open(io.BytesIO(s.frames[0])).convert("RGB").save(path)
            out.append((str(path), s.texts[0]))
        return out
    except Exception as e:                             # examples are a convenience: never stop the app
        log.warning("no examples from %s: %s", run / "heldout", e)
        return []


@dataclass
class Turn:
    prompt: str
    steps: int
    guidance: float
    seed: int
    seconds: float
    kv_cache: bool
    kind: str = "edit"             # "edit" | "chain" (chain-of-editing) | "compose" (the first turn) | "drag"


class WebSession:
    """One user's edit session: the start image, then a turn per prompt; undo; download."""

    def __init__(self, backend: Backend, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES):
        self.backend = backend
        self.max_pixels, self.max_bytes = max_pixels, max_bytes     # what an upload may be (data/media.py)
        self.session: EditSession | None = None
        self.turns: list[Turn] = []
        self.references = 1            # images the session started from: 1, or a composition's references
        self.caption: str | None = None   # the caption the start image was drawn from (``draw``), if it was
        self.maps: dict[int, dict] = {}   # image index -> the RoE maps its chain-of-editing turn predicted
        self.chain = None                 # the ChainSession of chain-of-editing turns (its KV cache), over a prefix
        self.id = uuid.uuid4().hex[:12]
        self._zip: Path | None = None

    # -- input -------------------------------------------------------------------------------------
    def start(self, image, fit: bool = False) -> np.ndarray:
        """A new session from a path, encoded bytes or a uint8 [H, W, 3] array -> the start image.

        Files go through the one loader for images we did not write (``data/media.py``: size limits,
        modes converted by documented rules, truncated files refused). ``fit`` resizes to the model's
        training size; otherwise a size the model cannot patchify is refused."""
        if image is None:
            raise AppError("image: upload a start image first")
        a = self._checked(self._load(image, "image"), fit, "image")
        self.session = self.backend.editor(1, 1.0, 0).start(a)
        self.turns, self.references, self.maps, self.chain, self.caption = [], 1, {}, None, None
        return np.asarray(self.session.images[0])   # the official editor fits the image to its model size

    def draw(self, caption: str, steps: int, guidance: float, seed: int, progress=None) -> np.ndarray:
        """A new session whose start image is drawn from ``caption`` (``Editor.text_to_image``: the layout a run
        learns with ``data.recipe.t2i_prob`` > 0) at the model's training size (512x512 when unknown) -> the
        image; later turns edit it as an uploaded one. A released model has no text-to-image layout."""
        if self.backend.variant == "official":
            raise AppError("caption: not for a released model (model.variant 'official'): the release's inference "
                           "layout has no text-to-image")
        if not isinstance(caption, str) or not caption.strip():
            raise AppError("caption: type what to draw")
        editor = self.backend.editor(steps, guidance, seed)
        editor.step_callback = progress
        (image,) = editor.text_to_image([caption.strip()], self.backend.image_size or (512, 512), seeds=[int(seed)])
        self.session = self.backend.editor(1, 1.0, 0).start(image)
        self.turns, self.references, self.maps, self.chain, self.caption = [], 1, {}, None, caption.strip()
        return image

    def compose(self, references, prompt: str, steps: int, guidance: float, seed: int, fit: bool = False,
                progress=None) -> np.ndarray:
        """A new session composing two or more reference images (``infer/applications.py``, "Multi-concept
        composition"; a released model composes the release's way) -> the composed image, its first turn;
        later turns edit it as any other. References are loaded and checked like a start image."""
        refs = list(references or [])
        if len(refs) < 2:
            raise AppError("references: upload two or more images to compose")
        if not isinstance(prompt, str) or not prompt.strip():
            raise AppError("prompt: type what to make of the references")
        official = self.backend.variant == "official"        # its editor fits each reference itself
        arrays = [self._load(r, f"reference {i}") for i, r in enumerate(refs, 1)]
        arrays = arrays if official else [self._checked(a, fit, f"reference {i}") for i, a in enumerate(arrays, 1)]
        editor = self.backend.editor(steps, guidance, seed)
        editor.step_callback = progress
        from ..infer.applications import compose_session
        try:
            session, text = compose_session(editor, arrays, prompt.strip())
        except ValueError as e:                              # e.g. references of two sizes (paper layout)
            raise AppError(str(e)) from None
        self.session, self.turns, self.references, self.maps, self.chain = session, [], len(arrays), {}, None
        self.caption = None
        t0 = time.perf_counter()
        out = session.edit(text)
        self.turns.append(Turn(prompt.strip(), int(steps), float(guidance), int(seed),
                               round(time.perf_counter() - t0, 3), bool(session.info[-1]["kv_cache"]), "compose"))
        return out

    def drag(self, mask, dx: int, dy: int, scale: float, angle: float, steps: int, guidance: float, seed: int,
             prompt: str = "", progress=None) -> np.ndarray:
        """One turn that moves (scales, turns) a region of the latest image (``infer/applications.py`` ``drag``,
        paper E.5) -> the result, appended to the history as the turn "move the object ..." that later turns
        see as context. ``mask``: bool or 0/255 [H, W] over the latest image; empty or None: the model
        locates the region from ``prompt`` first (its CSP turn), which is then also the instruction.

        The drag's own context is the latest image and its two region maps (the paper's layout). Plain turns
        after it do not see the maps (as context dropout leaves them out in training); a chain-of-editing
        turn does, as that turn's maps (``maps``)."""
        if self.session is None:
            raise AppError("image: upload a start image first")
        if self.backend.variant == "official":
            raise AppError("drag: not for a released model (model.variant 'official'): it needs the region "
                           "maps (RoE), which the release's inference layout has no place for")
        latest = np.asarray(self.session.images[-1])
        region = None if mask is None else np.asarray(mask)
        if region is not None and region.shape[:2] != latest.shape[:2]:
            raise AppError(f"mask: {region.shape[1]}x{region.shape[0]} painted over a {latest.shape[1]}x"
                           f"{latest.shape[0]} image; paint on the latest result")
        if region is not None and not region.any():
            region = None
        text = prompt.strip() if isinstance(prompt, str) and prompt.strip() else None
        if region is None and text is None:
            raise AppError("mask: paint the region to move, or type an instruction that names it")
        from ..infer.applications import drag
        editor = self.backend.editor(steps, guidance, seed)
        editor.step_callback = progress
        t0 = time.perf_counter()
        try:
            res = drag(editor, latest, region, int(dx), int(dy), self.backend.recipe,
                       prompt=text if region is None else None, scale=float(scale), angle=float(angle))
        except ValueError as e:                  # off the image, a drag that does nothing, no region located
            raise AppError(str(e)) from None
        seconds = time.perf_counter() - t0
        self.session._record(res.instruction, res.image, res.latent, "drag: sampled by applications.drag, not the "
                             "session's cache (its region maps are this turn's context)", seconds)
        self.maps[len(self.session.images) - 1] = {"roe_src": res.region, "roe_tgt": res.moved}  # its turn's maps
        self.turns.append(Turn(res.instruction, int(steps), float(guidance), int(seed), round(seconds, 3), False,
                               "drag"))
        return res.image

    def _load(self, image, name: str) -> np.ndarray:
        """A path, encoded bytes or a uint8 [H, W, 3] array -> the image, through ``data/media.py``'s limits."""
        if isinstance(image, np.ndarray):
            a = image
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise AppError(f"{name}: expected RGB uint8 [H, W, 3], got {a.dtype} {list(a.shape)}")
            if a.shape[0] * a.shape[1] > self.max_pixels:
                raise AppError(f"{name}: {a.shape[1]}x{a.shape[0]} exceeds max_pixels={self.max_pixels}")
            return a
        try:
            return load_image(image, max_pixels=self.max_pixels, max_bytes=self.max_bytes,
                              name=Path(str(image)).name if isinstance(image, (str, Path)) else None)
        except MediaError as e:
            raise AppError(f"{name}: {e}" if name != "image" else str(e)) from None

    def _checked(self, a: np.ndarray, fit: bool, name: str) -> np.ndarray:
        """Fitted when asked; a size the model cannot patchify refused."""
        if fit:
            a = self._fit(a)
        a = np.array(a, dtype=np.uint8)             # our own writable copy (the editor wraps it in a tensor)
        m = self.backend.size_multiple
        if a.shape[0] % m or a.shape[1] % m:
            want = ("; the model was trained at %dx%d (tick 'fit')" % self.backend.image_size
                    if self.backend.image_size else "")
            raise AppError(f"{name}: size {a.shape[1]}x{a.shape[0]} (WxH) is not a multiple of {m} "
                           f"(patch x VAE factor){want}")
        return a

    def _fit(self, a: np.ndarray) -> np.ndarray:
        """Centre-crop and resize to the training size (the real-video builder's ``fit_frame`` policy)."""
        from ..data.video import fit_frame

        if self.backend.image_size is None:
            m = self.backend.size_multiple
            size = (max(m, a.shape[0] // m * m), max(m, a.shape[1] // m * m))
        else:
            size = self.backend.image_size
        return fit_frame(a, size, "center_crop")

    # -- turns -------------------------------------------------------------------------------------
    def edit(self, prompt: str, steps: int, guidance: float, seed: int, progress=None,
             chain: bool = False) -> np.ndarray:
        """One turn -> the edited image. ``progress(done, steps)`` is called after each sampling step.
        ``chain``: by chain-of-editing (``_chain_turn``)."""
        if self.session is None:
            raise AppError("image: upload a start image first")
        if not isinstance(prompt, str) or not prompt.strip():
            raise AppError("prompt: type an edit instruction")
        if chain:
            return self._chain_turn(prompt.strip(), steps, guidance, seed, progress)
        editor = self.backend.editor(steps, guidance, seed)
        if hasattr(self.session.editor, "with_template"):   # a release's composition: its texts stay verbatim
            editor = editor.with_template(self.session.editor.template)
        editor.step_callback = progress
        self.session.editor = editor               # same model and encoders: the KV cache stays valid
        t0 = time.perf_counter()
        out = self.session.edit(prompt.strip())
        info = self.session.info[-1]
        self.turns.append(Turn(prompt.strip(), int(steps), float(guidance), int(seed),
                               round(time.perf_counter() - t0, 3), bool(info["kv_cache"])))
        return out

    def _chain_turn(self, prompt: str, steps: int, guidance: float, seed: int, progress=None) -> np.ndarray:
        """One turn by chain-of-editing (paper Table 3's "CS -> NS -> I"; ``applications.ChainSession``): the
        model predicts where the edit happens in the latest image and where it will be, then the image with
        those maps in context. The whole history is context, with the maps of its earlier chain-of-editing
        turns (plain turns have none, as context dropout leaves them in training). The maps stay with the
        session (``maps``, the download), the image is the next turn as any other.

        One ``ChainSession`` (``chain``) lives across the session's chain-of-editing turns: turns made since its
        last one (plain, drag) are appended to it, so its KV cache computes only what is new; undo takes its
        last turn back with the session's (``ChainSession.pop_turn``: the cache back to that turn's start)."""
        from ..infer.applications import MAP_KINDS, ChainSession

        if self.backend.variant == "official":
            raise AppError("chain-of-editing: not for a released model (model.variant 'official'): it needs the "
                           "region maps (RoE), which the release's inference layout has no place for")
        editor = self.backend.editor(steps, guidance, seed)
        editor.step_callback = progress
        s = self.session
        t0 = time.perf_counter()
        if self.chain is None:
            self.chain = ChainSession(editor, s.images[0].numpy(), self.backend.recipe, MAP_KINDS)
        chain = self.chain
        chain.editor = editor                               # this turn's sampler; same model, so the cache holds
        for j in range(len(chain.images), len(s.images)):   # the history as context, with the maps it has
            chain.add_turn(s.texts[j - 1], s.images[j].numpy(), self.maps.get(j))
        out = chain.turn(prompt)
        seconds = time.perf_counter() - t0
        cached = chain.kv is not None
        s._record(prompt, out, chain.latents[-1], None if cached else editor.kv_cache_reason(), seconds)
        self.maps[len(s.images) - 1] = chain.masks[-1]
        self.turns.append(Turn(prompt, int(steps), float(guidance), int(seed), round(seconds, 3), cached, "chain"))
        return out

    def regions(self) -> list[tuple[np.ndarray, str]]:
        """The last turn's predicted RoE maps as (image, caption), when it was a chain-of-editing turn."""
        from ..infer.applications import MAP_NAMES, map_image

        last = self.maps.get(len(self.images) - 1) if self.turns else None
        return [(map_image(m), f"turn {len(self.turns)}: {MAP_NAMES[k]}") for k, m in (last or {}).items()]

    def undo(self) -> None:
        """Drop the last turn (never the start image)."""
        s = self.session
        if s is None or not self.turns:
            raise AppError("undo: no turn to undo")
        self.maps.pop(len(s.images) - 1, None)
        if self.chain is not None and len(self.chain.images) == len(s.images):   # the chain holds the turn too
            self.chain.pop_turn()                  # its caches back to the turn's start
        s.pop_turn()
        self.turns.pop()

    # -- views -------------------------------------------------------------------------------------
    @property
    def images(self) -> list[np.ndarray]:
        return [] if self.session is None else [np.asarray(im) for im in self.session.images]

    def gallery(self) -> list[tuple[np.ndarray, str]]:
        """(image, caption) per step of the history: the start image, then each turn with its prompt."""
        ims = self.images
        k = self.references
        first = "start" if self.caption is None else f"drawn: {self.caption}"
        caps = ([first] if k == 1 else [f"reference {i}" for i in range(1, k + 1)]) + \
            [f"turn {i}: {t.prompt}" for i, t in enumerate(self.turns, 1)]
        return list(zip(ims, caps))

    def summary(self) -> dict:
        from ..hf.files import library_version

        return {"source": self.backend.source, "library_version": library_version(),
                "mask_type": self.backend.mask_type,
                "image_size": list(self.images[0].shape[:2]) if self.images else None,
                "references": self.references, "drawn_from": self.caption,
                "turns": [dataclasses.asdict(t) for t in self.turns]}

    def download(self, folder) -> Path:
        """Write the session as a zip (turn_0.png = the start image, turn_k.png, strip.png, session.json)."""
        from PIL import Image

        if self.session is None:
            raise AppError("download: nothing to download yet")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"vincie_session_{self.id}.zip"         # one file per session, rewritten each turn
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w") as z:
            for i, im in enumerate(self.images):
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="PNG")
                z.writestr(f"turn_{i}.png", buf.getvalue())
                for kind, m in self.maps.get(i, {}).items():        # a chain-of-editing turn's predicted maps
                    buf = io.BytesIO()
                    Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(buf, format="PNG")
                    z.writestr(f"turn_{i}_{kind}.png", buf.getvalue())
            strip = save_strip(self.images, path.with_suffix(".strip.png"), labels=[c for _, c in self.gallery()])
            z.write(strip, "strip.png")
            strip.unlink()
            z.writestr("session.json", json.dumps(self.summary(), indent=2))
        tmp.replace(path)                              # never a half-written zip under the served name
        self._zip = path
        return path

    def close(self) -> None:
        """Free the history, its KV cache and the session's zip."""
        self.session, self.turns, self.maps, self.chain = None, [], {}, None
        if self._zip is not None:
            self._zip.unlink(missing_ok=True)
            self._zip = None


@torch.no_grad()
def warm_up(backend: Backend) -> float:
    """One 1-step edit of a blank image at the model's size (first-call costs before a user waits) -> s."""
    m = backend.size_multiple
    h, w = backend.image_size or (m, m)
    t0 = time.perf_counter()
    ws = WebSession(backend)
    ws.start(np.zeros((h, w, 3), np.uint8))
    ws.edit("warm up", steps=1, guidance=1.0, seed=0)
    return time.perf_counter() - t0
