"""What the learned data filters cost per session (``vincie-bench-sessions --quality``).

The models are built at their published sizes with random weights (the time of a forward pass does not
depend on the weights, and no hub is needed): CLIP ViT-L/14 with the LAION aesthetic head's layer shapes
(768 -> 1024 -> 128 -> 64 -> 16 -> 1), and GroundingDINO with its default Swin-T backbone and BERT-base
text tower, 900 queries, at its processor's 800-pixel shorter side. Each is saved to a temporary folder
and loaded the way a build loads it (``data/quality.py``), then ``check_session`` runs on sessions of
``frames`` random frames; the first call (model load) is timed apart. Beside the figures, checks of the
same run: the aesthetic scores against the head applied by hand (an ``nn.Sequential`` from the saved
file) to CLIP's image features, and each session's logo count against the corner rule applied by hand to
the detector's boxes. ``scale="tiny"`` builds toy sizes instead (the CPU test).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "logo", "watermark"]


def _clip(folder: Path, tiny: bool) -> tuple[str, int]:
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip import CLIPImageProcessorPil

    if tiny:
        text, vision, proj = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2), \
            dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                 patch_size=8), 16
    else:                                      # openai/clip-vit-large-patch14
        text, vision, proj = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12), \
            dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
                 patch_size=14), 768
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)).save_pretrained(folder)
    size = vision["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return str(folder), proj


def _head(path: Path, dim: int, tiny: bool):
    import torch
    from torch import nn

    widths = [dim, 24, 12, 8, 4, 1] if tiny else [dim, 1024, 128, 64, 16, 1]
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < 3:
            layers.append(nn.Dropout(0.1))      # the published layout: Linear, Dropout, ... (keys layers.0, .2, .4, .6, .7)
    seq = nn.Sequential(*layers).eval()
    torch.save({f"layers.{k}": v for k, v in seq.state_dict().items()}, path)
    return seq


def save_grounding_dino(folder, tiny: bool, words=WORDS) -> str:
    """A randomly initialised GroundingDINO + processor in ``folder`` (its tokenizer knows ``words`` only): the
    published architecture, or a toy one (the tests' model, a few hundred thousand parameters)."""
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, SwinConfig)
    from transformers.models.grounding_dino import GroundingDinoImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words))
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    if tiny:
        swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                          out_features=["stage2", "stage3", "stage4"])
        bert = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64)
        cfg = GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, num_queries=20, max_text_len=32, encoder_n_points=2,
                                  decoder_n_points=2, use_timm_backbone=False)
        ip = GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 192})
    else:                                      # IDEA-Research/grounding-dino-tiny's architecture (BERT-base, Swin-T)
        cfg = GroundingDinoConfig(use_timm_backbone=False)
        ip = GroundingDinoImageProcessorPil()
    GroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return str(folder)


def bench_quality(sessions: int = 2, frames: int = 3, size: int = 512, device: str = "cpu",
                  scale: str = "real") -> dict:
    """Seconds per session of each learned filter -> the JSON dict (see the module docstring)."""
    import torch

    from ..data import quality as Q

    if scale not in ("real", "tiny"):
        raise ValueError(f"bench_quality: scale must be real or tiny, got {scale!r}")
    if sessions < 1 or frames < 1:
        raise ValueError(f"bench_quality: sessions and frames must be >= 1, got {sessions} and {frames}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r}, but no CUDA device is available here")
    tiny = scale == "tiny"
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8) for _ in range(sessions)]
    out = {"tool": "bench_quality", "scale": scale, "device": device, "sessions": sessions,
           "frames_per_session": frames, "frame_size": [size, size], "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, dim = _clip(tmp / "clip", tiny)
        seq = _head(tmp / "head.pth", dim, tiny)
        gd = save_grounding_dino(tmp / "gd", tiny)
        for key, cfg in (("aesthetic", Q.QualityConfig(aesthetic=Q.AestheticConfig(
                             clip_path=clip, head_path=str(tmp / "head.pth"), min_score=-1e9, frames=frames,
                             device=device))),
                         ("logo", Q.QualityConfig(logo=Q.LogoConfig(grounding_dino_path=gd, frames=frames,
                                                                     device=device)))):
            Q._LOADED.clear()
            t0 = time.perf_counter()
            Q.check_session(clips[0], cfg)                      # loads the model, then one session
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            metas = [Q.check_session(c, cfg)[1] for c in clips]
            per = (time.perf_counter() - t0) / sessions
            out[key] = {"s_per_session": round(per, 4), "frames_per_s": round(frames / per, 3),
                        "first_call_s_with_load": round(first, 3)}
            if key == "aesthetic":                              # the same run, checked by hand
                scorer = Q.model_for(Q.AestheticScorer, cfg.aesthetic)    # the one the run used
                want = []
                with torch.no_grad():
                    for c in clips:
                        px = scorer.clip.proc(images=list(c), return_tensors="pt")["pixel_values"].to(scorer.device)
                        f = scorer.clip.model.get_image_features(pixel_values=px)
                        f = f if isinstance(f, torch.Tensor) else f.pooler_output
                        f = torch.nn.functional.normalize(f.float(), dim=-1).cpu()
                        want.append(float(seq(f)[:, 0].mean()))
                got = [m["aesthetic"] for m in metas]
                err = max(abs(a - b) for a, b in zip(got, want))
                out[key]["check"] = {"max_abs_error_vs_by_hand": round(err, 6), "ok": err < 1e-3}
            else:                                               # the decision, redone by hand on the model's boxes
                det, frac, want = Q.model_for(Q.LogoDetector, cfg.logo), cfg.logo.corner_frac, []
                for c in clips:
                    shown = 0
                    for b, _ in det.detect(c):
                        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
                        shown += bool(((np.minimum(cx, size - cx) <= frac * size) &
                                       (np.minimum(cy, size - cy) <= frac * size)).any())
                    want.append(f"{shown}/{frames}")
                got = [m["logo_frames"] for m in metas]
                out[key]["check"] = {"logo_frames": got, "by_hand": want, "ok": got == want}
        Q._LOADED.clear()
    return out
