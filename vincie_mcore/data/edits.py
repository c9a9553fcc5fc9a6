"""Image-editing datasets -> session store: the supervised fine-tuning data of the paper (App. C.7;
docs/edit_datasets.md).

An editing dataset is rows of (source image, instruction, target image[, region mask]); a multi-turn
one (MagicBrush) also names each row's session and turn, turn k editing turn k-1's target. Each
session becomes one store session, so everything that reads a store (the trainers, the latent store,
``stats``, ``preview``) reads it unchanged:

- frames: the first turn's source, then every turn's target, each fitted to ``size`` by the video
  build's rule (``video.fit_frame``);
- transition texts: the instructions; cameras: "None" (a still picture);
- RoE maps: an edit mask marks where the picture changes, in the source as in the target, so turn k's
  source and target maps are both its mask (``masks: dataset``); a row without one gets the pixels
  that changed (``masks: diff``), or none at all (``masks: none``);
- a chain that breaks (turn k's source is not turn k-1's target, or a turn is missing) is cut there
  into sessions ``<id>/part_<n>``: each part is a true chain, nothing is dropped.

Rows are read from parquet (Hugging Face's layout: image columns as ``{bytes, path}``) or JSONL (image
columns as file names under the JSONL's folder), file by file, a row group at a time. Every image
goes through ``media.load_image`` (size, bomb and truncation checks). A session that cannot be used
(a bad image, an empty instruction, a turn given twice, a mask of another size) is one line in the
store's ``failures.jsonl``; the others go on. A rerun resumes: stored and failed sessions are skipped.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .build import DECODE_MAX_MB, DECODE_TIMEOUT_S, encode_png, run_videos
from .media import image_cell
from .rows import json_row
from .store import RawSession, SessionWriter, read_failures
from .video import ASPECT_POLICIES, fit_frame

# Column names per dataset as published. A preset names what a row holds; ``columns`` overrides it.
FORMATS = {
    # osunlp/MagicBrush (train / dev parquet): one row per turn
    "magicbrush": {"session": "img_id", "turn": "turn_index", "source": "source_img",
                   "instruction": "instruction", "target": "target_img", "mask": "mask_img"},
    # timbrooks/instructpix2pix-clip-filtered: one pair per row
    "instructpix2pix": {"source": "original_image", "instruction": "edit_prompt", "target": "edited_image"},
    # BleachNick/UltraEdit (and its _500k / Region_Based subsets): one pair per row, a mask in the region-based split
    "ultraedit": {"source": "source_image", "instruction": "edit_prompt", "target": "edited_image", "mask": "mask_image"},
    # TIGER-Lab/OmniEdit-Filtered-1.2M: one pair per row, a list of paraphrased instructions (one is taken)
    "omniedit": {"id": "omni_edit_id", "source": "src_img", "instruction": "edited_prompt_list",
                 "target": "edited_img"},
    # Bin1117/AnyEdit: one pair per row (image_id names the source picture, shared by its edits); rows of its
    # visual-editing types carry a second input image, which a session cannot hold: refused one line each
    "anyedit": {"source": "image_file", "instruction": "edit_instruction", "target": "edited_file",
                "visual": "visual_input"},
    # AILab-CVC/SEED-Data-Edit Part-3 (multi_turn_editing/annotations/*.jsonl): one session per row, its turns
    # as columns (instruction_k, edit_image_k, k = 1..5; inverse_instruction_k unused), image paths under the
    # image archive's folder (--images); "{k}" marks a wide preset
    "seed_multi_turn": {"source": "source_image", "instruction": "instruction_{k}", "target": "edit_image_{k}"},
    # our own JSONL / parquet: one pair per row; add session= and turn= for chains, mask= for masks
    "pairs": {"source": "source", "instruction": "instruction", "target": "target"},
}
WIDE = "{k}"             # in a column name: one column per turn (turn k = 1, 2, ...), one session per row
WIDE_MAX_TURNS = 64      # turns a JSONL row is looked at for (its keys vary by row; parquet names them all)
ROLES = ("session", "turn", "id", "source", "instruction", "target", "mask", "visual")
OPTIONAL_ROLES = ("mask", "visual")      # a file without the column reads as a row without the value
MASK_MODES = ("dataset", "diff", "none")
PART_SEP = "/part_"
_PART = re.compile(re.escape(PART_SEP) + r"\d+$")


KEEP_OPS = (">=", "<=", "==", "!=", ">", "<")
_CONDITION = re.compile(r"^\s*([^<>=!\s][^<>=!]*?)\s*(>=|<=|==|!=|>|<)\s*(\S.*?)\s*$")


def parse_condition(text) -> tuple[str, str, list]:
    """``COLUMN OP VALUE`` -> (column, op, values). ``==`` and ``!=`` take alternatives ``a|b|c``; ``<`` ``<=``
    ``>`` ``>=`` take a number. One line naming the condition otherwise."""
    m = _CONDITION.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"edits.keep: {text!r} is not COLUMN OP VALUE (OP one of {' '.join(KEEP_OPS)})")
    col, op, value = m.groups()
    values = value.split("|") if op in ("==", "!=") else [value]
    if op not in ("==", "!="):
        try:
            values = [float(value)]
        except ValueError:
            raise ValueError(f"edits.keep: {text!r} compares with {op}, which needs a number, got {value!r}") from None
    return col, op, values


def _number(x) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def holds(condition: tuple[str, str, list], cell) -> bool:
    """Whether a row's ``cell`` meets a parsed condition. A missing value meets only ``!=``; ``==``/``!=``
    compare numbers as numbers (``turn==1`` holds for 1.0) and anything else as text."""
    _, op, values = condition
    if op in ("==", "!="):
        if cell is None:
            return op == "!="
        num = _number(cell)
        nums = [_number(v) for v in values]
        hit = any(num == v for v in nums) if num is not None and None not in nums else str(cell) in values
        return hit if op == "==" else not hit
    num = _number(cell)
    if num is None:
        return False
    v = values[0]
    return {">=": num >= v, "<=": num <= v, ">": num > v, "<": num < v}[op]


@dataclass
class EditsConfig:
    """How an editing dataset becomes sessions (``vincie-build-sessions edits``)."""
    format: str = "magicbrush"              # a preset of FORMATS
    columns: dict = field(default_factory=dict)   # role -> column name, over the preset (ROLES)
    name: str = ""                          # the session ids' prefix (default: the format)
    size: tuple = (512, 512)                # (height, width) of every stored frame
    aspect: str = "center_crop"             # as build.decode.aspect: center_crop | pad | resize
    pad_value: int = 0
    masks: str = "dataset"                  # dataset: the mask column, diff where a row has none | diff | none
    diff_threshold: int = 24                # masks diff: a pixel changed when a channel moves by more (0-255)
    chain_tolerance: float = 2.0            # mean |source_k - target_k-1| (0-255) below which turns chain
    shard_size: int = 256
    workers: int = 1
    timeout_s: float = DECODE_TIMEOUT_S     # seconds one session may take in a worker (0: no limit)
    max_mb: int = DECODE_MAX_MB             # MiB a worker may grow by for one session (0: no limit)
    keep: tuple = ()                        # row conditions, all must hold ("o_score>=8", "edit_type!=a|b"): KEEP_OPS
    images: str | None = None               # the folder image file names are under (default: each data file's)

    def __post_init__(self):
        self.size = tuple(self.size)
        self.keep = tuple(self.keep)
        for c in self.keep:
            parse_condition(c)
        if self.format not in FORMATS:
            raise ValueError(f"edits.format: must be one of {', '.join(FORMATS)}, got {self.format!r}")
        bad = sorted(set(self.columns) - set(ROLES))
        if bad:
            raise ValueError(f"edits.columns: unknown role {bad[0]!r} (roles: {', '.join(ROLES)})")
        if len(self.size) != 2 or not all(isinstance(v, int) and v >= 8 for v in self.size):
            raise ValueError(f"edits.size: must be [height, width], ints >= 8, got {self.size!r}")
        if self.aspect not in ASPECT_POLICIES:
            raise ValueError(f"edits.aspect: must be one of {ASPECT_POLICIES}, got {self.aspect!r}")
        if self.masks not in MASK_MODES:
            raise ValueError(f"edits.masks: must be one of {', '.join(MASK_MODES)}, got {self.masks!r}")
        if not 0 <= self.diff_threshold < 255:
            raise ValueError(f"edits.diff_threshold: must be in [0, 255), got {self.diff_threshold}")
        if not self.chain_tolerance >= 0:
            raise ValueError(f"edits.chain_tolerance: must be >= 0, got {self.chain_tolerance}")
        for k in ("shard_size", "workers"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"edits.{k}: must be an int >= 1, got {getattr(self, k)!r}")
        cols = self.column_map()
        for role in ("source", "instruction", "target"):
            if not cols.get(role):
                raise ValueError(f"edits.columns: no {role!r} column for format {self.format!r}")
        if ("session" in cols) != ("turn" in cols):
            raise ValueError("edits.columns: session and turn go together (a chain needs both)")
        if "session" in cols and "id" in cols:
            raise ValueError("edits.columns: id names single pairs; a chained dataset's ids are its session column")
        wide = [role for role in ("instruction", "target") if WIDE in cols[role]]
        if wide and (len(wide) != 2 or "session" in cols or any(WIDE in cols.get(r, "") for r in ("source", "mask"))):
            raise ValueError("edits.columns: a wide layout (one session per row) marks both instruction and target "
                             "with {k}, and nothing else; no session/turn columns")

    def column_map(self) -> dict:
        return {k: v for k, v in {**FORMATS[self.format], **self.columns}.items() if v}

    @property
    def wide(self) -> bool:
        """One session per row, its turns as columns (``WIDE``)."""
        return WIDE in self.column_map()["instruction"]

    def prefix(self) -> str:
        return self.name or self.format

    def recipe(self) -> dict:
        """What a stored session depends on (a resumed store must have been made the same way)."""
        d = dataclasses.asdict(self)
        for k in ("shard_size", "workers", "timeout_s", "max_mb"):
            d.pop(k)
        d["columns"] = self.column_map()
        d["size"] = list(self.size)
        d["keep"] = list(self.keep)
        if d["images"] is None:              # added later: recorded only when given, so older stores still resume
            d.pop("images")
        return d


# ----------------------------------------------------------------------------- reading rows
def dataset_files(paths) -> list[Path]:
    """The files to read, in order: each path a .parquet / .jsonl file or a folder of them (recursive)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.parquet")) or sorted(p.rglob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"{p}: no .parquet or .jsonl files")
            out += found
        elif p.is_file() and p.suffix in (".parquet", ".jsonl"):
            out.append(p)
        elif p.exists():
            raise ValueError(f"{p}: expected a .parquet or .jsonl file, or a folder of them")
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def _schema(f: Path) -> list[str]:
    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(f).names)
    for line in f.open():
        if line.strip():
            return list(json.loads(line))
    return []


