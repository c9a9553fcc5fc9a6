"""``vincie-sweep plan``: a sweep YAML -> one resolved run per (data size, model, seed), nested data.

    name: tiny
    base: [experiment=demo, data.pack.token_budget=400]   # overrides for every run
    data:                                     # one shared training store: every size is its first N sessions
      synthetic: {videos: 64, heldout_videos: 16, world: demo}    # built once by plan
      # world: demo, or WorldConfig fields ({preset: demo, ...}: the demo's world with changes);
      # heldout_world: the held-out store's (default: world), e.g. a static camera to evaluate against
      # or: store: /lustre/store, heldout_store: /lustre/heldout
    data_sizes: [8, 16, 32, 64]               # training sessions (data.corpus.max_sessions)
    models: {tiny: [model=tiny]}              # name -> overrides
    # or, per model, {train: [...], eval: [...], train_as: OTHER}: eval = extra vincie-evaluate arguments
    # of this model's runs; train_as = evaluate OTHER's trained run (same size, seed) instead of training
    # again (an eval-only arm of an ablation, docs/ablations.md); from_base: false = this model trains from
    # scratch even when the sweep has a pretrain: base (the "base" ablation's control arm); extra_steps: N =
    # this model's runs train N steps more than the rule gives (the base ablation's equal-compute arm)
    seeds: [0, 1]
    combine: product                          # or zip
    steps: {rule: proportional, per_session: 0.1, min: 2, max: 100000}   # or {rule: fixed, steps: 1000}
    eval: {overrides: [eval.turns=2], sessions: 16}
    pretrain: {overrides: [data.recipe.mask_type=full], steps: 1000, data_size: 64}   # optional, below
    cluster: {gpus_per_run: 8, nodes_per_run: 1, cpus_per_task: 8, max_concurrent: 4, time: "24:00:00",
              partition: null, step_time_s: 1.9}     # step_time_s: measured (run_info / logs), for the budget

Nested subsets: every run trains on the same store with ``data.corpus.max_sessions=N``, and the store
is read in a fixed order, so the sessions of a smaller run all lie inside a larger run's. plan writes
``SWEEP/runs.jsonl`` (one resolved run per line), ``SWEEP/sweep.yaml`` (the input, as planned) and
``SWEEP/budget.json`` (GPU-hours from ``cluster.step_time_s``; null without it).

``pretrain:`` (optional) trains one base model per seed first (``SWEEP/pretrain.jsonl``, runs named
``pretrain_s<seed>``: ``base`` + its ``overrides``, its ``steps``, its ``data_size`` sessions of the same
store, default the largest size), and every run of that seed starts from the base's weights
(``train.init_from``): the paper's runs start from a video model, so a design choice that matches how
the base was trained can win for that reason alone (docs/sweep.md, "A shared base model").
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..paths import safe_name

KEYS = {"name", "base", "data", "data_sizes", "models", "seeds", "combine", "steps", "eval", "cluster", "pretrain"}
MODEL_KEYS = {"train", "eval", "train_as", "from_base", "extra_steps"}
PRETRAIN_KEYS = {"overrides", "steps", "data_size"}
SYNTHETIC_KEYS = {"videos", "heldout_videos", "world", "heldout_world"}


@dataclass
class Run:
    index: int
    name: str
    data_size: int
    model: str
    seed: int
    steps: int
    run_dir: str
    overrides: list = field(default_factory=list)
    eval_args: list = field(default_factory=list)    # extra vincie-evaluate arguments (models.X.eval)
    train_with: int | None = None                     # index of the run that trains run_dir (train_as)
    eval_file: str = "eval.json"                      # in run_dir; eval_<model>.json for a shared run_dir
    pretrain: int | None = None                       # index in pretrain.jsonl of the base it starts from

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _err(key: str, msg: str) -> ValueError:
    return ValueError(f"sweep.{key}: {msg}")


def read_sweep(path) -> dict:
    """The sweep YAML, checked: every key known, every axis non-empty; one line naming the bad key."""
    try:
        d = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise FileNotFoundError(f"sweep: cannot read {path}: {e.strerror}") from None
    if not isinstance(d, dict):
        raise ValueError(f"sweep: {path} is not a mapping")
    for k in d:
        if k not in KEYS:
            raise _err(k, f"unknown key (known: {', '.join(sorted(KEYS))})")
    if not isinstance(d.get("name"), str) or not d["name"]:
        raise _err("name", "a non-empty string is required")
    sizes = d.get("data_sizes")
    if not isinstance(sizes, list) or not sizes or not all(isinstance(n, int) and n > 0 for n in sizes):
        raise _err("data_sizes", f"a list of positive ints is required, got {sizes!r}")
    d.setdefault("models", {"default": []})
    if not isinstance(d["models"], dict) or not d["models"]:
        raise _err("models", "a mapping name -> list of overrides is required")
    for name, m in d["models"].items():
        if isinstance(m, dict):
            if set(m) - MODEL_KEYS:
                raise _err(f"models.{name}", f"unknown key {sorted(set(m) - MODEL_KEYS)[0]!r} "
                                             f"(known: {', '.join(sorted(MODEL_KEYS))})")
            if not isinstance(m.get("from_base", True), bool) or ("from_base" in m and m.get("train_as")):
                raise _err(f"models.{name}.from_base", "true or false, on a model that trains (a train_as model "
                                                        "shares its owner's weights)")
            extra = m.get("extra_steps", 0)
            if not isinstance(extra, int) or isinstance(extra, bool) or extra < 0 or ("extra_steps" in m and m.get("train_as")):
                raise _err(f"models.{name}.extra_steps", f"an int >= 0, on a model that trains, got {extra!r}")
            other = m.get("train_as")
            if other is not None and (other == name or not isinstance(d["models"].get(other), (list, dict))
                                      or isinstance(d["models"][other], dict) and d["models"][other].get("train_as")):
                raise _err(f"models.{name}.train_as", f"{other!r} is not another model that trains")
            if other is not None and m.get("train"):
                raise _err(f"models.{name}.train", "a train_as model trains nothing: give its overrides to "
                                                   f"{other!r}")
        elif not isinstance(m, list):
            raise _err(f"models.{name}", "a list of overrides or {train, eval, train_as} is required")
    d.setdefault("seeds", [0])
    if not isinstance(d["seeds"], list) or not all(isinstance(s, int) for s in d["seeds"]) or not d["seeds"]:
        raise _err("seeds", f"a list of ints is required, got {d['seeds']!r}")
    d.setdefault("combine", "product")
    if d["combine"] not in ("product", "zip"):
        raise _err("combine", f"product or zip, got {d['combine']!r}")
    if d["combine"] == "zip" and len({len(sizes), len(d["models"]), len(d["seeds"])} - {1}) > 1:
        raise _err("combine", "zip needs data_sizes, models and seeds of one length (or length 1)")
    st = d.setdefault("steps", {"rule": "fixed", "steps": 100})
    if st.get("rule") not in ("fixed", "proportional"):
        raise _err("steps.rule", f"fixed or proportional, got {st.get('rule')!r}")
    data = d.get("data") or {}
    if not (("synthetic" in data) ^ ("store" in data)):
        raise _err("data", "give either synthetic: {videos, heldout_videos, world} or store: PATH (+ heldout_store)")
    if "store" in data and not data.get("heldout_store"):
        raise _err("data.heldout_store", "evaluation needs a held-out store")
    if "synthetic" in data:
        syn = data["synthetic"]
        if not isinstance(syn, dict) or set(syn) - SYNTHETIC_KEYS:
            bad = sorted(set(syn) - SYNTHETIC_KEYS) if isinstance(syn, dict) else [repr(syn)]
            raise _err("data.synthetic", f"unknown key {bad[0]} (known: {', '.join(sorted(SYNTHETIC_KEYS))})")
        if syn.get("videos", 0) < max(sizes):
            raise _err("data.synthetic.videos", f"must be >= the largest data size {max(sizes)}")
        for key in ("world", "heldout_world"):
            if key in syn:
                world_of(syn[key], f"data.synthetic.{key}")
    d.setdefault("base", [])
    d.setdefault("eval", {})
    d.setdefault("cluster", {})
    if "pretrain" in d:
        _check_pretrain(d)
    return d


def _check_pretrain(d: dict) -> None:
    pre = d["pretrain"]
    if not isinstance(pre, dict):
        raise _err("pretrain", f"a mapping {{overrides, steps, data_size}} is required, got {pre!r}")
    if set(pre) - PRETRAIN_KEYS:
        raise _err("pretrain", f"unknown key {sorted(set(pre) - PRETRAIN_KEYS)[0]!r} (known: "
                               f"{', '.join(sorted(PRETRAIN_KEYS))})")
    if not isinstance(pre.get("steps"), int) or pre["steps"] <= 0:
        raise _err("pretrain.steps", f"a positive int is required, got {pre.get('steps')!r}")
    pre.setdefault("overrides", [])
    if not isinstance(pre["overrides"], list):
        raise _err("pretrain.overrides", f"a list of overrides is required, got {pre['overrides']!r}")
    n = pre.setdefault("data_size", max(d["data_sizes"]))
    if not isinstance(n, int) or n <= 0:
        raise _err("pretrain.data_size", f"a positive int is required, got {n!r}")
    syn = d["data"].get("synthetic")
    if syn and syn.get("videos", 0) < n:
        raise _err("pretrain.data_size", f"must be <= data.synthetic.videos ({syn.get('videos', 0)}), got {n}")


def steps_for(rule: dict, n: int) -> int:
    if rule["rule"] == "fixed":
        return int(rule["steps"])
    s = round(float(rule["per_session"]) * n)
    return int(min(max(s, int(rule.get("min", 1))), int(rule.get("max", 10**9))))


def combos(d: dict) -> list[tuple[int, str, int]]:
    sizes, models, seeds = d["data_sizes"], list(d["models"]), d["seeds"]
    if d["combine"] == "product":
        return list(itertools.product(sizes, models, seeds))
    n = max(len(sizes), len(models), len(seeds))
    pick = lambda xs, i: xs[0] if len(xs) == 1 else xs[i]   # noqa: E731 - a length-1 axis repeats
    return [(pick(sizes, i), pick(models, i), pick(seeds, i)) for i in range(n)]


def data_paths(sweep_dir: Path, d: dict) -> tuple[str, str]:
    data = d["data"]
    if "store" in data:
        return data["store"], data["heldout_store"]
    return str(sweep_dir / "data" / "train" / "store"), str(sweep_dir / "data" / "heldout" / "store")


def world_of(spec, key: str = "data.synthetic.world"):
    """A synthetic world of the sweep YAML: ``demo``, or a mapping of ``WorldConfig`` fields; with
    ``preset: demo`` the mapping changes the demo's world instead of WorldConfig's defaults."""
    from ..data.world import WorldConfig, demo_config

    if spec == "demo":
        return demo_config()
    if not isinstance(spec, dict):
        raise _err(key, f"demo or a mapping of world fields is required, got {spec!r}")
    kw = dict(spec)
    preset = kw.pop("preset", None)
    if preset not in (None, "demo"):
        raise _err(f"{key}.preset", f"demo is the only preset, got {preset!r}")
    try:
        return demo_config(**kw) if preset == "demo" else WorldConfig(**kw)
    except (TypeError, ValueError) as e:
        raise _err(key, str(e).splitlines()[0]) from None


def build_synthetic(sweep_dir: Path, d: dict, progress: bool = True) -> None:
    """The shared training and held-out stores of a synthetic sweep (resumable, like every build); the
    held-out videos come from ``heldout_world`` when given."""
    from ..data.build import build_sessions
    from ..data.video import write_synthetic_corpus

    syn = d["data"]["synthetic"]
    worlds = {"train": world_of(syn.get("world", "demo")),
              "heldout": world_of(syn.get("heldout_world", syn.get("world", "demo")), "data.synthetic.heldout_world")}
    for part, n, seed, sampling in (("train", syn["videos"], 0, "mixed"), ("heldout", syn.get("heldout_videos", 16), 1, "fixed")):
        world = worlds[part]
        root = sweep_dir / "data" / part
        write_synthetic_corpus(root / "videos", n, world, seed=seed, workers=1, progress=progress)
        build_sessions(root / "videos", root / "store", sampling=sampling, seed=seed, progress=progress)


def _data_overrides(train_store: str, heldout: str, n: int, steps: int, run_dir: str) -> list[str]:
    return [f"data.corpus.store={train_store}", f"data.corpus.heldout_store={heldout}", f"data.corpus.max_sessions={n}",
            f"train.steps={steps}", "train.progress=false", f"run_dir={run_dir}"]


def plan_pretrain(d: dict, sweep_dir: Path, seeds) -> list[Run]:
    """One base run per seed (``pretrain:``), trained before any run of that seed."""
    pre = d["pretrain"]
    train_store, heldout = data_paths(sweep_dir, d)
    out = []
    for k, seed in enumerate(sorted(set(seeds))):
        name = safe_name(f"pretrain_s{seed}", "run name")
        run_dir = str(sweep_dir / "runs" / name)
        ov = [*d["base"], *pre["overrides"], f"seed={seed}",
              *_data_overrides(train_store, heldout, pre["data_size"], pre["steps"], run_dir)]
        out.append(Run(k, name, pre["data_size"], "pretrain", seed, pre["steps"], run_dir, ov))
    return out


def _replan_check(path: Path, runs: list[Run], sweep_dir: Path) -> None:
    """A re-plan must not renumber launched runs."""
    if path.is_file() and [r.name for r in _runs_in(path)] != [r.name for r in runs]:
        raise ValueError(f"{sweep_dir}: planned with other runs already; use another folder")


def plan(sweep_yaml, sweep_dir, build_data: bool = True, progress: bool = True) -> dict:
    """Write runs.jsonl (and pretrain.jsonl), sweep.yaml and budget.json under ``sweep_dir`` -> a summary."""
    d = read_sweep(sweep_yaml)
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    old = sweep_dir / "runs.jsonl"
    train_store, heldout = data_paths(sweep_dir, d)
    pre = plan_pretrain(d, sweep_dir, [seed for _, _, seed in combos(d)]) if "pretrain" in d else []
    base_of = {r.seed: r for r in pre}
    runs = []
    for i, (n, model, seed) in enumerate(combos(d)):
        name = safe_name(f"{model}_d{n}_s{seed}", "run name")
        m = d["models"][model]
        m = m if isinstance(m, dict) else {"train": m}
        owner = m.get("train_as") or model                     # the model whose training this run uses
        om = d["models"][owner]
        run_dir = str(sweep_dir / "runs" / safe_name(f"{owner}_d{n}_s{seed}", "run name"))
        steps = steps_for(d["steps"], n) + (om.get("extra_steps", 0) if isinstance(om, dict) else 0)
        ov = [*d["base"], *(om.get("train", []) if isinstance(om, dict) else om), f"seed={seed}",
              *_data_overrides(train_store, heldout, n, steps, run_dir)]
        based = seed in base_of and (om.get("from_base", True) if isinstance(om, dict) else True)
        if based:                                             # starts from its seed's base model
            ov.append(f"train.init_from={base_of[seed].run_dir}/checkpoints")
        runs.append(Run(i, name, n, model, seed, steps, run_dir, ov, eval_args=[str(x) for x in m.get("eval", [])],
                        eval_file="eval.json" if owner == model else f"eval_{model}.json",
                        pretrain=base_of[seed].index if based else None))
    by_name = {r.name: r.index for r in runs}
    for r in runs:                                            # an eval-only arm waits for its owner's training
        owner = (d["models"][r.model] if isinstance(d["models"][r.model], dict) else {}).get("train_as")
        if owner:
            key = safe_name(f"{owner}_d{r.data_size}_s{r.seed}", "run name")
            if key not in by_name:
                raise _err(f"models.{r.model}.train_as", f"no planned run {key} to share (combine: zip?)")
            r.train_with = by_name[key]
    check_configs(d, runs, pre)
    _replan_check(old, runs, sweep_dir)
    _replan_check(sweep_dir / "pretrain.jsonl", pre, sweep_dir)
    if "synthetic" in d["data"] and build_data:
        build_synthetic(sweep_dir, d, progress)
    old.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in runs))
    if pre:
        (sweep_dir / "pretrain.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in pre))
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    c = d["cluster"]
    gpus = int(c.get("gpus_per_run", 0)) * int(c.get("nodes_per_run", 1))
    st = c.get("step_time_s")
    steps = sum(r.steps for r in pre + runs if r.train_with is None)    # an eval-only arm trains nothing
    budget = {"runs": len(runs), "pretrain_runs": len(pre), "steps": steps, "gpus_per_run": gpus, "step_time_s": st,
              "gpu_hours": round(steps * st * gpus / 3600, 2) if st and gpus else None,
              "why_none": None if st and gpus else "cluster.step_time_s (measured) and gpus_per_run are needed"}
    (sweep_dir / "budget.json").write_text(json.dumps(budget, indent=1))
    return {"sweep": str(sweep_dir), "runs": len(runs), "budget": budget}


def check_configs(d: dict, runs: list[Run], pre: list[Run] = ()) -> None:
    """Build every run's config as ``vincie-train`` and then ``vincie-evaluate`` will, so that a bad override
    (or a bad pair, e.g. text_then_image RoPE under block_causal) is one line now, not a failed array element
    later."""
    import warnings

    from ..config import ConfigError, load_config
    with warnings.catch_warnings():          # Megatron's import-time notes (no TE/apex on a login node)
        warnings.simplefilter("ignore")
        from ..build import build_run_config
        from ..train import trainer  # noqa: F401 - imported here, under the filter

    seen = set()
    for r in [*pre, *runs]:
        # vincie-evaluate's overrides too (models.X.eval's and eval.overrides): they fail after training
        ev = [a for a in r.eval_args if "=" in a and not a.startswith("-")] + list(d["eval"].get("overrides", []))
        key = tuple(o for o in r.overrides if not o.startswith(("seed=", "run_dir=", "train.init_from="))) + tuple(ev)
        if key in seen:
            continue
        seen.add(key)
        try:
            build_run_config(load_config([*r.overrides, *ev]))
        except ConfigError as e:
            where = "pretrain" if r in pre else f"models.{r.model}"
            raise _err(where, f"{e} (run {r.name}, base and eval overrides included)") from None


def _runs_in(path: Path) -> list[Run]:
    return [Run(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def read_runs(sweep_dir) -> list[Run]:
    p = Path(sweep_dir) / "runs.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"{sweep_dir}: no runs.jsonl (run `vincie-sweep plan` first)")
    return _runs_in(p)


def read_pretrain(sweep_dir) -> list[Run]:
    """The sweep's base runs (``pretrain:``); [] for a sweep without one."""
    p = Path(sweep_dir) / "pretrain.jsonl"
    return _runs_in(p) if p.is_file() else []


def read_planned(sweep_dir) -> dict:
    return yaml.safe_load((Path(sweep_dir) / "sweep.yaml").read_text())
