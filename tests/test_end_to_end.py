"""The whole path through the command-line tools, small: build -> train (checkpoint) -> edit.

Each tool runs in its own process (as a user runs them), so Megatron's global
state never leaks between tests.
"""
import os
import platform
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
def trained_run(shared_demo_run):
    """The suite's demo run (tests/conftest.py): 3 steps, a checkpoint after each (train.keep_last is 3: all
    kept; the resume test starts from step 1's), trained with SMALL and ``train.save_every=1``."""
    from omegaconf import OmegaConf
    t = OmegaConf.load(shared_demo_run / "config.yaml").train            # what the resume below relies on
    assert (t.steps, t.save_every, t.log_every, t.warmup) == (3, 1, 1, 0), OmegaConf.to_yaml(t)
    return shared_demo_run


def scalars(run_dir):
    """{tag: [(step, value, wall_time)]} from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run_dir / "tensorboard"))
    ea.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def checkpoint_tensors(step_dir):
    """Every tensor of a dist_checkpointing folder (weights and Adam moments), read without process groups."""
    import tempfile
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(step_dir), f"{tmp}/ckpt.pt")
        loaded = torch.load(f"{tmp}/ckpt.pt", weights_only=False)
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def log_line(stdout, step):
    """'step N | loss ... | lr ... | grad ...' of the console log, without the throughput fields."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("step") and ln.split("|")[0].split()[1] == str(step)]
    assert len(lines) == 1, stdout[-2000:]
    return lines[0].split(" | ")[:4]


def test_train_writes_checkpoints_and_its_files(trained_run):
    ckpt = trained_run / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "3"
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_0000001", "step_0000002", "step_0000003"]
    assert (trained_run / "config.yaml").is_file() and (trained_run / "loss.png").is_file()


def test_train_streams_the_latent_store_it_wrote(trained_run):
    """The default data path: the synthetic store encoded once into <run_dir>/latents, streamed
    (the checkpoint's stream state is LatentStream's: epoch, position, pack)."""
    from vincie_mcore.data.latents import LatentStore
    from vincie_mcore.data.store import SessionStore
    from vincie_mcore.train.checkpoint import read_trainer_state
    assert len(LatentStore(trained_run / "latents")) == len(SessionStore(trained_run / "train" / "store")) == 24
    state = read_trainer_state(str(trained_run / "checkpoints" / "step_0000003" / "trainer_state_rank00000.pt"))["stream"]
    assert state["sessions"] == 24 and state["pack"] + state["consumed"] == 3     # 3 steps, one pack each


