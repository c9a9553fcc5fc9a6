"""The session store: sessions in sharded zarr v3 groups.

One session = K frames (PNG bytes, lossless), K - 1 transition texts, K - 1
camera labels, K - 1 source and K - 1 target RoE masks (grayscale PNG bytes),
provenance (video path, frame indices, sampling strategy, annotator and
segmenter names), for synthetic videos the scene states of the K frames, and,
where the annotator kept any, its notes on each transition (a VLM's reply) and a
caption of each frame (what text-to-image samples are conditioned on).

Layout under ``root/`` (a zarr v3 group)::

    zarr.json                 root attrs: format, shard_size
    shard_00000/              one zarr group per shard of <= shard_size sessions
      blob      uint8 [B]     every image's PNG bytes, concatenated
      offsets   int64 [N+1]   image j is blob[offsets[j]:offsets[j+1]]
      first     int64 [S+1]   session s owns images first[s]:first[s+1]:
                              K frames, then K-1 source masks, then K-1 target masks
      video_id  str   [S]
      record    str   [S]     JSON: texts, cameras, states, meta (and notes, captions, when kept)
    index.jsonl               one line per *complete* shard: {"shard", "video_ids"}
    failures.jsonl            one line per failed video: {"video_id", "reason"}

A shard is written whole and only then listed in ``index.jsonl``, so a crash
leaves at most one unlisted shard, which the next writer deletes. One writer
at a time (the builder's main process).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..paths import relative

STORE_FORMAT = "vincie-sessions/1"


@dataclass
class RawSession:
    video_id: str
    frames: list              # K PNG bytes (RGB)
    roe_src: list             # K-1 PNG bytes (grayscale, 0/255)
    roe_tgt: list             # K-1 PNG bytes
    texts: list               # K-1 str
    cameras: list             # K-1 str ("None" when the camera did not move)
    meta: dict = field(default_factory=dict)   # provenance: video_path, frame_indices, sampling, annotator, segmenter, fps
    states: list | None = None                 # K scene dicts (synthetic world) or None
    notes: list | None = None                  # K-1 annotator notes (a VLM's reply: dict or None) or None
    captions: list | None = None               # K frame captions (text-to-image samples) or None

    def __post_init__(self):
        k = len(self.frames)
        if k < 2:
            raise ValueError(f"session {self.video_id!r}: needs >= 2 frames, got {k}")
        for name in ("roe_src", "roe_tgt", "texts", "cameras"):
            if len(getattr(self, name)) != k - 1:
                raise ValueError(f"session {self.video_id!r}: {name} has {len(getattr(self, name))} entries for {k} frames")
        if self.captions is not None and (len(self.captions) != k
                                          or not all(isinstance(c, str) and c.strip() for c in self.captions)):
            raise ValueError(f"session {self.video_id!r}: captions must be {k} non-empty strings, one per frame")
        if self.states is not None and len(self.states) != k:
            raise ValueError(f"session {self.video_id!r}: states has {len(self.states)} entries for {k} frames")
        if self.notes is not None and len(self.notes) != k - 1:
            raise ValueError(f"session {self.video_id!r}: notes has {len(self.notes)} entries for {k} frames")

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def images(self) -> list:
        return list(self.frames) + list(self.roe_src) + list(self.roe_tgt)


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}"


# A merged store (data/sharded.py) lists its parts' shards as parts/NNNNN/shard_NNNNN.
_SHARD_RE = re.compile(r"^(parts/\d{5}/)?shard_\d{5,}$")


def _read_index(root: Path) -> list[dict]:
    """The complete shards; a shard name that is not ``shard_NNNNN`` (a hand-edited or hostile
    index naming a path such as ``../x``) is refused in one line before anything opens it."""
    p = root / "index.jsonl"
    index = [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []
    for d in index:
        if not isinstance(d.get("shard"), str) or not _SHARD_RE.match(d["shard"]):
            raise ValueError(f"{p}: shard name {d.get('shard')!r} is not shard_NNNNN or parts/NNNNN/shard_NNNNN")
    return index


def check_video_id(video_id) -> str | None:
    """Why ``video_id`` is unusable, or None. An id is a relative path under the video folder and
    may later name files (``vincie_mcore.paths.relative``), so an absolute path, a ``..`` part, a NUL
    or an empty id is refused."""
    if not isinstance(video_id, str):
        return f"video id is a {type(video_id).__name__}, not a string"
    try:
        relative(video_id, what="video id", root="the video folder")
    except ValueError as e:
        return str(e)
    return None


def read_failures(root) -> dict:
    """video_id -> reason of the last recorded failure."""
    p = Path(root) / "failures.jsonl"
    out = {}
    if p.exists():
        for l in p.read_text().splitlines():
            if l.strip():
                d = json.loads(l)
                out[d["video_id"]] = d["reason"]
    return out


# ----------------------------------------------------------------------------- writing
class StoreMismatch(ValueError):
    """Resuming a store with build settings other than those it was made with."""


BLOB_CHUNK = 1 << 22
"""A shard's blob is stored raw (PNG bytes do not compress further) in chunks of this many bytes; a shard
smaller than one chunk is one chunk of its own size."""


class SessionWriter:
    """Append sessions to a store, ``shard_size`` per shard; reopening resumes.

    A session's images go to its shard's blob as they arrive, a whole chunk at a time, so a writer holds
    less than a chunk of image bytes plus the session being added, and the shard's small per-session
    rows (ids, texts, sizes), whatever the shard size. The shard is complete, and read, only once
    ``flush`` lists it in ``index.jsonl``; one left unlisted by a crash is deleted on reopening."""

    def __init__(self, root, shard_size: int = 256, build: dict | None = None):
        """``build``: the settings that decide what a session holds (sampling, seed, ...), kept in
        the root attrs; resuming with other settings raises ``StoreMismatch``, since one store
        would otherwise mix sessions of two recipes."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.shard_size = shard_size
        build = json.loads(json.dumps(build)) if build is not None else None     # as the attrs will hold it
        if (self.root / "zarr.json").exists():
            g = zarr.open_group(str(self.root), mode="r+")
            if g.attrs.get("format") != STORE_FORMAT:
                raise ValueError(f"{self.root} is not a session store (format {g.attrs.get('format')!r})")
            if g.attrs.get("union_of"):
                raise ValueError(f"{self.root} is a union of stores: build into one of them, then make the union again")
            if g.attrs.get("merged_parts"):
                raise ValueError(f"{self.root} is a merged store: build into its parts "
                                 f"(vincie-build-sessions run --shard i/N), then merge again")
            old = g.attrs.get("build")
            if build is not None and old is None and _read_index(self.root):
                raise StoreMismatch(f"{self.root} holds sessions built before stores recorded their settings; "
                                    f"use another folder")
            if build is not None and old is not None and old != build:
                diff = sorted(k for k in set(old) | set(build) if old.get(k) != build.get(k))
                raise StoreMismatch(f"{self.root} was built with other settings ({', '.join(diff)}: "
                                    f"{[old.get(k) for k in diff]} there, {[build.get(k) for k in diff]} now); "
                                    f"use another folder")
        else:
            g = zarr.open_group(str(self.root), mode="w")
            g.attrs.update({"format": STORE_FORMAT, "shard_size": shard_size})
            if build is not None:
                g.attrs["build"] = build
        self._root_group = g
        index = _read_index(self.root)
        listed = {d["shard"] for d in index}
        for p in self.root.glob("shard_*"):                 # unlisted = unfinished by a crashed writer
            if p.name not in listed:
                shutil.rmtree(p)
        self._done = {v for d in index for v in d["video_ids"]}
        self._next = 1 + max((int(d["shard"].split("_")[1]) for d in index), default=-1)
        self._open_shard()

    def _open_shard(self) -> None:
        self._group, self._blob, self._written, self._pending = None, None, 0, bytearray()
        self._ids, self._recs, self._sizes, self._firsts = [], [], [], [0]

    def done_video_ids(self) -> set:
        """Videos with a session in a complete shard (or in the shard being written)."""
        return self._done | set(self._ids)

    def _append(self, s: RawSession) -> None:
        if self._group is None:
            self._group = self._root_group.create_group(_shard_name(self._next))
        for im in s.images():
            self._pending += im
            self._sizes.append(len(im))
        self._firsts.append(self._firsts[-1] + 3 * s.num_frames - 2)
        self._ids.append(s.video_id)
        rec = {"texts": s.texts, "cameras": s.cameras, "states": s.states, "meta": s.meta}
        if s.notes is not None:                     # only where an annotator kept any: older records stay as they were
            rec["notes"] = s.notes
        if s.captions is not None:                  # likewise: only where the annotator gave frame captions
            rec["captions"] = s.captions
        self._recs.append(json.dumps(rec))
        full = len(self._pending) // BLOB_CHUNK * BLOB_CHUNK
        if full:                                    # whole chunks: onto disk now
            if self._blob is None:
                self._blob = self._group.create_array("blob", shape=(0,), dtype=np.uint8, chunks=(BLOB_CHUNK,),
                                                      compressors=None)
            self._write_pending(full)

    def _write_pending(self, n: int) -> None:
        data = bytes(self._pending[:n])
        del self._pending[:n]
        self._blob.resize((self._written + n,))
        self._blob[self._written:self._written + n] = np.frombuffer(data, np.uint8)
        self._written += n

    def add(self, s: RawSession) -> bool:
        """Buffer ``s``; False (and a failure line, nothing written) when its id is unusable."""
        why = check_video_id(s.video_id)
        if why is not None:
            self.fail(str(s.video_id), why)
            return False
        self._append(s)
        if len(self._ids) >= self.shard_size:
            self.flush()
        return True

    def add_group(self, sessions: list) -> bool:
        """Buffer several sessions (of one video) so that they land in one shard: a crash keeps
        all of them or none. False (a failure line per bad id, nothing buffered) when an id is
        unusable. A group larger than ``shard_size`` makes one larger shard."""
        bad = [(s.video_id, why) for s in sessions if (why := check_video_id(s.video_id)) is not None]
        for vid, why in bad:
            self.fail(str(vid), why)
        if bad:
            return False
        if self._ids and len(self._ids) + len(sessions) > self.shard_size:
            self.flush()
        for s in sessions:
            self._append(s)
        if len(self._ids) >= self.shard_size:
            self.flush()
        return True

    def fail(self, video_id: str, reason: str) -> None:
        line = json.dumps({"video_id": video_id, "reason": " ".join(str(reason).split())})
        with open(self.root / "failures.jsonl", "a") as f:
            f.write(line + "\n")

    def flush(self) -> None:
        """Complete the shard being written: the rest of its blob, its tables, then its index line."""
        if not self._ids:
            return
        g, name = self._group, _shard_name(self._next)
        total = self._written + len(self._pending)
        if self._blob is None:                      # under one chunk: one chunk of its own size
            self._blob = g.create_array("blob", shape=(total,), dtype=np.uint8, chunks=(max(total, 1),),
                                        compressors=None)
            self._blob[:] = np.frombuffer(bytes(self._pending), np.uint8)
            self._pending = bytearray()
        elif self._pending:
            self._write_pending(len(self._pending))
        g.create_array("offsets", data=np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64))
        g.create_array("first", data=np.array(self._firsts, np.int64))
        for key, rows in (("video_id", self._ids), ("record", self._recs)):
            a = g.create_array(key, shape=(len(rows),), dtype=str)
            a[:] = np.array(rows, dtype=object)
        g.attrs["num_sessions"] = len(self._ids)
        with open(self.root / "index.jsonl", "a") as f:     # listing it is what makes the shard complete
            f.write(json.dumps({"shard": name, "video_ids": self._ids}) + "\n")
        self._done |= set(self._ids)
        self._next += 1
        self._open_shard()

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- reading
class SessionStore:
    """Read-only view: ``len(store)``, ``store[i] -> RawSession``, ``video_ids()``.

    Sessions are numbered shard by shard in index order. The last shard read
    is kept in memory, so iterating in order reads every shard once.
    """

    def __init__(self, root):
        self.root = Path(root)
        if not (self.root / "zarr.json").exists():
            raise FileNotFoundError(f"no session store at {self.root}")
        self._group = zarr.open_group(str(self.root), mode="r")
        if self._group.attrs.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.root} is not a session store (format {self._group.attrs.get('format')!r})")
        index = _read_index(self.root)
        self._shards = [d["shard"] for d in index]
        self._ids = [v for d in index for v in d["video_ids"]]
        self._loc = [(si, j) for si, d in enumerate(index) for j in range(len(d["video_ids"]))]
        self._cache = (None, None)
        self._small = (None, None)       # read(): one shard's arrays but its blob

    def __len__(self) -> int:
        return len(self._ids)

    def video_ids(self) -> list[str]:
        return list(self._ids)

    def sources(self) -> list[tuple[str, int, int]]:
        """A union's sources as (name, first row, end row), in row order (``sharded.union``); [] for a
        store built in one piece. Checked, since a store may come from someone else: unique names, rows
        that tile the store."""
        u = (self._group.attrs.get("build") or {}).get("union") if self._group.attrs.get("union_of") else None
        if not u:
            return []
        out, at = [], 0
        for d in u:
            try:
                name, (a, b) = d["name"], d["rows"]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.root}: a union made before its sources were named; make it again "
                                 f"with vincie-build-sessions union") from None
            if not (isinstance(name, str) and isinstance(a, int) and isinstance(b, int) and a == at <= b):
                raise ValueError(f"{self.root}: union source {name!r} has rows {[a, b]!r}, expected [{at}, ...]")
            out.append((name, a, b))
            at = b
        if at != len(self) or len({n for n, _, _ in out}) != len(out):
            raise ValueError(f"{self.root}: the union's sources cover {at} rows with names "
                             f"{[n for n, _, _ in out]}; the store holds {len(self)} (sources must tile it, "
                             f"names unique)")
        return out

    def location(self, i: int) -> tuple[str, int]:
        """(shard name, index inside the shard) of session i."""
        si, j = self._loc[i]
        return self._shards[si], j

    def failures(self) -> dict:
        return read_failures(self.root)

    def _shard(self, name: str):
        if self._cache[0] != name:
            g = self._group[name]
            self._cache = (name, dict(blob=g["blob"][:].tobytes(), offsets=g["offsets"][:], first=g["first"][:],
                                      ids=g["video_id"][:], recs=g["record"][:]))
        return self._cache[1]

    def __getitem__(self, i: int) -> RawSession:
        name, j = self._where(i)
        sh = self._shard(name)
        a, b = int(sh["first"][j]), int(sh["first"][j + 1])
        off = sh["offsets"]
        return _session(str(sh["ids"][j]), [sh["blob"][off[k]:off[k + 1]] for k in range(a, b)], sh["recs"][j])

    def read(self, i: int) -> RawSession:
        """Session i as ``store[i]`` gives it, reading only its own bytes of the shard's blob (the chunks
        holding them) instead of the whole shard: for a few sessions drawn at random from a large store."""
        name, j = self._where(i)
        if self._small[0] != name:          # the shard's small arrays, kept while reads stay in it
            g = self._group[name]
            self._small = (name, dict(blob=g["blob"], offsets=g["offsets"][:], first=g["first"][:],
                                      ids=g["video_id"][:], recs=g["record"][:]))
        sh = self._small[1]
        a, b = int(sh["first"][j]), int(sh["first"][j + 1])
        off = sh["offsets"][a:b + 1]
        raw = sh["blob"][int(off[0]):int(off[-1])].tobytes()
        return _session(str(sh["ids"][j]), [raw[off[k] - off[0]:off[k + 1] - off[0]] for k in range(b - a)],
                        sh["recs"][j])

    def records(self):
        """(session index, video id, record dict: texts, cameras, states, meta) of every session in order,
        reading only each shard's ``video_id`` and ``record`` arrays, never its images."""
        i = 0
        for name in self._shards:
            g = self._group[name]
            for vid, rec in zip(g["video_id"][:], g["record"][:]):
                yield i, str(vid), json.loads(rec)
                i += 1

    def _where(self, i: int) -> tuple[str, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"session {i} out of range for a store of {len(self)}")
        return self.location(i % len(self))


def _session(video_id: str, imgs: list, record) -> RawSession:
    """One session from its images in the stored order (K frames, K - 1 source, K - 1 target maps) and record."""
    k = (len(imgs) + 2) // 3
    rec = json.loads(record)
    return RawSession(video_id, imgs[:k], imgs[k:2 * k - 1], imgs[2 * k - 1:], rec["texts"], rec["cameras"],
                      rec["meta"], rec["states"], rec.get("notes"), rec.get("captions"))
