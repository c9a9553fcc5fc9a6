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
