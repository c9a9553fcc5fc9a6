"""What is in a session store: ``stats`` (numbers, JSON) and ``preview`` (contact sheets, PNG).

Whatever built the store (synthetic world, real videos with a VLM and GroundingDINO + SAM2), a
researcher checks it the same way before training on it:
- sessions and frames per session;
- text lengths;
- the edit-type mix (keywords in the texts, ``EDIT_TYPES``);
- the camera mix;
- RoE coverage: how much of each frame the masks mark, and how often they are empty (over a large store,
  on ``COVERAGE_SESSIONS`` sessions drawn at random: the only number that reads images);
- the learned filters' scores where the build recorded them (``meta.aesthetic``, ``meta.logo_frames``:
  data/quality.py), as percentiles and counts;
- failures by reason, from ``failures.jsonl``.

The contact sheets show random sessions: every frame, the RoE maps tinted over the frames they belong
to (source red on frame i, target green on frame i+1), and each transition's text. ``by="aesthetic"``
shows sessions spread evenly over the aesthetic ranking instead, lowest first, each row titled with its
score: a sample built with a low ``min_score`` shows where to put the threshold for the whole corpus.
``preview.json`` beside the sheets lists each sheet's sessions (and scores).
"""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from .store import SessionStore, read_failures

# A transition counts toward every type whose words it uses; none -> "other". Order = report order.
EDIT_TYPES: dict[str, tuple[str, ...]] = {
    "add": ("add", "appear", "appears", "place", "put", "insert", "enter", "enters"),
    "remove": ("remove", "delete", "disappear", "disappears", "take away", "erase", "leave", "leaves"),
    "move": ("move", "moves", "shift", "slide", "turn", "rotate", "raise", "lower", "walk", "lift", "swap"),
    "attribute": ("color", "colour", "red", "green", "blue", "yellow", "white", "black", "purple", "orange",
                  "bright", "dark", "bigger", "smaller", "larger", "size", "texture", "shape"),
    "replace": ("replace", "change the", "into a", "turn it into", "instead"),
    "action": ("smile", "sit", "stand", "hold", "open", "close", "look", "pick", "wave", "run", "jump"),
    "global": ("background", "weather", "lighting", "light", "night", "day", "season", "style", "scene"),
    "camera": ("zoom", "pan", "tilt", "dolly", "orbit", "camera"),
}


def edit_types(text: str) -> list[str]:
    """The ``EDIT_TYPES`` a transition text uses (word matches), or ["other"]."""
    t = " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "
    found = [k for k, words in EDIT_TYPES.items() if any(f" {w} " in t for w in words)]
    return found or ["other"]


def _coverage(png: bytes) -> float:
    from PIL import Image

    m = np.asarray(Image.open(io.BytesIO(png)))
    return float((m > 127).mean())


def _pct(values, q):
    return float(np.percentile(values, q)) if len(values) else None


COVERAGE_SESSIONS = 1000
"""RoE coverage is the one number that needs the images (the masks' PNGs): over a store larger than this, it
is measured on this many sessions drawn at random (each read alone: ``SessionStore.read``); every other
number reads only the sessions' records, so it covers every session of a 10M-session store."""


