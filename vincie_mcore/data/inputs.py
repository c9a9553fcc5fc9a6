"""Which real videos to read: a folder (walked recursively) or a manifest (JSONL or CSV).

A manifest row has ``path`` (relative to the input root unless ``allow_absolute``), and
optionally ``caption`` (passed to the annotator) and ``id``. A row that cannot be used (no
path, a path or id that climbs out of the root with ``..`` or is absolute, a symlink leading
out of the root, a missing file, a duplicate id) is skipped and its reason kept; nothing
is opened for it. Every check goes through ``vincie_mcore.paths``.

Ids: a manifest's ``id``, else the path relative to the root, each part through
``safe_name`` (so ``my clips/a b.mp4`` is ``my~20clips/a~20b.mp4``; the suffix stays, so
``a.mp4`` and ``a.webm`` stay two videos). An id is a relative
path: the store keys sessions by it and anything that later names a file after it must still
pass it through ``safe_name``.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..paths import inside, relative, safe_name
from .video import VIDEO_EXTS


@dataclass
class InputsConfig:
    """Where videos come from (``build.inputs``)."""
    extensions: tuple = VIDEO_EXTS     # folder walk: file suffixes taken as videos (case-insensitive)
    allow_absolute: bool = False       # manifest: accept absolute paths (a manifest you wrote yourself)
    allow_symlinks_out: bool = False   # accept a symlink that leads out of the input root

    def __post_init__(self):
        self.extensions = tuple(self.extensions)
        if not self.extensions or not all(isinstance(e, str) and e.startswith(".") for e in self.extensions):
            raise ValueError(f"build.inputs.extensions: must be suffixes like '.mp4', got {self.extensions!r}")


@dataclass(frozen=True)
class VideoInput:
    video_id: str
    path: Path
    caption: str | None = None


@dataclass
class InputList:
    videos: list = field(default_factory=list)     # VideoInput
    skipped: list = field(default_factory=list)    # (label, reason): the row or file, and why it was left out


def default_id(rel) -> str:
    """The sanitized relative path: each part through ``safe_name``."""
    return "/".join(safe_name(part, "video id") for part in PurePosixPath(rel).parts)


def _resolve(root: Path, raw: str, cfg: InputsConfig) -> Path:
    """The file a manifest path names; ValueError (one line) when it may not be used."""
    if os.path.isabs(raw) or raw[1:3] == ":\\" or raw[1:3] == ":/":
        if not cfg.allow_absolute:
            relative(raw, "path", root)                         # raises: absolute where relative expected
        p = Path(raw)
    elif cfg.allow_symlinks_out:
        p = root / relative(raw, "path", root)                  # still no '..'
    else:
        p = inside(root, raw, "path")                           # no '..', no symlink out of root
    if not p.is_file():
        raise ValueError(f"path: {raw!r} is not a file")
    return p


def _finish(rows, root: Path, cfg: InputsConfig, out: InputList) -> InputList:
    seen = set()
    for label, raw, vid, caption in rows:
        try:
            if not isinstance(raw, str) or not raw:
                raise ValueError("no 'path'")
            p = _resolve(root, raw, cfg)
            if vid is None:
                rel = raw if p == root / raw else raw.replace("\\", "/").lstrip("/").replace(":", "")  # absolute: its parts
                vid = default_id(rel)
            elif not isinstance(vid, str):
                raise ValueError(f"id: expected a string, got {type(vid).__name__}")
            else:
                relative(vid, "id", root)                       # an id escaping with '..' or absolute is refused
            if vid in seen:
                raise ValueError(f"id: {vid!r} is used by an earlier row")
            if caption is not None and not isinstance(caption, str):
                raise ValueError(f"caption: expected a string, got {type(caption).__name__}")
        except (ValueError, TypeError) as e:
            out.skipped.append((label, " ".join(str(e).split())))
            continue
        seen.add(vid)
        out.videos.append(VideoInput(vid, p, caption or None))
    return out


def from_directory(root, cfg: InputsConfig | None = None) -> InputList:
    """Every video file under ``root`` (recursive, sorted), by suffix."""
    cfg = cfg or InputsConfig()
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no video folder {root}")
    exts = {e.lower() for e in cfg.extensions}
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and ".tmp." not in p.name)
    rows = [(p.relative_to(root).as_posix(), p.relative_to(root).as_posix(), None, None) for p in files]
    return _finish(rows, root, cfg, InputList())


def from_manifest(manifest, root=None, cfg: InputsConfig | None = None) -> InputList:
    """Rows of a ``.jsonl`` or ``.csv`` manifest; relative paths resolve against ``root``
    (default: the manifest's folder). Labels of skipped rows are ``<manifest name>:<line>``."""
    cfg = cfg or InputsConfig()
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest {manifest}")
    root = Path(root) if root is not None else manifest.parent
    if not root.is_dir():
        raise FileNotFoundError(f"no input root {root}")
    out, rows, name = InputList(), [], manifest.name
    suffix = manifest.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                out.skipped.append((f"{name}:{n}", f"not a JSON object ({' '.join(str(e).split())[:80]})"))
                continue
            rows.append((f"{name}:{n}", d.get("path"), d.get("id"), d.get("caption")))
    elif suffix == ".csv":
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"{name}: a CSV manifest needs a header with a 'path' column, got {reader.fieldnames}")
            for d in reader:
                n = reader.line_num
                rows.append((f"{name}:{n}", d.get("path") or None, d.get("id") or None, d.get("caption") or None))
    else:
        raise ValueError(f"{name}: a manifest is .jsonl or .csv, got {suffix or 'no suffix'!r}")
    return _finish(rows, root, cfg, out)
