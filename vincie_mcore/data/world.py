"""A procedural video world with exact ground truth.

Objects of a few shapes, colours and sizes sit one per cell of a grid; a video
is a list of *keyframe* scenes, each held for a few frames, and between two
keyframes exactly one edit happens as a cut (add, remove, move, recolour,
resize), optionally with a camera pan that slides the view 1 px per frame
during the next hold. Every frame's scene state is known, so transition texts
and region-of-editing masks are exact, and so is the judge (``eval/judge.py``).

The world feeds the same code paths as real videos (video file -> sampling ->
annotate -> segment -> session store); it is not a separate toy path.

Coordinates: ``Scene.camera = (cy, cx)`` is the view offset in pixels; image
pixel ``(y, x)`` shows world pixel ``(y + cy, x + cx)``. At camera ``(0, 0)``
the grid is centred in the image. ``pan right`` means ``cx`` grew (the content
slides left in the image).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (45, 190, 65),
    "blue": (45, 95, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 65, 215),
    "cyan": (50, 215, 225),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
SHAPES = ("square", "circle", "triangle", "ring", "cross")
# Object extent as a fraction of the cell; ordered small -> large ("bigger" = next one up).
SIZE_FRACTIONS: dict[str, float] = {"small": 0.5, "medium": 0.625, "large": 0.75}
EDIT_KINDS = ("add", "remove", "move", "recolour", "resize")


# ----------------------------------------------------------------------------- config
@dataclass
class WorldConfig:
    image_px: int = 24                      # frames are image_px x image_px RGB
    grid_rows: int = 3                      # grid of cells, centred in the image at camera (0, 0)
    grid_cols: int = 3
    cell_px: int = 8                        # side of one cell; an object is centred in its cell
    num_objects: tuple = (2, 5)             # [min, max] objects in any scene (add/remove stay inside)
    shapes: tuple = ("square", "circle", "triangle")   # subset of SHAPES
    colours: tuple = ("red", "green", "blue", "yellow", "purple", "cyan")  # subset of PALETTE
    sizes: tuple = ("small", "large")       # subset of SIZE_FRACTIONS, in that order
    background: tuple = (30, 30, 30)        # fixed background colour
    edit_probs: dict = field(default_factory=lambda: {k: 0.2 for k in EDIT_KINDS})  # add=appear, remove=disappear
    camera_pan_prob: float = 0.25           # per transition: probability of a pan
    max_pan_px: int = 2                     # camera offset stays within +-max_pan_px on each axis
    num_keyframes: tuple = (3, 6)           # [min, max] keyframes per video (edits = keyframes - 1)
    hold_frames: tuple = (3, 6)             # [min, max] frames each keyframe is held
    fps: int = 8

    def __post_init__(self):
        for name in ("num_objects", "num_keyframes", "hold_frames", "shapes", "colours", "sizes", "background"):
            setattr(self, name, tuple(getattr(self, name)))
        def bad(f, why):
            raise ValueError(f"WorldConfig.{f}: {why}")
        for f in ("image_px", "grid_rows", "grid_cols", "cell_px", "fps"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                bad(f, f"must be a positive int, got {getattr(self, f)!r}")
        if self.cell_px < 4:
            bad("cell_px", f"must be >= 4 to draw shapes, got {self.cell_px}")
        if self.grid_rows * self.cell_px > self.image_px or self.grid_cols * self.cell_px > self.image_px:
            bad("image_px", f"{self.image_px} too small for a {self.grid_rows}x{self.grid_cols} grid of {self.cell_px}-px cells")
        for f, lo in (("num_objects", 0), ("num_keyframes", 2), ("hold_frames", 1)):
            r = getattr(self, f)
            if len(r) != 2 or not all(isinstance(v, int) for v in r) or r[0] < lo or r[0] > r[1]:
                bad(f, f"must be [min, max] ints with {lo} <= min <= max, got {r!r}")
        if self.num_objects[1] > self.grid_rows * self.grid_cols:
            bad("num_objects", f"max {self.num_objects[1]} exceeds the {self.grid_rows * self.grid_cols} cells")
        for f, allowed in (("shapes", SHAPES), ("colours", tuple(PALETTE)), ("sizes", tuple(SIZE_FRACTIONS))):
            vals = getattr(self, f)
            if not vals or len(set(vals)) != len(vals) or any(v not in allowed for v in vals):
                bad(f, f"must be distinct names from {allowed}, got {vals!r}")
        if list(self.sizes) != [s for s in SIZE_FRACTIONS if s in self.sizes]:
            bad("sizes", f"must be ordered small -> large, got {self.sizes!r}")
        if self.num_objects[1] > len(self.shapes) * len(self.colours):
            bad("num_objects", "max exceeds the distinct (colour, shape) pairs, objects could not be told apart")
        if len(self.background) != 3 or any(not 0 <= c <= 255 for c in self.background):
            bad("background", f"must be an RGB triple in [0, 255], got {self.background!r}")
        if tuple(self.background) in {PALETTE[c] for c in self.colours}:
            bad("background", "equals an object colour")
        if set(self.edit_probs) - set(EDIT_KINDS) or any(p < 0 for p in self.edit_probs.values()) \
                or sum(self.edit_probs.values()) <= 0:
            bad("edit_probs", f"must map a subset of {EDIT_KINDS} to non-negative weights with a positive sum, got {self.edit_probs!r}")
        if not 0.0 <= self.camera_pan_prob <= 1.0:
            bad("camera_pan_prob", f"must be in [0, 1], got {self.camera_pan_prob}")
        if not isinstance(self.max_pan_px, int) or self.max_pan_px < 0 or self.max_pan_px >= self.cell_px:
            bad("max_pan_px", f"must be an int in [0, cell_px), got {self.max_pan_px!r}")
        if self.camera_pan_prob > 0 and self.max_pan_px == 0:
            bad("max_pan_px", "is 0 while camera_pan_prob > 0")
        # Every (shape, size) must rasterise to a distinct pattern at this cell size.
        pats = {}
        for size in self.sizes:
            s = self.size_px(size)
            if s < 2:
                bad("sizes", f"{size!r} is under 2 px at cell_px={self.cell_px}")
            for shape in self.shapes:
                key = (s, shape_mask(shape, s).tobytes())
                if key in pats:
                    bad("shapes", f"{shape!r} and {pats[key]!r} look identical at size {size!r} ({s} px)")
                pats[key] = shape

    def size_px(self, size: str) -> int:
        s = round(SIZE_FRACTIONS[size] * self.cell_px)
        return s - 1 if (self.cell_px - s) % 2 else s      # same parity as the cell: exactly centred

    @property
    def grid_origin(self) -> tuple[int, int]:
        """Image pixel of the grid's top-left corner at camera (0, 0)."""
        return (self.image_px - self.grid_rows * self.cell_px) // 2, (self.image_px - self.grid_cols * self.cell_px) // 2

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def demo_config(**overrides) -> WorldConfig:
    """The 24x24, 3x3 grid of 8-px cells world the demo trains on (1-3 objects, no pan)."""
    kw = dict(num_objects=(1, 3), camera_pan_prob=0.0)
    kw.update(overrides)
    return WorldConfig(**kw)


