"""A tiny data-scaling sweep from plan to report, on a real local Slurm (../shared/recipes/slurm-ci.sh).

The planning tests resolve 4 data sizes x 2 seeds. The Slurm run uses 3 sizes x 1 seed of the demo
recipe (the fewest the loss fit takes) on one shared synthetic store (nested subsets), about 80 s on
2 cores. One array element is cancelled before it starts, so its evaluation never runs and collect
lists it as missing. ``launch`` again resubmits only that run. The final table has all 3 runs, and
then come the fit, the plots and the report.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import slurm_cluster  # noqa: F401,F811 - the fixture

from vincie_mcore.sweep import plan as P

BIN = Path(sys.executable).parent
SIZES, SEEDS = [4, 8, 12, 16], [0, 1]
SLURM_SIZES = [4, 8, 16]


def _config(tmp_path, seeds=SEEDS, sizes=SIZES, **cluster) -> Path:
    conf = {"name": "tiny",
            "base": ["experiment=demo", "data.pack.token_budget=400", "train.warmup=0", "train.log_every=1",
                     "sampler.steps=2", "data.corpus.workers=1"],
            "data": {"synthetic": {"videos": 16, "heldout_videos": 6, "world": "demo"}},
            "data_sizes": list(sizes), "seeds": list(seeds),
            "steps": {"rule": "proportional", "per_session": 0.25, "min": 1, "max": 100},
            "eval": {"overrides": ["eval.turns=2"], "sessions": 6},
            "cluster": {"gpus_per_run": 0, "cpus_per_task": 1, "max_concurrent": 2, **cluster}}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(conf))
    return p


def test_plan_resolves_runs_nested_data_and_budget(tmp_path):
    s = P.plan(_config(tmp_path, gpus_per_run=8, step_time_s=2.0), tmp_path / "sw", build_data=False)
    runs = P.read_runs(tmp_path / "sw")
    assert s["runs"] == len(runs) == 8 and [r.steps for r in runs[::2]] == [1, 2, 3, 4]
    assert {(r.data_size, r.seed) for r in runs} == {(n, s) for n in SIZES for s in SEEDS}
    stores = {o for r in runs for o in r.overrides if o.startswith("data.corpus.store=")}
    assert len(stores) == 1                                  # one store: the sizes are nested subsets of it
    assert "data.corpus.max_sessions=12" in runs[4].overrides and "seed=1" in runs[5].overrides
    assert s["budget"]["gpu_hours"] == pytest.approx(2 * (1 + 2 + 3 + 4) * 2.0 * 8 / 3600, abs=0.01)
    with pytest.raises(ValueError, match="planned with other runs already"):
        bad = yaml.safe_load(_config(tmp_path).read_text())
        bad["seeds"] = [0]
        (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
        P.plan(tmp_path / "b.yaml", tmp_path / "sw", build_data=False)


def test_plan_with_a_base_model_per_seed(tmp_path):
    """``pretrain:``: one base run per seed, on the shared store, and each run of that seed starts from it."""
    conf = yaml.safe_load(_config(tmp_path, gpus_per_run=8, step_time_s=2.0).read_text())
    conf["pretrain"] = {"overrides": ["data.recipe.mask_type=full"], "steps": 5}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(conf))
    s = P.plan(tmp_path / "p.yaml", tmp_path / "sw", build_data=False)
    runs, pre = P.read_runs(tmp_path / "sw"), P.read_pretrain(tmp_path / "sw")
    assert [(b.name, b.seed, b.steps, b.data_size) for b in pre] == [("pretrain_s0", 0, 5, 16), ("pretrain_s1", 1, 5, 16)]
    assert {"data.recipe.mask_type=full", "data.corpus.max_sessions=16", "train.steps=5"} <= set(pre[1].overrides)
    for r in runs:
        base = pre[r.pretrain]
        assert base.seed == r.seed and r.overrides[-1] == f"train.init_from={base.run_dir}/checkpoints"
        assert "data.recipe.mask_type=full" not in r.overrides
    assert (s["budget"]["steps"], s["budget"]["pretrain_runs"]) == (2 * (1 + 2 + 3 + 4) + 2 * 5, 2)
    assert P.read_pretrain(tmp_path) == []                  # a sweep without one


def test_bad_sweep_yaml_is_one_line(tmp_path):
    for change, msg in (({"data_sizes": []}, "sweep.data_sizes: a list of positive ints"),
                        ({"steps": {"rule": "cosine"}}, "sweep.steps.rule: fixed or proportional"),
                        ({"learning": 1}, "sweep.learning: unknown key"),
                        ({"data": {}}, "sweep.data: give either synthetic"),
                        ({"data_sizes": [4, 64]}, "sweep.data.synthetic.videos: must be >= the largest data size 64"),
                        # each training run's config is built at plan time, not in its array element
                        ({"models": {"big": ["model.num_layers=0"]}},
                         "sweep.models.big: model.num_layers: expected a positive int, got 0 (run big_d4_s0"),
                        ({"models": {"tti": ["data.pack.rope_mode=text_then_image"]}},
                         "sweep.models.tti: data.pack.rope_mode: text_then_image needs data.recipe.mask_type=full"),
                        # and with vincie-evaluate's overrides, which would fail only after the training
                        ({"eval": {"overrides": ["eval.trns=2"], "sessions": 6}},
                         "sweep.models.default: config: Could not override 'eval.trns'. (run default_d4_s0"),
                        ({"models": {"a": [], "b": {"train_as": "a", "eval": ["--context", "none", "sampler.stesp=2"]}}},
                         "sweep.models.b: config: Could not override 'sampler.stesp'. (run b_d4_s0"),
                        ({"models": {"a": [], "b": {"train_as": "a", "from_base": False}}},
                         "sweep.models.b.from_base: true or false, on a model that trains"),
                        ({"models": {"a": {"train": [], "extra_steps": -1}}},
                         "sweep.models.a.extra_steps: an int >= 0, on a model that trains, got -1"),
                        # a base model per seed
                        ({"pretrain": {"overrides": []}}, "sweep.pretrain.steps: a positive int is required"),
                        ({"pretrain": {"steps": 2, "lr": 1}}, "sweep.pretrain: unknown key 'lr'"),
                        ({"pretrain": {"steps": 2, "data_size": 64}}, "sweep.pretrain.data_size: must be <= "
                                                                       "data.synthetic.videos (16), got 64"),
                        ({"pretrain": {"steps": 2, "overrides": ["model.num_layers=0"]}},
                         "sweep.pretrain: model.num_layers: expected a positive int, got 0 (run pretrain_s0")):
        d = yaml.safe_load(_config(tmp_path).read_text())
        d.update(change)
        (tmp_path / "x.yaml").write_text(yaml.safe_dump(d))
        r = subprocess.run([str(BIN / "vincie-sweep"), "plan", "--config", str(tmp_path / "x.yaml"), "--sweep",
                            str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _sweep(*args, env=None):
    r = subprocess.run([str(BIN / "vincie-sweep"), *args], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _ended(env, job) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", str(job)], env=env, capture_output=True, text=True).stdout
    return not out.strip()


def _wait(cond, timeout=900, what=""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_tiny_sweep_on_slurm_with_a_failed_element_rerun(slurm_cluster, tmp_path):
    env = dict(slurm_cluster, PATH=f"{BIN}:{os.environ['PATH']}")
    sw = tmp_path / "sw"
    _sweep("plan", "--config", str(_config(tmp_path, seeds=[0], sizes=SLURM_SIZES)), "--sweep", str(sw), "--quiet",
           env=env)
    first = json.loads(_sweep_launch(sw, env))
    assert first["runs"] == list(range(3)) and len(first["evals"]) == 3
    # element 2 waits behind the %2 cap: cancel it before it starts
    subprocess.run(["scancel", f"{first['train']}_2"], env=env, check=True)
    _wait(lambda: _ended(env, first["collect"]), what="the first collect")
    res = json.loads((sw / "results.json").read_text())
    assert len(res["runs"]) == 2 and res["missing"] == [P.read_runs(sw)[2].name]
    assert "failed or cancelled" in _sweep("status", "--sweep", str(sw), env=env)

    again = json.loads(_sweep_launch(sw, env))
    assert again["runs"] == [2]                              # only the run that did not finish
    _wait(lambda: _ended(env, again["collect"]), what="the second collect")
    res = json.loads((sw / "results.json").read_text())
    assert len(res["runs"]) == 3 and not res["missing"]
    assert {(r["data_size"], r["seed"]) for r in res["runs"]} == {(n, 0) for n in SLURM_SIZES}
    assert all(len(r["turn_success"]) == 2 and r["final_loss"] is not None for r in res["runs"])
    assert json.loads(_sweep_launch(sw, env))["runs"] == []     # all done: nothing to submit

    out = _sweep("report", "--sweep", str(sw), env=env)
    report = Path(out.strip().splitlines()[-1]).read_text()
    assert "| default_d16_s0 |" in report and "success_vs_data.png" in report
    for png in ("success_vs_data.png", "loss_vs_data.png"):
        assert (sw / png).stat().st_size > 1000


def _sweep_launch(sw, env) -> str:
    """``launch``, returning its record as JSON (the last line of launches.jsonl, or empty)."""
    before = (sw / "launches.jsonl").read_text().splitlines() if (sw / "launches.jsonl").is_file() else []
    _sweep("launch", "--sweep", str(sw), env=env)
    after = (sw / "launches.jsonl").read_text().splitlines() if (sw / "launches.jsonl").is_file() else []
    return after[-1] if len(after) > len(before) else json.dumps({"runs": []})
