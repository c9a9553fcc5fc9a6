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

Four settings say what each turn's editor sees (``SETTINGS``): ``multi_turn`` (Table 1: the model's own
earlier outputs, every earlier turn in context), ``independent`` (MagicBrush's single-turn setting and
Table 4's "w/o Context": the turn's ground-truth input alone), ``history`` (Table 4: the ground-truth
earlier turns in context) and ``dummy`` (Table 4's "Dummy-Context": a copy turn first).

    dataset = read_magicbrush("magicbrush/test")                 # the release's folder, or our sessions.jsonl
    results = run_magicbrush(editor, dataset, MagicBrushConfig(clip_path=..., dino_path=..., edit_size=512),
                             out_dir="runs/mb", setting="multi_turn")   # edits (resumable), then scores
    results = score_magicbrush("their_outputs/", dataset, cfg)   # images generated elsewhere (MagicBrush's names)
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.rows import json_row
from ..paths import inside, safe_name

METRICS = ("l1", "l2", "clip_i", "clip_t", "dino", "clip_t_oracle")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SESSIONS_FILE = "sessions.jsonl"
RELEASE_FILE = "edit_sessions.json"                # MagicBrush's test release: {image id: [turns]}
RELEASE_CAPTIONS = "global_descriptions.json"      # the global captions: MagicBrush's script's default kind
DUMMY_INSTRUCTION = "generate the same image"      # the paper's Table 4 "Dummy-Context" turn

# What turn t's editor sees before its instruction (docs/magicbrush.md, "Settings").
SETTINGS = {
    "multi_turn": "each turn edits the model's previous output, with every earlier turn (source, instructions, "
                  "own outputs) as context: the paper's Table 1 (*)",
    "independent": "each turn edits its ground-truth input alone, no context: MagicBrush's single-turn setting, "
                   "the paper's Table 4 'w/o Context'",
    "history": "each turn edits its ground-truth input with the ground-truth earlier turns (images and "
               "instructions) as context: the paper's Table 4 'History'",
    "dummy": "as history, after a dummy turn (the source, 'generate the same image', the source): "
             "the paper's Table 4 'Dummy-Context'",
}
# generated file names: MagicBrush's for its two settings (<id>_1.png, <id>_iter_<t>.png, <id>_inde_<t>.png)
_SUFFIX = {"multi_turn": "iter", "independent": "inde", "history": "hist", "dummy": "dummy"}


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
                raise ValueError(f"MagicBrushConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.dino_crop > self.dino_resize:
            raise ValueError(f"MagicBrushConfig.dino_crop: {self.dino_crop} is larger than dino_resize {self.dino_resize}")
        for name in ("distance_size", "edit_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"MagicBrushConfig.{name}: must be None or >= 1, got {v}")


@dataclass
class MagicBrushEvalConfig:
    """``eval.magicbrush``: MagicBrush scored during training by ``train.eval_every``
    (``build.magicbrush_evaluator``), e.g. the dev split while fine-tuning on the train split."""
    data: str | None = None         # as read_magicbrush takes it; None: off (the synthetic evaluation runs)
    captions: str | None = None     # read_magicbrush's captions=
    setting: str = "multi_turn"     # SETTINGS
    sessions: int | None = 32       # the first N sessions (None: all), the same at every evaluation
    batch: int = 8                  # edits per model pass (run_magicbrush's batch: the same images at any N)
    metrics: MagicBrushConfig = field(default_factory=MagicBrushConfig)

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"eval.magicbrush.setting: must be one of {', '.join(SETTINGS)}, got {self.setting!r}")
        if self.sessions is not None and self.sessions < 1:
            raise ValueError(f"eval.magicbrush.sessions: must be None or >= 1, got {self.sessions}")
        if self.batch < 1:
            raise ValueError(f"eval.magicbrush.batch: must be >= 1, got {self.batch}")


# ----------------------------------------------------------------------------- the test set

@dataclass
class MagicBrushTurn:
    instruction: str
    target: Path | bytes  # the ground-truth image after this turn: a file, or its encoded bytes (parquet)
    caption: str | None   # the target's description (CLIP-T's text); None: not published (parquet)


@dataclass
class MagicBrushSession:
    id: str
    source: Path | bytes
    turns: list[MagicBrushTurn] = field(default_factory=list)

    def gt_input(self, t: int) -> Path | bytes:
        """The ground-truth input of turn ``t`` (0-based): the source, then the previous turn's target."""
        return self.source if t == 0 else self.turns[t - 1].target


def read_magicbrush(folder, captions: str | None = None) -> list[MagicBrushSession]:
    """A MagicBrush test set from ``folder``, in either layout (docs/magicbrush.md):

    * the release (``edit_sessions.json``, ``images/<id>/``, caption files): CLIP-T's text is the
      target's entry in ``captions`` (default the global ones, ``global_descriptions.json``, the kind
      MagicBrush's script reads by default);
    * ours: ``sessions.jsonl``, one row per session, ``{"id", "source", "turns": [{"instruction",
      "target", "caption"}, ...]}``, image paths relative to ``folder``.

    * Hugging Face's parquet (``osunlp/MagicBrush``, its train or dev split: a .parquet file or a folder
      of them; one row per turn, ``img_id``, ``turn_index``, images as bytes): no captions are
      published there, so CLIP-T is None unless ``captions`` names a file in the release's format
      (``{id: {"<id>-output<k>.png": text}}``, a path, or a name in the parquet's folder).

    Every image must exist; a missing key or caption, an empty session, a repeated id, a turn whose
    input is not the previous turn's output, or a path leaving ``folder`` is refused in one line
    naming the file and the key."""
    root = Path(folder)
    if (root / SESSIONS_FILE).is_file():
        if captions is not None:
            raise ValueError(f"captions: {root / SESSIONS_FILE} carries its captions in its rows; "
                             f"captions= is for the release's layout ({RELEASE_FILE})")
        return _read_jsonl(root)
    if (root / RELEASE_FILE).is_file():
        return _read_release(root, captions or RELEASE_CAPTIONS)
    if root.suffix == ".parquet" and root.is_file() or root.is_dir() and next(root.rglob("*.parquet"), None):
        return _read_parquet(root, captions)
    raise FileNotFoundError(f"magicbrush: no {SESSIONS_FILE}, {RELEASE_FILE} (the release's test folder) "
                            f"or .parquet files (Hugging Face's splits) in {root}")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None


def _check_turn(t, k: int, where: str, keys: tuple) -> None:
    """A turn of either layout: an object whose ``keys`` are non-empty strings; one line otherwise."""
    if not isinstance(t, dict):
        raise ValueError(f"{where}: turns[{k}] must be an object")
    for key in keys:
        if key not in t:
            raise ValueError(f"{where}: turns[{k}] missing key {key!r}")
        if not isinstance(t[key], str) or not t[key].strip():
            raise ValueError(f"{where}: turns[{k}].{key} must be a non-empty string")


def _read_release(root: Path, captions: str) -> list[MagicBrushSession]:
    """MagicBrush's test release: ``edit_sessions.json`` maps an image id to its turns ``{"input",
    "mask", "output", "instruction"}``, files under ``images/<id>/``; turn k's input is turn k-1's
    output. Caption files map ``{id: {file name: text}}``. Masks are not read (the mask-free setting)."""
    index = root / RELEASE_FILE
    data = _load_json(index)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{index}: expected a non-empty object {{image id: [turns]}}")
    cap_path = inside(root, captions, "captions")
    if not cap_path.is_file():
        raise FileNotFoundError(f"captions: no {captions} in {root} (CLIP-T's text; the default is the "
                                f"release's {RELEASE_CAPTIONS})")
    caps = _load_json(cap_path)
    if not isinstance(caps, dict):
        raise ValueError(f"{cap_path}: expected an object {{image id: {{file name: text}}}}")
    sessions = []
    for sid, turns in data.items():
        where = f"{index}: session {sid!r}"
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{where}: expected a non-empty list of turns")
        folder, out, prev, source = f"images/{sid}", [], None, None
        for k, t in enumerate(turns):
            _check_turn(t, k, where, ("input", "output", "instruction"))
            if k == 0:
                source = _image_path(root, f"{folder}/{t['input']}", f"{where}: turns[0].input")
            elif t["input"] != prev:
                raise ValueError(f"{where}: turns[{k}].input is {t['input']!r}, not the previous turn's output {prev!r}")
            target = _image_path(root, f"{folder}/{t['output']}", f"{where}: turns[{k}].output")
            entry = caps.get(sid)
            cap = entry.get(t["output"]) if isinstance(entry, dict) else None
            if not isinstance(cap, str) or not cap.strip():
                raise ValueError(f"{cap_path}: no caption for session {sid!r}, file {t['output']!r}")
            out.append(MagicBrushTurn(t["instruction"], target, cap))
            prev = t["output"]
        sessions.append(MagicBrushSession(str(sid), source, out))
    return sessions


def _read_parquet(root: Path, captions: str | None) -> list[MagicBrushSession]:
    """Hugging Face's MagicBrush split: rows grouped into sessions by ``img_id`` and ordered by
    ``turn_index`` (``data/edits.py``, which builds the fine-tuning store from the same files); each
    turn's source must be the previous turn's target (within 2 of 255 on average: ``edits.chained``)."""
    from ..data.edits import EditsConfig, chained, dataset_files, read_edit_sessions, same_cell
    from ..data.media import image_cell

    files = dataset_files([root])
    caps = None
    if captions is not None:
        cap_path = Path(captions)
        if not cap_path.is_file():
            cap_path = inside(root if root.is_dir() else root.parent, captions, "captions")
        if not cap_path.is_file():
            raise FileNotFoundError(f"captions: no {captions} (a path, or a name next to the parquet files)")
        caps = _load_json(cap_path)
        if not isinstance(caps, dict):
            raise ValueError(f"{cap_path}: expected an object {{image id: {{file name: text}}}}")
    sessions = []
    cfg = EditsConfig(format="magicbrush", masks="none")
    for sid, rows in read_edit_sessions(files, cfg):
        where = lambda r: f"{files[r['_file']].name} row {r['_row']} (session {sid!r}, turn {r['turn']})"  # noqa: E731
        turns_at = [r["turn"] for r in rows]
        if len(set(turns_at)) != len(rows):
            raise ValueError(f"{files[rows[0]['_file']].name}: session {sid!r} repeats a turn_index ({sorted(turns_at)})")
        rows = sorted(rows, key=lambda r: r["turn"])
        out, prev = [], None
        for k, r in enumerate(rows):
            if not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
                raise ValueError(f"{where(r)}: empty instruction")
            blob = lambda key: r[key].get("bytes") if isinstance(r[key], dict) else r[key]   # noqa: E731
            if not isinstance(blob("target"), (bytes, bytearray)) or not isinstance(blob("source"), (bytes, bytearray)):
                raise ValueError(f"{where(r)}: images must be stored as bytes")
            if k and not same_cell(r["source"], rows[k - 1]["target"]) and not chained(
                    image_cell(r["source"], f"{where(r)} source"), prev, 2.0):
                raise ValueError(f"{where(r)}: its source_img is not turn {rows[k - 1]['turn']}'s target_img")
            prev = image_cell(r["target"], f"{where(r)} target")        # decodes: a bad image is refused here
            cap = None
            if caps is not None:
                name = f"{sid}-output{k + 1}.png"
                entry = caps.get(sid)
                cap = entry.get(name) if isinstance(entry, dict) else None
                if not isinstance(cap, str) or not cap.strip():
                    raise ValueError(f"captions: no caption for session {sid!r}, file {name!r}")
            out.append(MagicBrushTurn(r["instruction"], bytes(blob("target")), cap))
        src = rows[0]["source"]
        image_cell(src, f"{where(rows[0])} source")                    # a bad source is refused now, not mid-run
        sessions.append(MagicBrushSession(sid, bytes(src["bytes"] if isinstance(src, dict) else src), out))
    if not sessions:
        raise ValueError(f"magicbrush: {root} holds no sessions")
    return sessions


def _read_jsonl(root: Path) -> list[MagicBrushSession]:
    index = root / SESSIONS_FILE
    sessions, seen = [], set()
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{index}:{n}"
        row = json_row(line, where)
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
            _check_turn(t, k, where, ("instruction", "target", "caption"))
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


def _setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise ValueError(f"setting: {setting!r} is not one of {', '.join(SETTINGS)}")
    return setting


def generated_path(folder, session_id: str, turn: int, setting: str = "multi_turn") -> Path:
    """Where the edited image of ``turn`` (1-based) of a session lives in ``setting``, under MagicBrush's
    names: ``folder/<id>/<id>_1.png`` for turn 1, then ``<id>_iter_<t>.png`` (multi_turn) or
    ``<id>_inde_<t>.png`` (independent); ours ``<id>_hist_<t>.png`` (history) and ``<id>_dummy_<t>.png``
    (dummy, every turn: its turn 1 has the dummy turn before it). Turn 1 sees no earlier turn in the
    first three settings, so they share its file, as MagicBrush's two do. The id goes through
    ``paths.safe_name``."""
    sid = safe_name(session_id, "session id")
    setting = _setting(setting)
    name = f"{sid}_1.png" if turn == 1 and setting != "dummy" else f"{sid}_{_SUFFIX[setting]}_{turn}.png"
    return Path(folder) / sid / name


# ----------------------------------------------------------------------------- images

def to_rgb(image, what: str = "image"):
    """A PIL RGB image from a path, encoded bytes, a PIL image (any mode: converted, alpha dropped as MagicBrush's
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
    if isinstance(image, (bytes, bytearray)):                # an image as a parquet split stores it
        from ..data.media import MediaError, load_image
        try:
            return Image.fromarray(load_image(image, name=what))
        except MediaError as e:
            raise ValueError(str(e)) from None
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
            dino = self.dino_cls(gen + tgt)                                       # [2n, D']
            cos = lambda x, y: cosine_similarity(x, y, reduction="none").tolist()
            clip_i, dino_s = cos(clip[:n], clip[n:]), cos(dino[:n], dino[n:])
            clip_t, oracle = [None] * n, [None] * n                               # no caption: no CLIP-T
            has = [i for i, c in enumerate(cap) if c is not None]
            if has:
                text = self.clip_text([cap[i] for i in has])                      # [m, D]
                for j, (ct, o) in enumerate(zip(cos(clip[has], text), cos(clip[[n + i for i in has]], text))):
                    clip_t[has[j]], oracle[has[j]] = ct, o
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
    """Means over ``rows``; a metric some rows lack (CLIP-T without captions) over the rows that have it."""
    def mean(m):
        v = [r[m] for r in rows if r.get(m) is not None]
        return round(float(np.mean(v)), 6) if v else None
    return {"n": len(rows), **{m: mean(m) for m in METRICS}}


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
    return dict(benchmark="magicbrush", setting=setting, setting_means=SETTINGS.get(setting, setting),
                sessions=len(per_session), models=dict(clip=cfg.clip_path, dino=cfg.dino_path), config=asdict(cfg),
                **aggregate(per_session), per_session=per_session)


def _generated_for(generated, s: MagicBrushSession, setting: str) -> list:
    """The edited images of one session, one per turn, from a folder or a {id: [images]} mapping."""
    if isinstance(generated, (str, os.PathLike)):
        paths = [generated_path(generated, s.id, t + 1, setting) for t in range(len(s.turns))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"generated: session {s.id!r} lacks {', '.join(missing)} in "
                                    f"{paths[0].parent} (setting {setting})")
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


def _sessions(dataset) -> list[MagicBrushSession]:
    return read_magicbrush(dataset) if isinstance(dataset, (str, os.PathLike)) else list(dataset)


def _thumb(image, what: str, side: int = 160) -> str:
    """A JPEG thumbnail (longer side ``side``) as a data URL: a report of 50 sessions stays a few MB."""
    import base64
    import io

    from PIL import Image

    im = to_rgb(image, what)
    im.thumbnail((side, side), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(path, results: dict, sessions: list[MagicBrushSession], generated, max_sessions: int = 50) -> Path:
    """A self-contained HTML page: the per-turn table of ``results``, then for each session its source and,
    per turn, the instruction, the ground truth above the edited image and that turn's scores.
    ``generated``: as ``score_magicbrush`` takes it, in ``results["setting"]``."""
    import html

    setting = results["setting"]
    cols = ("l1", "l2", "clip_i", "clip_t", "dino")
    head = "".join(f"<th>{c}</th>" for c in ("turn", "n", *cols))
    fmt = lambda r: "".join(f"<td>{'' if r[c] is None else f'{r[c]:.4f}'}</td>" for c in cols)   # noqa: E731
    rows = "".join(f"<tr><td>{r['turn']}</td><td>{r['n']}</td>{fmt(r)}</tr>"
                   for r in results["per_turn"] + [dict(results["final_turn"], turn="final")])
    shown = sessions[:max_sessions]
    if not isinstance(generated, (str, os.PathLike)):
        generated = {s.id: generated[s.id] for s in shown}
    images = {}
    for i, t, g in generated_images(generated, shown, setting):
        images.setdefault(i, []).append(g)
    scores = {d["id"]: d["turns"] for d in results["per_session"]}
    blocks = []
    for i, s in enumerate(shown):
        cells = [f"<td><img src='{_thumb(s.source, f'session {s.id!r} source')}'><br>source</td>"]
        for t, (turn, gen) in enumerate(zip(s.turns, images[i]), 1):
            m = scores.get(s.id, [{}] * t)[t - 1]
            sc = " ".join(f"{c} {m[c]:.3f}" for c in ("l1", "clip_i", "dino", "clip_t") if m.get(c) is not None)
            cells.append(f"<td><b>{t}.</b> {html.escape(turn.instruction)}<br>"
                         f"<small>ground truth</small><br><img src='{_thumb(turn.target, f'session {s.id!r} target {t}')}'>"
                         f"<br><small>edit</small><br><img src='{_thumb(gen, f'session {s.id!r} edit {t}')}'><br>{sc}</td>")
        blocks.append(f"<h3>session {html.escape(s.id)}</h3><table><tr>{''.join(cells)}</tr></table>")
    more = f"<p>{len(sessions) - max_sessions} more sessions in the JSON.</p>" if len(sessions) > max_sessions else ""
    page = (f"<html><head><meta charset='utf-8'><title>MagicBrush {html.escape(setting)}</title><style>"
            f"td,th{{vertical-align:top;max-width:180px;font:12px sans-serif;padding:4px}}</style></head><body>"
            f"<h2>MagicBrush, {html.escape(setting)}: {results['sessions']} sessions</h2>"
            f"<p>{html.escape(results.get('setting_means', ''))}. Each turn: the ground truth above the edit.</p>"
            f"<table border=1 cellspacing=0><tr>{head}</tr>{rows}</table>{''.join(blocks)}{more}</body></html>")
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def generated_images(generated, sessions: list[MagicBrushSession], setting: str = "multi_turn") -> list[tuple]:
    """``[(session index, turn index, image)]`` of every turn, from a folder (``setting``'s file names) or
    a ``{session id: [images]}`` mapping; a missing, short or extra session is refused in one line."""
    setting = _setting(setting)
    if not isinstance(generated, (str, os.PathLike)):
        extra = set(generated) - {s.id for s in sessions}
        if extra:
            raise KeyError(f"generated: sessions not in the dataset: {sorted(extra)[:5]}")
    return [(i, t, g) for i, s in enumerate(sessions) for t, g in enumerate(_generated_for(generated, s, setting))]


def score_magicbrush(generated, dataset, cfg: MagicBrushConfig | None = None,
                     metrics: MagicBrushMetrics | None = None, setting: str = "multi_turn") -> dict:
    """Score images someone else generated against ``dataset`` (a folder or ``read_magicbrush``'s list).

    ``generated``: a folder with ``setting``'s file names (``generated_path``: MagicBrush's own for
    multi_turn and independent), or ``{session id: [image of turn 1, ...]}``; each session needs
    exactly one image per turn, and every session of ``dataset`` must be there."""
    sessions = _sessions(dataset)
    flat = generated_images(generated, sessions, setting)       # checked before the models load
    metrics = _metrics(cfg, metrics)
    cfg = metrics.cfg
    scores = metrics.score([g for _, _, g in flat], [sessions[i].turns[t].target for i, t, _ in flat],
                           [sessions[i].turns[t].caption for i, t, _ in flat])
    per_session = [dict(id=s.id, turns=[]) for s in sessions]
    for (i, _, _), r in zip(flat, scores):
        per_session[i]["turns"].append({m: None if v is None else round(v, 6) for m, v in r.items()})
    return _results(per_session, cfg, setting)


def _context(s: MagicBrushSession, t: int, setting: str) -> tuple[list, list[str]]:
    """What turn ``t`` (0-based) sees before its instruction in the settings of given context (all but
    multi_turn, whose context is the model's own chain: ``edit_runs.source_chain``): images I0..I_n, texts
    T0..T_{n-1}."""
    instr = [x.instruction for x in s.turns[:t]]
    if setting == "independent":
        return [s.gt_input(t)], []
    gt = [s.gt_input(k) for k in range(t + 1)]            # the source, then the targets before turn t
    if setting == "history":
        return gt, instr
    return [s.source] + gt, [DUMMY_INSTRUCTION] + instr   # dummy: I0, "generate the same image", I0, ...


def run_magicbrush(editor, dataset, cfg: MagicBrushConfig | None = None, out_dir=None,
                   metrics: MagicBrushMetrics | None = None, progress: bool = True, setting: str = "multi_turn",
                   run_info: dict | None = None, batch: int = 1, shard: tuple[int, int] | None = None,
                   coe: str = "none", recipe=None) -> dict:
    """Edit every session with ``editor`` (``infer.editor.Editor`` or ``OfficialEditor``) in ``setting``
    (``SETTINGS``; the default is the paper's Table 1), then score with ``score_magicbrush``.

    ``out_dir``: the edits go to ``generated_path(out_dir, id, t, setting)`` and the results to
    ``out_dir/results_<setting>.json``. A rerun into the same folder resumes: an edit whose file exists
    is read back, not made again (in multi_turn, every turn after a remade one is remade), and each
    edit's noise depends only on its session and turn (``edit_runs.edit_seed``), so the images equal an
    uninterrupted run's. ``run_info`` (e.g. the run folder) joins the editor's sampler and ``edit_size``
    in ``out_dir/editor.json``; resuming with different ones is refused. ``batch``: edits made together,
    one model pass each (``edit_runs.run_chains``): the images do not depend on it beyond float reordering.
    ``shard`` (i, N): only sessions i, i + N, ... are edited, into ``out_dir``, and nothing is scored (no
    CLIP/DINO needed: pass ``cfg``); a run without a shard then reads every edit back and scores
    (``slurm/benchmark.sh``). Returns ``{"edits": {made, resumed}, "sessions": n}`` then.

    ``coe`` (Table 3's inference rows; ``applications.COE``): ``cs``, ``ns`` or ``cs_ns`` edit each
    multi_turn chain by chain-of-editing (``applications.ChainSession`` with the run's ``recipe``): each turn
    first predicts its RoE map(s), written beside its image (``edit_runs.map_path``), then the frame with them in
    context; ``batch`` sessions' calls packed per model pass (``applications.chain_turns``). A resumed chain
    reads its maps back with its images. The folder records ``coe``: another inference cannot resume there."""
    from PIL import Image

    from . import edit_runs

    setting = _setting(setting)
    if coe != "none" and setting != "multi_turn":
        raise ValueError(f"coe: chain-of-editing runs the multi_turn setting (the model's own chain), not {setting}")
    maps, run_info = edit_runs.coe_setup(coe, run_info)
    sessions = _sessions(dataset)
    if shard is not None:
        if out_dir is None:
            raise ValueError("shard: needs an out_dir, where a run without a shard finds the edits to score")
        sessions = edit_runs.shard_of(sessions, shard)
        cfg = cfg or (metrics.cfg if metrics is not None else MagicBrushConfig())
    else:
        metrics = _metrics(cfg, metrics)
        cfg = metrics.cfg
    if out_dir is not None:
        out_dir = Path(out_dir)
        edit_runs.claim(out_dir, editor, edit_size=cfg.edit_size, **(run_info or {}))

    def prep(image, what="image"):
        im = to_rgb(image, what)
        if cfg.edit_size:
            im = im.resize((cfg.edit_size, cfg.edit_size), Image.BICUBIC)
        return np.array(im)                       # a writable copy: the editor wraps it in a tensor

    def given_context(s, t):
        images, texts = _context(s, t, setting)
        first = prep(images[0], f"session {s.id!r} input")
        sess = editor.start(first)
        for k, (im, txt) in enumerate(zip(images[1:], texts)):
            sess.add_turn(txt, prep(im, f"session {s.id!r} context image {k + 1}"))
        return sess

    chains, owner = [], []                         # owner[k]: (session number, first turn index) of chain k
    for n, s in enumerate(sessions):
        paths = [generated_path(out_dir, s.id, t + 1, setting) for t in range(len(s.turns))] \
            if out_dir is not None else None
        if maps:                                  # chain-of-editing (multi_turn only)
            chains.append(edit_runs.coe_chain(editor, s.id, s.source, [t.instruction for t in s.turns], paths,
                                              lambda im, s=s: prep(im, f"session {s.id!r} source"), maps, recipe))
            owner.append((n, 0))
            continue
        if setting == "multi_turn":               # one session (and KV cache) for the whole chain
            chains.append(edit_runs.source_chain(editor, s.id, s.source, [t.instruction for t in s.turns], paths,
                                                 lambda im, s=s: prep(im, f"session {s.id!r} source")))
            owner.append((n, 0))
            continue
        for t, turn in enumerate(s.turns):        # each turn one edit with its given context
            chains.append(edit_runs.Chain(s.id, [turn.instruction], None if paths is None else [paths[t]],
                                          lambda _, s=s, t=t: given_context(s, t), first_turn=t + 1))
            owner.append((n, t))

    outs, made = edit_runs.run_chains(editor, chains, batch, progress=f"magicbrush {setting}" if progress else None)
    total = sum(len(c.instructions) for c in chains)
    if shard is not None:
        return {"edits": dict(made=made, resumed=total - made), "sessions": len(sessions)}
    generated = {}
    if out_dir is None:
        for (n, t), o in zip(owner, outs):
            generated.setdefault(sessions[n].id, [None] * len(sessions[n].turns))[t:t + len(o)] = o
    results = score_magicbrush(generated if out_dir is None else out_dir, sessions, metrics=metrics, setting=setting)
    results["edits"] = dict(made=made, resumed=total - made)
    results["coe"] = coe
    if out_dir is not None:
        (out_dir / f"results_{setting}.json").write_text(json.dumps(results, indent=1, default=str))
        write_report(out_dir / f"report_{setting}.html", results, sessions, out_dir)
    return results
