"""Text encoder: a ``transformers`` T5 encoder, each turn encoded separately.

``kind: official`` runs the released models' text encoders (Flan-UL2, the 3B's LLM) the way the
released code does (``official_text.py``, docs/official_encoders.md).

Real presets load Flan-T5 from a local path (no hub access at run time). The
demo and tests use a tiny *random, frozen* T5 with the byte-level ByT5
tokenizer, which needs no vocabulary file: a prototype measured (docs/measured.md) that a frozen
random text encoder does as well as a learned one on the synthetic world.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextEncoderConfig:
    kind: str = "tiny_random"   # "tiny_random" | "pretrained" | "official"
    path: str | None = None     # local folder: a T5 encoder + tokenizer (kind="pretrained"); the released
                                # flan-ul2/ or llm14b/ folder, or any T5 / decoder-LLM folder (kind="official")
    d_model: int = 64           # tiny_random only
    num_layers: int = 2         # tiny_random only
    num_heads: int = 4          # tiny_random only
    max_tokens: int | None = None   # per turn, after tokenisation (longer prompts are cut); default 64,
                                    # or the released models' 150 for kind="official"
    pool: int = 1               # mean-pool every `pool` output tokens into one (byte tokens are ~4x
                                # denser than word pieces; 1 = the encoder's own resolution)
    seed: int = 0               # tiny_random weights
    dtype: str = "float32"      # kind="official": weights' dtype (the released code runs bfloat16)
    trust_remote_code: bool = False   # kind="official": run the folder's own modelling code (llm14b/ is
                                      # Qwen(1), which transformers does not ship): only for a trusted folder

    def __post_init__(self):
        if self.kind not in ("tiny_random", "pretrained", "official"):
            raise ValueError(f"text_encoder.kind: expected 'tiny_random', 'pretrained' or 'official', got {self.kind!r}")
        if self.kind in ("pretrained", "official") and not self.path:
            raise ValueError(f"text_encoder.path: required when text_encoder.kind={self.kind!r}")
        if self.max_tokens is None:
            self.max_tokens = 150 if self.kind == "official" else 64
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"text_encoder.dtype: expected float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_tokens < 1:
            raise ValueError(f"text_encoder.max_tokens: must be >= 1, got {self.max_tokens}")
        if self.pool < 1:
            raise ValueError(f"text_encoder.pool: must be >= 1, got {self.pool}")


class TextEncoder:
    """``encode(texts) -> list of [L_i, dim]`` float32 tensors, one per text, cached."""

    def __init__(self, cfg: TextEncoderConfig, device="cpu"):
        from transformers import T5EncoderModel

        self.cfg = cfg
        self.device = torch.device(device)
        self._official = None
        if cfg.kind == "official":
            from .official_text import OfficialTextModel

            self._official = OfficialTextModel(cfg.path, cfg.max_tokens, getattr(torch, cfg.dtype),
                                               cfg.trust_remote_code, device)
            self.tokenizer, self.model, self.dim = self._official.tokenizer, self._official.model, self._official.dim
            self._cache: dict[str, torch.Tensor] = {}
            return
        if cfg.kind == "pretrained":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
            self.model = T5EncoderModel.from_pretrained(cfg.path, local_files_only=True)
        else:
            from transformers import ByT5Tokenizer, T5Config

            self.tokenizer = ByT5Tokenizer()
            t5cfg = T5Config(vocab_size=384, d_model=cfg.d_model, d_kv=cfg.d_model // cfg.num_heads,
                             d_ff=2 * cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                             feed_forward_proj="gated-gelu", dropout_rate=0.0)
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed)
                self.model = T5EncoderModel(t5cfg)
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = self.model.config.d_model
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        todo = sorted({t for t in texts if t not in self._cache})
        if todo and self._official is not None:
            hidden, mask = self._official(todo)                                       # (N, L, dim), (N, L)
            for i, t in enumerate(todo):
                self._cache[t] = _pool(hidden[i][mask[i]], self.cfg.pool).cpu()       # (L_i, dim)
        elif todo:
            enc = self.tokenizer(todo, padding=True, truncation=True, max_length=self.cfg.max_tokens,
                                 return_tensors="pt")
            ids, att = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
            hidden = self.model(input_ids=ids, attention_mask=att).last_hidden_state.float()  # (N, L, dim)
            for i, t in enumerate(todo):
                self._cache[t] = _pool(hidden[i, : int(att[i].sum())], self.cfg.pool).cpu()   # (L_i, dim)
        return [self._cache[t] for t in texts]



def _pool(h: torch.Tensor, k: int) -> torch.Tensor:
    """[L, dim] -> [ceil(L / k), dim]: mean over non-overlapping windows of k rows (the last may be shorter)."""
    if k == 1:
        return h
    return torch.nn.functional.avg_pool1d(h.T.unsqueeze(0), k, ceil_mode=True)[0].T
