"""The paper's applications (§4.4, Appendix E.2-E.5) on top of the editor: docs/applications.md.

* ``chain_of_editing``: per turn the model first predicts the RoE maps (CSP, then NSP: the
  paper's best-consistency "CS -> NS -> I"), then the next frame with those maps as context
  (``ChainSession``: the same, a turn at a time).
* ``drag``: a region and a displacement (and a scale, a rotation) become the two RoE maps (the region,
  the region transformed) as clean context plus an instruction made from them; the model predicts the frame.
* ``compose``: several reference images as the context frames, the prompt as the last text.
* ``story``: multi-turn editing from one image, each turn's output the next turn's context.

``compose`` and ``story`` also run on the released models (``model.variant: official``): composition the
release's way (its README: verbatim texts naming ``<IMG{i}>``), story as its turn-by-turn editing. Chain and
drag need the RoE maps, which the release's inference layout has no place for.

Every layout is the recipe's own (``recipe.inference_sample``, ``recipe.roe_inference_sample``):
the model sees what training showed it, with the run's mask prompts. Each call samples one
target through ``Editor.generate`` (the re-packing path); only ``story`` goes through
``EditSession`` and so uses the block-causal KV cache when it can. Each returns a result whose
``panels``/``labels`` make its edit strip (``save``).

    result = chain_of_editing(editor, image, ["add a red square", "make it blue"], recipe)
    save(result, "chain.png")
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..data.packing import EncodedSession
from ..data.recipe import RecipeConfig, inference_sample, roe_inference_sample
from .editor import EditSession, Editor, save_strip

MAP_KINDS = ("roe_src", "roe_tgt")                 # the recipe's order: the source map is laid out first
MAP_NAMES = {"roe_src": "where it changes", "roe_tgt": "where it will be"}   # how strips and the web label them
# Table 3's inference rows, by the maps each turn predicts before its frame: I, CS -> I, NS -> I, CS -> NS -> I
COE = {"none": (), "cs": ("roe_src",), "ns": ("roe_tgt",), "cs_ns": MAP_KINDS}
_TASK = {"roe_src": "csp", "roe_tgt": "nsp"}


# ----------------------------------------------------------------------------- maps

def mask_from_image(image, name: str = "mask") -> np.ndarray:
    """uint8 [H, W, 3] or [H, W] (or bool [H, W]) -> bool [H, W]: a pixel is in the region when its
    channel mean is > 127 (white on black, as the training maps are 0/255)."""
    a = np.asarray(image)
    if a.dtype == bool and a.ndim == 2:
        return a.copy()
    if a.ndim == 3:
        a = a.astype(np.float32).mean(axis=2)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected an [H, W] or [H, W, 3] image, got shape {list(np.asarray(image).shape)}")
    return a > 127


def map_image(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] -> uint8 [H, W, 3], 0/255 in every channel: a RoE map as training encodes it
    (data/corpus.py ``encode_corpus``: the mask replicated across RGB, paper §3.3 footnote)."""
    m = np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)
    return np.repeat(m[..., None], 3, axis=2)


