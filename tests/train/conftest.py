"""One-process parallel groups (gloo; cpu_compat on without CUDA) for the trainer/checkpoint tests."""
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")

from vincie_mcore.parallel import cpu_compat, groups  # noqa: E402


@pytest.fixture(scope="module")
def dist1():
    dims = groups.init_distributed(tp=1, cp=1, seed=0)
    yield dims
    groups.destroy()
    cpu_compat.deactivate()
