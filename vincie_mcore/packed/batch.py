"""What one training/inference step consumes: a packed sequence of sessions.

Built by ``packed/builder.py`` (for ``data/packing.py`` and the tests); noised by
``diffusion/``; read by the model. Stream layout and joint coordinates: see the
package docstring (``packed/__init__.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .maskspec import MaskSpec


@dataclass
class PackedBatch:
    # ---- text stream (S_txt tokens) ----
    txt_emb: torch.Tensor        # float [S_txt, text_dim]: frozen text-encoder outputs; 0 on <TURN> rows and padding
    txt_turn: torch.Tensor       # long  [S_txt]: i for a <TURN>_i token, -1 elsewhere
    txt_pos: torch.Tensor        # long  [S_txt]: 1D RoPE position
    # ---- image stream (S_img tokens) ----
    img_x0: torch.Tensor         # float [S_img, patch_dim]: clean patchified latents
    img_pos: torch.Tensor        # long  [S_img, 3]: 3D RoPE position (turn, h, w)
    img_loss_mask: torch.Tensor  # bool  [S_img]: tokens of noisy blocks (the ones with a loss)
    # ---- joint sequence ----
    spec: MaskSpec               # blocks over cat(text, image)
    block_t: torch.Tensor        # float [nb]: diffusion time per block; 0 for text and clean blocks
    block_text: torch.Tensor | None = None   # long [nb, 2]: text blocks conditioning each block (its
                                 # transition text, its own prompt), -1 for none; read when text_adaln
    # ---- bookkeeping (not read by the model) ----
    image_blocks: list = field(default_factory=list)   # per image block (padding excluded): dict(block=joint
                                 # block index, session, hw=(h_tok, w_tok), noisy, start/length in the image
                                 # stream, + the caller's keys, e.g. the packer's ref=("frame", j))
    num_sessions: int = 0

    @property
    def s_txt(self) -> int:
        return self.txt_emb.shape[0]

    @property
    def s_img(self) -> int:
        return self.img_x0.shape[0]

    def token_t(self) -> torch.Tensor:
        """[S] timestep of every joint token (per-block AdaLN conditioning)."""
        return self.block_t[self.spec.token_blocks()]

    def to(self, device) -> "PackedBatch":
        mv = lambda x: x.to(device)
        return replace(self, txt_emb=mv(self.txt_emb), txt_turn=mv(self.txt_turn), txt_pos=mv(self.txt_pos),
                       img_x0=mv(self.img_x0), img_pos=mv(self.img_pos), img_loss_mask=mv(self.img_loss_mask),
                       spec=self.spec.to(device), block_t=mv(self.block_t),
                       block_text=None if self.block_text is None else mv(self.block_text))
