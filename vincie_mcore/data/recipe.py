"""Session -> training sample: the paper's recipe (§3.3, §4.1).

A session of K frames has K-1 transitions. Its interleaved sequence is

    I0, T0, [Tm0, M00], [Tm1, M01], I1, T1, [Tm0, M10], [Tm1, M11], I2, ...

(T_i: transition text, optionally with a camera prompt; Tm0/Tm1: the fixed
"mask of the source/target" prompts; M_i0 / M_i1: the RoE map of the changing
region in I_i / I_{i+1}). Recipe choices, each drawn per sample:

* RoE maps are used for the whole session with probability ``roe_prob`` (0.8).
* Context dropout, independently per turn: current frame 20 %, current RoE map
  70 %, next RoE map 70 %. The block being predicted is never dropped (nor,
  with ``keep_source``, the frame the target is edited from).
* Task: NIP (predict I_{i+1}), CSP (predict M_i0), NSP (predict M_i1).
* ``full`` mask: ONE noisy target per session; later turns are cut.
  ``block_causal``: every kept image/map after I0 gets a noisy twin (a loss).
* ``pairwise`` (paper Table 5's "pairwise" arm): every session of K frames is cut into its
  K-1 independent 2-frame sessions (I_i, T_i, I_{i+1}) before sampling (``pairwise_sessions``),
  so no sample carries any earlier turn as context.
* ``t2i_prob``: a sample of a session whose frames are captioned is, with this probability, a
  text-to-image sample instead: one frame j drawn uniformly, laid out as [caption_j, noisy I_j]
  (its image block's ref is ("t2i", j): frame j's latent, RoPE turn slot 0, loss group ``task_t2i``).
  The paper's model learns from T2I and T2V data besides sessions (Fig. 14) and starts from a T2V
  base (§4.1); this is how a run mixes T2I in, or (t2i_prob=1) trains a T2I base. Sessions without
  captions are never drawn as T2I, so the T2I share of a corpus is t2i_prob x its captioned share.
* ``t2v_prob``: likewise a text-to-video sample: the session's caption of frame 0 and its transition
  texts, then ALL its kept frames as one noisy clip, [caption_0, T0, ..., T_{n-1}, I0*..I_n*]
  (``t2v_sample``; refs ("t2v", j), frame j at its session slot, loss group ``task_t2v``). The
  packer makes the clip one block of the mask (docs/masks.md), so its frames see each other and
  share one diffusion time, as a video model generates a clip: the T2V base the paper starts
  from, learned from the same videos. One uniform draw decides T2I (below t2i_prob), T2V (below
  t2i_prob + t2v_prob) or an edit, so t2v_prob 0 changes no earlier sample. ``t2v_max_frames`` (> 0)
  caps the clip: a longer session gives a window of that many consecutive frames at a uniform start
  a, [caption_a, T_a, ..., noisy I_a..], laid out as a clip from frame 0 (slots 0, 3, 6, ...).

The output is a list of ``Block``s in interleaved order. Orders are assigned
here; the packer turns blocks into streams and the mask spec.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..packed.maskspec import KIND_CLEAN, KIND_NOISY, KIND_TEXT, MASK_TYPES

TASKS = ("nip", "csp", "nsp")       # the editing tasks; text-to-image / -video are drawn apart (t2i/t2v_prob)
T2I = "t2i"
T2V = "t2v"


@dataclass
class RecipeConfig:
    mask_type: str = "full"              # "full" | "block_causal"
    roe_prob: float = 0.8                # P(session uses RoE maps)
    drop_frame: float = 0.2              # context dropout of the current frame, per turn
    drop_roe_src: float = 0.7            # ... of the current RoE map
    drop_roe_tgt: float = 0.7            # ... of the next RoE map
    task_probs: tuple = (0.6, 0.2, 0.2)  # NIP, CSP, NSP (CSP/NSP need RoE maps)
    keep_source: bool = True             # never drop the frame the target is edited from
    camera_prompts: bool = True          # prefix "[###CAMERA: <motion>###]" to each transition
    mask_prompt_src: str = "generate the mask of changing areas in the source image"
    mask_prompt_tgt: str = "generate the mask of changing areas in the target image"
    max_frames: int = 20                 # longer sessions are cut
    pairwise: bool = False               # train on each session's (I_i, T_i, I_{i+1}) pairs, not sessions
    t2i_prob: float = 0.0                # P(a captioned session's sample is text-to-image: [caption_j, noisy I_j])
    t2v_prob: float = 0.0                # P(... is text-to-video: [caption_0, T0..T_{n-1}, noisy clip I0..I_n])
    t2v_max_frames: int = 0              # > 0: a clip is at most this many frames, a window at a uniform start

    def __post_init__(self):
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"recipe.mask_type: expected one of {MASK_TYPES}, got {self.mask_type!r}")
        for name in ("roe_prob", "drop_frame", "drop_roe_src", "drop_roe_tgt", "t2i_prob", "t2v_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"recipe.{name}: must be a probability in [0, 1], got {v}")
        p = np.asarray(self.task_probs, dtype=float)
        if p.shape != (3,) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"recipe.task_probs: expected 3 non-negative weights (NIP, CSP, NSP), got {self.task_probs}")
        if self.max_frames < 2:
            raise ValueError(f"recipe.max_frames: must be >= 2, got {self.max_frames}")
        if self.t2v_max_frames != 0 and self.t2v_max_frames < 2:
            raise ValueError(f"recipe.t2v_max_frames: 0 (every kept frame) or >= 2, got {self.t2v_max_frames}")
        if self.t2i_prob + self.t2v_prob > 1:
            raise ValueError(f"recipe.t2v_prob: t2i_prob + t2v_prob must be <= 1 (one draw picks T2I, T2V or an "
                             f"edit), got {self.t2i_prob} + {self.t2v_prob}")

    @property
    def captioned(self) -> bool:
        """Whether samples read frame captions (text-to-image or -video): the latent store must hold them."""
        return self.t2i_prob > 0 or self.t2v_prob > 0


def pairwise_sessions(corpus: list) -> list:
    """Each session of K frames -> its K-1 pairs (I_i, T_i, I_{i+1}), each a session of its own
    (the same dataclass, ``meta["pair"] = i``; frames and maps are views, not copies).

    The stream draws sessions uniformly, so after the cut it draws pairs uniformly: the pairwise
    arm sees every transition of the same sessions, one at a time, at the same tokens per step."""
    out = []
    for s in corpus:
        for i in range(len(s.texts)):
            out.append(dataclasses.replace(
                s, frames=s.frames[i:i + 2], texts=[s.texts[i]], cameras=[s.cameras[i]],
                roe_src=None if s.roe_src is None else s.roe_src[i:i + 1],
                roe_tgt=None if s.roe_tgt is None else s.roe_tgt[i:i + 1], meta={**s.meta, "pair": i},
                captions=None if s.captions is None else s.captions[i:i + 2]))
    return out


def camera_prompt(text: str, camera: str | None) -> str:
    """The paper's camera tag, before the instruction (paper Table 9 and D.4; the release prefixes it:
    ByteDance-Seed/VINCIE generate.py, CAMERA_PREFIX); inference uses camera None."""
    return f"[###CAMERA: {camera or 'None'}###] {text}"


@dataclass
class Block:
    modality: str            # "text" | "image"
    kind: int                # KIND_TEXT / KIND_CLEAN / KIND_NOISY
    order: int               # index in the interleaved session (noisy twins share it)
    turn: int                # transition index the block belongs to (<TURN>_turn for text)
    text: str | None = None  # text blocks
    image: tuple | None = None   # image blocks: ("frame", j) | ("roe_src", j) | ("roe_tgt", j) | ("t2i", j) | ("t2v", j)
    role: str = ""           # "frame" | "roe_src" | "roe_tgt" | "t2i" | "t2v" | "text" | "mask_prompt" | "caption"


@dataclass
class SessionSample:
    blocks: list[Block]
    task: str = "nip"
    target_turn: int = -1
    meta: dict = field(default_factory=dict)


@dataclass
class SessionPlan:
    """The random choices of one sample, kept explicit so inference and tests can set them."""
    num_turns: int                           # transitions kept (frames = num_turns + 1); 0 for t2i
    use_roe: bool = False
    task: str = "nip"                        # one of TASKS, or T2I / T2V
    target_turn: int = -1                    # full mask: the turn whose target is noisy; t2i: the frame;
                                             # t2v: the clip's first frame (its caption leads the clip)
    dropped: set = field(default_factory=set)    # {("frame", j), ("roe_src", j), ("roe_tgt", j)}


def draw_plan(num_frames: int, cfg: RecipeConfig, rng: np.random.Generator, has_roe: bool = True,
              has_captions: bool = False) -> SessionPlan:
    """Draw the recipe's random choices for a session with ``num_frames`` frames (``has_captions``: its
    frames are captioned, so it may be drawn as text-to-image or -video). With ``t2i_prob`` and ``t2v_prob``
    0 nothing more is drawn than before they existed: the same seed gives the same samples."""
    if num_frames < 2:
        raise ValueError(f"session has {num_frames} frame(s); a training session needs at least 2")
    n = min(num_frames, cfg.max_frames) - 1
    if has_captions and cfg.captioned:
        u = rng.random()
        if u < cfg.t2i_prob:
            return SessionPlan(num_turns=0, task=T2I, target_turn=int(rng.integers(n + 1)))
        if u < cfg.t2i_prob + cfg.t2v_prob:
            m = n + 1 if cfg.t2v_max_frames == 0 else min(n + 1, cfg.t2v_max_frames)    # clip frames
            start = int(rng.integers(n + 2 - m)) if m < n + 1 else 0
            return SessionPlan(num_turns=m - 1, task=T2V, target_turn=start)
    use_roe = has_roe and rng.random() < cfg.roe_prob
    probs = np.asarray(cfg.task_probs, dtype=float) if use_roe else np.array([1.0, 0.0, 0.0])
    task = TASKS[rng.choice(3, p=probs / probs.sum())]
    target = int(rng.integers(n)) if cfg.mask_type == "full" else -1
    last = target if cfg.mask_type == "full" else n - 1
    dropped = set()
    for j in range(last + 1):
        if rng.random() < cfg.drop_frame:
            dropped.add(("frame", j))
        if use_roe and rng.random() < cfg.drop_roe_src:
            dropped.add(("roe_src", j))
        if use_roe and rng.random() < cfg.drop_roe_tgt:
            dropped.add(("roe_tgt", j))
    if cfg.mask_type == "full":
        # never drop what is predicted, nor (keep_source) the frame it is edited from
        goal = {"nip": ("frame", target + 1), "csp": ("roe_src", target), "nsp": ("roe_tgt", target)}[task]
        dropped.discard(goal)
        if cfg.keep_source:
            dropped.discard(("frame", target))
    return SessionPlan(num_turns=n, use_roe=use_roe, task=task, target_turn=target, dropped=dropped)


def t2i_sample(caption: str, frame: int = 0) -> SessionSample:
    """Text-to-image: [caption, noisy frame ``frame``] (the same layout under either mask: the image
    sees the caption, the caption sees only itself under block-causal)."""
    return SessionSample(blocks=[Block("text", KIND_TEXT, 0, 0, text=caption, role="caption"),
                                 Block("image", KIND_NOISY, 1, 0, image=(T2I, frame), role=T2I)],
                         task=T2I, target_turn=frame)


def t2v_sample(caption: str, texts: list[str], first: int = 0) -> SessionSample:
    """Text-to-video: [caption, T0, ..., T_{n-1}, noisy frames 0..n] with n = len(texts) (texts as they are
    emitted, camera tags included), the clip's frames being the session's ``first``..``first + n``. Clip frame
    j's ref is ("t2v", first + j), at order n + 1 + j: its own position (slot 3j, as frame j of an edit); the
    packer joins the frames into one block (``BatchBuilder.image``'s ``joins``), the clip a video model
    denoises together. Text j has turn j (the clip's own count, as its positions)."""
    n = len(texts)
    blocks = [Block("text", KIND_TEXT, 0, 0, text=caption, role="caption")]
    blocks += [Block("text", KIND_TEXT, 1 + j, j, text=t, role="text") for j, t in enumerate(texts)]
    blocks += [Block("image", KIND_NOISY, n + 1 + j, j, image=(T2V, first + j), role=T2V) for j in range(n + 1)]
    return SessionSample(blocks=blocks, task=T2V, target_turn=first)


def emitted(text: str, camera: str | None, cfg: RecipeConfig) -> str:
    """A transition text as the layout carries it: with its camera tag when ``cfg.camera_prompts``."""
    return camera_prompt(text, camera) if cfg.camera_prompts else text


def build_sample(texts: list[str], cameras: list[str | None], plan: SessionPlan, cfg: RecipeConfig,
                 captions: list[str] | None = None) -> SessionSample:
    """Lay out the blocks of one session under ``plan``.

    ``texts[j]`` / ``cameras[j]`` describe transition j (frame j -> j+1). Image
    blocks refer to latents by ("frame", j) / ("roe_src", j) / ("roe_tgt", j);
    a t2i plan lays out ``t2i_sample(captions[j], j)``, a t2v plan ``t2v_sample`` of the caption of its first
    frame a (``target_turn``) and the ``num_turns`` transitions from a.
    """
    if plan.task in (T2I, T2V) and captions is None:
        raise ValueError(f"a text-to-{'image' if plan.task == T2I else 'video'} plan needs the session's frame captions")
    if plan.task == T2I:
        return t2i_sample(captions[plan.target_turn], plan.target_turn)
    if plan.task == T2V:
        a = plan.target_turn
        return t2v_sample(captions[a], [emitted(texts[a + j], cameras[a + j], cfg) for j in range(plan.num_turns)], a)
    blocks: list[Block] = []
    order = 0

    def add_text(text, turn, role):
        nonlocal order
        blocks.append(Block("text", KIND_TEXT, order, turn, text=text, role=role))
        order += 1

    full = cfg.mask_type == "full"

    def place(ref, turn, is_target: bool):
        """full: the target is noisy only, other kept blocks clean only.
        block_causal: every image after I0 has a noisy twin; dropout removes only the clean copy,
        and the session's last frame has none (no later block could see it)."""
        nonlocal order
        dropped = ref in plan.dropped and not is_target
        final = not full and ref == ("frame", plan.num_turns)
        clean = not dropped and not (full and is_target) and not final
        noisy = is_target if full else ref != ("frame", 0)
        if clean:
            blocks.append(Block("image", KIND_CLEAN, order, turn, image=ref, role=ref[0]))
        if noisy:
            blocks.append(Block("image", KIND_NOISY, order, turn, image=ref, role=ref[0]))
        order += 1

    last = plan.target_turn if full else plan.num_turns - 1
    place(("frame", 0), 0, is_target=False)
    for j in range(last + 1):
        tgt = full and j == plan.target_turn
        add_text(emitted(texts[j], cameras[j], cfg), j, "text")
        if plan.use_roe:
            for kind, prompt, task in (("roe_src", cfg.mask_prompt_src, "csp"), ("roe_tgt", cfg.mask_prompt_tgt, "nsp")):
                is_target = tgt and plan.task == task
                if (kind, j) in plan.dropped and not is_target and full:
                    continue                         # dropped context: neither prompt nor map
                add_text(prompt, j, "mask_prompt")
                place((kind, j), j, is_target)
                if is_target:
                    break
            if tgt and plan.task in ("csp", "nsp"):
                break                                # the map was the target: later blocks are cut
        place(("frame", j + 1), j + 1, is_target=tgt and plan.task == "nip")
    return SessionSample(blocks=blocks, task=plan.task, target_turn=plan.target_turn)


def inference_sample(texts: list[str], camera_prompts: bool = True) -> SessionSample:
    """Editing turn n: I0, T0, I1, ..., I_{n}, T_n, then a noisy I_{n+1} (no RoE).

    The layout is the same under either mask: context blocks are clean only and the
    target is noisy only; the packer's mask type decides who sees whom."""
    n = len(texts)
    cfg = RecipeConfig(mask_type="full", camera_prompts=camera_prompts)
    plan = SessionPlan(num_turns=n, use_roe=False, task="nip", target_turn=n - 1)
    return build_sample(texts, [None] * n, plan, cfg)


def roe_inference_sample(texts: list[str], task: str, maps, cfg: RecipeConfig) -> SessionSample:
    """Turn n = len(texts) - 1 of a session that carries RoE maps, laid out as training lays it out.

    The context is I0, T0, [Tm0, M00], [Tm1, M01], I1, ..., I_n, T_n and the target is the
    noisy block of ``task``: CSP -> Tm0 + ("roe_src", n); NSP -> [Tm0, M_n0], Tm1 + ("roe_tgt", n);
    NIP -> [Tm0, M_n0], [Tm1, M_n1], ("frame", n + 1). ``maps`` names the RoE maps given as clean
    context ({("roe_src", j), ("roe_tgt", j)}); every other map counts as dropped by the context
    dropout, so it is left out exactly as ``build_sample`` leaves it out under ``cfg.mask_type``
    (``full``: map and prompt; ``block_causal``: the clean map, its prompt stays).

    Only the target is noisy under either mask. ``build_sample``'s other ``block_causal`` noisy twins
    are seen by no block but themselves (docs/masks.md), so leaving them out changes nothing the
    target sees; the one exception is ``rope_mode="interleaved"``, where a twin whose clean copy is
    dropped still takes a RoPE position (every config uses "separate").
    """
    n = len(texts) - 1
    if n < 0:
        raise ValueError("roe_inference_sample: needs at least one text")
    goal = {"nip": ("frame", n + 1), "csp": ("roe_src", n), "nsp": ("roe_tgt", n)}.get(task)
    if goal is None:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    before = {"nip": ("roe_src", "roe_tgt"), "csp": (), "nsp": ("roe_src",)}[task]   # turn n's maps ahead of the target
    allowed = {(k, j) for j in range(n) for k in ("roe_src", "roe_tgt")} | {(k, n) for k in before}
    if set(maps) - allowed:
        raise ValueError(f"maps: {sorted(set(maps) - allowed)} cannot be context for {task} at turn {n} "
                         f"(only maps laid out before the target)")
    dropped = {(k, j) for j in range(n + 1) for k in ("roe_src", "roe_tgt") if (k, j) not in maps}
    plan = SessionPlan(num_turns=n + 1, use_roe=True, task=task, target_turn=n, dropped=dropped)
    sample = build_sample(texts, [None] * (n + 1), plan, cfg)
    target = next(b for b in sample.blocks if b.kind == KIND_NOISY and b.image == goal)
    sample.blocks = [b for b in sample.blocks if b is target or (b.kind != KIND_NOISY and b.order < target.order)]
    return sample
