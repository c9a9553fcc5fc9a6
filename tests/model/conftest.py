"""Megatron-Core on one CPU process (gloo, TP = 1) for the model tests."""
import pytest


@pytest.fixture(scope="module")
def megatron_cpu():
    """One-process parallel groups (groups.init_distributed turns on cpu_compat without CUDA)."""
    from vincie_mcore.parallel import groups
    dims = groups.init_distributed(tp=1, cp=1)
    yield dims
    groups.destroy()
