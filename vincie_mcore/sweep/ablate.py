"""``vincie-ablate``: the paper's findings (Tables 3, 4, 5, 9, 10) as paired ablations on the synthetic world.

An ablation is a sweep (``plan.py`` / ``launch.py``) whose ``models:`` axis holds two arms, at one data
size, N seeds, the same steps and tokens per step for both arms, evaluated on the same held-out
sessions. The ablation YAML is a sweep YAML with ``ablation:`` instead of ``models:`` and one
``data_size`` instead of ``data_sizes``; ``steps`` is one int (both arms train that many steps):

    ablation: context            # context | pairwise | segmentation | coe | attention | rope | camera | camera_pe | base
    name: ctx
    base: [experiment=demo]
    data: {synthetic: {videos: 1000, heldout_videos: 200, world: demo}}
    data_size: 1000
    seeds: [0, 1, 2]
    steps: 1000
    eval: {overrides: [eval.turns=3], sessions: 200}
    cluster: {gpus_per_run: 0, cpus_per_task: 2, max_concurrent: 1}
    pretrain: {overrides: [data.recipe.mask_type=full], steps: 1000}   # optional: both arms start from a base

Arm A is the paper's weaker arm, arm B its method; ``report`` gives B - A per turn with a 95 % CI
from a paired two-stage bootstrap (``paired_bootstrap``; docs/ablations.md).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import yaml

from . import plan as P
from .launch import eval_path

SEG = ["data.recipe.roe_prob=0.8", "data.recipe.task_probs=[0.6,0.2,0.2]"]     # the paper's recipe with maps
# name -> (arm A, arm B, models: axis). Arm B is the paper's method, so B - A > 0 reproduces the finding.
CAMERA = ["data.recipe.camera_prompts=true", "sampler.camera_prompts=true"]   # the camera prompt, both ways
ABLATIONS = {
    # Table 4: one trained model per seed, evaluated with every earlier turn in context, and without
    # (each turn sees only the image it edits, the model's previous output, and its instruction).
    "context": ("no_context", "context", {
        "context": {"train": [], "eval": ["--context", "full"]},
        "no_context": {"train_as": "context", "eval": ["--context", "none"]}}),
    # Table 5: whole sessions against the same sessions cut into (I_i, T_i, I_{i+1}) pairs, at the same
    # steps and token budget per step (data.pack.token_budget).
    "pairwise": ("pairwise", "session", {
        "session": ["data.recipe.pairwise=false"],
        "pairwise": ["data.recipe.pairwise=true"]}),
    # Table 3, rows "w/o Seg. | I" and "w/ Seg. | I": trained without segmentation (NIP only, no RoE
    # maps in context) against with it (RoE maps in 80 % of sessions, NIP/CSP/NSP 0.6/0.2/0.2, the
    # paper's recipe); both evaluated by plain next-image prediction (inference "I").
    "segmentation": ("no_seg", "seg", {
        "seg": SEG,
        "no_seg": ["data.recipe.roe_prob=0.0", "data.recipe.task_probs=[1.0,0.0,0.0]"]}),
    # Table 3, rows "w/ Seg. | I" and "w/ Seg. | CS -> NS -> I": one model trained with segmentation per seed,
    # evaluated by plain next-image prediction and by chain-of-editing (each turn's current and next RoE
    # maps predicted first, then the frame with them in context: vincie-evaluate --coe cs_ns).
    "coe": ("seg_i", "seg_coe", {
        "seg_coe": {"train": SEG, "eval": ["--coe", "cs_ns"]},
        "seg_i": {"train_as": "seg_coe", "eval": ["--coe", "none"]}}),
    # Table 10, rows "interleaved | full" and "interleaved | block-causal": the attention mask of training and
    # editing. Under block_causal every frame after I0 is a target; under full one frame per session
    # (data/recipe.py), so at equal steps and token budget the full arm trains on fewer targets.
    "attention": ("block_causal", "full", {
        "full": ["data.recipe.mask_type=full"],
        "block_causal": ["data.recipe.mask_type=block_causal"]}),
    # Table 10, rows "text-then-image | full" and "interleaved | full": the RoPE layout of training and editing,
    # both under the full mask. The paper: text-then-image ahead at turns 1-3 (its video prior), interleaved
    # ahead at turns 4-5 (B - A < 0, then > 0).
    "rope": ("text_then_image", "interleaved", {
        "interleaved": ["data.recipe.mask_type=full", "data.pack.rope_mode=interleaved"],
        "text_then_image": ["data.recipe.mask_type=full", "data.pack.rope_mode=text_then_image"]}),
    # Table 9 and D.4, "Impact of Camera Motion": trained on videos whose camera moves, with the camera prompt
    # ("[###CAMERA: pan left###] ..." in training, "None" when editing) against without it; meant to be
    # evaluated on a static-camera held-out world (data.synthetic.heldout_world), where any pan is a failure.
    "camera": ("no_camera_prompt", "camera_prompt", {
        "camera_prompt": CAMERA,
        "no_camera_prompt": ["data.recipe.camera_prompts=false", "sampler.camera_prompts=false"]}),
    # Table 9, rows "w/ Seg. | -" and "w/ Seg. | Camera PE": the inference prompt alone. One model per seed,
    # trained as camera_prompt, edits with "[###CAMERA: None###]" before each instruction and without it.
    "camera_pe": ("no_pe", "pe", {
        "pe": {"train": CAMERA, "eval": ["sampler.camera_prompts=true"]},
        "no_pe": {"train_as": "pe", "eval": ["sampler.camera_prompts=false"]}}),
    # §4.1: the paper's model starts from an MM-DiT pre-trained on text-to-video, not from scratch. The same
    # session training from the sweep's pretrain: base (e.g. text-to-image only, data.recipe.t2i_prob=1.0,
    # docs/text_to_image.md) against from scratch, at equal session steps; with equal_compute: true the
    # scratch arm trains the base's steps more (the base's compute spent on sessions instead).
    "base": ("scratch", "base", {
        "base": [],
        "scratch": {"train": [], "from_base": False}}),
}
KEYS = {"ablation", "name", "base", "data", "data_size", "seeds", "steps", "eval", "cluster", "pretrain",
        "equal_compute"}


def _err(key: str, msg: str) -> ValueError:
    return ValueError(f"ablation.{key}: {msg}")


def read_ablation(path, ablation: str | None = None) -> dict:
    """The ablation YAML, checked (one line naming the bad key) -> the sweep dict it stands for."""
    try:
        d = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise FileNotFoundError(f"ablation: cannot read {path}: {e.strerror}") from None
    if not isinstance(d, dict):
        raise ValueError(f"ablation: {path} is not a mapping")
    for k in d:
        if k not in KEYS:
            raise _err(k, f"unknown key (known: {', '.join(sorted(KEYS))})")
    name = ablation or d.get("ablation")
    if name not in ABLATIONS:
        raise _err("ablation", f"one of {', '.join(ABLATIONS)} is required, got {name!r}")
    n = d.get("data_size")
    if not isinstance(n, int) or n <= 0:
        raise _err("data_size", f"a positive int is required, got {n!r}")
    if name == "base" and "pretrain" not in d:
        raise _err("pretrain", "the base ablation compares training from a base model with training from "
                               "scratch: give the base, e.g. {overrides: [data.recipe.t2i_prob=1.0], steps: 1000}")
    steps = d.get("steps")
    if not isinstance(steps, int) or steps <= 0:
        raise _err("steps", f"a positive int is required (the same for both arms), got {steps!r}")
    models = copy.deepcopy(ABLATIONS[name][2])
    equal = d.get("equal_compute", False)
    if not isinstance(equal, bool) or (equal and name != "base"):
        raise _err("equal_compute", f"true or false, for the base ablation only, got {equal!r}"
                                    + ("" if name == "base" else f" with ablation {name!r}"))
    if equal:       # the scratch arm spends the base's steps on sessions: equal compute, not equal session steps
        pre = d["pretrain"]
        if not isinstance(pre, dict) or not isinstance(pre.get("steps"), int) or pre["steps"] <= 0:
            raise _err("pretrain.steps", f"a positive int is required, got {pre.get('steps') if isinstance(pre, dict) else pre!r}")
        models["scratch"]["extra_steps"] = pre["steps"]
    sweep = {k: v for k, v in d.items() if k not in ("ablation", "data_size", "steps", "equal_compute")}
    sweep.update(data_sizes=[n], models=models, combine="product",
                 steps={"rule": "fixed", "steps": steps})
    sweep.setdefault("name", name)
    return {"ablation": name, "sweep": sweep}


def plan(config, sweep_dir, ablation: str | None = None, build_data: bool = True, progress: bool = True) -> dict:
    """Resolve the ablation into a sweep under ``sweep_dir`` (``plan.plan``) + ``ablation.json``'s header."""
    a = read_ablation(config, ablation)
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "ablation_sweep.yaml").write_text(yaml.safe_dump(a["sweep"], sort_keys=False))
    s = P.plan(sweep_dir / "ablation_sweep.yaml", sweep_dir, build_data=build_data, progress=progress)
    arm_a, arm_b, _ = ABLATIONS[a["ablation"]]
    (sweep_dir / "ablation_plan.json").write_text(json.dumps({"ablation": a["ablation"], "arm_a": arm_a,
                                                              "arm_b": arm_b}, indent=1))
    return {**s, "ablation": a["ablation"], "arms": [arm_a, arm_b]}


