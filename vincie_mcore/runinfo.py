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


def arithmetic_info() -> dict:
    """The CPU and the code paths its fp32 arithmetic took: what decides whether two runs of one
    seed can give the same numbers (docs/measured.md, "Same seed, other machine")."""
    import os
    import platform

    import torch

    info = {"model name": platform.processor() or platform.machine(), "vendor_id": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in info and value.strip():
                info[key.strip()] = value.strip()
            if line.strip() == "":                               # first processor only
                break
    except OSError:
        pass
    return {"cpu": info["model name"], "cpu_vendor": info["vendor_id"], "mkl_cbwr": os.environ.get("MKL_CBWR"),
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def pin_cpu_arithmetic() -> None:
    """Same fp32 arithmetic run to run and machine to machine (x86); call before torch is imported.

    MKL (torch's CPU BLAS) otherwise picks its code path by CPU and by each buffer's alignment, and
    may use fewer threads than asked on a busy machine (MKL_DYNAMIC); ATen's own kernels pick AVX2
    or AVX-512 by CPU, and their reductions round differently. Each moves results by ~1e-6, which
    training amplifies. Values already in the environment win; off x86 only MKL_DYNAMIC applies.
    """
    import os
    import platform

    os.environ.setdefault("MKL_DYNAMIC", "FALSE")
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("MKL_CBWR", "AVX2")
        os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