def _rows(f: Path, columns: list[str], ranges: list | None = None, only: set | None = None):
    """(row number, {column: value}) of one file, in order: every row when ``ranges`` and ``only`` are both
    None, else the rows inside one of ``ranges`` ([(first, end or None), ...]) or in ``only`` (of a parquet
    file, only the row groups that hold such rows are read)."""
    every = ranges is None and only is None
    ranges, only = sorted(ranges or []), only or set()

    def keep(n: int) -> bool:
        return every or n in only or _in(ranges, n)

    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        # Rows of images are ~1 MB each: read 16 at a time through a 1 MiB read buffer, not a whole row group's
        # column chunks at once (pyarrow's pre-buffering held ~0.5 GB for MagicBrush's 64-row groups, growing
        # with the file; this reads in flat memory, measured in docs/edit_datasets.md "Throughput").
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
        wanted = sorted(only)
        first = 0
        for g in range(pf.metadata.num_row_groups):
            size = pf.metadata.row_group(g).num_rows
            k = bisect.bisect_left(wanted, first)
            if every or (k < len(wanted) and wanted[k] < first + size) or \
                    any(a < first + size and (b is None or b > first) for a, b in ranges):
                n = first
                for batch in pf.iter_batches(batch_size=16, row_groups=[g], columns=columns, use_threads=False):
                    for row in batch.to_pylist():
                        if keep(n):
                            yield n, row
                        n += 1
            first += size
        return
    with f.open() as fh:
        n = 0
        for line in fh:
            if line.strip():
                if keep(n):
                    d = json_row(line, f"{f.name} row {n}")
                    yield n, {c: d.get(c) for c in columns}
                n += 1


