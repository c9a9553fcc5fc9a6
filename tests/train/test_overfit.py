"""The tiny model memorises a handful of sessions, end to end (issue 19, item 3).

Whatever breaks learning (the loss, the mask, positions, conditioning, the sampler, the
optimizer, the packing) shows here, including faults nobody wrote a test for: three
held-in sessions, 600 steps, then three turns of editing judged exactly.
Observed (2 vCPUs, 1 thread): loss 0.22 -> 0.0015, turn success [1.0, 1.0, 1.0], ~110 s. With a
noisy target allowed to see its own clean twin (the answer leaks in training, not at inference) the
loss falls even lower (0.0010) but only 4 of the 9 edits pass: the judge, not the loss, catches it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("_overfit_run.py")


def test_tiny_model_memorises_three_sessions_and_edits_them(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["steps"] == 600 and r["sessions"] == 3
    # memorised: the last losses sit far below the start (an untrained or broken model stays above 0.01)
    assert r["final_loss"] < 0.004, r
    assert r["first_loss"] > 10 * r["final_loss"], r
    # and the sampler turns that into right edits: at least 7 of the 9, with turn 1 at least 2 of 3;
    # the copy baseline (input returned unchanged) passes none of them
    assert sum(r["turn_success"]) * 3 >= 7 - 1e-6, r
    assert r["turn_success"][0] >= 2 / 3 - 1e-6, r
    assert r["baseline_success"] == [0.0, 0.0, 0.0], r
