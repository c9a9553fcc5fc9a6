"""Export and import of training checkpoints (vincie_mcore/convert/hf.py, tools/vincie_tools/convert.py).

One training run at TP=2 (2 gloo processes, tiny config, 1 step, saved by the real trainer) feeds
every test: its export must hold exactly the run's unsharded parameters; an import of that export at
another layout (TP=2 with the distributed optimizer, resumed in one process) must give the trainer the same weights and the same loss
on a fixed batch as the original checkpoint; a tiny shard size must give several shards and a right
index; and every bad folder is refused in one line.
"""
import json
import os
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from convert_helpers import fixed_batch, tiny_dict
from vincie_mcore.config import build
from vincie_mcore.convert import hf
from vincie_mcore.hf.files import INDEX, SINGLE, ExportError, read_config
from vincie_mcore.hf.modeling import VincieMMDiT
from vincie_mcore.parallel.parity import Layout, full_tensors, run_layout
from vincie_tools import convert as cli
from hostile_pickle import Payload


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(work dir, ckpt_dir, {name: full parameter}) of a 1-step TP=2 run."""
    work = tmp_path_factory.mktemp("tp2")
    (work / "init").mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump({"model": tiny_dict()}))   # what the export reads
    ckpt = str(work / "ckpt")
    ranks = run_layout(Layout(tp=2), "block_causal", 1, str(work), parts=1, tokens=120, seed=3, lr=1e-3,
                       adam_eps=1e-6, init_dir=str(work / "init"), save_init=True, ckpt_dir=ckpt)
    params = {}
    for rep, name, t in full_tensors(ranks, "params"):
        params.setdefault(name, t)
    return work, ckpt, params


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    work, ckpt, _ = trained
    out = tmp_path_factory.mktemp("export")
    stats = hf.export_checkpoint(ckpt, out)
    return out, stats


def test_export_of_tp2_checkpoint_is_the_unsharded_model(trained, exported):
    _, _, params = trained
    out, stats = exported
    got = load_file(str(out / SINGLE))
    assert set(got) == set(params), sorted(set(got) ^ set(params))[:3]
    for name, t in params.items():
        assert torch.equal(got[name], t), name              # bit-exact: a copy, not a computation
    assert stats["tensors"] == len(params) and stats["shards"] == 1
    assert stats["bytes"] == sum(t.numel() * 4 for t in params.values())
    cfg = read_config(out)
    assert cfg["model"]["hidden_size"] == 128 and cfg["format_version"] == 1 and cfg["library_version"]
    assert (out / "README.md").read_text().startswith("---")


def test_import_at_another_layout_resumes_with_the_same_loss(trained, exported, tmp_path, megatron_cpu):
    from vincie_mcore.model import MMDiTConfig, build_model
    from vincie_mcore.parallel.parity import ParityStream, parity_loss
    from vincie_mcore.train import checkpoint
    from vincie_mcore.train.trainer import TrainConfig, Trainer

    work, ckpt, params = trained
    out, _ = exported
    # before export: the TP=2 checkpoint loaded into one process
    mcfg = build(MMDiTConfig, tiny_dict(), "model")
    before = build_model(mcfg, device="cpu")
    checkpoint.load(ckpt, before)
    batch, x_t, target = fixed_batch()
    with torch.no_grad():
        want = before(x_t, batch)

    imported = str(tmp_path / "imported")
    stats = hf.import_checkpoint(out, imported, [
        "model.attention_backend=torch", "model.adaln_zero_init=false", "parallel.tp=2",
        "+train.use_distributed_optimizer=true", "train.dtype=fp32", f"run_dir={tmp_path}"])
    assert stats["world"] == 2 and stats["tp"] == 2
    # the trainer (one process, distributed optimizer) resumes from it: step 0, the exported weights
    model = build_model(mcfg, device="cpu")
    trainer = Trainer(TrainConfig(steps=3, lr=1e-3, dtype="fp32", use_distributed_optimizer=True,
                                  ckpt_dir=imported, progress=False, log_every=100),
                      model, parity_loss, ParityStream(3, 1, 200, "block_causal", 0, 1, 64, 192), device="cpu")
    assert trainer.resumed_from == 0
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), params[name]), name
    with torch.no_grad():
        got = model(x_t, batch)
        plain = VincieMMDiT.from_pretrained(out)(x_t, batch)
    assert torch.equal(got, want)                           # same weights, same code: identical outputs
    assert float((plain - want).abs().max() / want.abs().max()) <= 1e-5
    trainer.train(until=1)                                  # and it trains on from there
    assert len(trainer.losses) == 1 and trainer.losses[0] == trainer.losses[0]


def test_tiny_shards_and_index(exported, tmp_path):
    src, _ = exported
    model = VincieMMDiT.from_pretrained(src)
    out = tmp_path / "sharded"
    stats = model.save_pretrained(out, max_shard_size="500KB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert stats["shards"] == len(shards) >= 3 and not (out / SINGLE).exists()
    index = json.loads((out / INDEX).read_text())
    assert set(index["weight_map"].values()) == set(shards)
    sizes = [os.path.getsize(out / s) for s in shards]
    total = sum(t.numel() * t.element_size() for s in shards for t in load_file(str(out / s)).values())
    assert index["metadata"]["total_size"] == total == stats["bytes"]
    assert max(sizes) <= 500_000 + 10_000                   # payload cap + safetensors header
    again = VincieMMDiT.from_pretrained(out)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_cli_export_bf16_prints_stats(trained, tmp_path, capsys):
    _, ckpt, params = trained
    out = tmp_path / "bf16"
    assert cli.main(["export", "--ckpt", ckpt, "--out", str(out), "--dtype", "bf16", "--max-shard-size", "100KB"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(stats) == {"tensors", "bytes", "shards", "peak_rss_mb", "seconds"}
    assert stats["bytes"] == sum(t.numel() * 2 for t in params.values()) and stats["shards"] > 1
    m = VincieMMDiT.from_pretrained(out)
    assert torch.equal(m.state_dict()["img_embedder.weight"], params["img_embedder.weight"].bfloat16().float())


def test_export_after_a_crash_mid_replace_reads_the_prev_copy(trained, tmp_path):
    """A save that repeats a step moves the good copy to step_N.prev first (train/checkpoint.py); a crash
    before the new copy is renamed in leaves only the .prev folder, which the export must still find."""
    import shutil
    from vincie_mcore.train.checkpoint import PREV, latest_step, step_dir
    work, ckpt, params = trained
    crashed = tmp_path / "ckpt"
    shutil.copytree(ckpt, crashed)
    shutil.copy(work / "config.yaml", tmp_path / "config.yaml")
    s = latest_step(str(crashed))
    os.rename(step_dir(str(crashed), s), step_dir(str(crashed), s) + PREV)
    hf.export_checkpoint(str(crashed), tmp_path / "out")
    got = load_file(str(tmp_path / "out" / SINGLE))
    assert all(torch.equal(got[n], t) for n, t in params.items())


# ----------------------------------------------------------------------------
# Refusals: one line, naming the bad thing
# ----------------------------------------------------------------------------

def _copy(exported, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(exported[0], d)
    return d


def _refused(folder, match):
    with pytest.raises(ExportError, match=match) as e:
        VincieMMDiT.from_pretrained(folder)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_refuses_folder_without_config(exported, tmp_path):
    d = _copy(exported, tmp_path)
    (d / "config.json").unlink()
    _refused(d, r"^export folder: no config\.json in .*bad$")


def test_refuses_pickle_weights_without_unpickling(exported, tmp_path):
    d = _copy(exported, tmp_path)
    (d / SINGLE).unlink()
    marker = tmp_path / "unpickled.txt"

    class Boom:                                             # unpickling it would create the marker
        def __reduce__(self):
            return (open, (str(marker), "w"))
    torch.save({"w": Boom()}, d / "pytorch_model.bin")
    _refused(d, r"holds only pickle weights \(pytorch_model\.bin\).*never unpickles")
    assert not marker.exists()
    torch.load(d / "pytorch_model.bin", weights_only=False)    # the file is armed: an unsafe load fires it
    assert marker.exists()


def test_refuses_missing_tensor(exported, tmp_path):
    d = _copy(exported, tmp_path)
    sd = load_file(str(d / SINGLE))
    del sd["layers.2.mlp.joint.linear_fc2.bias"]
    save_file(sd, str(d / SINGLE))
    _refused(d, r"^export folder: missing tensor layers\.2\.mlp\.joint\.linear_fc2\.bias$")


def test_refuses_wrong_shape(exported, tmp_path):
    d = _copy(exported, tmp_path)
    sd = load_file(str(d / SINGLE))
    sd["final_layer.linear.weight"] = sd["final_layer.linear.weight"][:, :64].contiguous()
    save_file(sd, str(d / SINGLE))
    _refused(d, r"^export folder: tensor final_layer\.linear\.weight has shape \[192, 64\], expected \[192, 128\]$")


def test_refuses_index_with_missing_shard(exported, tmp_path):
    d = tmp_path / "sharded"
    VincieMMDiT.from_pretrained(exported[0]).save_pretrained(d, max_shard_size="300KB")
    shard = sorted(json.loads((d / INDEX).read_text())["weight_map"].values())[1]
    (d / shard).unlink()
    _refused(d, rf"^export folder: model\.safetensors\.index\.json points at a missing shard {re.escape(shard)}$")


def test_refuses_index_shard_outside_the_folder(exported, tmp_path):
    d = tmp_path / "sharded"
    VincieMMDiT.from_pretrained(exported[0]).save_pretrained(d, max_shard_size="300KB")
    index = json.loads((d / INDEX).read_text())
    name, shard = next(iter(index["weight_map"].items()))
    outside = tmp_path / "outside.safetensors"                 # a real file beside the folder
    shutil.copy(d / shard, outside)
    for bad in ("../outside.safetensors", str(outside)):
        index["weight_map"][name] = bad
        (d / INDEX).write_text(json.dumps(index))
        _refused(d, r"^export folder: model\.safetensors\.index\.json shard")


def test_refuses_checkpoint_without_config(trained, tmp_path):
    _, ckpt, _ = trained
    lone = tmp_path / "lone"
    shutil.copytree(ckpt, lone)
    with pytest.raises(ExportError, match=r"^checkpoint: no config\.yaml next to .*--config"):
        hf.export_checkpoint(lone, tmp_path / "x")




def test_export_of_a_tampered_checkpoint_runs_no_code(trained, tmp_path):
    import pickle
    work, ckpt, _ = trained
    shutil.copytree(work, tmp_path / "w", ignore=shutil.ignore_patterns("init"))
    step = next((tmp_path / "w" / "ckpt").glob("step_*"))
    with open(step / ".metadata", "rb") as f:
        md = pickle.load(f)                   # our own clean file, in the test only
    marker = tmp_path / "pwned"
    md.storage_meta.modules = [Payload(str(marker))]
    with open(step / ".metadata", "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(ExportError, match=r"\.metadata") as e:
        hf.export_checkpoint(tmp_path / "w" / "ckpt", tmp_path / "out")
    assert "\n" not in str(e.value) and not marker.exists()