def check_columns(files: list[Path], cfg: EditsConfig) -> None:
    """Every file has the columns the format needs (a mask column may be missing); one line otherwise."""
    if cfg.images and not Path(cfg.images).is_dir():
        raise ValueError(f"edits.images: {cfg.images} is not a folder")
    cols = {role: c.replace(WIDE, "1") for role, c in cfg.column_map().items()}     # a wide row has turn 1
    for f in files:
        have = set(_schema(f))
        missing = [f"{role}={c}" for role, c in cols.items() if c not in have and role not in OPTIONAL_ROLES]
        missing += [f"{c} (--keep)" for c in dict.fromkeys(parse_condition(k)[0] for k in cfg.keep) if c not in have]
        if missing:
            raise ValueError(f"{f.name}: no column {missing[0]} (it has: {', '.join(sorted(have)) or 'none'}); "
                             f"name it with --columns")


def locate_sessions(files: list[Path], cfg: EditsConfig) -> dict | None:
    """A chained dataset's sessions: key -> [(file, row), ...] in file order, from its session column
    alone; None for a pair dataset (each row its own session)."""
    col = cfg.column_map().get("session")
    if col is None:
        return None
    where: dict = {}
    for i, f in enumerate(files):
        for n, row in _rows(f, [col]):
            where.setdefault(str(row[col]), []).append((i, n))
    return where


