"""``vincie-sweep launch | status | collect`` and the two steps a Slurm task runs (``run-train``, ``run-eval``).

launch submits, and returns at once with the job ids:
- one training array over the runs not yet done, capped at ``cluster.max_concurrent`` at a time
  (``--array=i,j,...%N``);
- per run, an evaluation job that waits for its array element (``afterok:ARRAY_i``);
- one ``collect`` job after every evaluation has ended, whatever the outcome (``afterany``), so a
  failed run never blocks the table.

A run is done when its ``eval.json`` exists. Launching again resubmits only the runs that are not
done and not waiting or running under an earlier launch. Every launch is recorded in
``SWEEP/launches.jsonl``.

With ``pretrain:`` (``plan.py``), a base-model array comes first, over the seeds whose base the runs to
train need and that is neither trained to its steps nor queued; the training array waits for it
(``afterok``, and for a base still queued from an earlier launch), and is cancelled with it if a base
fails (``--kill-on-invalid-dep``), its evaluations with it; collect still runs. Runs that start from no
base (``models.<name>.from_base: false``, the ``base`` ablation's scratch arm) go in an array of their own
that waits for nothing (``train_free``, ``free_runs`` in the launch record).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .plan import read_planned, read_pretrain, read_runs

SLURM = Path(__file__).resolve().parents[2] / "slurm"
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def eval_path(run) -> Path:
    return Path(run.run_dir) / getattr(run, "eval_file", "eval.json")


def trainer_index(run) -> int:
    """The run whose array element trains ``run``'s run_dir (itself, or its ``train_as`` owner)."""
    return run.index if run.train_with is None else run.train_with


def _sbatch(args: list[str], env=None) -> str:
    r = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"sbatch failed: {' '.join(r.stderr.split())[:300]}")
    return r.stdout.strip().split(";")[0]


def job_states(ids: list[str], env=None) -> dict[str, str] | None:
    """Slurm's state of each queued job id (array elements as ``ARRAY_i``); ids no longer queued are
    left out. None when the queue cannot be read (no squeue, or no controller answers)."""
    if not ids:
        return {}
    if not shutil.which("squeue"):
        return None
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, env=env)
    if r.returncode:
        return None
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return {i: out[i] for i in ids if i in out}


def _launched(sweep_dir: Path, pretrain: bool = False) -> dict[int, str]:
    """Run index -> the Slurm id of its latest training element (``pretrain``: of the base runs)."""
    p = sweep_dir / "launches.jsonl"
    out: dict[int, str] = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if pretrain:
                    out.update({int(i): f"{rec['pretrain']}_{i}" for i in rec.get("pretrain_runs", [])})
                    continue
                owner = rec.get("trained_by", {})              # eval-only runs: their owner's element
                free = set(rec.get("free_runs", []))          # trained by the array that waits for no base
                for i in rec["runs"]:
                    o = owner.get(str(i), i)
                    out[int(i)] = f"{rec['train_free'] if o in free else rec['train']}_{o}"
    return out


def _steps_done(run) -> int | None:
    from ..train.checkpoint import latest_step

    ckpt = Path(run.run_dir) / "checkpoints"
    return latest_step(str(ckpt)) if ckpt.is_dir() else None


def _trained(run) -> bool:
    step = _steps_done(run)
    return step is not None and step >= run.steps