# ----------------------------------------------------------------------------- statistics

def paired_bootstrap(a, b, reps: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Per-turn arm means and the paired difference B - A with a percentile bootstrap CI.

    ``a``, ``b``: success (0/1 or any score) as arrays [seeds, sessions, turns]; ``a[s, i]`` and
    ``b[s, i]`` are the same seed's and the same held-out session's results (the pairing). Each
    replicate resamples seeds with replacement, then, within each drawn seed, sessions with
    replacement (a two-stage bootstrap: both the training seed and the held-out set are random),
    and takes the mean of B - A over the drawn (seed, session) pairs. With one seed only the
    sessions vary, so the CI then says nothing about seed-to-seed spread.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"paired_bootstrap: a and b must be equal non-empty [seeds, sessions, turns], "
                         f"got {list(a.shape)} and {list(b.shape)}")
    S, N, T = a.shape
    rng = np.random.default_rng(seed)
    si = rng.integers(S, size=(reps, S))                          # seeds drawn per replicate
    ni = rng.integers(N, size=(reps, S, N))                       # sessions drawn within each drawn seed
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def boot(x):                                                  # [reps, T]: the mean per replicate
        return x[si[:, :, None], ni].mean(axis=(1, 2))

    out = {"turns": T, "n_seeds": S, "sessions": N, "reps": reps, "level": level, "per_turn": []}
    ba, bb, bd = boot(a), boot(b), boot(b - a)
    for t in range(T):
        row = {"turn": t + 1}
        for key, x, bx in (("a", a, ba), ("b", b, bb), ("diff", b - a, bd)):
            row[key] = float(x[:, :, t].mean())
            row[f"{key}_ci"] = [float(np.percentile(bx[:, t], lo_q)), float(np.percentile(bx[:, t], hi_q))]
        row["a_per_seed"] = [float(v) for v in a[:, :, t].mean(axis=1)]
        row["b_per_seed"] = [float(v) for v in b[:, :, t].mean(axis=1)]
        lo, hi = row["diff_ci"]
        row["reading"] = ("B > A (CI above 0)" if lo > 0 else "B < A (CI below 0)" if hi < 0
                          else "no significant difference (CI covers 0)")
        out["per_turn"].append(row)
    return out


