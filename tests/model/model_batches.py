"""PackedBatches of hand-written sessions for the model tests (built by ``packed/builder.py``,
without the recipe and encoders of data/packing.py).

A session is a list of blocks in interleaved order:
    ("text", n_tokens, turn)    a text turn: <TURN>_turn row + n_tokens - 1 embedding rows
    ("clean", h, w, turn)       an image (h x w tokens)
    ("noisy", h, w, turn)       the noisy twin of the *preceding* clean block (same order)
Joint layout: every session's text blocks, then every session's image blocks.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vincie_mcore.config import build
from vincie_mcore.packed.batch import PackedBatch
from vincie_mcore.packed.builder import BatchBuilder
from vincie_mcore.packed.maskspec import KIND_CLEAN, KIND_NOISY, KIND_TEXT

BLOCK_CAUSAL_SESSION = [("clean", 2, 3, 0), ("text", 4, 0), ("clean", 2, 3, 1), ("noisy", 2, 3, 1),
                        ("text", 3, 1), ("clean", 2, 2, 2), ("noisy", 2, 2, 2)]
FULL_SESSION = [("clean", 2, 3, 0), ("text", 5, 0), ("noisy", 3, 2, 1)]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def tiny_cfg(**over):
    """configs/model/tiny.yaml with the torch core and random gates (zero-init would make the output 0)."""
    import yaml
    from vincie_mcore.model import MMDiTConfig
    d = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    d.update(attention_backend="torch", adaln_zero_init=False)
    d.update(over)
    return build(MMDiTConfig, d, "model")


def make_batch(sessions: list[list[tuple]], mask_type: str, text_dim: int, patch_dim: int,
               seed: int = 0) -> tuple[PackedBatch, list[dict]]:
    """-> (batch, blocks) where blocks[i] = dict(session, kind, stream, rows=(start, end) in its stream)
    is joint block i; image blocks also name their text block (``text``, -1 for none).

    Random text rows, block times and image rows are drawn from ``seed`` (``BatchBuilder.build``)."""
    builder = BatchBuilder(mask_type)
    txt_blocks, img_blocks = [], []
    for s, sess in enumerate(sessions):
        builder.session()
        order, txt_pos, last_text = 0, 0, -1
        for blk in sess:
            if blk[0] == "text":
                _, n, turn = blk
                last_text = builder.text(order, turn, length=n)
                txt_blocks.append(dict(session=s, kind=KIND_TEXT, order=order, n=n, turn=turn, pos0=txt_pos))
                txt_pos += n
                order += 1
            else:
                _, h, w, turn = blk
                kind = KIND_CLEAN if blk[0] == "clean" else KIND_NOISY
                order += kind == KIND_CLEAN                   # a noisy twin shares the preceding block's order
                builder.image(order - 1, kind, (h, w), rope_turn=turn, text_block=last_text)
                img_blocks.append(dict(session=s, kind=kind, order=order - 1, n=h * w, h=h, w=w, turn=turn,
                                       text=last_text))
    for stream, blocks in (("txt", txt_blocks), ("img", img_blocks)):
        row = 0
        for b in blocks:
            b.update(stream=stream, rows=(row, row + b["n"]))
            row += b["n"]
    batch = builder.build(torch.Generator().manual_seed(seed), text_dim=text_dim, patch_dim=patch_dim, random_t=True)
    return batch, txt_blocks + img_blocks


def random_sessions(n_sessions: int, target_tokens: int, mask_type: str, seed: int = 0) -> list[list[tuple]]:
    """Sessions of 1-3 turns with 2x2..4x4-token images, about target_tokens in all."""
    g = torch.Generator().manual_seed(seed)
    per = target_tokens / n_sessions
    out = []
    for _ in range(n_sessions):
        turns = int(torch.randint(1, 4, (1,), generator=g))
        h = w = max(2, min(6, int(round((per / (2 * turns + 1) * 0.8) ** 0.5))))
        n_txt = max(2, int(per * 0.2 / turns))
        sess = [("clean", h, w, 0)]
        for t in range(turns):
            sess.append(("text", n_txt, t))
            if mask_type == "full" and t < turns - 1:
                sess.append(("clean", h, w, t + 1))
            else:
                sess += [("clean", h, w, t + 1), ("noisy", h, w, t + 1)] if mask_type == "block_causal" else \
                        [("noisy", h, w, t + 1)]
        out.append(sess)
    return out
