"""The whole path through the command-line tools, small: build -> train (checkpoint) -> edit.

Each tool runs in its own process (as a user runs them), so Megatron's global
state never leaks between tests.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["experiment=demo", "data.corpus.videos=24", "data.corpus.heldout_videos=4", "data.corpus.workers=1",
         "data.pack.token_budget=400", "train.steps=3", "train.warmup=0", "train.log_every=1", "train.progress=false"]


def run(script, *args, timeout=600):
    """Run one of the package's console scripts (declared in pyproject.toml) from the venv's bin/."""
    exe = Path(sys.executable).parent / script
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    r = run("vincie-train", *SMALL, f"run_dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def test_train_writes_a_resumable_checkpoint_and_logs_throughput(trained_run):
    ckpt = trained_run / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "3"
    assert (trained_run / "config.yaml").is_file() and (trained_run / "loss.png").is_file()
    assert any((trained_run / "tensorboard").iterdir())


def test_multi_turn_edit_from_saved_checkpoint(trained_run, tmp_path):
    start = np.full((24, 24, 3), 30, np.uint8)
    start[2:6, 2:6] = (220, 40, 40)
    Image.fromarray(start).save(tmp_path / "start.png")
    out = tmp_path / "strip.png"
    r = run("vincie-edit", "--run", str(trained_run), "--image", str(tmp_path / "start.png"),
            "--prompt", "make the red square blue", "--prompt", "move the blue square to the center",
            "--out", str(out), "--set", "sampler.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    turns = [np.asarray(Image.open(tmp_path / f"strip_turn{i}.png")) for i in (1, 2)]
    assert all(t.shape == (24, 24, 3) and t.dtype == np.uint8 for t in turns)
    assert Image.open(out).size[0] > 3 * 24


def test_evaluate_rejudges_a_saved_run_with_other_sampler_settings(trained_run):
    import json
    r = run("vincie-evaluate", "--run", str(trained_run), "--store", str(trained_run / "train" / "store"),
            "sampler.steps=2", "sampler.guidance=1.0", "eval.turns=1")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["turn_success"]) == 1 and out["overrides"][0] == "sampler.steps=2"
    bad = run("vincie-evaluate", "--run", str(trained_run), "--store", str(trained_run / "train" / "store"),
              "sampler.steps=-1")
    assert bad.returncode == 2 and "sampler.steps" in bad.stderr
    missing = run("vincie-evaluate", "--run", str(trained_run), "--store", str(trained_run / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_diagnose_context_takes_the_error_apart(trained_run):
    """copy_source is the plain I0-vs-I1 error; the model's error lies between its unchanged- and
    changed-token parts (a token-weighted mean of the two)."""
    import json
    import torch
    from vincie_mcore.data.store import SessionStore
    store = trained_run / "train" / "store"
    r = run("vincie-diagnose-context", "--run", str(trained_run), "--store", str(store), "--sessions", "6",
            "--t", "1.0")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])["t"]["1.0"]
    assert min(d["unchanged"], d["changed"]) - 1e-5 <= d["model"] <= max(d["unchanged"], d["changed"]) + 1e-5
    st = SessionStore(store)
    import io
    png = lambda b: np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB"), dtype=np.float32)   # PIL, not DALI
    frames = [torch.from_numpy(np.stack([png(b) for b in st[i].frames[:2]])) / 127.5 - 1 for i in range(6)]
    copy = sum(float((f[0] - f[1]).pow(2).mean()) for f in frames) / 6
    assert abs(d["copy_source"] - copy) < 1e-4


def test_demo_runs_end_to_end_small_and_trains_afresh(tmp_path):
    """`make demo`'s tool, tiny: its last line is the JSON the README promises; a stale checkpoint
    folder from an earlier run is replaced, not resumed."""
    import json
    (tmp_path / "checkpoints" / "stale").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("999")
    r = run("vincie-demo", f"run_dir={tmp_path}", "data.corpus.videos=24", "data.corpus.heldout_videos=40",
            "data.corpus.workers=1", "data.pack.token_budget=400", "train.steps=3", "train.warmup=0", "train.progress=false",
            "sampler.steps=2", "eval.turns=2")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"turn_success", "baseline_success", "success_by_edit", "minutes", "seconds_per_step", "git_sha"} <= set(out)
    assert len(out["turn_success"]) == len(out["baseline_success"]) == 2 and out["steps"] == 3
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "3"
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "results.json").is_file()


def test_edit_rejects_bad_image_with_one_line(trained_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    r = run("vincie-edit", "--run", str(trained_run), "--image", str(bad), "--prompt", "x")
    assert r.returncode == 2 and str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override,key", [("train.lr=-1", "lr"), ("+data.recipe.bogus=1", "data.recipe.bogus"),
                                          ("data.recipe.mask_type=diagonal", "mask_type"),
                                          ("model.num_heads=5", "num_heads")])
def test_bad_config_value_names_the_key(override, key, tmp_path):
    r = run("vincie-train", *SMALL, f"run_dir={tmp_path}", override, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert key in last, r.stderr[-2000:]
