"""Edits that survive a stop: written as they are made, read back on a rerun, with noise that depends
only on (session, turn), so a resumed run gives the images of one never stopped.

Used by ``eval/magicbrush.py``, ``eval/mse_bench.py`` (docs/magicbrush.md, "Resuming") and
``vincie-edit batch`` (``read_jobs``: a JSONL file of edits to make; docs/applications.md, "Many images").

* ``edit_seed``: the sampler seed of one edit, from the editor's seed, the session key and the turn.
* ``claim``: ``out_dir/editor.json`` records what made the edits in a folder (editor class, mask, sampler,
  plus what the caller adds: the run folder, the input size); a rerun with different ones is refused
  in one line, since its images would mix with the old ones.
* ``Deferred``: an editor loaded when an edit first needs it, so a run whose edits all exist (the scoring
  job after ``slurm/benchmark.sh``'s shards) reads them back without loading the model.
* ``Chain`` / ``source_chain``: one session's turns, each editing the previous output with every earlier
  turn as context, resumed from the files that exist (a turn made anew makes every later file stale).
* ``run_chains``: many such chains, ``batch`` sessions' next turns packed into one model pass (a GPU
  runs a small session far below its rate); each edit keeps its own seed, so the images are those of
  one-by-one editing, up to float reordering.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def shard_of(items: list, shard: tuple[int, int] | None) -> list:
    """Shard (i, N) of a benchmark's sessions: items i, i + N, ... (all of them without a shard). The
    shards of one run share its folder: each writes its own sessions' edits, and a run without a shard
    reads them all back and scores (``slurm/benchmark.sh``)."""
    if shard is None:
        return list(items)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard: needs 0 <= i < N, got {i}/{n}")
    return list(items)[i::n]


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


class EditorLoadError(RuntimeError):
    """A ``Deferred`` editor could not load, or its folder refused it (``claim``)."""


class Deferred:
    """An editor made by ``load()`` when first used (an attribute read), once; ``on_load`` callbacks then
    see it. Where every edit of a run exists already, nothing reads an attribute and the model never
    loads. ``load`` should raise its cheap errors (no config, no checkpoint) before it is deferred."""

    def __init__(self, load: Callable[[], object]):
        self._load, self._editor, self._hooks = load, None, []

    @property
    def loaded(self) -> bool:
        return self._editor is not None

    def on_load(self, fn: Callable[[object], None]) -> None:
        self._hooks.append(fn)

    def get(self):
        if self._editor is None:
            try:
                editor = self._load()
                for fn in self._hooks:         # e.g. the folder's full claim, before any edit is made
                    fn(editor)
            except Exception as e:             # the run's error, not a session's: run_chains' on_error must not skip it
                raise EditorLoadError(" ".join(str(e).split()) or type(e).__name__) from e
            self._editor = editor
        return self._editor

    def __getattr__(self, name):               # only what the object itself lacks: the editor's public attributes
        if name.startswith("_"):               # (its own before __init__ ran, as in a copy: no recursion)
            raise AttributeError(name)
        return getattr(self.get(), name)


def loaded(editor):
    """The editor itself (a ``Deferred`` one loaded now)."""
    return editor.get() if isinstance(editor, Deferred) else editor


def fingerprint(editor, **extra) -> dict:
    """What decides an editor's images, as JSON: its class, mask, sampler settings and ``extra``."""
    editor = loaded(editor)
    sampler = getattr(editor, "sampler", None)
    d = dict(editor=type(editor).__name__, mask_type=getattr(editor, "mask_type", None),
             sampler=asdict(sampler) if is_dataclass(sampler) else None, **extra)
    return json.loads(json.dumps(d, default=str))


def claim(out_dir, editor, **extra) -> None:
    """Record ``fingerprint(editor, **extra)`` in ``out_dir/editor.json``, or check a folder's record: a
    difference is refused in one line naming the first key that differs.

    A ``Deferred`` editor not loaded yet, on a folder with a record: ``extra`` (the run, its overrides
    and checkpoint step or an export's digest, the input size) is checked now, the rest when the editor
    loads, before its first edit. The editor's own fields follow from the run, so a run whose edits all
    exist is checked whole without loading the model."""
    out_dir = Path(out_dir)
    if isinstance(editor, Deferred) and not editor.loaded and (out_dir / "editor.json").is_file():
        _check(out_dir, json.loads(json.dumps(extra, default=str)), keys=set(extra))
        editor.on_load(lambda ed: _check(out_dir, fingerprint(ed, **extra)))
        return
    _check(out_dir, fingerprint(editor, **extra))