def test_stopped_and_resumed_training_matches_the_uninterrupted_run(trained_run, tmp_path):
    """Stop after step 1, resume in a new process: equal to the run that never stopped.

    The stopped run's state is its step-1 checkpoint (the uninterrupted run saved the same one). The
    resumed process runs step 2 and is stopped again by train.max_minutes (so it also exercises the
    time-out stop and its save). Step 2's loss, lr and grad norm, and every weight and Adam moment
    after it, must equal the uninterrupted run's: a resume that loses the optimizer, the scheduler,
    the data stream or the noise generator changes them.
    """
    import shutil
    import torch
    resumed = tmp_path / "resumed"
    shutil.copytree(trained_run / "checkpoints" / "step_0000001", resumed / "checkpoints" / "step_0000001")
    for data in ("train", "latents"):                # the same corpus: its latent store is reused, not encoded again
        shutil.copytree(trained_run / data, resumed / data)
    (resumed / "checkpoints" / "latest").write_text("1")
    r = run("vincie-train", *SMALL, "train.save_every=1", "train.max_minutes=0.000001",
            f"run_dir={resumed}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reusing the latent store" in r.stdout
    assert "stopping at step 2" in r.stdout and (resumed / "checkpoints" / "latest").read_text().strip() == "2"
    assert not any(ln.startswith("step       1 ") for ln in r.stdout.splitlines())   # step 1 was not re-run
    assert log_line(r.stdout, 2) == log_line((trained_run / "train_stdout.log").read_text(), 2)
    a, b = scalars(trained_run), scalars(resumed)
    for tag in ("train/loss", "train/lr", "train/grad_norm"):
        assert [v[:2] for v in b[tag]] == [v[:2] for v in a[tag] if v[0] == 2], tag
    want = checkpoint_tensors(trained_run / "checkpoints" / "step_0000002")
    got = checkpoint_tensors(resumed / "checkpoints" / "step_0000002")
    assert want.keys() == got.keys() and any(k.startswith("optimizer.") for k in want)
    assert not torch.equal(want["img_embedder.weight"],
                           checkpoint_tensors(trained_run / "checkpoints" / "step_0000001")["img_embedder.weight"])
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_train_logs_consistent_throughput(trained_run):
    """tokens/s and TFLOP/s as logged (TensorBoard), checked against what they must satisfy:

    * tokens/s x (seconds between two log points) = tokens in a step: at least the step's noisy
      tokens and at most the packing budget (400), each within a factor 2;
    * TFLOP/s / tokens/s = FLOPs per token (the time cancels): at least 6 x the linear-layer
      weights a token passes through (2 forward + 4 backward per weight), and below twice that
      (embeddings and attention over at most 400 keys add less). The weights are counted from
      the checkpoint.
    """
    import re
    sc = scalars(trained_run)
    tps, tfl, noisy = sc["train/tokens_per_s"], sc["train/tflops"], sc["train/noisy_tokens"]
    assert [s for s, _, _ in tps] == [s for s, _, _ in tfl] == [1, 2, 3]
    assert all(0 < v < float("inf") for _, v, _ in tps + tfl)
    for (_, _, w0), (step, rate, w1), (_, n_noisy, _) in zip(tps, tps[1:], noisy[1:]):
        per_step = rate * (w1 - w0)
        assert n_noisy / 2 <= per_step <= 2 * 400, (step, per_step, n_noisy)
    weights = checkpoint_tensors(trained_run / "checkpoints" / "step_0000003")
    per_token = sum(v.numel() for k, v in weights.items()
                    if re.fullmatch(r"layers\.\d+\.(attention|mlp)\.(img|joint)\.linear_(qkv|proj|fc1|fc2)\.weight", k))
    assert per_token > 0
    for (_, rate, _), (_, tflops, _) in zip(tps, tfl):
        flops_per_token = tflops * 1e12 / rate
        assert 6 * per_token <= flops_per_token * 1.0001 and flops_per_token < 2 * 6 * per_token, \
            (flops_per_token, 6 * per_token)
    # the console line reports the same kind of figures
    line = [ln for ln in (trained_run / "train_stdout.log").read_text().splitlines() if ln.startswith("step       3")]
    assert len(line) == 1 and "tok/s/dev" in line[0] and "TFLOP/s/dev" in line[0]


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


def test_text_to_image_then_edit_from_saved_checkpoint(trained_run, tmp_path):
    """``vincie-edit t2i``: an image per caption, each edited by the prompts, a strip each; the demo run learned
    no text-to-image, which it says (the images are still drawn: the command works on any run)."""
    out = tmp_path / "t2i.png"
    r = run("vincie-edit", "t2i", "--run", str(trained_run), "--caption", "a large red square at the top left",
            "--caption", "an empty scene", "--prompt", "make the red square blue", "--out", str(out),
            "--set", "sampler.steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained without text-to-image samples" in r.stderr
    for i in (0, 1):
        for name in (f"t2i_{i}.png", f"t2i_{i}_turn1.png"):
            im = np.asarray(Image.open(tmp_path / name))
            assert im.shape == (24, 24, 3) and im.dtype == np.uint8, name
        assert Image.open(tmp_path / f"t2i_{i}_strip.png").size[0] > 2 * 24
    bad = run("vincie-edit", "t2i", "--run", str(trained_run), "--caption", " ")
    assert bad.returncode == 2 and "--caption" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # judging T2I needs exact scenes: a held-out store without states is refused in one line
    from vincie_mcore.data.build import encode_png
    from vincie_mcore.data.store import RawSession, SessionWriter
    frames, mask = [encode_png(np.full((24, 24, 3), v, np.uint8)) for v in (10, 200)], encode_png(np.zeros((24, 24), np.uint8))
    with SessionWriter(tmp_path / "plain") as w:
        w.add(RawSession("real0", frames, [mask], [mask], ["brighten it"], ["None"]))
    r = run("vincie-evaluate", "--run", str(trained_run), "--store", str(tmp_path / "plain"), "--task", "t2i")
    assert r.returncode == 2 and "has no scene states" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_text_to_video_from_saved_checkpoint(trained_run, tmp_path):
    """``vincie-edit t2v``: a clip per caption, one frame more per --text, each frame a PNG and the clip a
    strip; the demo run learned no text-to-video, which it says."""
    out = tmp_path / "t2v.png"
    r = run("vincie-edit", "t2v", "--run", str(trained_run), "--caption", "a large red square at the top left",
            "--text", "make the red square blue", "--text", "remove the blue square", "--out", str(out),
            "--set", "sampler.steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained without text-to-video samples" in r.stderr
    for j in range(3):
        im = np.asarray(Image.open(tmp_path / f"t2v_0_frame{j}.png"))
        assert im.shape == (24, 24, 3) and im.dtype == np.uint8
    assert Image.open(tmp_path / "t2v_0_strip.png").size[0] > 3 * 24
    bad = run("vincie-edit", "t2v", "--run", str(trained_run), "--caption", "a scene", "--text", " ")
    assert bad.returncode == 2 and "--text" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_evaluate_rejudges_a_saved_run_with_other_sampler_settings(trained_run):
    import json
    # guided (both branches run), by chain-of-editing: each turn's source map first (Table 3's "CS -> I")
    r = run("vincie-evaluate", "--run", str(trained_run), "--store", str(trained_run / "train" / "store"),
            "--coe", "cs", "--sessions", "8", "sampler.steps=2", "sampler.guidance=4.0", "eval.turns=1")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["turn_success"]) == 1 and out["overrides"] == ["sampler.steps=2", "sampler.guidance=4.0", "eval.turns=1"]
    assert out["coe"] == "cs" and "warning: --coe cs: this run trained without RoE maps" in r.stderr   # demo: roe_prob=0
    assert all(0 <= v <= 1 for v in out["turn_success"])
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
    assert {"turn_success", "baseline_success", "success_by_edit", "minutes", "seconds_per_step", "git_sha",
            "cpu", "cpu_vendor", "mkl_cbwr", "aten_cpu_capability"} <= set(out)
    if platform.machine().lower() in ("x86_64", "amd64"):      # the demo pins AVX2 unless the environment says
        assert out["mkl_cbwr"] == os.environ.get("MKL_CBWR", "AVX2")
        assert out["aten_cpu_capability"] == os.environ.get("ATEN_CPU_CAPABILITY", "avx2").upper()
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
def test_bad_config_value_names_the_key(override, key, tmp_path, capsys):
    """In this process (each fails in build_run_config, before any group or data); the console script's
    exit code and stderr once, in a subprocess, for the first."""
    from vincie_tools.train import main

    assert main([*SMALL, f"run_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and key in err, err
    if override == "train.lr=-1":
        r = run("vincie-train", *SMALL, f"run_dir={tmp_path}", override, timeout=300)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == err, r.stderr[-2000:]
