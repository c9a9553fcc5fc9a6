"""A dist checkpoint from someone else cannot run code when we load it (issue 16, Megatron part).

Megatron 0.16 + torch 2.13 unpickle three kinds of file in a dist checkpoint: common.pt
(torch.load, weights_only left to torch's default), the DCP ``.metadata`` (plain pickle.load) and
the byte items in the ``.distcp`` files (torch.load(weights_only=False)). Each test plants a pickle
that would create a marker file in one of them: ``checkpoint.load`` refuses it in one line and the
marker never appears; Megatron's own load (the proof the payload is live) creates it.
"""
import io
import os
import pickle
import shutil
import warnings

import pytest
import torch

from vincie_mcore.train import checkpoint
from hostile_pickle import Payload

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")




def _tiny(seed):
    from megatron.core.tensor_parallel import ColumnParallelLinear
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.module import MegatronModule

    class Tiny(MegatronModule):
        def __init__(self, config):
            super().__init__(config)
            self.fc = ColumnParallelLinear(4, 6, config=config, init_method=config.init_method, bias=True,
                                           gather_output=False)

    torch.manual_seed(seed)
    return Tiny(TransformerConfig(num_layers=1, hidden_size=4, num_attention_heads=1, params_dtype=torch.float32))


@pytest.fixture(scope="module")
def saved(megatron_cpu, tmp_path_factory):
    """One clean checkpoint (model only) and the model that wrote it."""
    root = tmp_path_factory.mktemp("ckpt")
    model = _tiny(0)
    checkpoint.save(str(root), 1, model, None, None, {"note": "clean"})
    return root, model


def _copy(saved, tmp_path):
    root = tmp_path / "ckpt"
    shutil.copytree(saved[0], root)
    return root, root / "step_0000001", str(tmp_path / "pwned")


def _plant_common(step, marker):
    torch.save({"optimizer": Payload(marker)}, step / "common.pt")


def _read_md(step):
    with open(step / ".metadata", "rb") as f:
        return pickle.load(f)                     # our own clean file, in the test only


def _plant_metadata(step, marker):
    md = _read_md(step)
    md.storage_meta.modules = [Payload(marker)]      # a real metadata object carrying the payload
    with open(step / ".metadata", "wb") as f:
        pickle.dump(md, f)


def _plant_bytes(step, marker):
    # append a pickled payload to a .distcp file and point the first byte item at it
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    md = _read_md(step)
    key = next(k for k, v in md.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    index = next(i for i in md.storage_data if i.fqn == key)
    info = md.storage_data[index]
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    f = step / info.relative_path
    info.offset, info.length = f.stat().st_size, len(buf.getvalue())
    with open(f, "ab") as fh:
        fh.write(buf.getvalue())
    with open(step / ".metadata", "wb") as fh:
        pickle.dump(md, fh)


PLANTS = {"common.pt": _plant_common, ".metadata": _plant_metadata, "distcp": _plant_bytes}


def test_clean_checkpoint_loads_exactly(saved, tmp_path):
    root, step, _ = _copy(saved, tmp_path)
    fresh = _tiny(7)
    assert checkpoint.load(str(root), fresh)["note"] == "clean"
    for a, b in zip(saved[1].parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("where", list(PLANTS))
def test_code_running_pickle_is_refused_and_never_runs(saved, tmp_path, monkeypatch, where):
    root, step, marker = _copy(saved, tmp_path)
    PLANTS[where](step, marker)
    # the variable that turns torch's default back to a full unpickle must not matter to us
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError) as e:
        checkpoint.load(str(root), _tiny(1))
    msg = str(e.value)
    assert "\n" not in msg and "unsafe (code-running)" in msg and "it calls io.open" in msg, msg
    assert {"common.pt": "common.pt", ".metadata": ".metadata", "distcp": ".distcp ["}[where] in msg, msg
    assert not os.path.exists(marker)


@pytest.mark.parametrize("where", [".metadata", "distcp"])
def test_a_file_swapped_in_after_the_check_cannot_run_code(saved, tmp_path, monkeypatch, where):
    """The race the pre-check alone leaves open: a hostile file written into the folder after
    ``check_dist_files`` read it and before Megatron does. The swap is made inside the check's return,
    so Megatron's own reads meet the payload: the load still refuses it in one line and nothing runs."""
    root, step, marker = _copy(saved, tmp_path)
    check = checkpoint.check_dist_files

    def check_then_swap(path):
        check(path)
        PLANTS[where](step, marker)
    monkeypatch.setattr(checkpoint, "check_dist_files", check_then_swap)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError) as e:
        checkpoint.load(str(root), _tiny(1))
    msg = str(e.value)
    assert "\n" not in msg and "unsafe (code-running)" in msg and "it calls io.open" in msg, msg
    assert not os.path.exists(marker)
    # the hooks are Megatron's again afterwards
    from megatron.core.dist_checkpointing.strategies import torch as strategy
    assert strategy.MCoreLoadPlanner is not checkpoint._SafeBytesPlanner


@pytest.mark.parametrize("where", list(PLANTS))
def test_megatrons_own_load_would_run_it(saved, tmp_path, monkeypatch, where):
    # proves each planted file is really hostile: Megatron's plain load creates the marker
    # (common.pt only with the variable set; torch's default weights_only refuses it otherwise)
    from megatron.core import dist_checkpointing
    root, step, marker = _copy(saved, tmp_path)
    PLANTS[where](step, marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = _tiny(1)
    try:
        dist_checkpointing.load(model.sharded_state_dict(), str(step))
    except Exception:          # noqa: BLE001 - the payload ran before whatever broke next
        pass
    assert os.path.exists(marker)


def test_storage_file_outside_the_checkpoint_is_refused(saved, tmp_path):
    root, step, _ = _copy(saved, tmp_path)
    md = _read_md(step)
    info = next(iter(md.storage_data.values()))
    shutil.copy(step / info.relative_path, tmp_path / "elsewhere.distcp")
    info.relative_path = "../../elsewhere.distcp"
    with open(step / ".metadata", "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(ValueError, match=r"climbs out with '\.\.'") as e:
        checkpoint.load(str(root), _tiny(1))
    assert "\n" not in str(e.value)