def _check(out_dir: Path, fp: dict, keys: set | None = None) -> None:
    """``fp`` against ``out_dir/editor.json`` (only ``keys`` of it, if given), or recorded there."""
    f = out_dir / "editor.json"
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not JSON ({e.msg})") from None
        diff = sorted(k for k in (keys if keys is not None else set(old) | set(fp)) if old.get(k) != fp.get(k))
        if diff:
            k = diff[0]
            raise ValueError(f"out_dir: {out_dir} holds edits made with {k}={old.get(k)!r}, this run has "
                             f"{k}={fp.get(k)!r}; give another out_dir")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(f".{os.getpid()}.tmp")         # shards of one run may claim the folder at once
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


@dataclass
class Chain:
    """One session's edits in order, each on the previous output with every earlier turn in context.

    ``paths[t]``: where edit t's image goes (None: kept in memory only); ``start(outs)``: the session to
    go on from after the outputs ``outs`` (read back or made in an earlier run); ``first_turn``: the turn
    number of ``instructions[0]`` (seeds, messages)."""
    key: str
    instructions: list[str]
    paths: list | None
    start: Callable[[list[np.ndarray]], object]
    first_turn: int = 1


def source_chain(editor, key: str, source: np.ndarray, instructions: list[str], paths: list | None,
                 prepare=lambda a: a) -> Chain:
    """Turn after turn from ``prepare(source)`` (prepared when the chain starts, so a long benchmark
    holds only its running sessions' inputs), a resumed run's context its own earlier outputs."""
    def start(outs):
        image = prepare(source)            # first: an unreadable source costs no model load (Deferred)
        sess = editor.start(image)
        for k, out in enumerate(outs):     # the model's own outputs, as it made them: not prepared again
            sess.add_turn(instructions[k], out, own=True)
        return sess
    return Chain(key, list(instructions), paths, start)


def coe_setup(coe: str, run_info: dict | None) -> tuple[tuple, dict | None]:
    """A benchmark's ``coe`` (``applications.COE``) checked -> (the maps each turn predicts first, the run_info
    its folder records: ``coe``, None when off (as folders written before it was recorded read), so a folder of
    one inference refuses another even when every edit exists and the model never loads)."""
    from ..infer.applications import COE

    if coe not in COE:
        raise ValueError(f"coe: expected one of {', '.join(COE)}, got {coe!r}")
    return (COE[coe] if coe != "none" else ()), {**(run_info or {}), "coe": None if coe == "none" else coe}


def map_path(image_path, kind: str) -> Path:
    """Where a chain-of-editing turn's predicted RoE map lies beside its image: ``<image stem>_<kind>.png``."""
    p = Path(image_path)
    return p.with_name(f"{p.stem}_{kind}.png")


class _CoeSession:
    """A ``ChainSession`` as ``run_chains`` drives a session: ``edit`` is one chain-of-editing turn, whose maps
    are written beside the turn's image before it returns (``run_chains`` writes the image after), so an image
    on disk always has its maps for a resumed run."""

    def __init__(self, chain, paths):
        self.chain, self.paths = chain, paths

    def edit(self, prompt: str) -> np.ndarray:
        return _CoeSession.edit_many([self], [prompt])[0]

    @staticmethod
    def edit_many(sessions: list["_CoeSession"], prompts: list[str], seeds: list | None = None) -> list[np.ndarray]:
        """One turn of each session, packed per call (``applications.chain_turns``), maps saved first."""
        from ..infer.applications import chain_turns, map_image

        turns = [len(s.chain.texts) for s in sessions]
        outs = chain_turns([s.chain for s in sessions], prompts, seeds)
        for s, t in zip(sessions, turns):
            if s.paths is not None and s.paths[t] is not None:
                for kind, m in s.chain.masks[-1].items():
                    save_png(map_path(s.paths[t], kind), map_image(m))
        return outs


def coe_chain(editor, key: str, source, instructions: list[str], paths: list | None, prepare, maps: tuple,
              recipe) -> Chain:
    """``source_chain`` by chain-of-editing (``applications.ChainSession``: each turn's RoE ``maps`` first,
    with ``recipe``'s mask prompts); resumed from its images and the maps beside them (``map_path``).
    ``run_chains`` with a batch packs several such sessions' calls into one model pass."""
    from ..infer.applications import ChainSession, mask_from_image

    def start(outs):
        image = prepare(source)            # first: an unreadable source costs no model load (Deferred)
        chain = ChainSession(loaded(editor), image, recipe, maps)
        for k, out in enumerate(outs):
            masks = {kind: mask_from_image(load_png(map_path(paths[k], kind), f"session {key!r} turn {k + 1} "
                                                    f"{kind} map (resumed)")) for kind in chain.maps}
            chain.add_turn(instructions[k], out, masks)
        return _CoeSession(chain, paths)
    return Chain(key, list(instructions), paths, start)


