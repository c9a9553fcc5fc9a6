"""What code produced a run: the git commit of the source tree, recorded with results."""
from __future__ import annotations

import subprocess
from pathlib import Path


def code_version() -> dict:
    """``{"git_sha": ..., "dirty": bool}`` of the checkout this package runs from, or
    ``{"git_sha": None, "version": ...}`` for an installed copy outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"git_sha": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version
        try:
            return {"git_sha": None, "version": version("vincie_mcore")}
        except PackageNotFoundError:
            return {"git_sha": None}
