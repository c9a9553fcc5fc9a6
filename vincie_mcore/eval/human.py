"""Human evaluation (paper App. D.1-D.3): people rate MSE-Bench turns, blind to the method and to the VLM
judge; the success rates they give per turn (Table 6), how far raters agree, and how the judge and the
CLIP/DINO scores correlate with them (Table 7). And the VLM annotator's transition texts, rated on
transitions drawn from a session store (``AnnotationStudy``: accurate? complete? Table 8).

A study is one or more methods' MSE-Bench result folders (``vincie-benchmark mse --out DIR``: its
``results.json`` and the images, ``generated.parquet`` or, for images made elsewhere, the file it judged),
over one copy of the benchmark. Each (method, session, turn) is an ``Item``. A rater sees what the judge
saw (the source, every result so far, every prompt so far), never the method, and answers success or
failure by the judge's two criteria: the turn's instruction is followed, and nothing else changed. By
default every turn is asked, also after a failed one, so that each turn can be set beside the judge's
score (``todo``: the judge's shortcut instead); each rater gets the items in an order of their own (a
seeded shuffle), so no method or turn always comes first.

``Ratings`` is one JSONL file, a line per answer, appended and synced at once: a crash loses at most the
answer being written, whose torn line is skipped with a warning and cut off by the next answer. A rater's
latest answer on an item counts. One file may hold several studies' answers; each report counts its own.

Success per turn follows the judge's rule (``mse_bench``): an item succeeds when most of its raters say so
(a tie fails); a session succeeds at turn t when its turns 1..t all succeed. Unlike the judge's rate, which
is over all sessions, a session counts at turn t only once that is decided (turns 1..t all rated, or a
failure rated at or before t), so a study part-way through gives rates over the sessions rated so far
(``sessions_counted``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mse_bench import _bootstrap, fit_to, load_generated, load_sessions

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def check_name(name: str, what: str) -> str:
    """A method or rater name: letters, digits and ``_.+-``, up to 64 characters (it goes into files)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what}: {name!r} is not a name of letters, digits and '_.+-' (up to 64, "
                         f"starting with a letter or digit)")
    return name


@dataclass(frozen=True, order=True)
class Item:
    method: str
    index: str           # the MSE-Bench session
    turn: int            # 1-based


@dataclass
class Method:
    name: str
    folder: Path
    turns: int
    images: dict         # index -> [turn 1 image, ...] uint8 [H, W, 3]
    detail: dict         # index -> the judge's {failed_at, error, verdicts}
    judge_success: list  # the judge's success rate per turn (over all sessions)


# ----------------------------------------------------------------------------- the study

def _images_of(folder: Path, res: dict, turns: int) -> dict:
    own = folder / "generated.parquet"
    if own.is_file():
        return load_generated(own, turns)
    src = (res.get("source") or {}).get("generated")
    if not src:
        raise FileNotFoundError(f"{folder}: no generated.parquet and no source.generated in results.json")
    for p in (Path(src), folder / src):
        if p.exists():
            return load_generated(p, turns)
    raise FileNotFoundError(f"{folder}: the images it judged ({src}) are not there; pass the results of a "
                            f"run whose images are at hand")