def launch(sweep_dir, env=None, extra_sbatch: list[str] | None = None) -> dict:
    """Submit what is not done -> {"train", "evals", "collect", "runs"} (job ids; nothing when all is done)."""
    sweep_dir = Path(sweep_dir).resolve()
    runs, d, pre = read_runs(sweep_dir), read_planned(sweep_dir), read_pretrain(sweep_dir)
    last, last_pre = _launched(sweep_dir), _launched(sweep_dir, pretrain=True)
    live = job_states([*last.values(), *last_pre.values()], env)
    if live is None and (last or last_pre):      # cannot tell what is still queued: never submit twice
        raise RuntimeError("launch: cannot read the Slurm queue (squeue failed); is SLURM_CONF set?")
    live = live or {}
    todo = [r for r in runs if not eval_path(r).is_file() and live.get(last.get(r.index, ""), "") not in LIVE]
    if not todo:
        return {"train": None, "evals": {}, "collect": None, "runs": []}
    c = d.get("cluster", {})
    logs = sweep_dir / "logs"
    logs.mkdir(exist_ok=True)
    res = [f"--nodes={int(c.get('nodes_per_run', 1))}", f"--cpus-per-task={int(c.get('cpus_per_task', 1))}",
           f"--time={c.get('time', '24:00:00')}"]
    if int(c.get("gpus_per_run", 0)):
        res.append(f"--gpus-per-node={int(c['gpus_per_run'])}")
    if c.get("partition"):
        res.append(f"--partition={c['partition']}")
    cap = int(c.get("max_concurrent", 0))
    # a run_dir shared by an eval-only arm is trained once, by its owner's element (training an
    # already finished run resumes at its last step and stops)
    trained = sorted({trainer_index(r) for r in todo})
    # the base runs these need: wait for those queued already, submit those neither trained nor queued
    bases = sorted({runs[i].pretrain for i in trained if runs[i].pretrain is not None})
    queued = [last_pre[b] for b in bases if live.get(last_pre.get(b, ""), "") in LIVE]
    pre_todo = [b for b in bases if not _trained(pre[b]) and live.get(last_pre.get(b, ""), "") not in LIVE]
    after = list(queued)
    pretrain_job = None
    if pre_todo:
        pretrain_job = _sbatch([f"--array={','.join(map(str, pre_todo))}" + (f"%{cap}" if cap else ""),
                                f"--output={logs}/pretrain_%a_%A.out",
                                *res, *(extra_sbatch or []), str(SLURM / "sweep_train.sbatch"), str(sweep_dir),
                                "pretrain"], env)
        after.append(pretrain_job)
    wait = [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"] if after else []
    # runs from no base wait for nothing: an array of their own when others wait for a base (so, with
    # ``after`` set, some run waits and ``train`` is the waiting array)
    free = [i for i in trained if runs[i].pretrain is None] if after else []
    job_of = {}
    for group, dep in (([i for i in trained if i not in free], wait), (free, [])):
        if group:
            array = ",".join(str(i) for i in group) + (f"%{cap}" if cap else "")
            job = _sbatch([f"--array={array}", f"--output={logs}/train_%a_%A.out", *dep, *res, *(extra_sbatch or []),
                           str(SLURM / "sweep_train.sbatch"), str(sweep_dir)], env)
            job_of.update({i: job for i in group})
    train = job_of[next(i for i in trained if i not in free)]
    evals = {r.index: _sbatch([f"--dependency=afterok:{job_of[trainer_index(r)]}_{trainer_index(r)}",
                               "--kill-on-invalid-dep=yes",
                               f"--output={logs}/eval_{r.index}_%j.out", f"--cpus-per-task={int(c.get('cpus_per_task', 1))}",
                               *(extra_sbatch or []), str(SLURM / "sweep_eval.sbatch"), str(sweep_dir), str(r.index)], env)
             for r in todo}
    collect = _sbatch([f"--dependency=afterany:{':'.join(evals.values())}", f"--output={logs}/collect_%j.out",
                       *(extra_sbatch or []), str(SLURM / "sweep_collect.sbatch"), str(sweep_dir)], env)
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "train": train, "evals": evals, "collect": collect,
           "runs": [r.index for r in todo]}
    if any(r.train_with is not None for r in todo):
        rec["trained_by"] = {str(r.index): r.train_with for r in todo if r.train_with is not None}
    if pretrain_job:
        rec.update(pretrain=pretrain_job, pretrain_runs=pre_todo)
    if free:
        rec.update(train_free=job_of[free[0]], free_runs=free)
    with open(sweep_dir / "launches.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def format_launch(rec: dict) -> str:
    """One line for what ``launch`` submitted."""
    if not rec["runs"]:
        return "launch: nothing to do, every run is done or queued"
    base = (f"base array {rec['pretrain']} ({len(rec['pretrain_runs'])} runs), then " if rec.get("pretrain") else "")
    n = len(rec.get("free_runs", []))
    free = (f" (and {rec['train_free']} for the {n} run{'s' * (n != 1)} from no base, at once)"
            if rec.get("train_free") else "")
    return (f"launch: {len(rec['runs'])} runs; {base}train array {rec['train']}{free}, "
            f"evals {' '.join(rec['evals'].values())}, "
            f"collect {rec['collect']}")


# ----------------------------------------------------------------------------- inside a task

def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def run_train(sweep_dir, index: int, pretrain: bool = False) -> int:
    run = (read_pretrain(sweep_dir) if pretrain else read_runs(sweep_dir))[index]
    return subprocess.run([_tool("vincie-train"), *run.overrides]).returncode


def run_eval(sweep_dir, index: int) -> int:
    run, d = read_runs(sweep_dir)[index], read_planned(sweep_dir)
    ev = d.get("eval", {})
    heldout = next(o.split("=", 1)[1] for o in run.overrides if o.startswith("data.corpus.heldout_store="))
    args = [_tool("vincie-evaluate"), "--run", run.run_dir, "--store", heldout, "--out", str(eval_path(run) ) + ".tmp"]
    if ev.get("sessions"):
        args += ["--sessions", str(int(ev["sessions"]))]
    args += run.eval_args                     # options first: the overrides are one trailing positional list
    rc = subprocess.run([*args, *ev.get("overrides", [])]).returncode
    if rc == 0:
        os.replace(str(eval_path(run)) + ".tmp", eval_path(run))     # done means the whole file is there
    return rc


# ----------------------------------------------------------------------------- reading runs

def _last_loss(run_dir: Path) -> tuple[int | None, float | None]:
    """(step, loss) of the last logged training loss (TensorBoard events), or (None, None)."""
    tb = run_dir / "tensorboard"
    if not tb.is_dir():
        return None, None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    ea.Reload()
    if "train/loss" not in ea.Tags().get("scalars", []):
        return None, None
    ev = ea.Scalars("train/loss")[-1]
    return int(ev.step), float(ev.value)


def status(sweep_dir, env=None) -> list[dict]:
    """One row per run: state, step, last loss, eval done."""
    sweep_dir = Path(sweep_dir).resolve()
    runs, pre = read_runs(sweep_dir), read_pretrain(sweep_dir)
    last, last_pre = _launched(sweep_dir), _launched(sweep_dir, pretrain=True)
    live = job_states([*last.values(), *last_pre.values()], env)
    rows = []
    for r, base in [(r, True) for r in pre] + [(r, False) for r in runs]:   # bases first: done once trained
        step = _steps_done(r)
        trained = step is not None and step >= r.steps
        _, loss = _last_loss(Path(r.run_dir))
        done = trained if base else eval_path(r).is_file()
        job = (last_pre if base else last).get(r.index)
        if done:
            state = "done"
        elif job and live and live.get(job):
            state = live[job].lower()
        elif trained:
            state = "trained, eval missing"
        elif job:
            state = "unknown (no Slurm queue)" if live is None else "failed or cancelled"
        else:
            state = "not launched"
        rows.append({"run": r.name, "data_size": r.data_size, "model": r.model, "seed": r.seed, "state": state,
                     "step": step, "steps": r.steps, "last_loss": loss, "eval": None if base else done})
    return rows


def format_status(rows: list[dict]) -> str:
    head = f"{'run':<24} {'state':<22} {'step':>9} {'loss':>9}  eval"
    lines = [head] + [f"{r['run']:<24} {r['state']:<22} {str(r['step']) + '/' + str(r['steps']):>9} "
                      f"{'' if r['last_loss'] is None else format(r['last_loss'], '.4f'):>9}  "
                      f"{'-' if r['eval'] is None else 'yes' if r['eval'] else 'no'}"
                      for r in rows]
    return "\n".join(lines)


def collect(sweep_dir) -> list[dict]:
    """The table of finished runs (``sweep/fit.py``'s input) -> SWEEP/results.json and results.csv.
    Runs without an evaluation are listed in results.json's "missing", never fatal."""
    sweep_dir = Path(sweep_dir).resolve()
    table, missing = [], []
    for r in read_runs(sweep_dir):
        if not eval_path(r).is_file():
            missing.append(r.name)
            continue
        ev = json.loads(eval_path(r).read_text())
        _, loss = _last_loss(Path(r.run_dir))
        table.append({"run": r.name, "data_size": r.data_size, "model": r.model, "seed": r.seed,
                      "steps": r.steps, "turn_success": ev["turn_success"], "final_loss": loss})
    (sweep_dir / "results.json").write_text(json.dumps({"runs": table, "missing": missing}, indent=1))
    turns = max((len(t["turn_success"]) for t in table), default=0)
    head = ["run", "data_size", "model", "seed", "steps", "final_loss"] + [f"turn_{i}" for i in range(1, turns + 1)]
    lines = [",".join(head)] + [",".join(str(x) for x in [t["run"], t["data_size"], t["model"], t["seed"], t["steps"],
                                                         t["final_loss"], *t["turn_success"]]) for t in table]
    (sweep_dir / "results.csv").write_text("\n".join(lines) + "\n")
    return table