def shift_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The region moved by (dx, dy) pixels (x right, y down). ValueError if any of it would leave the image."""
    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if not len(ys):
        raise ValueError("mask: the region is empty (no pixel above 127)")
    h, w = m.shape
    if xs.min() + dx < 0 or xs.max() + dx >= w or ys.min() + dy < 0 or ys.max() + dy >= h:
        raise ValueError(f"dx/dy: ({dx}, {dy}) moves the region (x {xs.min()}..{xs.max()}, y {ys.min()}..{ys.max()}) "
                         f"off the {w}x{h} image")
    out = np.zeros_like(m)
    out[ys + dy, xs + dx] = True
    return out


def transform_mask(mask: np.ndarray, dx: int = 0, dy: int = 0, scale: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """The region scaled by ``scale`` and rotated by ``angle`` degrees (counter-clockwise on screen) about the
    centre of its bounding box, then moved by (dx, dy) pixels (paper E.5: "displacement, scaling, and
    rotation"). Each output pixel takes the region's value at its centre mapped back (nearest pixel), so a
    pure move is ``shift_mask`` exactly. ValueError if any of the region would leave the image, or none of it
    is left (a scale too small for one pixel)."""
    m = np.asarray(mask, dtype=bool)
    if not (isinstance(scale, (int, float)) and scale > 0 and np.isfinite(scale)):
        raise ValueError(f"scale: must be a number > 0, got {scale!r}")
    if not (isinstance(angle, (int, float)) and np.isfinite(angle)):
        raise ValueError(f"angle: must be a number of degrees, got {angle!r}")
    if scale == 1 and angle % 360 == 0:
        return shift_mask(m, dx, dy)
    ys, xs = np.nonzero(m)
    if not len(ys):
        raise ValueError("mask: the region is empty (no pixel above 127)")
    h, w = m.shape
    cx, cy = (xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0     # in pixel-edge coordinates
    t = np.deg2rad(angle)
    cos, sin = np.cos(t), np.sin(t)

    def forward(x, y):            # y points down: a counter-clockwise turn on screen
        u, v = (x - cx) * scale, (y - cy) * scale
        return cx + dx + cos * u + sin * v, cy + dy - sin * u + cos * v
    corners = [forward(xs + a, ys + b) for a in (0, 1) for b in (0, 1)]          # every region pixel's corners
    fx, fy = np.concatenate([c[0] for c in corners]), np.concatenate([c[1] for c in corners])
    eps = 1e-6
    if fx.min() < -eps or fx.max() > w + eps or fy.min() < -eps or fy.max() > h + eps:
        raise ValueError(f"dx/dy/scale/angle: ({dx}, {dy}), x{scale:g}, {angle:g} degrees takes the region "
                         f"(x {xs.min()}..{xs.max()}, y {ys.min()}..{ys.max()}) off the {w}x{h} image")
    gy, gx = np.mgrid[0:h, 0:w]
    u, v = gx + 0.5 - cx - dx, gy + 0.5 - cy - dy                                # output pixel centres, back
    sx = cx + (cos * u - sin * v) / scale
    sy = cy + (sin * u + cos * v) / scale
    ix, iy = np.floor(sx).astype(int), np.floor(sy).astype(int)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.zeros_like(m)
    out[inside] = m[iy[inside], ix[inside]]
    if not out.any():
        raise ValueError(f"scale: x{scale:g} leaves no pixel of the region")
    return out


def drag_instruction(dx: int, dy: int, scale: float = 1.0, angle: float = 0.0) -> str:
    """(12, -4) -> "move the object in the marked region 12 px right and 4 px up"; with a scale or a turn,
    each is a further step: "..., then scale it by 1.5x, then rotate it 30 degrees counter-clockwise"."""
    steps = ((dx, "right" if dx > 0 else "left"), (dy, "down" if dy > 0 else "up"))
    parts = [f"{abs(v)} px {word}" for v, word in steps if v]
    acts = [("move", " and ".join(parts))] if parts else []
    if scale != 1:
        acts.append(("scale", f"by {scale:g}x"))
    if angle % 360:
        acts.append(("rotate", f"{abs(angle):g} degrees {'counter-clockwise' if angle > 0 else 'clockwise'}"))
    if not acts:
        raise ValueError("dx/dy: the displacement is zero (and no scale or turn): the drag does nothing")
    return ", then ".join(f"{verb} {'the object in the marked region' if i == 0 else 'it'} {how}"
                          for i, (verb, how) in enumerate(acts))


# ----------------------------------------------------------------------------- results

@dataclass
class Result:
    """What an application made: ``panels`` (uint8 [H, W, 3]) and one label each, left to right."""
    panels: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    def add(self, image, label: str):
        self.panels.append(np.asarray(image))
        self.labels.append(label)


@dataclass
class ChainResult(Result):
    images: list = field(default_factory=list)   # I0, I1, ... uint8 [H, W, 3]
    masks: list = field(default_factory=list)    # per turn {"roe_src"/"roe_tgt": bool [H, W]} as fed back


@dataclass
class DragResult(Result):
    image: np.ndarray | None = None              # the edited frame
    region: np.ndarray | None = None             # bool [H, W]: the RoE source map
    moved: np.ndarray | None = None              # bool [H, W]: the RoE target map
    instruction: str = ""
    latent: torch.Tensor | None = None           # the sampled frame's latent [C, h, w] (an edit session keeps it)


@dataclass
class ComposeResult(Result):
    image: np.ndarray | None = None
    texts: list = field(default_factory=list)    # the session's texts: captions..., prompt


@dataclass
class StoryResult(Result):
    images: list = field(default_factory=list)


def save(result: Result, path):
    """The result's edit strip as PNG (every panel labelled)."""
    return save_strip(result.panels, path, labels=result.labels)


# ----------------------------------------------------------------------------- helpers

def _recipe(editor: Editor, recipe: RecipeConfig | None) -> RecipeConfig:
    """The run's recipe (mask prompts) under the editor's mask and camera-prompt setting."""
    return replace(recipe or RecipeConfig(), mask_type=editor.mask_type,
                   camera_prompts=editor.sampler.camera_prompts)


def _encode(editor: Editor, images) -> torch.Tensor:
    """uint8 images [H, W, 3] (checked) -> latents [N, C, h, w]."""
    return editor.image.encode(torch.stack([editor._check_image(im) for im in images]))


def _session(frames: torch.Tensor, texts: list[str], maps: dict) -> EncodedSession:
    """An EncodedSession over ``frames`` [K, C, h, w] (target slot included) and the given maps
    {(kind, j): latent [C, h, w]}; absent maps are zeros the layout never reads."""
    zero = torch.zeros_like(frames[0])
    stack = lambda kind: torch.stack([maps.get((kind, j), zero) for j in range(len(texts))])  # noqa: E731
    return EncodedSession(frames=frames, texts=list(texts), cameras=[None] * len(texts),
                          roe_src=stack("roe_src"), roe_tgt=stack("roe_tgt"))


def _prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts: expected a non-empty list of non-empty strings, one per turn")
    return list(prompts)


# ----------------------------------------------------------------------------- applications

class ChainSession:
    """Chain-of-editing turn by turn (the paper's "CS -> NS -> I" and its other inference rows, Table 3):
    ``turn(prompt)`` predicts the RoE map(s) of ``maps`` in the recipe's order (CSP: ("roe_src", n), then
    NSP: ("roe_tgt", n), the second with the first as context), binarizes each (channel mean > 127) and puts
    it back as a clean map, then predicts frame n + 1 with them in context. Earlier turns keep their frames,
    texts and maps; a map not in ``maps`` is absent, as context dropout leaves it in training.

    Each call's layout extends the last one's context (the texts, frames and maps are only appended), so
    under block_causal one pair of KV caches (``kv``) serves the whole chain: a call computes only the
    context added since the last (turn n's CSP: I_n, T_n and the map prompt; NSP: M_n0 and its prompt; NIP:
    M_n1), not the history (docs/kv_cache.md); a turn cut short takes them back to the turn's start.
    ``editor`` may be replaced between turns by one over the same model and encoders (the web editor's
    per-turn sampler settings).
    ``chain_of_editing`` runs a list of prompts through one; ``vincie-evaluate --coe`` one per session."""

    def __init__(self, editor: Editor, image, recipe: RecipeConfig | None = None, maps: tuple = MAP_KINDS):
        maps = tuple(maps)
        if not maps or len(set(maps)) != len(maps) or any(m not in MAP_KINDS for m in maps):
            raise ValueError(f"maps: expected a non-empty subset of {MAP_KINDS}, got {maps}")
        self.editor, self.maps = editor, tuple(m for m in MAP_KINDS if m in maps)
        self.cfg = _recipe(editor, recipe)
        self.frames = _encode(editor, [image])                 # I0..I_n latents
        self.given: dict = {}                                   # (kind, j) -> map latent
        self.texts: list[str] = []
        self.images = [np.asarray(image)]                       # I0, I1, ... uint8 [H, W, 3]
        self.masks: list[dict] = []                             # per turn {"roe_src"/"roe_tgt": bool [H, W]}
        self.latents: list = []                                 # per turn made here: the frame's sampled latent
        self.kv: dict | None = None                             # {"cond", "uncond"} KVCache over the chain so far
        self.marks: list = []          # per turn: (the caches' sizes at its start or None, made here) for pop_turn

    @torch.no_grad()
    def add_turn(self, prompt: str, image, masks: dict | None) -> None:
        """Append a turn made earlier: its frame and its binarized maps (bool [H, W] for every kind of ``maps``:
        a resumed benchmark), encoded as ``turn`` would have left them; ``None``: a turn edited without maps
        (the web editor's plain turns), whose maps are absent from the context, as context dropout leaves them."""
        n = len(self.texts)
        masks = {} if masks is None else masks
        if masks and set(masks) != set(self.maps):
            raise ValueError(f"masks: turn {n + 1} needs maps {self.maps}, got {tuple(sorted(masks))}")
        for kind in self.maps if masks else ():
            self.given[(kind, n)] = _encode(self.editor, [map_image(masks[kind])])[0]
        self.frames = torch.cat([self.frames, _encode(self.editor, [image])])
        self.texts = [*self.texts, *_prompts([prompt])]
        self.images.append(np.asarray(image))
        self.masks.append({k: np.asarray(masks[k], dtype=bool) for k in masks})
        self.marks.append((self.kv and {b: x.sizes() for b, x in self.kv.items()}, False))   # older context only

    def turn(self, prompt: str) -> np.ndarray:
        """The next frame for ``prompt`` (its maps first) -> uint8 [H, W, 3]; ``masks[-1]`` holds its maps."""
        return chain_turns([self], [prompt])[0]

    def pop_turn(self) -> None:
        """Drop the last turn (its frame, text and maps: the web editor's undo). The caches go back to what they
        held at its start, a prefix of the kept history, so the next turn computes only what is new from there;
        for a turn given by ``add_turn``, to what they held when it was added (context prefilled since is
        computed again)."""
        if not self.texts:
            raise ValueError("pop_turn: the chain has no turn to drop")
        n = len(self.texts) - 1
        sizes, made = self.marks.pop()
        for kind in self.maps:
            self.given.pop((kind, n), None)
        self.texts, self.frames = self.texts[:-1], self.frames[:-1]
        self.images.pop(), self.masks.pop()
        if made:
            self.latents.pop()
        if sizes is None:
            self.kv = None
        for b, x in (self.kv or {}).items():
            x.truncate(sizes[b])


@torch.no_grad()
def chain_turns(chains: list[ChainSession], prompts: list[str], seeds: list | None = None) -> list[np.ndarray]:
    """The next turn of several ``ChainSession``s of one editor at once -> their frames: each call (CSP, NSP,
    NIP) packs the sessions' layouts into one batch (``Editor.generate_many``, each keeping its own caches).

    ``seeds[i]``: chain i's turn draws its noise as ``chains[i].turn`` does after ``editor.gen.manual_seed(
    seeds[i])`` (an int) or from ``seeds[i]`` itself (a ``torch.Generator``), so each chain gets the maps
    and frame it gets alone, up to float reordering; None: every draw from ``editor.gen`` (one chain: its
    ``turn``). A turn that fails anywhere is kept by none of the chains, nor its context by their caches."""
    if not chains:
        return []
    ed, kinds = chains[0].editor, chains[0].maps
    if any(c.editor is not ed for c in chains) or any(c.maps != kinds for c in chains):
        raise ValueError("chain_turns: the chains need one editor and the same maps")
    if len(prompts) != len(chains) or (seeds is not None and len(seeds) != len(chains)):
        raise ValueError(f"chain_turns: {len(chains)} chains, {len(prompts)} prompts, "
                         f"{'no' if seeds is None else len(seeds)} seeds")
    gens = None if seeds is None else [s if isinstance(s, torch.Generator) else torch.Generator().manual_seed(int(s))
                                       for s in seeds]     # one per chain for its three calls, as ``turn`` draws
    ns = [len(c.texts) for c in chains]
    texts = [[*c.texts, *_prompts([p])] for c, p in zip(chains, prompts)]
    slots = [torch.cat([c.frames, torch.zeros_like(c.frames[:1])]) for c in chains]
    for c in chains:
        if c.kv is None:
            c.kv = ed.new_kv()
    sizes = [c.kv and {b: x.sizes() for b, x in c.kv.items()} for c in chains]   # the turn's start
    masks, given = [{} for _ in chains], [dict(c.given) for c in chains]
    try:
        for kind in kinds:
            refs = [(kind, n) for n in ns]
            layouts = [(roe_inference_sample(t, _TASK[kind], set(g), c.cfg),
                        _session(sl, t, {**g, ref: torch.zeros_like(c.frames[0])}))
                       for c, t, sl, g, ref in zip(chains, texts, slots, given, refs)]
            made = ed.generate_many(layouts, [c.kv for c in chains], gens)
            for m, g, ref, out in zip(masks, given, refs, made):
                m[kind] = mask_from_image(out[ref][0])
                g[ref] = _encode(ed, [map_image(m[kind])])[0]         # binarized, as training maps are
        layouts = [(roe_inference_sample(t, "nip", set(g), c.cfg), _session(sl, t, g))
                   for c, t, sl, g in zip(chains, texts, slots, given)]
        made = ed.generate_many(layouts, [c.kv for c in chains], gens)
    except BaseException:               # the turn is not kept: nor is the context its calls cached
        for c, n in zip(chains, sizes):
            for b, x in (c.kv or {}).items():
                x.truncate(n[b])
        raise
    frames = []
    for c, t, g, m, n, n_kv, out in zip(chains, texts, given, masks, ns, sizes, made):
        image, lat = out[("frame", n + 1)]
        c.given, c.texts = g, t
        c.frames = torch.cat([c.frames, _encode(ed, [image])])
        c.images.append(image)
        c.masks.append(m)
        c.latents.append(lat)
        c.marks.append((n_kv, True))
        frames.append(image)
    return frames


def chain_of_editing(editor: Editor, image, prompts: list[str], recipe: RecipeConfig | None = None,
                     maps: tuple = MAP_KINDS) -> ChainResult:
    """Every prompt a turn of one ``ChainSession`` (its maps, then its frame). Strip: I0 | per turn the
    map(s) and the frame."""
    prompts = _prompts(prompts)
    chain = ChainSession(editor, image, recipe, maps)
    res = ChainResult()
    res.add(image, "input")
    for n, prompt in enumerate(prompts):
        out = chain.turn(prompt)
        for kind, m in chain.masks[-1].items():
            res.add(map_image(m), f"{n + 1}: {'source' if kind == 'roe_src' else 'target'} mask")
        res.add(out, f"{n + 1}: {prompt}")
    res.images, res.masks = chain.images, chain.masks
    return res


@torch.no_grad()
def drag(editor: Editor, image, mask, dx: int, dy: int, recipe: RecipeConfig | None = None,
         prompt: str | None = None, scale: float = 1.0, angle: float = 0.0) -> DragResult:
    """Move the marked region by (dx, dy) pixels (x right, y down), after scaling it by ``scale`` and turning it
    ``angle`` degrees counter-clockwise about its box's centre (``transform_mask``): one NIP turn whose context
    is I0, the instruction (``prompt``, default ``drag_instruction``), the RoE source map = the region and the
    RoE target map = the region transformed, both clean. Strip: I0 | region | moved | result.

    ``mask=None`` lets the model locate the region first (paper E.5: "users first provide an editing
    prompt to localize the RoE"): a CSP turn with ``prompt`` as T0 predicts the source map, binarized
    as in ``chain_of_editing``; then the same NIP turn."""
    a = np.asarray(image)
    auto = drag_instruction(int(dx), int(dy), scale, angle)   # also refuses a drag that does nothing
    instruction = auto if prompt is None else prompt
    frames = _encode(editor, [image])
    slot = torch.cat([frames, torch.zeros_like(frames)])
    cfg = _recipe(editor, recipe)
    if mask is None:
        if prompt is None:
            raise ValueError("mask: give a mask, or a prompt for the model to locate the region")
        ref = ("roe_src", 0)
        sample = roe_inference_sample(_prompts([prompt]), "csp", set(), cfg)
        mask, _ = editor.generate(sample, _session(slot, [prompt], {ref: torch.zeros_like(frames[0])}))[ref]
        if not mask_from_image(mask).any():
            raise ValueError("prompt: the model located no region from it (its source map is empty); give a mask")
    region = mask_from_image(mask)
    if region.shape != a.shape[:2]:
        raise ValueError(f"mask: size {region.shape[0]}x{region.shape[1]} differs from the image's "
                         f"{a.shape[0]}x{a.shape[1]}")
    moved = transform_mask(region, int(dx), int(dy), scale, angle)
    texts = _prompts([instruction])
    m = _encode(editor, [map_image(region), map_image(moved)])
    given = {("roe_src", 0): m[0], ("roe_tgt", 0): m[1]}
    sample = roe_inference_sample(texts, "nip", set(given), cfg)
    out, lat = editor.generate(sample, _session(slot, texts, given))[("frame", 1)]
    res = DragResult(image=out, region=region, moved=moved, instruction=instruction, latent=lat)
    how = f"moved by ({dx}, {dy})" + (f", x{scale:g}" if scale != 1 else "") + \
        (f", {angle:g} degrees" if angle % 360 else "")
    for im, label in ((a, "input"), (map_image(region), "region"), (map_image(moved), how), (out, instruction)):
        res.add(im, label)
    return res


def compose_session(editor: Editor, references: list, prompt: str, captions: list[str] | None = None):
    """Composition as the first turn of an edit session, to edit on from (the web editor): -> (the
    ``EditSession`` over the references and their captions, the text whose ``.edit`` makes the composed
    image). The session ``compose`` samples, the same layout: R1, C1, ..., Rk, then the prompt's turn
    (``OfficialEditor.compose_session`` for a released model)."""
    if hasattr(editor, "compose_session"):
        return editor.compose_session(references, prompt, captions)
    refs = [np.asarray(r) for r in (references or [])]
    k = len(refs)
    if not k:
        raise ValueError("references: no reference images")
    for i, r in enumerate(refs[1:], 2):
        if r.shape != refs[0].shape:
            raise ValueError(f"references: reference {i} is {list(r.shape)}, reference 1 is {list(refs[0].shape)} "
                             f"(all must share one size)")
    if captions is None:
        captions = [f"reference image {i + 2} of {k}" for i in range(k - 1)]
    if len(captions) != k - 1:
        raise ValueError(f"captions: expected {k - 1} (one between each two references), got {len(captions)}")
    texts = _prompts([*captions, prompt])
    return EditSession(editor, [editor._check_image(r) for r in refs], texts[:-1]), texts[-1]


@torch.no_grad()
def compose(editor: Editor, references: list, prompt: str, captions: list[str] | None = None) -> ComposeResult:
    """One image composing the references: the session R1, C1, R2, C2, ..., Rk, prompt, target, i.e.
    the references are the context frames (clean), the text after reference i < k its caption
    (default "reference image i+1 of k"), the text after the last one the prompt. All references
    must share one size (the target's). Strip: R1 | ... | Rk | result.

    The official variant's editor composes the release's way instead (``OfficialEditor.compose_session``:
    captions default to ``<IMG{i}>: ``, the prompt is written ``Based on <IMG0>, ... Output <IMG{k}>: `` unless
    it names its images, every text verbatim; references of any size, resized to the first's)."""
    if hasattr(editor, "compose_session"):
        sess, text = editor.compose_session(references, prompt, captions)
        out = sess.edit(text)
        res = ComposeResult(image=out, texts=list(sess.texts))
        for i, r in enumerate(sess.images[:-1]):
            res.add(r.numpy(), f"<IMG{i}>" + (f" {sess.texts[i - 1].strip()}" if i and captions else ""))
        res.add(out, prompt)
        return res
    sess, _ = compose_session(editor, references, prompt, captions)      # the inputs checked, the texts written
    refs, texts, k = [im.numpy() for im in sess.images], [*sess.texts, prompt], len(sess.images)
    captions = sess.texts
    frames = _encode(editor, refs)
    sample = inference_sample(texts, editor.sampler.camera_prompts)
    out, _ = editor.generate(sample, _session(torch.cat([frames, torch.zeros_like(frames[:1])]), texts, {}))[
        ("frame", k)]
    res = ComposeResult(image=out, texts=texts)
    for i, r in enumerate(refs):
        res.add(r, f"reference {i + 1}" + (f": {captions[i]}" if i < k - 1 else ""))
    res.add(out, prompt)
    return res


def story(editor: Editor, image, prompts: list[str]) -> StoryResult:
    """Story generation as multi-turn editing (paper E.3): each transition prompt edits the latest
    frame with the whole story so far as context (an ``EditSession``: the KV cache under
    ``block_causal``). Strip: I0 | I1 | ... with each frame's prompt."""
    prompts = _prompts(prompts)
    sess = editor.start(image)
    for p in prompts:
        sess.edit(p)
    res = StoryResult(images=[im.numpy() for im in sess.images])
    for im, label in zip(res.images, ["start", *prompts]):
        res.add(im, label)
    return res