# ----------------------------------------------------------------------------- report

def gather(sweep_dir) -> dict:
    """The two arms' per-session results, paired by seed -> {"a", "b": [S, N, T], "seeds", "missing"}."""
    sweep_dir = Path(sweep_dir)
    hdr = json.loads((sweep_dir / "ablation_plan.json").read_text())
    runs = P.read_runs(sweep_dir)
    res, missing = {}, []
    for r in runs:
        p = eval_path(r)
        if not p.is_file():
            missing.append(r.name)
            continue
        ev = json.loads(p.read_text())
        if "session_success" not in ev:
            raise ValueError(f"{p}: no session_success (evaluated by an older vincie-evaluate)")
        res[(r.model, r.seed)] = np.asarray(ev["session_success"], dtype=float).T      # [N, T]
    seeds = sorted({s for (m, s) in res if (hdr["arm_a"], s) in res and (hdr["arm_b"], s) in res})
    if not seeds:
        raise ValueError(f"{sweep_dir}: no seed has both arms evaluated (missing: {', '.join(missing) or 'none'})")
    shapes = {res[(m, s)].shape for s in seeds for m in (hdr["arm_a"], hdr["arm_b"])}
    if len(shapes) != 1:
        raise ValueError(f"{sweep_dir}: the arms were judged on different held-out sets {sorted(shapes)}; "
                         "pairing needs the same sessions (same store and eval.sessions)")
    a = np.stack([res[(hdr["arm_a"], s)] for s in seeds])
    b = np.stack([res[(hdr["arm_b"], s)] for s in seeds])
    return {**hdr, "a": a, "b": b, "seeds": seeds, "missing": missing}


