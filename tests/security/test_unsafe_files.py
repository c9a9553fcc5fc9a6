"""No file we load can run code (issue 16, first part: trainer state).

A pickle whose load would create a marker file, placed where the trainer-state loader looks:
the loader refuses it in one line and the marker never appears. Without ``weights_only=True``
(the protection removed) the marker is created.
"""
import os

import pytest
import torch

from vincie_mcore.train import checkpoint
from hostile_pickle import Payload




def _hostile_state(tmp_path):
    marker = str(tmp_path / "pwned")
    f = str(tmp_path / "trainer_state_rank00000.pt")
    torch.save({"step": 3, "rng": {"numpy": Payload(marker)}}, f)
    assert not os.path.exists(marker)
    return f, marker


def test_trainer_state_loader_refuses_a_code_running_pickle(tmp_path):
    f, marker = _hostile_state(tmp_path)
    with pytest.raises(ValueError) as e:
        checkpoint.read_trainer_state(f)
    assert f in str(e.value) and "\n" not in str(e.value) and "vincie-convert trainer-state" in str(e.value)
    assert not os.path.exists(marker)


def test_the_payload_would_run_without_the_protection(tmp_path):
    # proves the file above is really hostile: an unsafe load creates the marker
    f, marker = _hostile_state(tmp_path)
    torch.load(f, weights_only=False)
    assert os.path.exists(marker)


def test_old_format_converts_and_restores_the_numpy_rng(tmp_path):
    import numpy as np

    np.random.seed(5)
    old = {"step": 7, "rng": {"numpy": np.random.get_state()}, "stream": {"step": 7}}
    f = str(tmp_path / "trainer_state_rank00000.pt")
    torch.save(old, f)
    checkpoint.convert_trainer_state(f)                 # a trusted file: full unpickle, safe rewrite
    kept = torch.serialization.get_safe_globals()      # Megatron allow-lists numpy arrays on import:
    torch.serialization.clear_safe_globals()             # load with torch's bare defaults
    try:
        state = torch.load(f, weights_only=True, map_location="cpu")
    finally:
        torch.serialization.add_safe_globals(kept)
    assert isinstance(state["rng"]["numpy"], dict) and state["step"] == 7
    np.random.set_state(checkpoint.numpy_state_from_safe(state["rng"]["numpy"]))
    a = np.random.rand(4)
    np.random.seed(5)
    assert np.array_equal(a, np.random.rand(4))
