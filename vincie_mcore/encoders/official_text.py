"""The released models' text encoders, run the way the released inference code runs them.

* VINCIE-7B: Flan-UL2 (``flan-ul2/``), a T5 encoder-decoder of which only the encoder stack runs:
  tokens padded to ``max_length`` (150) and cut there, the padding mask passed to the encoder,
  its last hidden state kept at the unmasked positions.
* VINCIE-3B: a Qwen-derived 14B decoder LLM (``llm14b/``): tokens right-padded to ``max_length``
  with ``<|endoftext|>`` as the pad token; the first padding position (or the last position of a
  prompt cut at ``max_length``) is overwritten by ``<|endoftext|>`` and unmasked, so every prompt ends
  in one end-of-text token; the base transformer (no LM head) runs causally under that padding mask
  and its last hidden state (after the final norm) is kept at the unmasked positions.

The architecture is read from the folder's ``config.json`` (a T5-family ``model_type`` -> its
encoder stack, otherwise a causal LM's base model), so any T5-family encoder or decoder LLM that
``transformers`` loads works; see docs/official_encoders.md for what is verified.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

_T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
EOT = "<|endoftext|>"   # the released code's pad and end token for the LLM encoder


def read_text_config(path: str, trust_remote_code: bool) -> dict:
    """The folder's config.json, with one-line errors for what cannot load."""
    f = Path(path) / "config.json"
    if not f.is_file():
        raise ValueError(f"text_encoder.path: {path!r} has no config.json (expected a transformers model folder)")
    cfg = json.loads(f.read_text())
    from transformers import CONFIG_MAPPING

    mt = cfg.get("model_type")
    if mt not in CONFIG_MAPPING and not trust_remote_code:
        raise ValueError(f"text_encoder.trust_remote_code: {path!r} has model_type {mt!r}, which transformers "
                         "does not ship; it loads only with the folder's own code (set trust_remote_code: true "
                         "if you trust that folder)")
    if cfg.get("is_encoder_decoder") and mt not in _T5_ENCODERS:   # (a saved T5EncoderModel says False)
        raise ValueError(f"text_encoder.path: {path!r} is an encoder-decoder of model_type {mt!r}; "
                         f"only {sorted(_T5_ENCODERS)} encoders are supported")
    return cfg


class OfficialTextModel:
    """``__call__(texts) -> (hidden (N, max_length, dim), mask (N, max_length) bool)``."""

    def __init__(self, path: str, max_length: int, dtype: torch.dtype, trust_remote_code: bool, device):
        import transformers
        from transformers import AutoTokenizer

        cfg = read_text_config(path, trust_remote_code)
        self.max_length, self.device = max_length, torch.device(device)
        self.arch = "t5_encoder" if cfg.get("model_type") in _T5_ENCODERS else "decoder_llm"
        load = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        if self.arch == "t5_encoder":
            self.tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=max_length, **load)
        else:
            # the released code's tokenizer arguments, verbatim: a tokenizer that does not know one ignores it
            self.tokenizer = AutoTokenizer.from_pretrained(
                path, model_max_length=max_length, use_fast=False, padding_side="right",
                truncation_side="right", add_eod_token=True, **load)
            self.tokenizer.add_special_tokens({"pad_token": EOT})
        if not self.tokenizer("a").input_ids:
            # (transformers picks the tokenizer class from config.json's model_type; a folder whose
            # files do not fit that class gives an empty vocabulary instead of an error)
            raise ValueError(f"text_encoder.path: {path!r}: its tokenizer ({type(self.tokenizer).__name__}) "
                             "turns text into no tokens")
        if self.arch == "t5_encoder":
            cls = getattr(transformers, _T5_ENCODERS[cfg["model_type"]])
            self.model = cls.from_pretrained(path, dtype=dtype, **load)
            self.dim = self.model.config.d_model
        else:
            lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **load)
            # base_model is `.transformer` for Qwen(1) remote code, `.model` for Qwen2/Llama: the stack
            # without the LM head, ending in the final norm, as the released code calls it
            self.model = lm.base_model
            self.dim = self.model.config.hidden_size
        if len(self.tokenizer) > self.model.get_input_embeddings().weight.shape[0]:
            raise ValueError(f"text_encoder.path: {path!r}: the tokenizer has {len(self.tokenizer)} tokens but "
                             f"the model embeds {self.model.get_input_embeddings().weight.shape[0]}")
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        ids, att = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
        if self.arch == "t5_encoder":
            hidden = self.model(input_ids=ids, attention_mask=att).last_hidden_state
        else:
            # one end-of-text token after each prompt (over its last token when the prompt was cut)
            rows = torch.arange(ids.shape[0], device=ids.device)
            end = att.sum(1).clamp(max=ids.shape[1] - 1)
            ids[rows, end] = self.tokenizer.pad_token_id
            att[rows, end] = 1
            hidden = self.model(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        return hidden.float(), att.bool()                                            # (N, L, dim), (N, L)
