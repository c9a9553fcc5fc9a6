"""Hand-built PackedBatches for the model tests (independent of data/packing.py).

A session is a list of blocks in interleaved order:
    ("text", n_tokens, turn)    a text turn: <TURN>_turn row + n_tokens - 1 embedding rows
    ("clean", h, w, turn)       an image (h x w tokens)
    ("noisy", h, w, turn)       the noisy twin of the *preceding* clean block (same order)
Joint layout: every session's text blocks, then every session's image blocks.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vincie_kernels.reference import KIND_CLEAN, KIND_NOISY, KIND_TEXT
from vincie_mcore.data.maskspec import MaskSpec
from vincie_mcore.data.packed import PackedBatch

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
    return MMDiTConfig.from_dict(d)


def make_batch(sessions: list[list[tuple]], mask_type: str, text_dim: int, patch_dim: int,
               seed: int = 0) -> tuple[PackedBatch, list[dict]]:
    """-> (batch, blocks) where blocks[i] = dict(session, kind, stream, rows=(start, end) in its stream)."""
    g = torch.Generator().manual_seed(seed)
    txt_blocks, img_blocks = [], []
    for s, sess in enumerate(sessions):
        order, txt_pos, last_text = 0, 0, -1
        for blk in sess:
            if blk[0] == "text":
                _, n, turn = blk
                last_text = len(txt_blocks)
                txt_blocks.append(dict(session=s, kind=KIND_TEXT, order=order, n=n, turn=turn, pos0=txt_pos))
                txt_pos += n
                order += 1
            elif blk[0] == "clean":
                _, h, w, turn = blk
                img_blocks.append(dict(session=s, kind=KIND_CLEAN, order=order, n=h * w, h=h, w=w, turn=turn,
                                       text=last_text))
                order += 1
            else:
                _, h, w, turn = blk
                img_blocks.append(dict(session=s, kind=KIND_NOISY, order=order - 1, n=h * w, h=h, w=w, turn=turn,
                                       text=last_text))
    s_txt = sum(b["n"] for b in txt_blocks)
    txt_emb = torch.randn(s_txt, text_dim, generator=g)
    txt_turn = torch.full((s_txt,), -1, dtype=torch.long)
    txt_pos = torch.zeros(s_txt, dtype=torch.long)
    img_pos, row = [], 0
    for b in txt_blocks:
        b.update(stream="txt", rows=(row, row + b["n"]))
        txt_emb[row] = 0.0
        txt_turn[row] = b["turn"]
        txt_pos[row:row + b["n"]] = torch.arange(b["pos0"], b["pos0"] + b["n"])
        row += b["n"]
    row = 0
    for b in img_blocks:
        b.update(stream="img", rows=(row, row + b["n"]))
        hh, ww = torch.meshgrid(torch.arange(b["h"]), torch.arange(b["w"]), indexing="ij")
        img_pos.append(torch.stack([torch.full_like(hh, b["turn"]), hh, ww], -1).reshape(-1, 3))
        row += b["n"]
    s_img = row
    blocks = txt_blocks + img_blocks
    offsets = torch.tensor([0] + [b["n"] for b in blocks]).cumsum(0).to(torch.int32)
    spec = MaskSpec(offsets, torch.tensor([b["order"] for b in blocks], dtype=torch.int32),
                    torch.tensor([b["kind"] for b in blocks], dtype=torch.int32),
                    torch.tensor([b["session"] for b in blocks], dtype=torch.int32), mask_type)
    block_t = torch.tensor([float(torch.rand((), generator=g)) if b["kind"] == KIND_NOISY else 0.0 for b in blocks])
    loss_mask = torch.zeros(s_img, dtype=torch.bool)
    for b in img_blocks:
        if b["kind"] == KIND_NOISY:
            loss_mask[b["rows"][0]:b["rows"][1]] = True
    batch = PackedBatch(txt_emb=txt_emb, txt_turn=txt_turn, txt_pos=txt_pos,
                        img_x0=torch.randn(s_img, patch_dim, generator=g),
                        img_pos=torch.cat(img_pos) if img_pos else torch.zeros(0, 3, dtype=torch.long),
                        img_loss_mask=loss_mask, spec=spec, block_t=block_t, num_sessions=len(sessions),
                        block_text=torch.tensor([[b.get("text", -1), -1] for b in blocks], dtype=torch.long))
    return batch, blocks


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