# ----------------------------------------------------------------------------- shapes
@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, s: int) -> np.ndarray:
    """bool [s, s]: the shape rasterised at pixel centres (no anti-aliasing)."""
    c = (np.arange(s) + 0.5) / s * 2 - 1                    # pixel centres in (-1, 1)
    v, u = np.meshgrid(c, c, indexing="ij")                 # v: rows (down), u: columns
    r2 = u * u + v * v
    if shape == "square":
        m = np.ones((s, s), bool)
    elif shape == "circle":
        m = r2 <= 0.85
    elif shape == "triangle":                               # apex up
        m = np.abs(u) <= (v + 1) / 2 + 1.0 / s
    elif shape == "ring":
        m = (r2 <= 0.85) & (r2 >= 0.3)
    elif shape == "cross":
        m = (np.abs(u) <= 1 / 3) | (np.abs(v) <= 1 / 3)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    m.setflags(write=False)
    return m


# ----------------------------------------------------------------------------- scene state
@dataclass(frozen=True)
class Obj:
    oid: int           # identity across a video (diffs match objects by it)
    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...] = ()  # at most one per cell
    camera: tuple[int, int] = (0, 0)   # (cy, cx) view offset in px; a stored scene comes back with
                                       # config.build(Scene, d, "scene")

    def to_dict(self) -> dict:
        return {"camera": list(self.camera), "objects": [asdict(o) for o in self.objects]}

    def by_cell(self) -> dict:
        return {o.cell: o for o in self.objects}

    def by_oid(self) -> dict:
        return {o.oid: o for o in self.objects}


