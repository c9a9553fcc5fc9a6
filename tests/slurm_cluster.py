"""A real, throw-away Slurm cluster on localhost for tests (pytest fixture module).

Use it with ``from slurm_cluster import run_job, slurm_cluster`` in a test module (pytest puts
``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``).

``slurm_cluster`` (session scope) finds the recipe ``slurm-ci.sh`` (env ``VINCIE_SLURM_CI``, else
``<repo>/../shared/recipes/slurm-ci.sh``, else the same beside the repo this one was cloned from), installs Slurm with it when ``sbatch`` is missing and
apt-get is there (as root), starts one node with 8 fake GPUs (so our sbatch files run with their own
``--gpus-per-node=8 --exclusive``) under a tmp ``SLURM_CI_DIR`` on free ports, yields the
environment that reaches it (``SLURM_CONF`` set) and stops it. It skips, with the reason, where the
recipe, root, apt-get or the packages are missing or the cluster does not come up.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPUS = 8


def recipe() -> Path | None:
    """$VINCIE_SLURM_CI, else ../shared/recipes/slurm-ci.sh beside this checkout, else beside the
    checkout it was cloned from (a fresh clone in a temp folder, as the README's check makes)."""
    if os.environ.get("VINCIE_SLURM_CI"):
        p = Path(os.environ["VINCIE_SLURM_CI"])
        return p if p.is_file() else None
    tops = [REPO]
    r = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"], capture_output=True, text=True)
    if r.returncode == 0 and Path(r.stdout.strip()).is_dir():
        tops.append(Path(r.stdout.strip()))
    for top in tops:
        p = top.resolve().parent / "shared" / "recipes" / "slurm-ci.sh"
        if p.is_file():
            return p
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(out: str, n: int = 400) -> str:
    return " ".join(out.split())[-n:]


@pytest.fixture(scope="session")
def slurm_cluster():
    """Environment (dict) whose SLURM_CONF points at a running one-node cluster."""
    script = recipe()
    if script is None:
        pytest.skip("no slurm-ci.sh recipe (set VINCIE_SLURM_CI or put it at ../shared/recipes/slurm-ci.sh)")
    if os.geteuid() != 0:
        pytest.skip("the slurm-ci recipe runs its daemons as root")
    if not shutil.which("sbatch") or not shutil.which("slurmctld"):
        if not shutil.which("apt-get"):
            pytest.skip("Slurm is not installed and apt-get is not available to install it")
        r = subprocess.run(["bash", str(script), "install"], capture_output=True, text=True, timeout=600)
        if r.returncode or not shutil.which("sbatch"):
            pytest.skip(f"installing Slurm failed: {_tail(r.stdout + r.stderr)}")
    # munged wants every folder above its socket searchable by all: pytest's tmp dirs are 0700
    d = Path(tempfile.mkdtemp(prefix="vincie-slurm-"))
    d.chmod(0o755)
    ctld, slurmd = _free_ports(2)
    if slurmd == ctld + 1:                         # slurmd's port must not collide with ctld's
        slurmd = _free_ports(1)[0]
    env = dict(os.environ, SLURM_CI_DIR=str(d), SLURM_CI_GPUS=str(GPUS), SLURM_CI_NODES="1",
               SLURM_CI_CTLD_PORT=str(ctld), SLURM_CI_SLURMD_PORT=str(slurmd))
    r = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=120)
    if r.returncode:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)
        pytest.skip(f"the local Slurm cluster did not start: {_tail(r.stdout + r.stderr)}")
    env["SLURM_CONF"] = str(d / "etc" / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)


def run_job(env: dict, argv: list[str], cwd, timeout: float = 60.0) -> tuple[str, str]:
    """``sbatch --parsable *argv`` from ``cwd``; waits for the job; returns (JobState, ExitCode)."""
    r = subprocess.run(["sbatch", "--parsable", *argv], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=30)
    if r.returncode:
        raise RuntimeError(f"sbatch failed: {_tail(r.stderr)}")
    job = r.stdout.strip().split(";")[0]
    end = time.monotonic() + timeout
    while True:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True,
                             text=True).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        state = fields.get("JobState", "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                     "DEADLINE", "PREEMPTED"):
            return state, fields.get("ExitCode", "")
        if time.monotonic() > end:
            subprocess.run(["scancel", job], env=env, capture_output=True)
            raise TimeoutError(f"slurm job {job} still {state or 'unknown'} after {timeout:.0f} s")
        time.sleep(0.1)
