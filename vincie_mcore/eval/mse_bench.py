"""MSE-Bench (paper §4, App. C.6): 100 sessions of 5 turns, judged turn by turn by a VLM.

The protocol, as the paper runs it and as ``score`` reproduces it:
- the editor runs the 5 turns in order, each turn's output being the next turn's input, with every
  earlier turn in context (the paper's ``*`` setting: ``EditSession`` keeps the history);
- the judge scores a turn from the source, every result so far and every prompt so far;
- a turn succeeds when prompt_following > 6 **and** consistency > 6 (``threshold``);
- judging a session stops at its first failed turn, and its later turns count as failures;
- each turn's success rate is over all sessions.

The mean prompt_following, mean consistency and mean sqrt(pf * c) are also reported per turn, over
the sessions judged at that turn, with bootstrap 95 % CIs over sessions.

Inputs, read from local copies (no hub at run time; ``load_sessions``):
- the official release (``leigangqu/MSE-Bench``) as parquet: columns ``index``, ``image`` (a
  Hugging Face image: ``{bytes, path}``) and ``context`` (the 5 prompts); a ``datasets`` folder saved
  to disk holds such parquet files;
- or a folder with ``sessions.jsonl`` rows ``{index, image: <file>, context: [...]}``.

Images someone else generated (``load_generated``) are parquet or JSONL rows with ``index`` and
``turn_{i}_image`` columns, the published results' layout, so the same judge can score them.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.media import image_cell


@dataclass
class BenchSession:
    index: str
    image: np.ndarray          # uint8 [H, W, 3], the source
    prompts: list


# ----------------------------------------------------------------------------- inputs

def _rows(path: Path) -> tuple[list[dict], Path | None]:
    if path.is_dir():
        if (path / "sessions.jsonl").is_file():
            lines = (path / "sessions.jsonl").read_text().splitlines()
            return [json.loads(line) for line in lines if line.strip()], path
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{path}: no sessions.jsonl and no .parquet files")
    elif path.suffix == ".parquet":
        files = [path]
    elif path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()], path.parent
    else:
        raise FileNotFoundError(f"{path}: expected a folder, a .parquet or a .jsonl file")
    import pyarrow.parquet as pq

    rows = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
    return rows, None


def load_sessions(path, limit: int | None = None) -> list[BenchSession]:
    """The benchmark's sessions from a local copy (see the module docstring); one line per bad row."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark: no {path}")
    rows, folder = _rows(path)
    label = f"{path.name}/sessions.jsonl" if path.is_dir() and folder is not None else path.name
    out = []
    for n, r in enumerate(rows[:limit] if limit else rows):
        where = f"{label} row {n}"
        for key in ("index", "image", "context"):
            if key not in r:
                raise ValueError(f"{where}: no {key!r} column")
        prompts = list(r["context"])
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{where}: 'context' must be a list of non-empty prompts")
        out.append(BenchSession(str(r["index"]), image_cell(r["image"], where, folder), prompts))
    return out


def load_generated(path, turns: int = 5) -> dict[str, list[np.ndarray]]:
    """Images generated elsewhere: index -> [turn 1 image, ..., turn ``turns`` image]."""
    path = Path(path)
    rows, folder = _rows(path)
    out = {}
    for n, r in enumerate(rows):
        where = f"{path.name} row {n}"
        if "index" not in r:
            raise ValueError(f"{where}: no 'index' column")
        missing = [f"turn_{t}_image" for t in range(1, turns + 1) if f"turn_{t}_image" not in r]
        if missing:
            raise ValueError(f"{where}: no {missing[0]!r} column")
        out[str(r["index"])] = [image_cell(r[f"turn_{t}_image"], f"{where} turn {t}", folder)
                                for t in range(1, turns + 1)]
    return out


# ----------------------------------------------------------------------------- generating

