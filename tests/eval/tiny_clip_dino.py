"""Tiny randomly initialised CLIP (model, processor, a byte-level BPE tokenizer) and DINO (ViTModel),
saved with save_pretrained into folders: the MagicBrush metrics' real transformers code on CPU in
seconds, with no hub. Random weights: the scores mean nothing, their plumbing is real."""
from __future__ import annotations

import json
from pathlib import Path

import torch

MERGES = ["c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (the base alphabet of the BPE vocabulary)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def save_tiny_clip(folder, image_size: int = 32) -> str:
    """CLIPModel + CLIPProcessor: every byte and byte</w> as a token, a few merges, 77 positions."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip import CLIPImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in MERGES),
                                         "<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    eos = vocab["<|endoftext|>"]
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77,
                                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=image_size, patch_size=8),
                     projection_dim=16)
    model = CLIPModel(cfg)
    with torch.no_grad():       # at the default init every random image embeds alike (CLIP-I ~ 1): spread them
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(std=0.5)
    model.save_pretrained(folder)
    ip = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return str(folder)


def save_tiny_dino(folder, image_size: int = 224, processor: bool = False) -> str:
    """ViTModel without pooler, patch 16 as DINO ViT-S/16 (width 32 instead of 384, one layer); with
    ``processor``, its image processor too (resize to image_size, ImageNet mean and std, as dino-vits16's)."""
    from transformers import ViTConfig, ViTModel

    # initializer_range 1 (not 0.02): else the CLS token barely depends on the image (DINO ~ 1 for any pair)
    cfg = ViTConfig(image_size=image_size, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, initializer_range=1.0)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    if processor:
        from transformers.models.vit import ViTImageProcessorPil

        ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return str(folder)
