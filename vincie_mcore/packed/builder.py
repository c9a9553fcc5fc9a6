"""The one batch builder: sessions of blocks in, one ``PackedBatch`` out.

Every packed batch is built here: ``data/packing.pack`` (recipe samples through the frozen
encoders), the model tests' hand-made sessions, the layer benchmark and the parity batches.
A caller opens a session, then adds its blocks in interleaved order::

    b = BatchBuilder("block_causal", pad_multiple=4)
    b.session()
    b.image(0, KIND_CLEAN, hw=(2, 2), tokens=x0, rope_turn=0)      # I0: 4 tokens [4, patch_dim]
    t = b.text(1, turn=0, emb=rows)                               # <TURN>_0 + encoder rows [L, text_dim]
    b.image(2, KIND_CLEAN, hw=(2, 2), tokens=x1, rope_turn=3, text_block=t)
    b.image(2, KIND_NOISY, hw=(2, 2), tokens=x1, rope_turn=3, text_block=t)   # its noisy twin
    batch = b.build()

or, with ``build(gen, text_dim=..., patch_dim=...)`` and no tensors, random ones. What the
builder decides, each rule once:

* Joint layout: every session's text blocks (sessions in order), then every image block.
  Block ``b`` of the spec is text block ``b`` for ``b < #text blocks``; ``text()`` returns
  that index, which ``image(text_block=...)`` takes.
* A text block is ``<TURN>_turn`` (a zero row with ``txt_turn = turn``) + its encoder rows.
* RoPE, ``rope_mode="separate"``: text positions count the session's text tokens from 0; an
  image's turn coordinate is the caller's ``rope_turn``. ``"interleaved"``: one counter per
  session runs over text tokens and images (one step per image order). ``"text_then_image"``
  (paper Table 10's first row, the video model's layout): text as under "separate", images
  after all of the session's text, at ``L_text + rope_turn``; the full mask only, because an
  image's position then depends on text after it, which a block-causal image must not see (and
  a KV cache would go stale as text is added). In every mode a noisy twin (an image with an
  order already seen in its session) shares its twin's position, and (h, w) are the token grid,
  row-major.
* A clip (``image(..., joins=True)``): the noisy frames of one text-to-video sample are ONE
  block of the spec, so they see each other under block_causal by the mask's own "same block"
  rule, and share one diffusion time, as a video model denoises a clip. Each frame keeps its own
  entry in ``image_blocks`` (its rows, its ``hw``, its position), pointing at the shared block.
* Padding (to ``pad_multiple``, for TP/SP/CP splits): one block per stream, of its own
  session (text: session n, image: n + 1, for n sessions), zero rows, position 0, no loss.
* ``img_loss_mask`` marks noisy tokens; ``block_t`` is 0 (``diffusion/`` draws it) unless
  ``build(random_t=True)`` draws one per noisy block.

``concat`` joins built batches into one (sessions renumbered), e.g. the parts of several
data-parallel ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vincie_kernels.reference import spec_from_blocks

from .batch import PackedBatch
from .maskspec import KIND_CLEAN, KIND_NOISY, KIND_TEXT, MASK_TYPES, MaskSpec

ROPE_MODES = ("separate", "interleaved", "text_then_image")


def token_grid(h: int, w: int) -> torch.Tensor:
    """[h*w, 2] long (row, col) of a token grid, row-major (the ``patchify`` order)."""
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([hh.reshape(-1), ww.reshape(-1)], 1)


@dataclass
class _Text:
    session: int
    order: int
    turn: int
    length: int                     # tokens, <TURN> included
    emb: torch.Tensor | None        # [length - 1, text_dim] encoder rows, or None (random)
    pos0: int                       # first RoPE position


@dataclass
class _Image:
    session: int
    order: int
    kind: int
    hw: tuple[int, int]
    tokens: torch.Tensor | None     # [h*w, patch_dim], or None (random)
    rope_turn: int                  # first RoPE coordinate
    cond: tuple[int, int]           # (transition text block, prompt block), -1 for none
    info: dict = field(default_factory=dict)
    joins: bool = False             # extends the previous image's block (a clip's frames)


class BatchBuilder:
    """Collects blocks session by session; ``build()`` lays them out as one ``PackedBatch``."""

    def __init__(self, mask_type: str, rope_mode: str = "separate", pad_multiple: int = 1):
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type: expected one of {MASK_TYPES}, got {mask_type!r}")
        if rope_mode not in ROPE_MODES:
            raise ValueError(f"rope_mode: expected one of {ROPE_MODES}, got {rope_mode!r}")
        if pad_multiple < 1:
            raise ValueError(f"pad_multiple: must be >= 1, got {pad_multiple}")
        if rope_mode == "text_then_image" and mask_type != "full":
            raise ValueError(f'rope_mode "text_then_image" needs mask_type "full", got {mask_type!r}: an image\'s '
                             "position counts its session's later text too, which only the full mask lets it see")
        self.mask_type, self.rope_mode, self.pad_multiple = mask_type, rope_mode, pad_multiple
        self._texts: list[_Text] = []
        self._images: list[_Image] = []
        self._sessions = 0
        self._counter = self._t_counter = 0     # this session's RoPE counters (joint, text-only)
        self._position: dict[int, int] = {}     # this session's image order -> turn coordinate

    @property
    def num_sessions(self) -> int:
        return self._sessions

    def session(self) -> int:
        """Start the next session; returns its id. Blocks added after it belong to it."""
        self._sessions += 1
        self._counter = self._t_counter = 0
        self._position = {}
        return self._sessions - 1

    def _current(self, what: str) -> int:
        if not self._sessions:
            raise ValueError(f"BatchBuilder.{what}: call session() first")
        return self._sessions - 1

    def text(self, order: int, turn: int, emb: torch.Tensor | None = None, *, length: int | None = None) -> int:
        """A text block: ``<TURN>_turn`` + encoder rows ``emb`` [L, text_dim] (L + 1 tokens), or,
        for a random batch, ``length`` tokens in all. Returns the block's index in the spec."""
        sid = self._current("text")
        if (emb is None) == (length is None):
            raise ValueError("BatchBuilder.text: give exactly one of emb (encoder rows) and length (random rows)")
        if emb is not None and emb.dim() != 2:
            raise ValueError(f"BatchBuilder.text: emb must be [L, text_dim], got shape {tuple(emb.shape)}")
        n = emb.shape[0] + 1 if emb is not None else length
        if n < 1 or order < 0 or turn < 0:
            raise ValueError(f"BatchBuilder.text: need length >= 1, order >= 0, turn >= 0; got {n}, {order}, {turn}")
        start = self._counter if self.rope_mode == "interleaved" else self._t_counter
        self._texts.append(_Text(sid, order, turn, n, emb, start))
        self._counter += n
        self._t_counter += n
        return len(self._texts) - 1

    def image(self, order: int, kind: int, hw: tuple[int, int], tokens: torch.Tensor | None = None, *,
              rope_turn: int | None = None, text_block: int = -1, prompt_block: int = -1, joins: bool = False,
              **info) -> int:
        """An image block of ``hw = (h, w)`` tokens: ``tokens`` [h*w, patch_dim] (None: random).

        ``rope_turn``: its turn coordinate under "separate" RoPE, before the session's text length
        is added under "text_then_image" (unused under "interleaved").
        ``text_block`` / ``prompt_block``: earlier text blocks of this session that condition it
        (``PackedBatch.block_text``), -1 for none. ``info`` goes into ``batch.image_blocks``.
        ``joins``: this noisy image extends the previous image's block (the next frame of a clip: a
        new order, so its own position, after a noisy image of this session with the same text blocks).
        Returns the image's index among images.
        """
        sid = self._current("image")
        h, w = hw
        if kind not in (KIND_CLEAN, KIND_NOISY):
            raise ValueError(f"BatchBuilder.image: kind must be KIND_CLEAN or KIND_NOISY, got {kind}")
        if h < 1 or w < 1 or order < 0:
            raise ValueError(f"BatchBuilder.image: need h, w >= 1 and order >= 0; got hw={hw}, order={order}")
        if tokens is not None and (tokens.dim() != 2 or tokens.shape[0] != h * w):
            raise ValueError(f"BatchBuilder.image: tokens must be [h*w={h * w}, patch_dim], got {tuple(tokens.shape)}")
        for ref in (text_block, prompt_block):
            if ref != -1 and not (0 <= ref < len(self._texts) and self._texts[ref].session == sid):
                raise ValueError(f"BatchBuilder.image: text block {ref} is not a text block of session {sid}")
        if joins:
            prev = self._images[-1] if self._images else None
            if prev is None or prev.session != sid or prev.kind != KIND_NOISY or kind != KIND_NOISY:
                raise ValueError("BatchBuilder.image: joins=True needs a noisy image after a noisy image of the "
                                 "same session (a clip's frames)")
            if order in self._position:
                raise ValueError(f"BatchBuilder.image: a clip's frame needs an order of its own; {order} is taken")
            if (text_block, prompt_block) != prev.cond:
                raise ValueError(f"BatchBuilder.image: a clip's frames share their block's text blocks "
                                 f"{prev.cond}, not {(text_block, prompt_block)}")
        if order not in self._position:                    # a noisy twin shares its clean twin's position
            if self.rope_mode == "interleaved":
                self._position[order] = self._counter
            elif rope_turn is None:
                raise ValueError(f"BatchBuilder.image: rope_turn is required under rope_mode={self.rope_mode!r}")
            else:
                self._position[order] = rope_turn
            self._counter += 1
        elif self.rope_mode != "interleaved" and rope_turn is not None and rope_turn != self._position[order]:
            raise ValueError(f"BatchBuilder.image: order {order} of session {sid} already sits at turn "
                             f"{self._position[order]}, not {rope_turn} (twins share a position)")
        self._images.append(_Image(sid, order, kind, (h, w), tokens, self._position[order],
                                   (text_block, prompt_block), info, joins))
        return len(self._images) - 1

    # ------------------------------------------------------------------ build
    def build(self, gen: torch.Generator | None = None, *, text_dim: int | None = None,
              patch_dim: int | None = None, random_t: bool = False) -> PackedBatch:
        """The PackedBatch of every block added so far.

        With ``gen``, blocks carry no tensors and random ones are drawn, in this order:
        ``txt_emb`` [S_txt, text_dim] (then zeroed on <TURN> rows), ``block_t`` per noisy block
        (if ``random_t``), ``img_x0`` [S_img, patch_dim]. Without, every block must carry its own.
        """
        texts, images, n_sess = self._texts, self._images, self._sessions
        given = [x.emb is not None for x in texts] + [x.tokens is not None for x in images]
        if gen is None and not all(given):
            raise ValueError("BatchBuilder.build: some blocks have no tensors; pass gen to draw random ones")
        if gen is not None and any(given):
            raise ValueError("BatchBuilder.build: blocks carry tensors; gen draws random ones for all, not some")
        if gen is not None and (text_dim is None or patch_dim is None):
            raise ValueError("BatchBuilder.build: random tensors need text_dim and patch_dim")
        if gen is None and random_t:
            raise ValueError("BatchBuilder.build: random_t needs gen")

        # ---- text stream: <TURN> row + encoder rows per block, then padding ----
        txt_turn = [torch.tensor([x.turn] + [-1] * (x.length - 1)) for x in texts]
        txt_pos = [torch.arange(x.pos0, x.pos0 + x.length) for x in texts]
        if gen is None:
            text_dim = texts[0].emb.shape[1] if texts else (text_dim or 1)
            txt_rows = [torch.cat([x.emb.new_zeros(1, x.emb.shape[1]), x.emb]) for x in texts]
        tblocks = [(x.length, x.order, KIND_TEXT, x.session) for x in texts]
        s_txt = sum(x.length for x in texts)
        pad_t = -s_txt % self.pad_multiple
        n_txt_blocks = len(tblocks) + bool(pad_t)
        # ---- image stream: tokens per block, positions (turn coordinate, grid), then padding ----
        grids: dict[tuple[int, int], torch.Tensor] = {}
        after = [0] * n_sess                        # per session: the turn offset of its images
        if self.rope_mode == "text_then_image":
            for x in texts:
                after[x.session] += x.length
        img_pos, img_loss, iblocks, cond, image_blocks, start = [], [], [], [], [], 0
        for x in images:
            h, w = x.hw
            if x.hw not in grids:
                grids[x.hw] = token_grid(h, w)
            img_pos.append(torch.cat([torch.full((h * w, 1), after[x.session] + x.rope_turn), grids[x.hw]], 1))
            img_loss.append(torch.full((h * w,), x.kind == KIND_NOISY))
            if x.joins:                             # a clip's next frame: its block grows
                n, order, kind, sess = iblocks[-1]
                iblocks[-1] = (n + h * w, order, kind, sess)
            else:
                iblocks.append((h * w, x.order, x.kind, x.session))
                cond.append(x.cond)
            image_blocks.append(dict(block=n_txt_blocks + len(iblocks) - 1, session=x.session, **x.info, hw=x.hw,
                                     noisy=x.kind == KIND_NOISY, start=start, length=h * w))
            start += h * w
        s_img = start
        pad_i = -s_img % self.pad_multiple
        if gen is None:
            if not images and patch_dim is None:
                raise ValueError("BatchBuilder.build: no image blocks; pass patch_dim")
            patch_dim = images[0].tokens.shape[1] if images else patch_dim
            img_rows = [x.tokens for x in images]
        blocks = tblocks + ([(pad_t, 0, KIND_TEXT, n_sess)] if pad_t else []) + iblocks \
            + ([(pad_i, 0, KIND_CLEAN, n_sess + 1)] if pad_i else [])
        spec = MaskSpec(*spec_from_blocks(blocks), self.mask_type)
        cond += [(-1, -1)] * bool(pad_i)
        block_text = torch.tensor([(-1, -1)] * n_txt_blocks + cond, dtype=torch.long).view(-1, 2)

        # ---- tensors: given, or drawn (txt_emb, block_t, img_x0: the order the tests rely on) ----
        block_t = torch.zeros(len(blocks))
        if gen is not None:
            emb = torch.randn(s_txt, text_dim, generator=gen)
            txt_rows = list(emb.split([x.length for x in texts]))             # views of emb, one per block
            for r in txt_rows:
                r[0] = 0.0                                                     # <TURN> rows carry no features
            if random_t:
                block_t = torch.tensor([float(torch.rand((), generator=gen)) if b[2] == KIND_NOISY else 0.0
                                        for b in blocks])
            img_rows = [torch.randn(s_img, patch_dim, generator=gen)]
        if pad_t:
            txt_rows.append(torch.zeros(pad_t, text_dim))
            txt_turn.append(torch.full((pad_t,), -1))
            txt_pos.append(torch.zeros(pad_t, dtype=torch.long))
        if pad_i:
            img_rows.append(torch.zeros(pad_i, patch_dim))
            img_pos.append(torch.zeros(pad_i, 3, dtype=torch.long))
            img_loss.append(torch.zeros(pad_i, dtype=torch.bool))
        cat = lambda xs, *empty, dtype: torch.cat(xs) if xs else torch.zeros(0, *empty, dtype=dtype)  # noqa: E731
        return PackedBatch(
            txt_emb=cat(txt_rows, text_dim, dtype=torch.float32).float(),
            txt_turn=cat(txt_turn, dtype=torch.long).long(), txt_pos=cat(txt_pos, dtype=torch.long).long(),
            img_x0=cat(img_rows, patch_dim, dtype=torch.float32).float(),
            img_pos=cat(img_pos, 3, dtype=torch.long).long(), img_loss_mask=cat(img_loss, dtype=torch.bool),
            spec=spec, block_t=block_t, block_text=block_text, image_blocks=image_blocks, num_sessions=n_sess)


