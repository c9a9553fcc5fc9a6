"""Our Slurm launchers pass every Hydra override to python as data, never to a shell.

A real local Slurm (tests/slurm_cluster.py) runs slurm/train.sbatch and slurm/train_3b.sh with
``VINCIE_PYTHON`` set to an argv recorder instead of python, so nothing trains: each hostile
override (``;``, ``$(...)``, backticks, a newline, quotes, a glob) must arrive as one argv
element, byte-equal, and the file the override would create must never appear.
"""
import json
import sys

import pytest
from slurm_cluster import REPO, run_job, slurm_cluster  # noqa: F401 - the fixture

OVERRIDES = [
    "run_dir=x;touch MARK",
    "run_dir=$(touch MARK)",
    "a=`touch MARK`",
    "b=line one\ntouch MARK",
    "c='q' \"dq\" $HOME * && touch MARK | tee MARK",
]


@pytest.fixture
def recorder(tmp_path):
    """An executable that writes its argv as JSON to argv.json in its working folder."""
    f = tmp_path / "record_argv"
    f.write_text(f"#!{sys.executable}\nimport json, sys\n"
                 "json.dump(sys.argv[1:], open('argv.json', 'w'))\n")
    f.chmod(0o755)
    return f


@pytest.mark.parametrize("script, extra", [("slurm/train.sbatch", []),
                                           ("slurm/train_3b.sh", ["--nodes=1", "--time=5"])])
def test_overrides_arrive_as_data(slurm_cluster, recorder, tmp_path, script, extra):
    env = dict(slurm_cluster, VINCIE_PYTHON=str(recorder))
    state, code = run_job(env, [f"--chdir={tmp_path}", *extra, str(REPO / script), *OVERRIDES], cwd=REPO)
    out = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert (state, code) == ("COMPLETED", "0:0"), out[-2000:]
    argv = json.loads((tmp_path / "argv.json").read_text())
    tail = argv[argv.index("vincie_tools.train") + 1:]
    if script.endswith("train_3b.sh"):
        assert tail[0] == "experiment=3b"
        tail = tail[1:]
    assert tail == OVERRIDES, argv
    assert not (tmp_path / "MARK").exists() and not (REPO / "MARK").exists()
