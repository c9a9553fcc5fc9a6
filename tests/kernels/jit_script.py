"""Run a kernel test module as a script, in a fresh process without TRITON_INTERPRET.

The tests that need real JITFunctions on a CPU box (compiling for sm_90, asking Triton's binder what a
launch would specialise on) cannot run under the interpreter that tests/conftest.py switches on, and
triton reads that switch at import. Such a module ends with ``if __name__ == "__main__":
script_main(report, ...)``, and its test calls ``run_as_script(__file__, ...)`` for the report.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING = "TRITON_API_MISSING"


def run_as_script(test_file: str, skip_reason: str, timeout: float = 300) -> dict:
    """The JSON on ``test_file``'s last stdout line, run as a script; skips with ``skip_reason`` when the
    script found the Triton API it needs missing."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(test_file)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if MISSING in proc.stdout:
        pytest.skip(skip_reason)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def script_main(report, *needs: str) -> None:
    """The script side: print ``report()`` as JSON, or MISSING when one of ``needs`` ("module:name")
    does not import."""
    try:
        for need in needs:
            module, name = need.split(":")
            getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        print(MISSING)
        sys.exit(0)
    print(json.dumps(report()))