JSONL_UNIT_ROWS = 1024        # rows of a JSONL file per unit of parts (parquet brings its row groups)


def jsonl_rows(f: Path) -> int:
    """Rows (non-blank lines) of a JSONL file: one pass over its lines, nothing parsed."""
    with f.open() as fh:                 # text mode, as ``_rows`` counts them
        return sum(1 for line in fh if line.strip())


def units(files: list[Path]) -> list[tuple[int, int, int]]:
    """What parts share out: (file, first row, end row) of every parquet row group, and of every block of
    ``JSONL_UNIT_ROWS`` rows of a JSONL file (a JSONL file has no row groups of its own)."""
    import pyarrow.parquet as pq

    out = []
    for i, f in enumerate(files):
        if f.suffix != ".parquet":
            n = jsonl_rows(f)
            out += [(i, a, min(a + JSONL_UNIT_ROWS, n)) for a in range(0, n, JSONL_UNIT_ROWS)]
            continue
        md, a = pq.ParquetFile(f).metadata, 0
        for g in range(md.num_row_groups):
            out.append((i, a, a + md.row_group(g).num_rows))
            a += md.row_group(g).num_rows
    return out


def _own(files: list, part: tuple[int, int] | None) -> dict | None:
    """Part (i, N)'s rows: file -> [(first row, end row), ...], units i, i + N, i + 2N, ... of ``units``;
    None (every row) without a part."""
    if part is None:
        return None
    own: dict = {}
    for f, a, b in units(files)[part[0]::part[1]]:
        own.setdefault(f, []).append((a, b))
    return own


def _in(ranges: list, n: int) -> bool:
    """Whether row n is in one of the sorted, disjoint ``ranges`` [(first, end or None), ...]."""
    k = bisect.bisect_right(ranges, n, key=lambda r: r[0]) - 1
    return k >= 0 and (ranges[k][1] is None or n < ranges[k][1])


def _owns(own: dict | None, i: int, n: int) -> bool:
    return own is None or _in(own.get(i, []), n)


def count_edit_sessions(files: list[Path], cfg: EditsConfig, part: tuple[int, int] | None = None,
                        where: dict | None = None) -> int:
    """How many sessions ``read_edit_sessions`` gives (the progress bar's total): a chained dataset's
    sessions located (``where``, when already at hand), a pair dataset's rows counted (parquet: from its
    metadata)."""
    own = _own(files, part)
    where = where if where is not None else locate_sessions(files, cfg)
    if where is not None:
        return sum(1 for locs in where.values() if _owns(own, *locs[0]))
    us = units(files)
    return sum(b - a for _, a, b in (us if part is None else us[part[0]::part[1]]))


