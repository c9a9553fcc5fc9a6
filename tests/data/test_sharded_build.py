"""A store from real videos built in parts and merged: in this process, then as a Slurm array.

Real clips (H.264 with cuts, tests/data/real_clips.py), the VLM annotator against a local server
speaking the OpenAI protocol (tests/data/fake_vlm.py), no segmenter. The merged store must hold
exactly the parts' sessions, read in place. On the real local Slurm (../shared/recipes/slurm-ci.sh),
slurm/sessions.sh submits 3 part tasks and a merge job that waits for all of them (afterok). One
task is killed mid-way. The merge then never runs. The task is rerun alone: it skips the video it
had finished, and the merge gives the same store as the in-process build.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_vlm import REPLY, FakeVLM
from real_clips import make_frames, write_clip
from slurm_cluster import REPO, slurm_cluster  # noqa: F401,F811 - the fixture

from vincie_mcore.data.latents import LatentStore
from vincie_mcore.data.store import SessionStore, SessionWriter
from vincie_mcore.data.vlm import parse_reply
from vincie_tools.build_sessions import run_cli as main

BIN = Path(sys.executable).parent
N_CLIPS, PARTS = 6, 3


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """6 H.264 clips of 2-3 shots each, and a manifest whose captions name them."""
    d = tmp_path_factory.mktemp("clips")
    rows = []
    for k in range(N_CLIPS):
        scenes = [("moving", 24 + 6 * k), ("gradient", 20)] + ([("moving", 18)] if k % 2 else [])
        frames, _ = make_frames(scenes, h=48, w=64)
        write_clip(d / f"clip{k}.mp4", frames, codec="h264", fps=24)
        rows.append({"path": f"clip{k}.mp4", "caption": f"clip {k}"})
    (d / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _config(tmp_path, url) -> Path:
    conf = {"build": {"decode": {"size": [48, 64]}, "shard_size": 1, "timeout_s": 120, "max_mb": 0,
                      "sampling": {"strategy": "mixed", "interval_s": 0.25, "n_frames": [2, 4]},
                      "filters": {"min_duration_s": 0.5, "min_height": 32, "min_width": 32, "min_shot_s": 0.3}},
            "annotator": {"kind": "vlm", "base_urls": [url], "model": "tiny-vlm", "max_retries": 1,
                          "backoff_s": 0.01, "timeout_s": 30},
            "segmenter": {"kind": "none"}}
    p = tmp_path / "build.yaml"
    p.write_text(yaml.safe_dump(conf))
    return p


def _sessions(root) -> dict:
    st = SessionStore(root)
    return {st[i].video_id: (st[i].texts, st[i].num_frames) for i in range(len(st))}


@pytest.fixture(scope="module")
def built(clips, tmp_path_factory):
    """plan -> run 0/3, 1/3, 2/3 -> merge, in this process."""
    server = FakeVLM(delay=0.0)
    tmp = tmp_path_factory.mktemp("inproc")
    store = tmp / "store"
    try:
        info = main(["plan", "--manifest", str(clips / "videos.jsonl"), "--store", str(store),
                     "--shards", str(PARTS), "--config", str(_config(tmp, server.url))])
        runs = [main(["run", "--store", str(store), "--shard", f"{i}/{PARTS}", "--quiet"]) for i in range(PARTS)]
        merged = main(["merge", "--store", str(store)])
    finally:
        server.close()
    return store, info, runs, merged


def test_parts_merge_into_one_store_read_in_place(built):
    store, info, runs, merged = built
    assert info["videos"] == N_CLIPS and not info["skipped"]
    assert [r["written_videos"] for r in runs] == [2, 2, 2] and all(r["failed"] == 0 for r in runs)
    parts = {}
    for i in range(PARTS):
        parts.update(_sessions(store / "parts" / f"{i:05d}"))
    whole = _sessions(store)
    assert whole == parts and merged["sessions"] == len(whole) >= N_CLIPS * 2    # every shot a session
    assert {v.split("/")[0] for v in whole} == {f"clip{k}.mp4" for k in range(N_CLIPS)}
    assert all(texts == [REPLY["summary_change"]] * (n - 1) for texts, n in whole.values())
    kept, st = parse_reply(json.dumps(REPLY)).model_dump(), SessionStore(store)     # the VLM's reply, kept per transition
    assert all(st[i].notes == [kept] * (st[i].num_frames - 1) for i in range(len(st)))
    assert "annotator" not in runs[0]          # annotated in worker processes: their counts stay there
    # no frame was copied: the root holds only the index, not shards of its own
    assert not list(store.glob("shard_*")) and (store / "parts" / "00000" / "shard_00000").is_dir()


def test_merge_again_is_the_same_and_the_merged_root_refuses_writes(built):
    store, *_ = built
    before = (store / "index.jsonl").read_text()
    main(["merge", "--store", str(store)])
    assert (store / "index.jsonl").read_text() == before
    with pytest.raises(ValueError, match="is a merged store: build into its parts"):
        SessionWriter(store)


def test_stats_and_preview_of_the_merged_store(built, tmp_path, capsys):
    store, *_ = built
    s = main(["stats", "--store", str(store)])
    assert s["sessions"] == len(SessionStore(store)) and json.loads((store / "stats.json").read_text()) == s
    assert s["cameras"] == {"pan left": s["transitions"]} and s["roe"]["empty_share"] == 1.0
    r = subprocess.run([str(BIN / "vincie-build-sessions"), "stats", "--store", str(store)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and f"{s['sessions']} sessions" in r.stdout     # the console script exits 0
    out = main(["preview", "--store", str(store), "--out", str(tmp_path), "--sessions", "5"])
    assert len(out["sheets"]) == 2 and all(Path(p).stat().st_size > 0 for p in out["sheets"])
    assert "sessions" in capsys.readouterr().out


def test_build_is_plan_run_merge_on_one_machine(built, clips, tmp_path):
    store, *_ = built
    server = FakeVLM(delay=0.0)
    try:
        s = main(["build", "--manifest", str(clips / "videos.jsonl"), "--store", str(tmp_path / "one"), "--shards", "2",
                  "--config", str(_config(tmp_path, server.url)), "--quiet"])
    finally:
        server.close()
    assert s["parts"] == 2 and len(s["runs"]) == 2 and _sessions(tmp_path / "one") == _sessions(store)


def test_the_trainer_reads_the_merged_store(built, tmp_path):
    """The demo recipe on the merged real-video store (frames resized to its 24 px), two steps."""
    store, *_ = built
    r = subprocess.run([str(BIN / "vincie-train"), "experiment=demo", f"data.corpus.store={store}",
                        "data.corpus.image_size=24", "data.corpus.heldout_videos=4", "data.corpus.workers=1",
                        "data.pack.token_budget=400", "train.steps=2", "train.warmup=0", "train.progress=false",
                        "train.log_every=1", f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    n = len(SessionStore(store))
    assert re.search(r"step +2 \| loss [0-9.]+", r.stdout)
    assert len(LatentStore(tmp_path / "run" / "latents")) == n    # every session of the merged store, encoded
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_bad_steps_are_one_line(built, clips, tmp_path):
    store, *_ = built
    for argv, msg in ((["run", "--store", str(store), "--shard", "3/3"], "needs 0 <= i < N"),
                      (["run", "--store", str(store), "--shard", "0/4"], "has 3 parts"),
                      (["merge", "--store", str(tmp_path / "none")], "no plan"),
                      (["plan", "--videos", str(clips), "--store", str(tmp_path / "s"), "--shards", "2",
                        "--config", str(tmp_path / "missing.yaml")], "cannot read it")):
        r = subprocess.run([str(BIN / "vincie-build-sessions"), *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"build": {}, "annotator": {"kind": "gpt"}, "segmenter": {"kind": "none"}}))
    r = subprocess.run([str(BIN / "vincie-build-sessions"), "plan", "--videos", str(clips), "--store",
                        str(tmp_path / "s"), "--shards", "2", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "annotator.kind: expected one of vlm, ground_truth, got 'gpt'" in r.stderr


# ----------------------------------------------------------------------------
# On a real Slurm
# ----------------------------------------------------------------------------

def _state(env, job) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=env, capture_output=True, text=True).stdout
    return " ".join(sorted({f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")}))


def _wait(cond, timeout=240, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_slurm_array_with_a_killed_part_rerun_then_merged(slurm_cluster, clips, built, tmp_path):
    env = dict(slurm_cluster, PATH=f"{BIN}:{os.environ['PATH']}")
    server = FakeVLM()
    # part 1 (clips 1 and 4: video k goes to part k mod 3) finishes one video and waits on the other
    # until it is killed
    server.hold_all_but_first({f"clip {k}" for k in range(1, N_CLIPS, PARTS)})
    store = tmp_path / "store"
    try:
        main(["plan", "--manifest", str(clips / "videos.jsonl"), "--store", str(store), "--shards", str(PARTS),
              "--config", str(_config(tmp_path, server.url))])
        r = subprocess.run(["bash", str(REPO / "slurm" / "sessions.sh"), str(store), f"--chdir={tmp_path}",
                            "--cpus-per-task=1"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        array, merge = (int(t) for t in re.findall(r"job (\d+)", r.stdout))
        index1 = store / "parts" / "00001" / "index.jsonl"
        _wait(lambda: index1.is_file() and index1.read_text().strip(), what="part 1's first video")
        subprocess.run(["scancel", f"{array}_1"], env=env, check=True)          # killed mid-way
        _wait(lambda: all(s in ("COMPLETED", "CANCELLED", "FAILED") for s in _state(env, array).split()),
              what="the array to end")
        _wait(lambda: "PENDING" in _state(env, merge) or "CANCELLED" in _state(env, merge), what="merge state")
        assert not (store / "index.jsonl").exists()           # afterok: no merge after a failed part
        subprocess.run(["scancel", str(merge)], env=env)
        done_before = [json.loads(line)["video_ids"] for line in index1.read_text().splitlines()]
        assert len({v.split("/")[0] for ids in done_before for v in ids}) == 1, done_before   # between its 2 videos
        calls_before = len(server.requests)
        server.release()

        rerun = subprocess.run(["sbatch", "--parsable", "--array=1", f"--chdir={tmp_path}", "--cpus-per-task=1",
                                str(REPO / "slurm" / "sessions_part.sbatch"), str(store), str(PARTS)],
                               env=env, capture_output=True, text=True, timeout=30)
        job = int(rerun.stdout.strip().split(";")[0])
        _wait(lambda: _state(env, job) in ("COMPLETED", "FAILED", "CANCELLED"), what="the rerun")
        assert _state(env, job) == "COMPLETED", (tmp_path / f"vincie-sessions-{job}_1.out").read_text()[-2000:]
        m = subprocess.run(["sbatch", "--parsable", f"--chdir={tmp_path}", str(REPO / "slurm" / "sessions_merge.sbatch"),
                            str(store)], env=env, capture_output=True, text=True, timeout=30)
        mjob = int(m.stdout.strip().split(";")[0])
        _wait(lambda: _state(env, mjob) in ("COMPLETED", "FAILED", "CANCELLED"), what="the merge")
        assert _state(env, mjob) == "COMPLETED"
    finally:
        server.close()
    # the rerun redid nothing it had finished: the finished video's sessions are unchanged, and it
    # asked the server only about the other video
    after = [json.loads(line)["video_ids"] for line in index1.read_text().splitlines()]
    assert after[:len(done_before)] == done_before
    first = int(re.match(r"clip(\d+)\.mp4", done_before[0][0]).group(1))
    asked = {req["caption"] for req in server.requests[calls_before:]}
    assert asked and f"clip {first}" not in asked
    assert _sessions(store) == _sessions(built[0])           # the same store as the in-process build
    assert (store / "stats.json").is_file()