def run_chains(editor, chains: list[Chain], batch: int = 1, progress: str | None = None,
               on_error: Callable[[Chain, Exception], None] | None = None) -> tuple[list[list], int]:
    """Every chain's edits -> (outputs per chain, edits made now). Each chain resumes after its leading
    files that exist (an existing file is read back instead of edited, until a turn is made anew: later
    files came from another image, so they are edited again); then up to ``batch`` chains advance together, one turn each per model
    pass (``infer.editor.edit_batch``), a finished chain's place taken by the next. Every edit's noise
    comes from its own (key, turn) seed, so neither ``batch`` nor the order changes an image beyond float
    reordering. ``progress``: a tqdm bar over the edits to make, with this description.

    ``on_error(chain, error)``: a chain whose inputs cannot be read (its ``start`` raises ValueError or
    OSError: a corrupt or missing image) is reported there and left at the outputs it has, the others
    go on; without it the error propagates."""
    from tqdm import tqdm

    if batch < 1:
        raise ValueError(f"batch: must be >= 1, got {batch}")
    outs: list[list] = [[] for _ in chains]
    for i, c in enumerate(chains):                 # resume: the leading edits already written
        for t, p in enumerate(c.paths or []):
            if t >= len(c.instructions) or p is None or not Path(p).is_file():
                break
            outs[i].append(load_png(p, f"session {c.key!r} turn {c.first_turn + t} (resumed)"))
    todo = [i for i, c in enumerate(chains) if len(outs[i]) < len(c.instructions)]
    if batch > 1:          # longest first: the last passes are the ones left short of a full batch
        todo.sort(key=lambda i: len(outs[i]) - len(chains[i].instructions))
    bar = tqdm(total=sum(len(chains[i].instructions) - len(outs[i]) for i in todo), desc=progress, unit="edit",
               disable=progress is None)
    pool, sessions, made = [], {}, 0
    with bar:
        while todo or pool:
            while todo and len(pool) < batch:
                i = todo.pop(0)
                try:
                    sessions[i] = chains[i].start(outs[i])
                except (ValueError, OSError) as e:
                    if on_error is None:
                        raise
                    on_error(chains[i], e)
                    bar.update(len(chains[i].instructions) - len(outs[i]))
                    continue
                pool.append(i)
            if not pool:
                break
            turns = [len(outs[i]) for i in pool]
            prompts = [chains[i].instructions[t] for i, t in zip(pool, turns)]
            if batch == 1:                         # the session's own path (KV cache and all)
                c = chains[pool[0]]
                seed_edit(editor, c.key, c.first_turn + turns[0])
                images = [sessions[pool[0]].edit(prompts[0])]
            else:
                from ..infer.editor import edit_batch

                seeds = None                       # read here: a Deferred editor loads only for an edit
                if isinstance(getattr(editor, "gen", None), torch.Generator):
                    base = getattr(getattr(editor, "sampler", None), "seed", 0)
                    seeds = [edit_seed(base, chains[i].key, chains[i].first_turn + t) for i, t in zip(pool, turns)]
                group = [sessions[i] for i in pool]
                many = _CoeSession.edit_many if isinstance(group[0], _CoeSession) else edit_batch
                images = many(group, prompts, seeds)
            for i, t, im in zip(pool, turns, images):
                outs[i].append(np.asarray(im))
                p = chains[i].paths[t] if chains[i].paths is not None else None
                if p is not None:
                    save_png(p, outs[i][-1])
            made += len(pool)
            bar.update(len(pool))
            for i in [i for i in pool if len(outs[i]) == len(chains[i].instructions)]:
                pool.remove(i)
                del sessions[i]                    # its history and caches go with it
    return outs, made


def read_jobs(path) -> list[dict]:
    """A JSONL file of edits to make, one session a row: ``{"id": str, "image": file, "prompts": [str, ...]}``
    (``image`` relative to the file's folder, and inside it) -> ``[{"id", "image": Path, "prompts"}]``.
    A row that is not JSON, lacks a field, repeats an id or gives an empty prompt: one line naming it. The
    images are read when their session starts (``vincie-edit batch`` skips one that cannot be read)."""
    from ..data.rows import json_row
    from ..paths import inside, safe_name

    path = Path(path)
    jobs, seen = [], set()
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            row = json_row(line, where)
            missing = [k for k in ("id", "image", "prompts") if k not in row]
            if missing:
                raise ValueError(f"{where}: no {missing[0]!r} field")
            key = str(row["id"])
            safe_name(key, f"{where}: id")
            if key in seen:
                raise ValueError(f"{where}: id {key!r} repeats an earlier row's")
            prompts = row["prompts"]
            if not isinstance(prompts, list) or not prompts or \
                    not all(isinstance(p, str) and p.strip() for p in prompts):
                raise ValueError(f"{where}: prompts: expected a non-empty list of non-empty strings")
            if not isinstance(row["image"], str):
                raise ValueError(f"{where}: image: expected a file name, got {type(row['image']).__name__}")
            seen.add(key)
            jobs.append({"id": key, "image": inside(path.parent, row["image"], f"{where}: image"),
                         "prompts": prompts})
    if not jobs:
        raise ValueError(f"{path}: no jobs")
    return jobs