def _text_blocks(spec: MaskSpec) -> int:
    """Number of leading text blocks (the joint layout puts every text block first)."""
    kinds = spec.block_kind.tolist()
    n = next((i for i, k in enumerate(kinds) if k != KIND_TEXT), len(kinds))
    if any(k == KIND_TEXT for k in kinds[n:]):
        raise ValueError("concat: a batch has a text block after an image block; expected the joint layout")
    return n


def concat(batches: list[PackedBatch]) -> PackedBatch:
    """One batch holding every session of ``batches``, in the joint layout.

    Text blocks of batch 0, 1, ..., then image blocks of batch 0, 1, ...; session ids (padding
    sessions included) are renumbered consecutively, and ``num_sessions`` counts every id, so a
    per-session draw over ``range(num_sessions)`` reaches every session. ``block_text`` and
    ``image_blocks`` follow their blocks.
    """
    if not batches:
        raise ValueError("concat: no batches")
    if len({b.spec.mask_type for b in batches}) != 1:
        raise ValueError(f"concat: mask types differ: {[b.spec.mask_type for b in batches]}")
    if len(batches) == 1:
        return batches[0]
    n_txt = [_text_blocks(b.spec) for b in batches]
    txt0 = [sum(n_txt[:p]) for p in range(len(batches))]                     # first text block of each part
    img0 = [sum(n_txt) + sum(b.spec.num_blocks - n for b, n in zip(batches[:p], n_txt[:p]))
            for p in range(len(batches))]                                     # first image block of each part
    rows0 = [sum(b.s_img for b in batches[:p]) for p in range(len(batches))]
    t_blocks, i_blocks, t_index, i_index, image_blocks, sess0 = [], [], [], [], [], 0
    for p, b in enumerate(batches):
        sp = b.spec
        lens = (sp.block_offsets[1:] - sp.block_offsets[:-1]).tolist()
        for j in range(sp.num_blocks):
            blk = (lens[j], int(sp.block_order[j]), int(sp.block_kind[j]), int(sp.block_session[j]) + sess0)
            (t_blocks if j < n_txt[p] else i_blocks).append(blk)
            (t_index if j < n_txt[p] else i_index).append((p, j))
        for ib in b.image_blocks:
            image_blocks.append(dict(ib, block=img0[p] + ib["block"] - n_txt[p], session=ib["session"] + sess0,
                                     start=ib["start"] + rows0[p]))
        sess0 += int(sp.block_session.max()) + 1
    order = t_index + i_index                                                 # new block -> (part, old block)
    block_t = torch.stack([batches[p].block_t[j] for p, j in order]) if order else torch.zeros(0)
    block_text = None
    if all(b.block_text is not None for b in batches):
        remap = lambda p, k: -1 if k < 0 else txt0[p] + k  # noqa: E731  (conditioning blocks are text blocks)
        block_text = torch.tensor([[remap(p, int(k)) for k in batches[p].block_text[j]] for p, j in order],
                                  dtype=torch.long).view(-1, 2)
    cat = lambda f: torch.cat([f(b) for b in batches])  # noqa: E731
    return PackedBatch(txt_emb=cat(lambda b: b.txt_emb), txt_turn=cat(lambda b: b.txt_turn),
                       txt_pos=cat(lambda b: b.txt_pos), img_x0=cat(lambda b: b.img_x0),
                       img_pos=cat(lambda b: b.img_pos), img_loss_mask=cat(lambda b: b.img_loss_mask),
                       spec=MaskSpec(*spec_from_blocks(t_blocks + i_blocks), batches[0].spec.mask_type),
                       block_t=block_t, block_text=block_text, image_blocks=image_blocks, num_sessions=sess0)