def store_stats(root, coverage_sessions: int | None = COVERAGE_SESSIONS, seed: int = 0,
                progress: bool = False) -> dict:
    """Every number of the module docstring, for the store at ``root``; ``coverage_sessions``: how many
    sessions the RoE coverage is measured on (None: all), drawn with ``seed``; ``progress``: tqdm bars."""
    from tqdm import tqdm

    if coverage_sessions is not None and coverage_sessions < 1:       # before a pass over 10M records
        raise ValueError(f"coverage_sessions: must be >= 1 or None, got {coverage_sessions}")
    st = SessionStore(root)
    frames, words, types, cameras = [], [], Counter(), Counter()
    cov_src, cov_tgt = [], []
    aesthetic, logo = [], Counter()
    for _, _, rec in tqdm(st.records(), total=len(st), desc="stats: records", unit="session",
                          disable=not progress):
        frames.append(len(rec["texts"]) + 1)
        meta = rec.get("meta") or {}
        if isinstance(meta.get("aesthetic"), (int, float)):
            aesthetic.append(float(meta["aesthetic"]))
        if "logo_frames" in meta:
            logo[str(meta["logo_frames"])] += 1
        for text in rec["texts"]:
            words.append(len(text.split()))
            types.update(edit_types(text))
        cameras.update(str(c) for c in rec["cameras"])
    n = len(st)
    if coverage_sessions is None or n <= coverage_sessions:
        sample, read = range(n), st.__getitem__                    # all, shard by shard
    else:
        sample = np.sort(np.random.default_rng(seed).choice(n, coverage_sessions, replace=False))
        read = st.read                                             # a few, each alone
    for i in tqdm(sample, desc="stats: RoE coverage", unit="session", disable=not progress):
        s = read(int(i))
        cov_src += [_coverage(p) for p in s.roe_src]
        cov_tgt += [_coverage(p) for p in s.roe_tgt]
    n_trans = len(words)
    fails = Counter(re.sub(r"\d+(\.\d+)?", "#", r) for r in read_failures(root).values())
    both_empty = sum(a == 0 and b == 0 for a, b in zip(cov_src, cov_tgt))
    n_cov = len(cov_src)
    return {
        "store": str(root),
        "sessions": len(st),
        "transitions": n_trans,
        "frames_per_session": {"min": min(frames, default=None), "mean": round(float(np.mean(frames)), 3) if frames else None,
                               "max": max(frames, default=None),
                               "histogram": {str(k): v for k, v in sorted(Counter(frames).items())}},
        "text_words": {"mean": round(float(np.mean(words)), 2) if words else None, "p50": _pct(words, 50),
                       "p95": _pct(words, 95), "max": max(words, default=None)},
        "edit_types": {k: types[k] for k in [*EDIT_TYPES, "other"] if types[k]},
        "edit_type_share": {k: round(types[k] / n_trans, 4) for k in [*EDIT_TYPES, "other"] if types[k]} if n_trans else {},
        "cameras": dict(cameras.most_common()),
        "roe": {"src_mean_coverage": round(float(np.mean(cov_src)), 4) if cov_src else None,
                "tgt_mean_coverage": round(float(np.mean(cov_tgt)), 4) if cov_tgt else None,
                "empty_share": round(both_empty / n_cov, 4) if n_cov else None,
                "sessions": len(sample), "sampled": len(sample) < n},
        "aesthetic": {"sessions": len(aesthetic), "mean": round(float(np.mean(aesthetic)), 4),
                      **{f"p{q}": round(_pct(aesthetic, q), 4) for q in (5, 25, 50, 75, 95)}} if aesthetic else None,
        "logo_frames": dict(sorted(logo.items())) if logo else None,
        "failures": sum(fails.values()),
        "failures_by_reason": dict(fails.most_common()),
        "sources": {n: b - a for n, a, b in st.sources()},     # a union's, by name (data.corpus.mix)
    }


def format_stats(s: dict) -> str:
    """The stats as a few readable lines."""
    f, t, r = s["frames_per_session"], s["text_words"], s["roe"]
    lines = [f"{s['store']}: {s['sessions']} sessions, {s['transitions']} transitions, {s['failures']} failed videos",
             f"  frames/session  min {f['min']}  mean {f['mean']}  max {f['max']}",
             f"  text words      mean {t['mean']}  p50 {t['p50']}  p95 {t['p95']}  max {t['max']}",
             "  edit types      " + "  ".join(f"{k} {v:.0%}" for k, v in s["edit_type_share"].items()),
             "  cameras         " + "  ".join(f"{k} {v}" for k, v in list(s["cameras"].items())[:8]),
             f"  RoE coverage    src {r['src_mean_coverage']}  tgt {r['tgt_mean_coverage']}  both empty {r['empty_share']}"
             + (f"  ({r['sessions']} sessions drawn at random)" if r.get("sampled") else "")]
    if s.get("sources"):
        lines.append("  sources         " + "  ".join(f"{k} {v}" for k, v in s["sources"].items()))
    if s.get("aesthetic"):
        a = s["aesthetic"]
        lines.append(f"  aesthetic       mean {a['mean']}  p5 {a['p5']}  p25 {a['p25']}  p50 {a['p50']}  "
                     f"p75 {a['p75']}  p95 {a['p95']}  ({a['sessions']} sessions scored)")
    if s.get("logo_frames"):
        lines.append("  logo frames     " + "  ".join(f"{k}: {v}" for k, v in s["logo_frames"].items()))
    lines += [f"  failed: {n} x {why}" for why, n in list(s["failures_by_reason"].items())[:10]]
    return "\n".join(lines)