def check_scene(scene: Scene, cfg: WorldConfig) -> None:
    """Raise ValueError (one line) if the scene breaks a world invariant."""
    cells = [o.cell for o in scene.objects]
    if len(set(cells)) != len(cells):
        raise ValueError(f"scene has two objects in one cell: {cells}")
    names = [(o.colour, o.shape) for o in scene.objects]
    if len(set(names)) != len(names):
        raise ValueError(f"scene has two objects with the same colour and shape: {names}")
    for o in scene.objects:
        if not (0 <= o.row < cfg.grid_rows and 0 <= o.col < cfg.grid_cols):
            raise ValueError(f"object {o.oid} at cell {o.cell} is outside the {cfg.grid_rows}x{cfg.grid_cols} grid")
        if o.shape not in cfg.shapes or o.colour not in cfg.colours or o.size not in cfg.sizes:
            raise ValueError(f"object {o.oid} ({o.size} {o.colour} {o.shape}) is not in the world config")


# ----------------------------------------------------------------------------- rendering
def _paste(canvas: np.ndarray, mask: np.ndarray, y0: int, x0: int, value) -> None:
    """canvas[y0:y0+h, x0:x0+w][mask] = value, clipped to the canvas."""
    H, W = canvas.shape[:2]
    h, w = mask.shape
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, H), min(x0 + w, W)
    if ya >= yb or xa >= xb:
        return
    sub = mask[ya - y0:yb - y0, xa - x0:xb - x0]
    canvas[ya:yb, xa:xb][sub] = value


def object_box(o: Obj, camera, cfg: WorldConfig) -> tuple[int, int, int]:
    """(y0, x0, s): image position of the object's top-left pixel and its extent."""
    s = cfg.size_px(o.size)
    gy, gx = cfg.grid_origin
    pad = (cfg.cell_px - s) // 2
    return gy + o.row * cfg.cell_px + pad - camera[0], gx + o.col * cfg.cell_px + pad - camera[1], s


def render(scene: Scene, cfg: WorldConfig) -> np.ndarray:
    """uint8 [H, W, 3]: the exact frame of a scene (deterministic, no anti-aliasing)."""
    img = np.empty((cfg.image_px, cfg.image_px, 3), np.uint8)
    img[:] = cfg.background
    for o in scene.objects:
        y0, x0, s = object_box(o, scene.camera, cfg)
        _paste(img, shape_mask(o.shape, s), y0, x0, PALETTE[o.colour])
    return img


def object_mask(o: Obj, camera, cfg: WorldConfig) -> np.ndarray:
    """bool [H, W]: pixels of object ``o`` seen from ``camera``."""
    m = np.zeros((cfg.image_px, cfg.image_px), bool)
    y0, x0, s = object_box(o, camera, cfg)
    _paste(m, shape_mask(o.shape, s), y0, x0, True)
    return m


# ----------------------------------------------------------------------------- diffs and texts
def position_phrase(row: int, col: int, cfg: WorldConfig) -> str:
    """'top left', 'centre', ... on grids up to 3x3; 'row 2, column 4' beyond."""
    rn = {1: ["middle"], 2: ["top", "bottom"], 3: ["top", "middle", "bottom"]}.get(cfg.grid_rows)
    cn = {1: ["centre"], 2: ["left", "right"], 3: ["left", "centre", "right"]}.get(cfg.grid_cols)
    if rn is None or cn is None:
        return f"row {row + 1}, column {col + 1}"
    r, c = rn[row], cn[col]
    if r == "middle" and c == "centre":
        return "centre"
    if r == "middle":
        return f"middle {c}"
    return r if c == "centre" else f"{r} {c}"


def _at(row, col, cfg, prep_named: str) -> str:
    p = position_phrase(row, col, cfg)
    return f"in {p}" if p.startswith("row ") else f"{prep_named} the {p}"


@dataclass(frozen=True)
class Change:
    kind: str          # one of EDIT_KINDS
    text: str
    oid: int