def read_edit_sessions(files: list[Path], cfg: EditsConfig, part: tuple[int, int] | None = None,
                       where: dict | None = None):
    """``(session key, [row, ...])`` for every session of the dataset, rows in file order, each row
    ``{role: value, "_file": i, "_row": n}``. A chained dataset's sessions are located first (its
    session column only; ``where``, when already at hand), so a session whose rows are spread over files
    still comes out whole.

    ``part = (i, N)``: only part i's sessions (a Slurm array task): those whose first row is in one of
    units i, i + N, i + 2N, ... (``units``: parquet row groups, JSONL row blocks; it reads those, and elsewhere
    just the rows of its sessions that spilled over), so that N parts together give every session once."""
    check_columns(files, cfg)
    cols = cfg.column_map()
    conditions = [parse_condition(k) for k in cfg.keep]
    own = _own(files, part)
    chained = "session" in cols
    where = (where if where is not None else locate_sessions(files, cfg)) if chained else {}
    mine = {k for k, locs in where.items() if _owns(own, *locs[0])}
    spilled: dict = {}                                   # file -> rows of our sessions outside our units
    for k in mine:
        for i, n in where[k]:
            if not _owns(own, i, n):
                spilled.setdefault(i, set()).add(n)
    pending: dict = {}
    for i, f in enumerate(files):
        if own is not None and i not in own and i not in spilled:
            continue
        have = set(_schema(f))
        names = {role: c for role, c in cols.items() if c in have}
        turn_cols = _wide_columns(cols, have, f) if cfg.wide else []
        read = list(dict.fromkeys([*names.values(), *(c for c, _, _ in conditions), *(c for t in turn_cols for c in t)]))
        ranges = None if own is None else own.get(i, [])
        for n, raw in _rows(f, read, ranges, spilled.get(i) if own is not None else None):
            row = {role: raw[c] for role, c in names.items()}
            row.update(_file=i, _row=n, _keep=all(holds(c, raw[c[0]]) for c in conditions))
            if not chained:
                key = str(row["id"]) if "id" in row else f"{f.stem}/{n:08d}"
                yield key, (_wide_turns(row, raw, turn_cols) if cfg.wide else [row])
                continue
            key = str(row["session"])
            if key not in mine:
                continue                                 # another part's session
            pending.setdefault(key, []).append(row)
            if len(pending[key]) == len(where[key]):
                yield key, pending.pop(key)


def _wide_columns(cols: dict, have: set, f: Path) -> list[tuple[str, str]]:
    """A wide layout's (instruction, target) columns of turns 1, 2, ...: those a parquet file has; a JSONL
    file's keys vary by row, so every turn up to ``WIDE_MAX_TURNS`` (a missing key reads as None)."""
    out = []
    for k in range(1, WIDE_MAX_TURNS + 1):
        pair = (cols["instruction"].replace(WIDE, str(k)), cols["target"].replace(WIDE, str(k)))
        if f.suffix == ".parquet" and not set(pair) <= have:
            break
        out.append(pair)
    return out


def _wide_turns(row: dict, raw: dict, turn_cols: list) -> list[dict]:
    """A wide row -> one row per turn, each editing the previous turn's target (turn 1: the source), up to
    the first turn with neither an instruction nor a target (one without the other fails the session)."""
    turns, source = [], row["source"]
    for k, (ci, ct) in enumerate(turn_cols, 1):
        if raw.get(ci) is None and raw.get(ct) is None:
            break
        turns.append({**row, "source": source, "instruction": raw.get(ci), "target": raw.get(ct), "turn": k})
        source = raw.get(ct)
    return turns or [{**row, "instruction": None, "target": None}]


# ----------------------------------------------------------------------------- one session
def region(mask: np.ndarray, source: np.ndarray, threshold: int) -> tuple[np.ndarray, str]:
    """A dataset's edit mask -> bool [H, W] of the region to edit, and the rule that read it.

    Masks come in three conventions, all handled on the RGB picture ``load_image`` gives (transparency
    composited over white): black/white (white marks the region: ``binary``), or the source with the
    region painted over or cut out (DALL-E 2's transparent hole, which reads as white: ``painted``,
    the pixels that differ from the source)."""
    gray = mask.sum(-1, dtype=np.uint16)                   # 3 x the grey level
    extreme = ((gray <= 48) | (gray >= 717)) & (mask.max(-1) - mask.min(-1) <= 16)
    if extreme.mean() >= 0.98:
        return gray >= 384, "binary"
    return changed(mask, source, threshold), "painted"