class Study:
    """The methods' results (``{name: result folder}``) over the benchmark at ``data`` (default: the data the
    first method was scored on, ``results.json``'s ``source.data``). All methods must be scored with the same
    number of turns; each must hold images for every session it was judged on."""

    kind = "mse"
    questions = ("success",)

    def __init__(self, methods: dict, data=None):
        if not methods:
            raise ValueError("methods: give at least one NAME=RESULT_FOLDER")
        self.methods: dict[str, Method] = {}
        for name, folder in methods.items():
            check_name(name, "method")
            folder = Path(folder)
            f = folder / "results.json"
            if not f.is_file():
                raise FileNotFoundError(f"method {name}: no results.json in {folder} (a vincie-benchmark mse --out)")
            try:
                res = json.loads(f.read_text())
                turns = int(res["turns"])
                detail = {str(d["index"]): d for d in res["sessions_detail"]}
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"method {name}: {f} is not an MSE-Bench results.json "
                                 f"({type(e).__name__}: {e})") from None
            if data is None:
                data = (res.get("source") or {}).get("data")
            m = Method(name, folder, turns, _images_of(folder, res, turns), detail,
                       list(res.get("turn_success") or []))
            missing = [i for i in detail if i not in m.images]
            if missing:
                raise ValueError(f"method {name}: no images for session {missing[0]!r}")
            self.methods[name] = m
        turns = {m.turns for m in self.methods.values()}
        if len(turns) != 1:
            raise ValueError(f"methods: scored with different numbers of turns {sorted(turns)}")
        self.turns = turns.pop()
        if data is None:
            raise ValueError("data: the benchmark's sessions are needed (--data; results.json names none)")
        self.sessions = {s.index: s for s in load_sessions(data)}
        for m in self.methods.values():
            unknown = [i for i in m.detail if i not in self.sessions]
            if unknown:
                raise ValueError(f"method {m.name}: session {unknown[0]!r} is not in the benchmark at {data}")
        self.items = [Item(m.name, i, t) for m in self.methods.values() for i in m.detail
                      for t in range(1, self.turns + 1)]
        self._display: dict = {}             # session -> the size every method's images are shown at

    def view(self, item: Item) -> dict:
        """What a rater (and the judge) sees for ``item``: the source at the results' size, the results of
        turns 1..t, the prompts of turns 1..t."""
        m, s = self.methods[item.method], self.sessions[item.index]
        results = m.images[item.index][:item.turn]
        return {"source": fit_to(s.image, results[0].shape[:2]), "results": results,
                "prompts": list(s.prompts[:item.turn])}

    def shown(self, item: Item) -> dict:
        """``view`` as the rating page shows it, blind to the method by size too: every method's images of a
        session at one size, the smallest (by area) that any method made for it. A result is scaled into it
        whole (``pad``: a method whose output has another aspect shows bars, nothing it made is cut); the
        source is centre-cropped to it, as the judge crops it."""
        from ..data.video import fit_frame

        v = self.view(item)
        size = self._display.get(item.index)
        if size is None:
            shapes = [im.shape[:2] for m in self.methods.values() for im in m.images.get(item.index, [])]
            size = self._display[item.index] = min(shapes, key=lambda hw: (hw[0] * hw[1], hw))
        return {**v, "source": fit_to(self.sessions[item.index].image, size),
                "results": [fit_frame(im, size, "pad") for im in v["results"]]}

    def judge(self, item: Item) -> dict | None:
        """The judge's verdict on ``item`` (``prompt_following``, ``consistency``), None where it did not judge
        that turn (judging stops at a session's first failure)."""
        v = self.methods[item.method].detail[item.index].get("verdicts") or []
        return v[item.turn - 1] if len(v) >= item.turn else None


class AnnotationStudy:
    """Table 8: transitions drawn from a session store, each rated on its two frames and the transition text
    the annotator wrote for it: is everything it says right (``accurate``), does it name every change
    (``complete``); where a segmenter made RoE maps for the session, also do they mark what changed
    (``regions``). ``sample`` sessions are drawn without replacement (a seeded permutation), then one
    transition of each, uniformly; items are ``Item(name, session number, transition j + 1)``. The draw
    depends on the store's size: rate and report a store that is not being added to."""

    kind = "annotation"
    questions = ("accurate", "complete", "regions")

    def __init__(self, store, sample: int = 500, seed: int = 0, name: str = "annotations"):
        from ..data.store import SessionStore

        self.name, self.store = check_name(name, "name"), SessionStore(store)
        if sample < 1:
            raise ValueError(f"sample: must be >= 1, got {sample}")
        if not len(self.store):
            raise ValueError(f"{store}: the store holds no sessions")
        rng = np.random.default_rng(seed)
        picks = rng.permutation(len(self.store))[:sample]
        where = rng.random(len(picks))                       # drawn before reading: the same at any read order
        self._sessions: dict = {}
        self.items = []
        for i, u in zip(picks.tolist(), where):
            s = self._session(i)
            self.items.append(Item(self.name, str(i), int(u * (s.num_frames - 1)) + 1))

    def _session(self, i: int):
        if i not in self._sessions:
            self._sessions[i] = self.store.read(i)           # only its bytes, not its shard's
        return self._sessions[i]

    def asks(self, item: Item) -> tuple:
        """The questions ``item`` is rated on: ``regions`` only where a segmenter made the session's maps (a
        store built with segmenter ``none``, or one whose records name none, has nothing to rate there)."""
        seg = self._session(int(item.index)).meta.get("segmenter")
        return self.questions if seg not in (None, "none") else self.questions[:2]

    def view(self, item: Item) -> dict:
        """The transition's two frames, its text and camera, the session's video id, the annotator's notes
        on it (a VLM's reply; None where the store kept none) and, where ``regions`` is asked, the two
        frames with their RoE maps tinted (the source map red on the first, the target map green on the
        second, as ``vincie-build-sessions preview`` draws them)."""
        from ..data.media import load_image
        from ..data.report import tint

        s, j = self._session(int(item.index)), item.turn - 1
        frames = [load_image(s.frames[k], name=f"session {item.index} frame {k}") for k in (j, j + 1)]
        regions = None
        if "regions" in self.asks(item):
            regions = (tint(frames[0], s.roe_src[j], (255, 0, 0)), tint(frames[1], s.roe_tgt[j], (0, 255, 0)))
        return {"before": frames[0], "after": frames[1], "text": s.texts[j], "camera": s.cameras[j],
                "video_id": s.video_id, "notes": s.notes[j] if s.notes else None, "regions": regions}


