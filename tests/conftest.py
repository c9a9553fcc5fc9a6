"""Shared test setup.

Triton's interpreter must be chosen before triton is first imported, so it is
set here, ahead of every test module, when no GPU is present.
"""
import os
import shutil

if not shutil.which("nvidia-smi") and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def megatron_cpu():
    """One-process Megatron groups over gloo (groups.init_distributed turns cpu_compat on without CUDA)."""
    from vincie_mcore.parallel import cpu_compat, groups
    dims = groups.init_distributed(tp=1, cp=1, seed=0)
    yield dims
    groups.destroy()
    cpu_compat.deactivate()


# The CLI tests' trained model: 3 steps of the demo recipe on 24 synthetic videos, each step logged and
# saved (tests/test_end_to_end.py resumes from step 1 and compares step 2's log line and checkpoint).
DEMO_RUN = ["experiment=demo", "data.corpus.videos=24", "data.corpus.heldout_videos=4", "data.corpus.workers=1",
            "data.pack.token_budget=400", "train.steps=3", "train.warmup=0", "train.log_every=1",
            "train.progress=false", "train.save_every=1"]


@pytest.fixture(scope="session")
def shared_demo_run(tmp_path_factory):
    """One ``vincie-train`` run of ``DEMO_RUN`` (a subprocess, ~20 s on 2 cores) for every test that only
    reads a trained run folder: the web editor, the web exposure checks, the applications' and the
    benchmarks' CLIs, the end-to-end training checks (one training instead of one per module); its stdout
    is ``train_stdout.log``. Never write into it: copy it first."""
    import subprocess
    import sys
    from pathlib import Path

    d = tmp_path_factory.mktemp("shared_demo_run")
    r = subprocess.run([str(Path(sys.executable).parent / "vincie-train"), *DEMO_RUN, f"run_dir={d}"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (d / "train_stdout.log").write_text(r.stdout)
    return d