def diff_scenes(src: Scene, tgt: Scene, cfg: WorldConfig) -> list[Change]:
    """Object changes from ``src`` to ``tgt`` (camera ignored), in a fixed order.

    Objects are matched by ``oid``; one that keeps its oid but changes cell,
    colour and size yields three changes, each naming it as it was in ``src``.
    """
    a, b = src.by_oid(), tgt.by_oid()
    out = []
    for oid in sorted(a):
        o = a[oid]
        if oid not in b:
            out.append(Change("remove", f"remove the {o.name()}", oid))
            continue
        n = b[oid]
        if n.cell != o.cell:
            out.append(Change("move", f"move the {o.name()} {_at(n.row, n.col, cfg, 'to')}", oid))
        if n.colour != o.colour:
            out.append(Change("recolour", f"make the {o.name()} {n.colour}", oid))
        if n.size != o.size:
            bigger = cfg.sizes.index(n.size) > cfg.sizes.index(o.size)
            out.append(Change("resize", f"make the {o.name()} {'bigger' if bigger else 'smaller'}", oid))
        if n.shape != o.shape:
            raise ValueError(f"object {oid} changed shape ({o.shape} -> {n.shape}); the world never does that")
    for oid in sorted(set(b) - set(a)):
        n = b[oid]
        out.append(Change("add", f"add a {n.size} {n.name()} {_at(n.row, n.col, cfg, 'at')}", oid))
    return out


NO_CHANGE = "no change"


def transition_text(src: Scene, tgt: Scene, cfg: WorldConfig) -> str:
    """The exact instruction for src -> tgt: changes joined by ' and ', or 'no change'."""
    ch = diff_scenes(src, tgt, cfg)
    return " and ".join(c.text for c in ch) if ch else NO_CHANGE


def scene_caption(scene: Scene, cfg: WorldConfig) -> str:
    """The exact caption of a frame (text-to-image training, ``data.recipe.t2i_prob``): every object as
    'a <size> <colour> <shape> at the <position>', top row first, joined by ', '; 'an empty scene' when
    there is none; a panned view adds 'seen from <dy> px down, <dx> px right' (negative: up, left), so the
    caption fixes the frame exactly, as the judge needs (``eval/judge.py``, from an empty source)."""
    objs = sorted(scene.objects, key=lambda o: o.cell)
    text = ", ".join(f"a {o.size} {o.name()} {_at(o.row, o.col, cfg, 'at')}" for o in objs) or "an empty scene"
    cy, cx = scene.camera
    if cy or cx:
        text += f", seen from {cy} px down, {cx} px right"
    return text


def camera_label(src: Scene, tgt: Scene) -> str:
    """'pan left' / 'pan up' / 'pan right and down' ... or 'None' when the view did not move."""
    dy, dx = tgt.camera[0] - src.camera[0], tgt.camera[1] - src.camera[1]
    parts = ([("right" if dx > 0 else "left")] if dx else []) + ([("down" if dy > 0 else "up")] if dy else [])
    return "pan " + " and ".join(parts) if parts else "None"


def changed_oids(src: Scene, tgt: Scene, cfg: WorldConfig) -> set:
    return {c.oid for c in diff_scenes(src, tgt, cfg)}


# ----------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class Event:
    frame: int         # first frame showing the edited scene (the cut)
    kind: str
    text: str
    camera: str        # camera label of this keyframe transition

    def to_dict(self):
        return asdict(self)


@dataclass
class SyntheticVideo:
    frames: np.ndarray          # uint8 [T, H, W, 3]
    states: list                # Scene per frame
    frame_keyframe: list        # keyframe index per frame
    keyframes: list             # Scene per keyframe (camera = where the pan into it ends)
    events: list                # Event per keyframe transition (len(keyframes) - 1)
    cfg: WorldConfig

    @property
    def fps(self) -> int:
        return self.cfg.fps


def _free_names(scene: Scene, cfg: WorldConfig, shape=None):
    used = {(o.colour, o.shape) for o in scene.objects}
    return [(c, s) for s in (cfg.shapes if shape is None else (shape,)) for c in cfg.colours if (c, s) not in used]


def _free_cells(scene: Scene, cfg: WorldConfig):
    occ = {o.cell for o in scene.objects}
    return [(r, c) for r in range(cfg.grid_rows) for c in range(cfg.grid_cols) if (r, c) not in occ]


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def random_scene(rng, cfg: WorldConfig, n: int, next_oid: int = 0) -> Scene:
    scene = Scene()
    for _ in range(n):
        scene = _add(rng, scene, cfg, next_oid)
        next_oid += 1
    return scene


def _add(rng, scene: Scene, cfg: WorldConfig, oid: int) -> Scene:
    colour, shape = _pick(rng, _free_names(scene, cfg))
    row, col = _pick(rng, _free_cells(scene, cfg))
    o = Obj(oid, shape, colour, _pick(rng, cfg.sizes), row, col)
    return replace(scene, objects=scene.objects + (o,))