def order(items: list[Item], rater: str, seed: int = 0) -> list[Item]:
    """The rater's own order of the items: a shuffle seeded by (seed, rater), the same on every start."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{rater}".encode()).digest()[:8], "little")
    return [items[i] for i in np.random.default_rng(key).permutation(len(items))]


PROTOCOLS = ("all", "judge")


def todo(study, ratings, rater: str, items_in_order: list[Item], protocol: str = "all") -> list[Item]:
    """What ``rater`` has left, in their order. ``"all"``: every item not yet answered. ``"judge"`` (MSE-Bench
    only), the judge's shortcut: a turn once the rater said success to every earlier turn of its session
    (turn 1 always); after a failure the session's later turns are not asked, as the judge stops there."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    done = ratings.done(rater)
    left = [it for it in items_in_order if it not in done]
    if protocol == "all":
        return left
    if study.kind != "mse":
        raise ValueError("protocol 'judge': for MSE-Bench turns (--method), not annotations")
    return [it for it in left if all(ratings.get(rater, Item(it.method, it.index, k)) is True
                                     for k in range(1, it.turn))]


# ----------------------------------------------------------------------------- the ratings file

QUESTIONS = {"success": "the turn does what its instruction asks, and nothing else changed (MSE-Bench)",
             "accurate": "everything the transition text says happens between the two frames (annotations)",
             "complete": "the transition text names every change between the two frames (annotations)",
             "regions": "the RoE maps mark what changed between the two frames, and little else (annotations)"}