def changed(a: np.ndarray, b: np.ndarray, threshold: int) -> np.ndarray:
    """bool [H, W]: where a channel of ``a`` and ``b`` differs by more than ``threshold``."""
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)) > threshold).any(-1)


def chained(source: np.ndarray, previous_target: np.ndarray, tolerance: float) -> bool:
    """Whether a turn edits the previous turn's target: same size, mean |difference| (0-255) within
    ``tolerance`` (a re-encoded copy is still the same picture)."""
    if source is previous_target:
        return True
    return source.shape == previous_target.shape and \
        float(np.abs(source.astype(np.int16) - previous_target.astype(np.int16)).mean()) <= tolerance


def same_cell(a, b) -> bool:
    """Two image cells holding the same encoded bytes (or naming the same file)."""
    a = a.get("bytes") or a.get("path") if isinstance(a, dict) else a
    b = b.get("bytes") or b.get("path") if isinstance(b, dict) else b
    return a is not None and type(a) is type(b) and a == b


def _fit_mask(m: np.ndarray, cfg: EditsConfig) -> np.ndarray:
    """A bool mask through the frames' geometry (the same crop / pad / resize), back to 0/255."""
    img = np.repeat((m.astype(np.uint8) * 255)[..., None], 3, -1)
    return np.where(fit_frame(img, cfg.size, cfg.aspect, 0)[..., 0] >= 128, 255, 0).astype(np.uint8)


def make_edit_sessions(session_id: str, rows: list, cfg: EditsConfig, files: list) -> dict:
    """One dataset session -> {"sessions": [RawSession, ...], "breaks": n, "mask_rules": Counter}.
    Raises (one line) when the session cannot be used."""
    if "turn" in rows[0]:
        try:
            turns = [int(r["turn"]) for r in rows]
        except (TypeError, ValueError):
            raise ValueError(f"turn {[r['turn'] for r in rows]!r}: not integers") from None
        dup = [t for t, c in Counter(turns).items() if c > 1]
        if dup:
            raise ValueError(f"turn {dup[0]} appears {turns.count(dup[0])} times")
        rows = [r for _, r in sorted(zip(turns, rows), key=lambda x: x[0])]
    folder = lambda r: Path(cfg.images) if cfg.images else files[r["_file"]].parent   # noqa: E731 - file names
    where = lambda r: f"{files[r['_file']].name} row {r['_row']}"    # noqa: E731
    src, tgt, texts = [], [], []
    for k, r in enumerate(rows):
        if r.get("visual") not in (None, {"bytes": None, "path": None}):
            raise ValueError(f"{where(r)}: the edit needs a second input image ({cfg.column_map()['visual']}), "
                             f"which a session cannot hold")
        text = r.get("instruction")
        if isinstance(text, (list, tuple)):            # paraphrases (e.g. OmniEdit's prompt lists): one, by the id
            said = [t for t in text if isinstance(t, str) and t.strip()]
            text = said[zlib.crc32(f"{session_id}/{k}".encode()) % len(said)] if said else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where(r)}: empty instruction")
        texts.append(" ".join(text.split()))
        if k and same_cell(r["source"], rows[k - 1]["target"]):
            src.append(tgt[-1])                            # the previous target's very bytes: decoded once
        else:
            src.append(image_cell(r["source"], f"{where(r)} source", folder(r)))
        tgt.append(image_cell(r["target"], f"{where(r)} target", folder(r)))
    fit = lambda im: fit_frame(im, cfg.size, cfg.aspect, cfg.pad_value)    # noqa: E731

    def same_picture(a, b, tol):                        # at the store's size where the two sizes differ
        return chained(a, b, tol) if a.shape == b.shape else chained(fit(a), fit(b), tol)

    masks, rules = [], Counter()                        # 0/255 at the store's size
    for r, s, t in zip(rows, src, tgt):
        if cfg.masks == "none":
            m, rule = np.zeros(cfg.size, np.uint8), "none"
        elif cfg.masks == "dataset" and r.get("mask") is not None:
            mk = image_cell(r["mask"], f"{where(r)} mask", folder(r))
            if mk.shape != s.shape:                     # drawn on the source: another size is a broken row
                raise ValueError(f"{where(r)}: mask is {mk.shape[1]}x{mk.shape[0]}, source {s.shape[1]}x{s.shape[0]}")
            m, rule = region(mk, s, cfg.diff_threshold)
            m = _fit_mask(m, cfg)
        elif s.shape == t.shape:
            m, rule = _fit_mask(changed(s, t, cfg.diff_threshold), cfg), "diff"
        else:                                           # a target saved at another size: compare as stored
            m, rule = changed(fit(s), fit(t), cfg.diff_threshold).astype(np.uint8) * 255, "diff"
        masks.append(m)
        rules[rule] += 1
    cuts = [0] + [k for k in range(1, len(rows)) if not same_picture(src[k], tgt[k - 1], cfg.chain_tolerance)]
    bounds = list(zip(cuts, cuts[1:] + [len(rows)]))
    out = []
    for part, (a, b) in enumerate(bounds):
        frames = [fit(src[a])] + [fit(t) for t in tgt[a:b]]
        roe = [encode_png(m) for m in masks[a:b]]
        sid = session_id if len(bounds) == 1 else f"{session_id}{PART_SEP}{part + 1}"
        out.append(RawSession(
            video_id=sid, frames=[encode_png(f) for f in frames], roe_src=roe, roe_tgt=list(roe),
            texts=texts[a:b], cameras=["None"] * (b - a),
            meta={"dataset": cfg.format, "video_id": sid, "session": session_id,
                  "rows": [[files[r["_file"]].name, r["_row"]] for r in rows[a:b]],
                  "turns": [r.get("turn", k + 1) for k, r in enumerate(rows)][a:b],
                  "source_size": [int(src[a].shape[0]), int(src[a].shape[1])],
                  "annotator": "dataset", "segmenter": f"edits:{cfg.masks}",
                  "height": cfg.size[0], "width": cfg.size[1]}))
    return {"sessions": out, "breaks": len(bounds) - 1, "mask_rules": rules}