def fit_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The model's input size (H, W), centre-cropped (the real-video builder's ``fit_frame`` policy)."""
    from ..data.video import fit_frame

    return fit_frame(np.asarray(image, np.uint8), size, "center_crop")


def edit_path(out_dir, index: str, turn: int) -> Path:
    """Where ``generate`` keeps turn ``turn`` (1-based) of a session: ``out_dir/edits/<index>/turn_<t>.png``."""
    from ..paths import safe_name

    return Path(out_dir) / "edits" / safe_name(str(index), "session index") / f"turn_{turn}.png"


def generate(editor, sessions: list[BenchSession], size: tuple[int, int], turns: int = 5,
             progress: bool = True, out_dir=None, run_info: dict | None = None, batch: int = 1,
             shard: tuple[int, int] | None = None, coe: str = "none", recipe=None) -> dict[str, list[np.ndarray]]:
    """Every session's turns with ``editor`` (``infer.editor.Editor`` or ``OfficialEditor``): each output is
    the next input, every earlier turn in context. Sources are fitted to ``size`` first.

    ``out_dir``: each edit is written as it is made (``edit_path``) and a rerun resumes from those files
    with the images an uninterrupted run gives (``eval/edit_runs.py``: per-edit seeds; ``editor.json``
    refuses another editor, sampler or size). ``batch``: sessions edited together, one turn each per model
    pass (``edit_runs.run_chains``); the images do not depend on it beyond float reordering. ``shard``:
    (i, N): only sessions i, i + N, ... (``edit_runs.shard_of``; one GPU of several, into one ``out_dir``).
    ``coe`` (``applications.COE``): each turn by chain-of-editing, its RoE maps first with ``recipe``'s mask
    prompts, saved beside its image (``edit_runs.coe_chain``; ``batch`` packs several sessions' calls)."""
    from . import edit_runs

    maps, run_info = edit_runs.coe_setup(coe, run_info)
    sessions = edit_runs.shard_of(sessions, shard)
    if out_dir is not None:
        edit_runs.claim(out_dir, editor, size=list(size), **(run_info or {}))
    chains = []
    for s in sessions:
        prompts = s.prompts[:turns]
        paths = [edit_path(out_dir, s.index, t + 1) for t in range(len(prompts))] if out_dir is not None else None
        if maps:
            chains.append(edit_runs.coe_chain(editor, str(s.index), s.image, prompts, paths,
                                              lambda im: fit_to(im, size), maps, recipe))
            continue
        chains.append(edit_runs.source_chain(editor, str(s.index), s.image, prompts, paths,
                                             lambda im: fit_to(im, size)))
    outs, _ = edit_runs.run_chains(editor, chains, batch, progress="MSE-Bench" if progress else None)
    return {s.index: o for s, o in zip(sessions, outs)}


# ----------------------------------------------------------------------------- judging

@dataclass
class SessionScore:
    index: str
    verdicts: list = field(default_factory=list)    # per judged turn: {prompt_following, consistency, reason}
    failed_at: int | None = None                    # the first failed turn (1-based), None if all passed
    error: str | None = None                        # the judge could not score a turn (counted as failed)


def judge_session(judge, s: BenchSession, results: list, threshold: float, turns: int) -> SessionScore:
    out = SessionScore(s.index)
    source = fit_to(s.image, results[0].shape[:2])          # the judge compares like with like
    for t in range(1, turns + 1):
        try:
            v = judge.judge(s.index, source, results[:t], s.prompts[:t])
        except (RuntimeError, ValueError) as e:
            out.error, out.failed_at = " ".join(str(e).split()), t
            return out
        out.verdicts.append({"prompt_following": v.prompt_following, "consistency": v.consistency,
                             "reason": v.reason})
        if not (v.prompt_following > threshold and v.consistency > threshold):
            out.failed_at = t
            return out                                       # the protocol: judging stops here
    return out


def _bootstrap(values: np.ndarray, rng, n: int = 1000) -> list[float] | None:
    if len(values) < 2:
        return None
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def summarize(scores: list[SessionScore], turns: int, threshold: float, seed: int = 0) -> dict:
    """Per-turn success rate over all sessions, and score means over the sessions judged at each turn."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    per_turn = []
    for t in range(1, turns + 1):
        ok = np.array([s.failed_at is None or s.failed_at > t for s in scores], float)
        judged = [s.verdicts[t - 1] for s in scores if len(s.verdicts) >= t]
        pf = np.array([v["prompt_following"] for v in judged], float)
        c = np.array([v["consistency"] for v in judged], float)
        geo = np.sqrt(pf * c)
        per_turn.append({
            "turn": t, "success_rate": round(float(ok.mean()), 4) if n else None, "success_ci95": _bootstrap(ok, rng),
            "judged": len(judged),
            "prompt_following": round(float(pf.mean()), 3) if len(pf) else None, "prompt_following_ci95": _bootstrap(pf, rng),
            "consistency": round(float(c.mean()), 3) if len(c) else None, "consistency_ci95": _bootstrap(c, rng),
            "sqrt_pf_c": round(float(geo.mean()), 3) if len(geo) else None, "sqrt_pf_c_ci95": _bootstrap(geo, rng)})
    return {"benchmark": "MSE-Bench", "sessions": n, "turns": turns, "threshold": threshold,
            "rule": f"a turn succeeds when prompt_following > {threshold:g} and consistency > {threshold:g}; "
                    f"judging stops at a session's first failed turn; rates are over all sessions",
            "turn_success": [p["success_rate"] for p in per_turn], "per_turn": per_turn,
            "judge_errors": sum(s.error is not None for s in scores),
            "sessions_detail": [{"index": s.index, "failed_at": s.failed_at, "error": s.error,
                                 "verdicts": s.verdicts} for s in scores]}


def score(judge, sessions: list[BenchSession], generated: dict, threshold: float = 6.0, turns: int = 5,
          progress: bool = True) -> dict:
    """Judge every session (sessions in parallel, up to the judge's concurrency) -> ``summarize``."""
    from tqdm import tqdm

    missing = [s.index for s in sessions if s.index not in generated]
    if missing:
        raise ValueError(f"generated images: none for session {missing[0]!r}")
    short = [s.index for s in sessions if len(generated[s.index]) < turns or len(s.prompts) < turns]
    if short:
        raise ValueError(f"session {short[0]!r}: fewer than {turns} turns of prompts or images")
    jobs = [judge.chat.submit(judge_session, judge, s, generated[s.index], threshold, turns) for s in sessions]
    scores = [j.result() for j in tqdm(jobs, desc="judge", unit="session", disable=not progress)]
    res = summarize(scores, turns, threshold)
    res["judge"] = judge.chat.stats()
    return res


# ----------------------------------------------------------------------------- report

def _png_b64(image: np.ndarray, scale: int = 1) -> str:
    from PIL import Image

    im = Image.fromarray(np.asarray(image, np.uint8))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_report(path, results: dict, sessions: list[BenchSession], generated: dict, max_sessions: int = 50) -> Path:
    """A self-contained HTML page: the per-turn table, then each session's strip with the judge's reasons."""
    size = next(iter(generated.values()))[0].shape[:2]
    scale = max(1, math.ceil(128 / max(size)))
    rows = "".join(f"<tr><td>{p['turn']}</td><td>{p['success_rate']}</td><td>{p['success_ci95']}</td>"
                   f"<td>{p['prompt_following']}</td><td>{p['consistency']}</td><td>{p['sqrt_pf_c']}</td>"
                   f"<td>{p['judged']}</td></tr>" for p in results["per_turn"])
    detail = {d["index"]: d for d in results["sessions_detail"]}
    blocks = []
    for s in sessions[:max_sessions]:
        d = detail.get(s.index, {})
        cells = [f"<td><img src='data:image/png;base64,{_png_b64(fit_to(s.image, size), scale)}'><br>source</td>"]
        for t, im in enumerate(generated[s.index][:results["turns"]], 1):
            v = d.get("verdicts", [])[t - 1] if len(d.get("verdicts", [])) >= t else None
            verdict = (f"pf {v['prompt_following']:g} / c {v['consistency']:g}<br><i>{html.escape(v['reason'])}</i>"
                       if v else ("<i>not judged</i>" if not d.get("error") or d.get("failed_at") != t
                                  else f"<i>{html.escape(d['error'])}</i>"))
            ok = d.get("failed_at") is None or d["failed_at"] > t
            cells.append(f"<td style='background:{'#e8f5e9' if ok else '#ffebee'}'>"
                         f"<img src='data:image/png;base64,{_png_b64(im, scale)}'><br>"
                         f"<b>{t}.</b> {html.escape(s.prompts[t - 1])}<br>{verdict}</td>")
        blocks.append(f"<h3>session {html.escape(s.index)}</h3><table><tr>{''.join(cells)}</tr></table>")
    page = (f"<html><head><meta charset='utf-8'><title>MSE-Bench</title><style>td{{vertical-align:top;"
            f"max-width:200px;font:12px sans-serif;padding:4px}}img{{image-rendering:pixelated}}</style></head><body>"
            f"<h2>MSE-Bench: {results['sessions']} sessions</h2><p>{html.escape(results['rule'])}</p>"
            f"<table border=1><tr><th>turn</th><th>success</th><th>95% CI</th><th>prompt following</th>"
            f"<th>consistency</th><th>sqrt(pf*c)</th><th>judged</th></tr>{rows}</table>{''.join(blocks)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
