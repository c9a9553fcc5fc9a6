"""MagicBrush multi-turn metrics: L1, L2, CLIP-I, CLIP-T and DINO per turn (the paper's Tables 1, 3, 4).

The protocol is MagicBrush's released evaluation (``evaluation/image_eval.py`` of OSU-NLP-Group/MagicBrush),
which the VINCIE paper's Table 1 reports per turn in the multi-turn setting (turn t edits the model's own
output of turn t-1). For each turn, the edited image against that turn's ground-truth target:

* **L1 / L2**: mean absolute / mean *squared* error over pixels and channels in [0, 1], after the edited
  image is resized (bicubic) to the target's size (``distance_size`` resizes both to N x N instead).
  MagicBrush's "L2" is ``nn.MSELoss``, not a root: Table 4's 0.03-0.07 are MSEs.
* **CLIP-I**: cosine of the CLIP image embeddings (``get_image_features``) of edited and target image.
* **CLIP-T**: cosine of the edited image's CLIP embedding and the target caption's CLIP text embedding;
  ``clip_t_oracle`` is the same with the target image (MagicBrush reports it next to CLIP-T).
* **DINO**: cosine of the DINO ViT-S/16 CLS embeddings (``last_hidden_state[:, 0]``, after the final
  LayerNorm: what the torch.hub ``dino_vits16`` forward returns), with MagicBrush's transform: shorter side
  to 256 (bicubic), center crop 224, ImageNet mean/std (``dino_resize``, ``dino_crop``).

Raw cosines, as in the paper's tables (CLIP-T about 0.27-0.29). torchmetrics' ``CLIPScore`` reports
``100 * cos`` clamped at 0 instead, and in torchmetrics 1.9 it fails on transformers 5 (whose
``get_image_features`` returns an output object, not a tensor), so the embeddings are ours and the
metrics are torchmetrics' functional ``mean_absolute_error``, ``mean_squared_error`` and
``cosine_similarity``. A test checks CLIP-T and CLIP-I against ``clip_score`` / 100 where positive.

Both models load from local folders through transformers (``local_files_only``); nothing reaches a hub.

    dataset = read_magicbrush("magicbrush_test")                 # docs/magicbrush.md: the layout
    results = run_magicbrush(editor, dataset, MagicBrushConfig(clip_path=..., dino_path=..., edit_size=512),
                             out_dir="runs/mb")                  # edits turn after turn, then scores
    results = score_magicbrush("their_outputs/", dataset, cfg)   # images generated elsewhere
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..paths import inside, safe_name

METRICS = ("l1", "l2", "clip_i", "clip_t", "dino", "clip_t_oracle")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SESSIONS_FILE = "sessions.jsonl"


@dataclass
class MagicBrushConfig:
    # LOCAL folders (save_pretrained, or `hf download <id> --local-dir <folder>`); the defaults name the
    # checkpoints of the protocol, read as folders relative to the working directory.
    clip_path: str = "openai/clip-vit-base-patch32"   # CLIPModel + CLIPProcessor: MagicBrush's clip.load("ViT-B/32")
    dino_path: str = "facebook/dino-vits16"           # ViTModel: MagicBrush's torch.hub dino_vits16 (DINO ViT-S/16)
    dino_resize: int = 256          # DINO: shorter side to this (bicubic) ...
    dino_crop: int = 224            # ... then a center crop (MagicBrush's transform, not the folder's processor)
    # L1/L2: None = the edited image resized to the target's size (MagicBrush); N = both resized to N x N
    distance_size: int | None = None
    # run_magicbrush: the source resized to N x N for the editor (must suit its patch x VAE factor); None = as is
    edit_size: int | None = None
    batch_size: int = 16            # image pairs per CLIP/DINO forward
    device: str = "cpu"

    def __post_init__(self):
        for name in ("dino_resize", "dino_crop", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"magicbrush.{name}: must be >= 1, got {getattr(self, name)}")
        if self.dino_crop > self.dino_resize:
            raise ValueError(f"magicbrush.dino_crop: {self.dino_crop} is larger than dino_resize {self.dino_resize}")
        for name in ("distance_size", "edit_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"magicbrush.{name}: must be None or >= 1, got {v}")


# ----------------------------------------------------------------------------- the test set

@dataclass
class MagicBrushTurn:
    instruction: str
    target: Path          # the ground-truth image after this turn
    caption: str          # the target's description (CLIP-T's text)


@dataclass
class MagicBrushSession:
    id: str
    source: Path
    turns: list[MagicBrushTurn] = field(default_factory=list)


def read_magicbrush(folder) -> list[MagicBrushSession]:
    """``folder/sessions.jsonl``: one row per session, ``{"id", "source", "turns": [{"instruction",
    "target", "caption"}, ...]}``, image paths relative to ``folder`` (docs/magicbrush.md).

    Every image must exist; a missing key, an empty ``turns``, a repeated id or a path leaving
    ``folder`` is refused in one line naming the file, line and key."""
    root = Path(folder)
    index = root / SESSIONS_FILE
    if not index.is_file():
        raise FileNotFoundError(f"magicbrush: no {SESSIONS_FILE} in {root}")
    sessions, seen = [], set()
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{index}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("id", "source", "turns"):
            if key not in row:
                raise ValueError(f"{where}: session row missing key {key!r}")
        sid = str(row["id"])
        if sid in seen:
            raise ValueError(f"{where}: id {sid!r} repeats an earlier row")
        seen.add(sid)
        if not isinstance(row["turns"], list) or not row["turns"]:
            raise ValueError(f"{where}: 'turns' must be a non-empty list")
        turns = []
        for k, t in enumerate(row["turns"]):
            if not isinstance(t, dict):
                raise ValueError(f"{where}: turns[{k}] must be an object")
            for key in ("instruction", "target", "caption"):
                if key not in t:
                    raise ValueError(f"{where}: turns[{k}] missing key {key!r}")
                if not isinstance(t[key], str) or not t[key].strip():
                    raise ValueError(f"{where}: turns[{k}].{key} must be a non-empty string")
            turns.append(MagicBrushTurn(t["instruction"], _image_path(root, t["target"], f"{where}: turns[{k}].target"),
                                        t["caption"]))
        sessions.append(MagicBrushSession(sid, _image_path(root, row["source"], f"{where}: source"), turns))
    if not sessions:
        raise ValueError(f"magicbrush: {index} holds no sessions")
    return sessions


def _image_path(root: Path, rel, what: str) -> Path:
    if not isinstance(rel, str):
        raise ValueError(f"{what}: expected a relative path string, got {type(rel).__name__}")
    p = inside(root, rel, what)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no image file {rel!r} under {root}")
    return p


def generated_path(folder, session_id: str, turn: int) -> Path:
    """Where the edited image of ``turn`` (1-based) of a session lives: ``folder/<id>/turn_<t>.png``
    (the id through ``paths.safe_name``)."""
    return Path(folder) / safe_name(session_id, "session id") / f"turn_{turn}.png"


# ----------------------------------------------------------------------------- images

def to_rgb(image, what: str = "image"):
    """A PIL RGB image from a path, a PIL image (any mode: converted, alpha dropped as MagicBrush's
    ``convert('RGB')`` does) or a uint8 array / tensor [H, W, 3]; anything else refused in one line."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{what}: no image file {os.fspath(image)!r}")
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError) as e:                 # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"{what}: cannot read {os.fspath(image)!r} as an image ({type(e).__name__})") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{what}: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(np.ascontiguousarray(image))
    raise TypeError(f"{what}: expected a path, a PIL image or a uint8 [H, W, 3] array, got {type(image).__name__}")