def _make(session_id, item, cfg, files):
    return make_edit_sessions(session_id, item, cfg, files)


# ----------------------------------------------------------------------------- the build
def base_id(session_id: str) -> str:
    """The dataset session a stored (possibly cut) session came from."""
    return _PART.sub("", session_id)


def build_edit_sessions(paths, store_root, cfg: EditsConfig, retry_failed: bool = False, limit: int = 0,
                        progress: bool = True, part: tuple[int, int] | None = None) -> dict:
    """Build (or resume) a session store from an editing dataset (``part``: only part i of N, see
    ``read_edit_sessions``). Returns this run's counts: {"sessions", "stored", "turns", "failed",
    "skipped", "filtered", "chain_breaks", "mask_rules", "seconds", "store"} (``sessions``: dataset sessions
    made; ``stored``: store sessions written, cut chains counted per part; ``filtered``: sessions a row of
    which fails ``cfg.keep``)."""
    t0 = time.perf_counter()
    files = dataset_files(paths)
    check_columns(files, cfg)                           # before the store exists: a fixed --columns can resume
    where = locate_sessions(files, cfg)                 # once, for the bar's total and the reader
    root = Path(store_root)
    # flat, so that a resume with other settings names the key that differs
    build = {**{f"edits.{k}": v for k, v in cfg.recipe().items()}, "annotator": "dataset",
             "segmenter": f"edits:{cfg.masks}"}
    seen = stored = turns = failed = skipped = filtered = breaks = 0
    rules: Counter = Counter()
    from tqdm import tqdm

    with SessionWriter(root, cfg.shard_size, build=build) as w:
        done = {base_id(v) for v in w.done_video_ids()} | (set() if retry_failed else set(read_failures(root)))
        total = count_edit_sessions(files, cfg, part, where) if progress else None
        bar = tqdm(total=min(total, limit) if total is not None and limit else total, desc="edit sessions",
                   unit="sess", disable=not progress)

        chunk_size = min(cfg.shard_size, max(32, 8 * cfg.workers))    # enough to keep every worker busy

        def chunks():
            nonlocal skipped, filtered
            chunk = []
            for n, (key, rows) in enumerate(read_edit_sessions(files, cfg, part, where)):
                if limit and n >= limit:
                    break
                sid = f"{cfg.prefix()}/{key}"
                if sid in done or not all(r["_keep"] for r in rows):   # a chain is kept whole or not at all
                    skipped += sid in done
                    filtered += sid not in done
                    bar.update()
                    continue
                chunk.append((sid, rows))
                if len(chunk) >= chunk_size:           # bounded memory: the rows of one chunk at a time
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        try:
            for chunk in chunks():
                seen += len(chunk)
                results = run_videos(chunk, _make, {"cfg": cfg, "files": files}, cfg.workers,
                                     cfg.timeout_s or None, cfg.max_mb or None)
                try:
                    for sid, out, reason in results:
                        if out is None:
                            # the worker limits speak of videos' decoding; here a session was being made
                            w.fail(sid, "session " + reason[7:] if reason.startswith("decode ") else reason)
                            failed += 1
                        elif w.add_group(out["sessions"]):
                            stored += len(out["sessions"])
                            turns += sum(len(s.texts) for s in out["sessions"])
                            breaks += out["breaks"]
                            rules.update(out["mask_rules"])
                        else:
                            failed += 1
                        bar.update()
                finally:
                    if hasattr(results, "close"):
                        results.close()
                chunk = results = None                  # not held while the next chunk's rows are read
        finally:
            bar.close()
    wall = time.perf_counter() - t0
    summary = {"sessions": seen, "stored": stored, "turns": turns, "failed": failed, "skipped": skipped,
               "filtered": filtered,
               "chain_breaks": breaks, "mask_rules": dict(rules), "seconds": round(wall, 3),
               "turns_per_s": round(turns / wall, 2) if wall > 0 else None, "store": str(root)}
    if progress:
        print(format_edits_summary(summary))
    return summary


