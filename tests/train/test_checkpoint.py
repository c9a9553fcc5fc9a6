"""Checkpoints: a crash mid-save leaves the previous one loadable; keep_last prunes; load restores exactly."""
import os

import pytest
import torch
from _train_tiny import TinyStream, build_tiny, tiny_loss

from vincie_mcore.train import checkpoint as ckpt
from vincie_mcore.train.trainer import Trainer, TrainConfig


def _trainer(tmp_path, seed=1, **kw):
    cfg = TrainConfig(**dict(dict(steps=10, lr=1e-2, log_every=100, ckpt_dir=str(tmp_path), progress=False), **kw))
    return Trainer(cfg, build_tiny(seed=seed), tiny_loss, TinyStream())


def _params(t):
    return [p.detach().clone() for p in t.model.parameters()]


def test_crash_mid_save_keeps_previous_checkpoint(dist1, tmp_path, monkeypatch):
    t = _trainer(tmp_path)
    t.train(until=2)
    at_two = _params(t)
    t.train_step()                   # step 3, not saved yet

    def boom(path, state):        # the model/optimizer shards are already on disk by now
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(ckpt, "_write_trainer_state", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.save_checkpoint()
    monkeypatch.undo()
    assert os.path.isdir(tmp_path / "step_0000003.tmp") and os.listdir(tmp_path / "step_0000003.tmp")
    assert ckpt.latest_step(str(tmp_path)) == 2 and ckpt.list_steps(str(tmp_path)) == [2]

    fresh = _trainer(tmp_path, seed=5)
    assert fresh.step == 2 and fresh.stream.pos == 2
    for a, b in zip(at_two, _params(fresh)):
        assert torch.equal(a, b)
    fresh.train(until=4)             # the next save clears the debris
    assert not os.path.exists(tmp_path / "step_0000003.tmp") and ckpt.list_steps(str(tmp_path)) == [2, 4]


def test_keep_last_prunes_old_checkpoints(dist1, tmp_path):
    t = _trainer(tmp_path, save_every=1, keep_last=2)
    t.train(until=4)
    assert ckpt.list_steps(str(tmp_path)) == [3, 4] and ckpt.latest_step(str(tmp_path)) == 4


def test_load_restores_optimizer_and_scheduler(dist1, tmp_path):
    t = _trainer(tmp_path, warmup=3)
    t.train(until=2)
    fresh = _trainer(tmp_path, seed=7, warmup=3)
    assert fresh.scheduler.num_steps == 2
    sd_a, sd_b = t.optimizer.state_dict(), fresh.optimizer.state_dict()
    sd_a, sd_b = sd_a.get("optimizer", sd_a), sd_b.get("optimizer", sd_b)   # ChainedOptimizer of one
    ea = [v["exp_avg"] for v in sd_a["state"].values()]
    eb = [v["exp_avg"] for v in sd_b["state"].values()]
    assert len(ea) == 4 and all(torch.equal(a, b) for a, b in zip(ea, eb))


def test_empty_dir_and_bad_latest(dist1, tmp_path):
    assert ckpt.load(str(tmp_path), build_tiny()) is None
    (tmp_path / "latest").write_text("7\n")
    with pytest.raises(FileNotFoundError, match="step 7"):
        ckpt.latest_step(str(tmp_path))


def test_model_only_load_into_a_bare_model(dist1, tmp_path):
    t = _trainer(tmp_path)
    t.train(until=2)
    bare = build_tiny(seed=9)                  # not DDP-wrapped, no optimizer (inference / export)
    state = ckpt.load(str(tmp_path), bare)
    assert state["step"] == 2
    for a, b in zip(_params(t), bare.parameters()):
        assert torch.equal(a, b)
