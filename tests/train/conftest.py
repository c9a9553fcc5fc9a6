"""Trainer/checkpoint tests: the shared one-process groups (tests/conftest.py) under their local name."""
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


@pytest.fixture(scope="module")
def dist1(megatron_cpu):
    return megatron_cpu