def _unit(im) -> torch.Tensor:
    """PIL RGB -> float [3, H, W] in [0, 1] (torchvision's ToTensor)."""
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def dino_pixels(im, resize: int, crop: int) -> torch.Tensor:
    """MagicBrush's DINO transform: shorter side to ``resize`` (bicubic), center crop ``crop``,
    ImageNet normalisation -> float [3, crop, crop]."""
    from PIL import Image

    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    long = int(resize * long / short)                           # torchvision's Resize(int) rule
    im = im.resize((resize, long) if w <= h else (long, resize), Image.BICUBIC)
    w, h = im.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    x = _unit(im.crop((left, top, left + crop, top + crop)))
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def _embeds(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose ``pooler_output``
    holds the projected embedding (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# ----------------------------------------------------------------------------- the scorer

class MagicBrushMetrics:
    """CLIP and DINO loaded once from local folders; ``score`` gives the per-pair metrics."""

    def __init__(self, cfg: MagicBrushConfig | None = None):
        from transformers import CLIPModel, CLIPProcessor, ViTModel

        self.cfg = cfg = cfg or MagicBrushConfig()
        for key in ("clip_path", "dino_path"):
            p = getattr(cfg, key)
            if not p or not (Path(p) / "config.json").is_file():
                raise ValueError(f"magicbrush.{key}: no local model folder (config.json) at {p!r}; "
                                 f"nothing is downloaded")
        self.device = torch.device(cfg.device)
        self.clip = CLIPModel.from_pretrained(cfg.clip_path, local_files_only=True).to(self.device).eval()
        self.clip_proc = CLIPProcessor.from_pretrained(cfg.clip_path, local_files_only=True)
        # the pooler (dense + tanh) is not DINO's: the CLS token after the final LayerNorm is
        self.dino = ViTModel.from_pretrained(cfg.dino_path, add_pooling_layer=False,
                                             local_files_only=True).to(self.device).eval()

    @torch.no_grad()
    def clip_image(self, images) -> torch.Tensor:
        px = self.clip_proc(images=[np.asarray(im) for im in images], return_tensors="pt")["pixel_values"]
        return _embeds(self.clip.get_image_features(pixel_values=px.to(self.device))).float().cpu()   # [N, D]

    @torch.no_grad()
    def clip_text(self, texts: list[str]) -> torch.Tensor:
        # MagicBrush's clip.tokenize refuses > 77 tokens; we truncate to the model's context instead
        t = self.clip_proc(text=list(texts), return_tensors="pt", padding=True, truncation=True,
                           max_length=self.clip.config.text_config.max_position_embeddings)
        return _embeds(self.clip.get_text_features(input_ids=t["input_ids"].to(self.device),
                                                   attention_mask=t["attention_mask"].to(self.device))).float().cpu()

    @torch.no_grad()
    def dino_cls(self, images) -> torch.Tensor:
        px = torch.stack([dino_pixels(im, self.cfg.dino_resize, self.cfg.dino_crop) for im in images])
        return self.dino(pixel_values=px.to(self.device)).last_hidden_state[:, 0].float().cpu()     # [N, D]

    def score(self, generated, targets, captions) -> list[dict]:
        """Per pair {l1, l2, clip_i, clip_t, dino, clip_t_oracle}; images as ``to_rgb`` takes them."""
        from PIL import Image
        from torchmetrics.functional import cosine_similarity, mean_absolute_error, mean_squared_error

        if not len(generated) == len(targets) == len(captions):
            raise ValueError(f"score: {len(generated)} generated, {len(targets)} targets, {len(captions)} captions")
        out = []
        for a in range(0, len(generated), self.cfg.batch_size):
            gen = [to_rgb(g, "generated image") for g in generated[a:a + self.cfg.batch_size]]
            tgt = [to_rgb(t, "target image") for t in targets[a:a + self.cfg.batch_size]]
            cap = list(captions[a:a + self.cfg.batch_size])
            n = len(gen)
            clip = self.clip_image(gen + tgt)                                     # [2n, D]
            text = self.clip_text(cap)                                            # [n, D]
            dino = self.dino_cls(gen + tgt)                                       # [2n, D']
            cos = lambda x, y: cosine_similarity(x, y, reduction="none").tolist()
            clip_i, clip_t, oracle, dino_s = cos(clip[:n], clip[n:]), cos(clip[:n], text), cos(clip[n:], text), \
                cos(dino[:n], dino[n:])
            for i, (g, t) in enumerate(zip(gen, tgt)):
                s = self.cfg.distance_size
                g, t = (g.resize((s, s), Image.BICUBIC), t.resize((s, s), Image.BICUBIC)) if s else \
                    (g.resize(t.size, Image.BICUBIC) if g.size != t.size else g, t)
                g, t = _unit(g), _unit(t)
                out.append(dict(l1=float(mean_absolute_error(g, t)), l2=float(mean_squared_error(g, t)),
                                clip_i=clip_i[i], clip_t=clip_t[i], dino=dino_s[i], clip_t_oracle=oracle[i]))
        return out


# ----------------------------------------------------------------------------- the protocol

def _mean(rows: list[dict]) -> dict:
    return {"n": len(rows), **{m: (round(float(np.mean([r[m] for r in rows])), 6) if rows else None)
                               for m in METRICS}}


def aggregate(per_session: list[dict]) -> dict:
    """``per_session = [{"id", "turns": [metrics of turn 1, ...]}]`` -> per-turn means over the sessions
    that have the turn (``n`` counts them), the final-turn means (each session's last turn, MagicBrush's
    multi-turn number) and all turns pooled."""
    T = max((len(s["turns"]) for s in per_session), default=0)
    per_turn = [{"turn": t + 1, **_mean([s["turns"][t] for s in per_session if len(s["turns"]) > t])}
                for t in range(T)]
    return dict(per_turn=per_turn,
                final_turn=_mean([s["turns"][-1] for s in per_session if s["turns"]]),
                all_turns=_mean([r for s in per_session for r in s["turns"]]))


def _results(per_session, cfg: MagicBrushConfig, setting: str) -> dict:
    return dict(benchmark="magicbrush", setting=setting, sessions=len(per_session),
                models=dict(clip=cfg.clip_path, dino=cfg.dino_path), config=asdict(cfg),
                **aggregate(per_session), per_session=per_session)


def _generated_for(generated, s: MagicBrushSession) -> list:
    """The edited images of one session, one per turn, from a folder or a {id: [images]} mapping."""
    if isinstance(generated, (str, os.PathLike)):
        paths = [generated_path(generated, s.id, t + 1) for t in range(len(s.turns))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"generated: session {s.id!r} lacks {', '.join(missing)} in "
                                    f"{paths[0].parent}")
        return paths
    if s.id not in generated:
        raise KeyError(f"generated: no images for session {s.id!r}")
    imgs = list(generated[s.id])
    if len(imgs) != len(s.turns):
        raise ValueError(f"generated: session {s.id!r} has {len(imgs)} images for {len(s.turns)} turns")
    return imgs


def _metrics(cfg, metrics):
    if metrics is not None and cfg is not None and cfg != metrics.cfg:
        raise ValueError("magicbrush: both cfg and metrics given, with different configs; pass one")
    return metrics or MagicBrushMetrics(cfg)


def score_magicbrush(generated, dataset, cfg: MagicBrushConfig | None = None,
                     metrics: MagicBrushMetrics | None = None, setting: str = "given") -> dict:
    """Score images someone else generated against ``dataset`` (a folder or ``read_magicbrush``'s list).

    ``generated``: a folder laid out as ``generated_path`` says, or ``{session id: [image of turn 1, ...]}``;
    each session needs exactly one image per turn, and every session of ``dataset`` must be there."""
    sessions = read_magicbrush(dataset) if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    metrics = _metrics(cfg, metrics)
    cfg = metrics.cfg
    if not isinstance(generated, (str, os.PathLike)):
        extra = set(generated) - {s.id for s in sessions}
        if extra:
            raise KeyError(f"generated: sessions not in the dataset: {sorted(extra)[:5]}")
    flat = [(i, t, g) for i, s in enumerate(sessions) for t, g in enumerate(_generated_for(generated, s))]
    scores = metrics.score([g for _, _, g in flat], [sessions[i].turns[t].target for i, t, _ in flat],
                           [sessions[i].turns[t].caption for i, t, _ in flat])
    per_session = [dict(id=s.id, turns=[]) for s in sessions]
    for (i, _, _), r in zip(flat, scores):
        per_session[i]["turns"].append({m: round(v, 6) for m, v in r.items()})
    return _results(per_session, cfg, setting)


def run_magicbrush(editor, dataset, cfg: MagicBrushConfig | None = None, out_dir=None,
                   metrics: MagicBrushMetrics | None = None, progress: bool = True) -> dict:
    """Edit every session turn after turn with ``editor`` (``infer.editor.Editor``: turn t sees the
    source, all earlier instructions and the model's own earlier outputs, the paper's ``*`` setting),
    then score with ``score_magicbrush``.

    ``out_dir``: the edits go to ``generated_path(out_dir, id, t)`` (so ``score_magicbrush(out_dir, ...)``
    rescores them) and the results to ``out_dir/results.json``."""
    from PIL import Image
    from tqdm import tqdm

    sessions = read_magicbrush(dataset) if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    metrics = _metrics(cfg, metrics)
    cfg = metrics.cfg
    # with out_dir the edits are scored from their PNGs (lossless), so no session's images stay in memory
    generated = {}
    for s in tqdm(sessions, desc="magicbrush edit", disable=not progress):
        src = to_rgb(s.source, f"session {s.id!r} source")
        if cfg.edit_size:
            src = src.resize((cfg.edit_size, cfg.edit_size), Image.BICUBIC)
        sess = editor.start(np.array(src))            # a writable copy: the editor wraps it in a tensor
        outs = [np.asarray(sess.edit(turn.instruction)) for turn in s.turns]
        if out_dir is None:
            generated[s.id] = outs
        else:
            for t, im in enumerate(outs, 1):
                p = generated_path(out_dir, s.id, t)
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(im).save(p)
    setting = "multi-turn: each turn edits the previous output, with every earlier turn as context"
    results = score_magicbrush(generated if out_dir is None else out_dir, sessions, metrics=metrics, setting=setting)
    if out_dir is not None:
        (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