def tint(frame: np.ndarray, mask_png: bytes | None, rgb) -> np.ndarray:
    """``frame`` with the pixels ``mask_png`` marks (> 127) half ``rgb``; a mask of another size tints nothing."""
    from PIL import Image

    out = frame.astype(np.float32)
    if mask_png is not None:
        m = np.asarray(Image.open(io.BytesIO(mask_png))) > 127
        if m.shape == frame.shape[:2]:
            out[m] = 0.5 * out[m] + 0.5 * np.asarray(rgb, np.float32)
    return out.astype(np.uint8)


PREVIEW_BY = ("random", "aesthetic")


def _by_score(st: SessionStore, n: int) -> tuple[list[int], dict]:
    """``n`` sessions evenly spaced over the aesthetic ranking (lowest first), and every scored session's score."""
    scores = {}
    for i, _, rec in st.records():                         # the scores only: no images read
        a = (rec.get("meta") or {}).get("aesthetic")
        if isinstance(a, (int, float)):
            scores[i] = float(a)
    if not scores:
        raise ValueError(f"preview --by aesthetic: no session of {st.root} has a score (build with "
                         f"build.quality.aesthetic: docs/real_videos.md)")
    ranked = sorted(scores, key=lambda i: (scores[i], i))
    at = np.unique(np.linspace(0, len(ranked) - 1, min(n, len(ranked))).round().astype(int))
    return [ranked[k] for k in at], scores


def preview(root, out_dir, sessions: int = 8, per_sheet: int = 4, seed: int = 0, tile: int = 128,
            by: str = "random") -> list[Path]:
    """Contact sheets of ``sessions`` sessions -> the PNG paths; ``preview.json`` beside them lists each
    sheet's sessions. ``by``: ``random`` (with ``seed``) or ``aesthetic`` (evenly over the ranking, lowest
    first, the score in each row's title).

    One row per session: frame 0, then each later frame. Frame i carries transition i's source map in red,
    frame i+1 its target map in green, and the text of transition i sits under frame i+1."""
    import textwrap

    from PIL import Image, ImageDraw

    if by not in PREVIEW_BY:
        raise ValueError(f"preview: by must be one of {', '.join(PREVIEW_BY)}, got {by!r}")
    st = SessionStore(root)
    out_dir = Path(out_dir)
    if by == "aesthetic":
        pick, scores = _by_score(st, sessions)
    else:
        pick, scores = [int(i) for i in np.random.default_rng(seed).permutation(len(st))[:sessions]], {}
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = []
    cap_lines = 4
    row_h = tile + 12 * cap_lines + 16
    paths = []
    for sheet, start in enumerate(range(0, len(pick), per_sheet)):
        ids = [int(i) for i in pick[start:start + per_sheet]]
        rows = [st.read(i) for i in ids]                  # each alone: a few sessions of a large store
        width = max(s.num_frames for s in rows) * (tile + 4) + 4
        img = Image.new("RGB", (width, row_h * len(rows)), "white")
        d = ImageDraw.Draw(img)
        for r, (i, s) in enumerate(zip(ids, rows)):
            y = r * row_h
            score = f", aesthetic {scores[i]:.2f}" if i in scores else ""
            d.text((4, y + 2), f"{s.video_id}  ({s.num_frames} frames{score})", fill="black")
            for k, png in enumerate(s.frames):
                fr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                fr = tint(fr, s.roe_src[k] if k < len(s.roe_src) else None, (255, 0, 0))
                fr = tint(fr, s.roe_tgt[k - 1] if k > 0 else None, (0, 255, 0))
                img.paste(Image.fromarray(fr).resize((tile, tile), Image.NEAREST), (4 + k * (tile + 4), y + 14))
                if k > 0:
                    for j, line in enumerate(textwrap.wrap(s.texts[k - 1], max(tile // 6, 1))[:cap_lines]):
                        d.text((4 + k * (tile + 4), y + 16 + tile + 12 * j), line, fill="black")
        p = out_dir / f"preview_{sheet:02d}.png"
        img.save(p)
        paths.append(p)
        listing.append({"sheet": p.name, "sessions": [
            {"video_id": s.video_id, **({"aesthetic": scores[i]} if i in scores else {})} for i, s in zip(ids, rows)]})
    (out_dir / "preview.json").write_text(json.dumps({"store": str(root), "by": by, "sheets": listing}, indent=1))
    return paths


def write_stats(root, out_json=None, **kw) -> dict:
    """``store_stats(root, **kw)``, written to ``out_json`` (default: ``root/stats.json``)."""
    s = store_stats(root, **kw)
    path = Path(out_json) if out_json else Path(root) / "stats.json"
    path.write_text(json.dumps(s, indent=2))
    return s
