"""Names that become file names, and relative paths that must stay under a root (issue 16).

``safe_name(s)`` turns any id (a video id, a run or sweep name) into one file-name component;
``inside(root, rel)`` joins a relative path read from a file or an id under ``root`` and refuses
one that would leave it. Every place that builds a path from such a value goes through these two.
``link_tree`` puts a store's files into another without copying them (the unions of stores).
``model_folder`` checks a config key naming a local Hugging Face model folder.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

MAX_NAME = 128           # leaves room for a suffix (".png", ".zarr") under the 255-byte limit
_KEEP = re.compile(r"[A-Za-z0-9._-]")
# Windows refuses these as file stems in any case; a store copied there must still open
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def _escape(ch: str) -> str:
    return "".join(f"~{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))


def safe_name(s: str, what: str = "name") -> str:
    """``s`` as one file-name component: ``[A-Za-z0-9._-]`` kept, every other character as ``~xx``
    (its UTF-8 bytes in hex), a leading ``.`` and a Windows device stem escaped too.

    Distinct inputs give distinct names: ``~`` itself is escaped, so the mapping is one-to-one.
    A result over ``MAX_NAME`` characters is cut and ends in ``~~`` + 16 hex digits of the input's
    SHA-256 (``~~`` never occurs in an uncut name). Refuses a non-string or empty ``s`` in one line.
    """
    if not isinstance(s, str):
        raise TypeError(f"{what}: expected a string, got {type(s).__name__}")
    if not s:
        raise ValueError(f"{what}: empty name")
    out = "".join(ch if _KEEP.fullmatch(ch) else _escape(ch) for ch in s)
    if out.startswith("."):                         # '.', '..', hidden files
        out = "~2e" + out[1:]
    if out.split(".", 1)[0].lower() in _RESERVED:
        out = _escape(out[0]) + out[1:]
    if len(out) > MAX_NAME:
        digest = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        out = out[:MAX_NAME - 18] + "~~" + digest
    return out


def relative(rel, what: str = "path", root="its root") -> PurePosixPath:
    """``rel`` as a relative POSIX path, without touching the disk; refuses in one line an empty
    path, a NUL, an absolute path (POSIX, Windows drive or UNC) or a ``..`` part."""
    rel_s = os.fspath(rel)
    if not rel_s or "\x00" in rel_s:
        raise ValueError(f"{what}: {rel_s!r} is empty or holds a NUL")
    parts = PurePosixPath(rel_s.replace("\\", "/"))
    if parts.is_absolute() or re.match(r"^[A-Za-z]:", rel_s):
        raise ValueError(f"{what}: {rel_s!r} is an absolute path, expected one relative to {root}")
    if ".." in parts.parts:
        raise ValueError(f"{what}: {rel_s!r} climbs out with '..'")
    return parts


def inside(root, rel, what: str = "path") -> Path:
    """``root / rel`` after checking it stays under ``root``: ``relative(rel)``, then a symlink
    (anywhere along the way) that leads out of root is refused in one line.

    The check resolves the path now: a symlink swapped in afterwards is not caught.
    """
    parts = relative(rel, what, root)
    base = Path(root)
    real_root = base.resolve()
    target = (base / parts).resolve()
    if target != real_root and real_root not in target.parents:
        raise ValueError(f"{what}: {os.fspath(rel)!r} leads out of {root} (to {target}, through a symlink)")
    return base / parts


def link_tree(src, dst) -> tuple[int, int]:
    """Every file under ``src`` at the same place under ``dst``, hard-linked (copied only where a link
    cannot be made: another filesystem) -> (files linked, files copied). Folders are made as needed."""
    import shutil

    src, dst = Path(src), Path(dst)
    linked = copied = 0
    for f in sorted(src.rglob("*")):
        d = dst / f.relative_to(src)
        if f.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, d)
            linked += 1
        except OSError:
            shutil.copy2(f, d)
            copied += 1
    return linked, copied


def model_folder(path: str, key: str, model_type: str | None = None) -> None:
    """``path`` (config key ``key``) must be a local model folder with config.json, of ``model_type`` if
    given: transformers loads another model's folder into a class with that class's default config and
    random weights, and says so only in a warning. One line naming the key otherwise."""
    import json

    if not path or not (Path(path) / "config.json").is_file():
        raise ValueError(f"{key}: no model folder (config.json) at {path!r}")
    if model_type is not None:
        try:
            got = json.loads((Path(path) / "config.json").read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError):
            got = None
        if got != model_type:
            raise ValueError(f"{key}: {path} holds a {got!r} model, not {model_type!r}")