def format_edits_summary(s: dict) -> str:
    rules = ", ".join(f"{k} {v}" for k, v in sorted(s["mask_rules"].items())) or "none"
    return (f"edits: {s['stored']} sessions ({s['turns']} turns) stored from {s['sessions']} dataset sessions, "
            f"{s['chain_breaks']} chain breaks cut, {s['failed']} failed, {s['skipped']} already done, "
            + (f"{s['filtered']} left out by --keep, " if s.get("filtered") else "")
            + f"in {s['seconds']:.1f}s ({s['turns_per_s']} turns/s) -> {s['store']}; masks: {rules}")


# ----------------------------------------------------------------------------- in parts (a Slurm array)
def plan_edits(paths, store_root, n_parts: int, cfg: EditsConfig) -> dict:
    """Write ``STORE/plan/`` for an edits build in ``n_parts`` parts: the settings and the dataset's
    files (resolved now, in order: every part must see the same list). Each part then runs
    ``vincie-build-sessions run --store STORE --shard i/N`` (``slurm/sessions.sh``), and ``merge``
    indexes them, as for videos (``data/sharded.py``)."""
    from .sharded import write_plan

    files = dataset_files(paths)
    check_columns(files, cfg)                           # now, not in N array tasks
    n_units = len(units(files))
    if n_parts > n_units:
        raise ValueError(f"--shards: {n_parts} parts for {n_units} parquet row groups and JSONL row blocks; parts "
                         f"split those, so at most {n_units}")
    conf = {"edits": {**dataclasses.asdict(cfg), "size": list(cfg.size), "keep": list(cfg.keep),
                      "data": [str(f.resolve()) for f in files]}}
    return write_plan(store_root, n_parts, conf, {"files": len(files), "videos": 0, "skipped": []})


def run_edits_part(store_root, i: int, n: int, conf: dict, retry_failed: bool = False, progress: bool = True) -> dict:
    """Part i of N of a planned edits build, into ``STORE/parts/NNNNN``."""
    from .sharded import part_root

    d = dict(conf)
    files = d.pop("data")
    return build_edit_sessions(files, part_root(store_root, i), EditsConfig(**d), retry_failed=retry_failed,
                               progress=progress, part=(i, n))