def _feasible_edits(scene: Scene, cfg: WorldConfig) -> list[str]:
    n = len(scene.objects)
    ok = []
    if n < cfg.num_objects[1] and _free_cells(scene, cfg) and _free_names(scene, cfg):
        ok.append("add")
    if n > cfg.num_objects[0]:
        ok.append("remove")
    if n and _free_cells(scene, cfg):
        ok.append("move")
    if any(_free_names(scene, cfg, o.shape) for o in scene.objects):
        ok.append("recolour")
    if n and len(cfg.sizes) > 1:
        ok.append("resize")
    return [k for k in ok if cfg.edit_probs.get(k, 0) > 0]


def random_edit(rng, scene: Scene, cfg: WorldConfig, next_oid: int) -> tuple[str, Scene]:
    """Apply one random feasible edit; returns (kind, new scene)."""
    kinds = _feasible_edits(scene, cfg)
    if not kinds:
        raise ValueError("no edit is possible in this scene; widen WorldConfig.edit_probs or num_objects")
    w = np.array([cfg.edit_probs[k] for k in kinds], float)
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    objs = list(scene.objects)
    if kind == "add":
        return kind, _add(rng, scene, cfg, next_oid)
    if kind == "remove":
        objs.pop(int(rng.integers(len(objs))))
    elif kind == "move":
        i = int(rng.integers(len(objs)))
        r, c = _pick(rng, _free_cells(scene, cfg))
        objs[i] = replace(objs[i], row=r, col=c)
    elif kind == "recolour":
        cand = [i for i, o in enumerate(objs) if _free_names(scene, cfg, o.shape)]
        i = _pick(rng, cand)
        objs[i] = replace(objs[i], colour=_pick(rng, _free_names(scene, cfg, objs[i].shape))[0])
    elif kind == "resize":                                  # adjacent size only, so "bigger" is exact
        i = int(rng.integers(len(objs)))
        k = cfg.sizes.index(objs[i].size)
        nxt = [j for j in (k - 1, k + 1) if 0 <= j < len(cfg.sizes)]
        objs[i] = replace(objs[i], size=cfg.sizes[_pick(rng, nxt)])
    return kind, replace(scene, objects=tuple(objs))


def _random_pan(rng, cam, cfg: WorldConfig):
    """A new camera offset one axis away from ``cam``, inside +-max_pan_px."""
    m = cfg.max_pan_px
    moves = []
    for axis in (0, 1):
        for sign in (-1, 1):
            for d in range(1, m + 1):
                v = cam[axis] + sign * d
                if -m <= v <= m:
                    moves.append((axis, sign * d))
    axis, d = _pick(rng, moves)
    new = list(cam)
    new[axis] += d
    return tuple(new)


def generate_video(rng: np.random.Generator, cfg: WorldConfig) -> SyntheticVideo:
    """A video of keyframe scenes, each held for a few frames, one edit per cut."""
    n_kf = int(rng.integers(cfg.num_keyframes[0], cfg.num_keyframes[1] + 1))
    n0 = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    scene = random_scene(rng, cfg, n0)
    next_oid = n0
    keyframes, kinds = [scene], []
    for _ in range(n_kf - 1):
        kind, scene = random_edit(rng, scene, cfg, next_oid)
        next_oid += kind == "add"
        if cfg.camera_pan_prob > 0 and rng.random() < cfg.camera_pan_prob:
            scene = replace(scene, camera=_random_pan(rng, scene.camera, cfg))
        keyframes.append(scene)
        kinds.append(kind)

    states, frame_kf, events = [], [], []
    for k, kf in enumerate(keyframes):
        hold = int(rng.integers(cfg.hold_frames[0], cfg.hold_frames[1] + 1))
        start = keyframes[k - 1].camera if k else kf.camera
        if k:
            events.append(Event(len(states), kinds[k - 1], transition_text(keyframes[k - 1], kf, cfg),
                                camera_label(keyframes[k - 1], kf)))
        for j in range(hold):
            # the view slides 1 px per frame from the previous camera, ending on this keyframe's by its last frame
            step = max(1, -(-max(abs(kf.camera[0] - start[0]), abs(kf.camera[1] - start[1])) // hold))
            cam = tuple(int(s + np.clip(e - s, -step * (j + 1), step * (j + 1))) for s, e in zip(start, kf.camera))
            states.append(replace(kf, camera=cam) if cam != kf.camera else kf)
            frame_kf.append(k)
    cache = {}
    frames = np.stack([cache[s] if s in cache else cache.setdefault(s, render(s, cfg)) for s in states])
    return SyntheticVideo(frames, states, frame_kf, keyframes, events, cfg)
