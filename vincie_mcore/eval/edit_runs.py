"""Benchmark edits that survive a stop: written as they are made, read back on a rerun, with noise that
depends only on (session, turn), so a resumed run gives the images of one never stopped.

Used by ``eval/magicbrush.py`` and ``eval/mse_bench.py`` (docs/magicbrush.md, "Resuming").

* ``edit_seed``: the sampler seed of one edit, from the editor's seed, the session key and the turn.
* ``claim``: ``out_dir/editor.json`` records what made the edits in a folder (editor class, mask, sampler,
  plus what the caller adds: the run folder, the input size); a rerun with different ones is refused
  in one line, since its images would mix with the old ones.
* ``chain``: one session's turns, each editing the previous output with every earlier turn as context,
  resumed from the files that exist (a turn made anew makes every later file stale).
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch


def edit_seed(base: int, key: str, turn: int) -> int:
    """The sampler seed of turn ``turn`` of session ``key``: a function of these only, so a resumed run
    draws the noise an uninterrupted one would, whatever the order sessions are edited in."""
    return (int(base) * 1_000_003 + zlib.crc32(f"{key}/{turn}".encode())) % 2**63


def seed_edit(editor, key: str, turn: int) -> None:
    """Reseed the editor's sampling generator for one edit (``Editor.gen``; the official editor reseeds
    itself every turn, as the release does, and has none)."""
    gen = getattr(editor, "gen", None)
    if isinstance(gen, torch.Generator):
        gen.manual_seed(edit_seed(getattr(getattr(editor, "sampler", None), "seed", 0), key, turn))


def fingerprint(editor, **extra) -> dict:
    """What decides an editor's images, as JSON: its class, mask, sampler settings and ``extra``."""
    sampler = getattr(editor, "sampler", None)
    d = dict(editor=type(editor).__name__, mask_type=getattr(editor, "mask_type", None),
             sampler=asdict(sampler) if is_dataclass(sampler) else None, **extra)
    return json.loads(json.dumps(d, default=str))


def claim(out_dir, fp: dict) -> None:
    """Record ``fp`` in ``out_dir/editor.json``, or check a folder's record: a difference is refused in
    one line naming the first key that differs."""
    out_dir = Path(out_dir)
    f = out_dir / "editor.json"
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not JSON ({e.msg})") from None
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        if diff:
            k = diff[0]
            raise ValueError(f"out_dir: {out_dir} holds edits made with {k}={old.get(k)!r}, this run has "
                             f"{k}={fp.get(k)!r}; give another out_dir")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(fp, indent=1))
    os.replace(tmp, f)


def save_png(path, image: np.ndarray) -> None:
    """Write through a temporary name: a kill mid-write leaves no half image to resume from."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(np.asarray(image)).save(tmp)
    os.replace(tmp, path)


def load_png(path, what: str) -> np.ndarray:
    """An edit read back: the project's image loader (``data/media.py``), its one-line error naming ``what``."""
    from ..data.media import load_image

    return load_image(path, name=what)


def chain(editor, key: str, source: np.ndarray, instructions: list[str], paths: list | None,
          prepare=lambda a: a) -> tuple[list[np.ndarray], int]:
    """Turn after turn, each edit of the previous output with every earlier turn in context (one
    ``EditSession``, KV cache and all). ``paths[t]``: where turn t+1's image goes; an existing file is
    read back instead of edited, until a turn is made anew (later files then edited again, since they
    came from another image). ``prepare``: applied to the source before the editor sees it (sizes).
    -> (outputs uint8 [H, W, 3] per turn, edits made now)."""
    outs, sess, made = [], None, 0
    for t, instruction in enumerate(instructions):
        p = paths[t] if paths is not None else None
        if p is not None and made == 0 and Path(p).is_file():
            outs.append(load_png(p, f"session {key!r} turn {t + 1} (resumed)"))
            continue
        if sess is None:               # first edit of this run: the context so far, as given turns
            sess = editor.start(prepare(source))
            for k in range(t):         # the model's own outputs, as it made them: not prepared again
                sess.add_turn(instructions[k], outs[k], own=True)
        seed_edit(editor, key, t + 1)
        out = np.asarray(sess.edit(instruction))
        made += 1
        outs.append(out)
        if p is not None:
            save_png(p, out)
    return outs, made