class Ratings:
    """The answers, one JSONL line each ``{"rater", "method", "index", "turn", "answers": {question: bool},
    "time"}`` (questions: ``QUESTIONS``)."""

    def __init__(self, path):
        self.path = Path(path)
        self._latest: dict = {}              # (rater, Item) -> {question: bool}
        self._by_item: dict = {}             # Item -> {rater: {question: bool}}
        self._lock = threading.Lock()
        # the file ends inside a line: b"\n" when that line is whole (the next answer starts a new one), else
        # the bytes before it (a torn answer, cut off before the next one is written)
        self._torn: int | bytes | None = None
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                self._torn = b"\n"
            lines = raw.decode().splitlines()
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    rater, item = r["rater"], Item(str(r["method"]), str(r["index"]), int(r["turn"]))
                    answers = _checked(r["answers"])
                except (ValueError, KeyError, TypeError) as e:
                    if n == len(lines) and self._torn:   # torn (a crash while writing): the rest stands
                        log.warning("%s: line %d skipped (%s)", self.path, n, type(e).__name__)
                        self._torn = raw.rfind(b"\n") + 1
                        continue
                    raise ValueError(f"{self.path} line {n}: not a rating ({type(e).__name__}: {e})") from None
                self._set(rater, item, answers)

    def add(self, rater: str, item: Item, answers: dict) -> None:
        """Record ``answers`` ({question: bool}) of ``rater`` on ``item``, on disk before it returns."""
        check_name(rater, "rater")
        answers = _checked(answers)
        line = json.dumps({"rater": rater, "method": item.method, "index": item.index, "turn": item.turn,
                           "answers": answers, "time": round(time.time(), 3)})
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(self._torn, int):
                with open(self.path, "r+b") as f:
                    f.truncate(self._torn)
            with open(self.path, "a") as f:
                f.write(("\n" if self._torn == b"\n" else "") + line + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._torn = None
            self._set(rater, item, answers)

    def _set(self, rater: str, item: Item, answers: dict) -> None:
        self._latest[(rater, item)] = answers
        self._by_item.setdefault(item, {})[rater] = answers

    def get(self, rater: str, item: Item, question: str = "success") -> bool | None:
        return self._latest.get((rater, item), {}).get(question)

    def votes(self, item: Item, question: str = "success") -> list[bool]:
        """Every rater's latest answer to ``question`` on ``item``."""
        return [a[question] for a in self._by_item.get(item, {}).values() if question in a]

    def raters(self) -> list[str]:
        return sorted({r for r, _ in self._latest})

    def done(self, rater: str) -> set:
        return {it for (r, it) in self._latest if r == rater}


def _checked(answers) -> dict:
    if not isinstance(answers, dict) or not answers:
        raise ValueError(f"answers: expected {{question: true/false}}, got {answers!r}")
    for q, v in answers.items():
        if q not in QUESTIONS:
            raise ValueError(f"answers: unknown question {q!r} (known: {', '.join(QUESTIONS)})")
        if not isinstance(v, bool):
            raise ValueError(f"answers: {q} is not true/false ({v!r})")
    return dict(answers)


# ----------------------------------------------------------------------------- statistics

def item_success(votes: list[bool]) -> bool | None:
    """Most raters said yes (a tie is no); None when no one answered."""
    return None if not votes else sum(votes) * 2 > len(votes)


def human_success(study: Study, ratings: Ratings, seed: int = 0) -> dict:
    """Per method, per turn: the share of sessions that succeed at every turn up to t, over the sessions for
    which that is decided, with a bootstrap 95 % CI over them; beside it the judge's rate from results.json."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, m in study.methods.items():
        per_turn = []
        for t in range(1, study.turns + 1):
            decided = []
            for index in m.detail:
                ok = [item_success(ratings.votes(Item(name, index, k))) for k in range(1, t + 1)]
                if False in ok:
                    decided.append(0.0)
                elif None not in ok:
                    decided.append(1.0)
            x = np.array(decided)
            per_turn.append({"turn": t, "success_rate": round(float(x.mean()), 4) if len(x) else None,
                             "success_ci95": _bootstrap(x, rng), "sessions_counted": len(x)})
        out[name] = {"sessions": len(m.detail), "turn_success": [p["success_rate"] for p in per_turn],
                     "per_turn": per_turn, "judge_turn_success": m.judge_success}
    return out


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two raters' answers on the same items; None where chance agreement is total."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return None if pe >= 1.0 else (po - pe) / (1.0 - pe)


def rater_agreement(ratings: Ratings, items, question: str = "success") -> list[dict]:
    """Every pair of raters who answered ``question`` on ``items`` in common: how many, the share answered
    alike, Cohen's kappa."""
    raters, out, items = ratings.raters(), [], set(items)
    for i, r1 in enumerate(raters):
        for r2 in raters[i + 1:]:
            common = sorted(it for it in ratings.done(r1) & ratings.done(r2) & items
                            if ratings.get(r1, it, question) is not None and ratings.get(r2, it, question) is not None)
            if not common:
                continue
            a = [ratings.get(r1, it, question) for it in common]
            b = [ratings.get(r2, it, question) for it in common]
            k = cohen_kappa(a, b)
            out.append({"raters": [r1, r2], "items": len(common),
                        "agreement": round(float(np.mean(np.equal(a, b))), 4),
                        "cohen_kappa": None if k is None else round(k, 4)})
    return out


def correlation(x, y) -> dict:
    """Pearson r, Spearman rho and Kendall tau-b of paired values with their two-sided p-values (scipy's:
    the t-distribution for r and rho, the exact or tie-corrected normal distribution for tau)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    out = {"n": int(len(x))}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:     # undefined: too few, or a constant side
        return {**out, "pearson": None, "spearman": None, "kendall": None}
    for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        r = fn(x, y)
        out[name] = {"r": round(float(r.statistic), 4), "p": float(f"{float(r.pvalue):.4g}")}
    return out


def metric_scores(study: Study, items: list[Item], metrics, progress: bool = False) -> dict:
    """CLIP-T, CLIP-I and DINO of each item's result (``magicbrush.MagicBrushMetrics``): CLIP-T against the
    turn's instruction (MSE-Bench has no output captions), CLIP-I and DINO against the turn's input (the
    source, or the previous turn's result) -> ``{item: {clip_t, clip_i, dino}}``."""
    from tqdm import tqdm

    out, step = {}, metrics.cfg.batch_size
    for a in tqdm(range(0, len(items), step), desc="CLIP/DINO", unit="batch", disable=not progress):
        views = [study.view(it) for it in items[a:a + step]]
        gen = [v["results"][-1] for v in views]
        inputs = [v["results"][-2] if len(v["results"]) > 1 else v["source"] for v in views]
        rows = metrics.score(gen, inputs, [v["prompts"][-1] for v in views])
        out.update({it: {k: r[k] for k in ("clip_t", "clip_i", "dino")} for it, r in zip(items[a:a + step], rows)})
    return out


def report(study: Study, ratings: Ratings, metrics=None, seed: int = 0, progress: bool = False) -> dict:
    """Table 6 (``human``: success per turn), the raters' agreement, and Table 7 (``correlation``: each
    score against the items' human success, the share of raters who said success, over the rated items;
    the judge's sqrt(prompt_following x consistency) over the turns it judged)."""
    rated = [it for it in study.items if ratings.votes(it)]
    human = {it: float(np.mean(ratings.votes(it))) for it in rated}
    answered = {r: len(ratings.done(r) & set(study.items)) for r in ratings.raters()}
    scores: dict = {"judge": {}}
    for it in rated:
        v = study.judge(it)
        if v is not None:
            scores["judge"][it] = math.sqrt(v["prompt_following"] * v["consistency"])
    if metrics is not None and rated:
        per = metric_scores(study, rated, metrics, progress)
        for k in ("clip_t", "clip_i", "dino"):
            scores[k] = {it: s[k] for it, s in per.items() if s[k] is not None}
    corr = {k: correlation([human[it] for it in s], [s[it] for it in s]) for k, s in scores.items()}
    return {"study": {name: str(m.folder) for name, m in study.methods.items()}, "turns": study.turns,
            "items": len(study.items), "items_rated": len(rated), "ratings": sum(answered.values()),
            "raters": {r: n for r, n in answered.items() if n},
            "rule": "an item succeeds when most of its raters say so (a tie fails); a session succeeds at turn "
                    "t when turns 1..t all succeed; rates are over the sessions decided at t",
            "human": human_success(study, ratings, seed), "agreement": rater_agreement(ratings, study.items),
            "correlation": corr,
            "correlation_note": "human = the share of an item's raters who said success; judge = sqrt("
                                "prompt_following x consistency); clip_t against the turn's instruction, "
                                "clip_i and dino against the turn's input"}


def annotation_report(study: AnnotationStudy, ratings: Ratings, seed: int = 0) -> dict:
    """Table 8: per question, the share of the rated transitions whose raters mostly said yes (a tie is no),
    with a bootstrap 95 % CI over them, and the raters' agreement on it; each over the items that ask it
    (``regions``: those whose session has maps)."""
    rng = np.random.default_rng(seed)
    out = {"store": str(study.store.root), "items": len(study.items), "raters": {}, "questions": {}}
    for q in study.questions:
        asked = [it for it in study.items if q in study.asks(it)]
        said = [item_success(ratings.votes(it, q)) for it in asked]
        x = np.array([float(v) for v in said if v is not None])
        out["questions"][q] = {"share_yes": round(float(x.mean()), 4) if len(x) else None,
                               "ci95": _bootstrap(x, rng), "items_asked": len(asked), "items_rated": len(x),
                               "meaning": QUESTIONS[q], "agreement": rater_agreement(ratings, asked, q)}
    items = set(study.items)
    out["raters"] = {r: n for r in ratings.raters() if (n := len(ratings.done(r) & items))}
    out["rule"] = "an item's answer is what most of its raters said (a tie is no)"
    return out


def plot(res: dict, path) -> Path:
    """Success per turn, raters (solid) beside the judge (dashed), a colour per method -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    turns = list(range(1, res["turns"] + 1))
    for n, (name, h) in enumerate(res["human"].items()):
        color = f"C{n}"
        ys = [np.nan if y is None else y for y in h["turn_success"]]
        ax.plot(turns, ys, "o-", color=color, label=f"{name}: raters")
        if h["judge_turn_success"]:
            ax.plot(turns, h["judge_turn_success"][:len(turns)], "s--", color=color, alpha=0.6,
                    label=f"{name}: judge")
    ax.set_xlabel("turn")
    ax.set_ylabel("success rate")
    ax.set_xticks(turns)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"MSE-Bench: {res['items_rated']} of {res['items']} items rated, {len(res['raters'])} raters",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