def format_table(res: dict) -> str:
    A, B = res["arm_a"], res["arm_b"]
    lines = [f"| turn | {A} (A) | {B} (B) | B - A | 95 % CI | reading |", "|---|---|---|---|---|---|"]
    for r in res["per_turn"]:
        lines.append(f"| {r['turn']} | {r['a']:.3f} | {r['b']:.3f} | {r['diff']:+.3f} | "
                     f"[{r['diff_ci'][0]:+.3f}, {r['diff_ci'][1]:+.3f}] | {r['reading']} |")
    return "\n".join(lines)


def plot(res: dict, path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["per_turn"]
    x = np.arange(1, len(rows) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for off, key, name in ((-0.2, "a", res["arm_a"]), (0.2, "b", res["arm_b"])):
        m = np.array([r[key] for r in rows])
        ci = np.array([r[f"{key}_ci"] for r in rows]).T
        ax1.bar(x + off, m, 0.4, yerr=np.abs(ci - m), capsize=3, label=name)
    ax1.set(xlabel="turn", ylabel="success", title="success per turn (95 % CI)", xticks=x)
    ax1.legend()
    d = np.array([r["diff"] for r in rows])
    ci = np.array([r["diff_ci"] for r in rows]).T
    ax2.bar(x, d, 0.5, yerr=np.abs(ci - d), capsize=3, color=["tab:green" if v >= 0 else "tab:red" for v in d])
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set(xlabel="turn", ylabel=f"{res['arm_b']} - {res['arm_a']}", title="paired difference (95 % CI)", xticks=x)
    fig.suptitle(f"ablation: {res['ablation']} ({len(res['seeds'])} seeds x {res['sessions']} sessions)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def report(sweep_dir, reps: int = 2000) -> dict:
    """SWEEP/ablation.json, ablation.md and ablation.png from the evaluated runs (missing runs listed)."""
    sweep_dir = Path(sweep_dir)
    g = gather(sweep_dir)
    res = {"ablation": g["ablation"], "arm_a": g["arm_a"], "arm_b": g["arm_b"], "seeds": g["seeds"],
           "missing": g["missing"], **paired_bootstrap(g["a"], g["b"], reps=reps)}
    (sweep_dir / "ablation.json").write_text(json.dumps(res, indent=1))
    png = plot(res, sweep_dir / "ablation.png")
    md = [f"# Ablation: {res['ablation']}", "",
          f"Arm A `{res['arm_a']}`, arm B `{res['arm_b']}`; seeds {res['seeds']}, {res['sessions']} held-out "
          f"sessions per seed (the same for both arms)" + (f"; missing runs: {', '.join(res['missing'])}"
                                                           if res["missing"] else "") + ".",
          f"Success is the mean over seeds and sessions; the CI is a paired two-stage bootstrap over seeds, "
          f"then sessions ({res['reps']} replicates; docs/ablations.md).", "", format_table(res), "",
          f"![ablation]({Path(png).name})"]
    (sweep_dir / "ablation.md").write_text("\n".join(md) + "\n")
    return res
