"""Preemption without Slurm: a real SIGUSR1/SIGTERM to this process mid-run stops after the step in
flight, saves it and raises Preempted, and the resumed run equals an uninterrupted one; durable saves
(fsync before rename, a repeated step never loses its good copy); the layout check of the launch
scripts; srun's task variables; rank 0 alone building what the others then read (2 gloo processes)."""
import os
import signal
import threading

import pytest
import torch
from _train_tiny import TinyStream, build_tiny, tiny_loss

from vincie_mcore.train import checkpoint as ckpt
from vincie_mcore.signals import STOP_SIGNALS
from vincie_mcore.train.trainer import Preempted, StopSignals, Trainer, TrainConfig

N = 8


def _cfg(tmp, **kw):
    base = dict(steps=N, lr=3e-2, warmup=2, grad_clip=0.5, log_every=4, ckpt_dir=str(tmp / "ckpt"), seed=3,
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


class SignalAt(TinyStream):
    """TinyStream that sends ``sig`` to this process while drawing batch ``at`` (1-based): mid-step."""

    def __init__(self, at, sig, **kw):
        super().__init__(**kw)
        self.at, self.sig = at, sig

    def __next__(self):
        if self.pos + 1 == self.at:
            os.kill(os.getpid(), self.sig)
        return super().__next__()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_saves_the_step_in_flight_and_resume_matches(dist1, tmp_path, sig):
    before = signal.getsignal(sig)
    straight = Trainer(_cfg(tmp_path / "a"), build_tiny(seed=1), tiny_loss, TinyStream())
    losses_a = straight.train()

    first = Trainer(_cfg(tmp_path / "b", save_every=2), build_tiny(seed=1), tiny_loss, SignalAt(5, sig))
    with pytest.raises(Preempted) as e:
        first.train()
    assert e.value.step == 5 and e.value.signal_name == sig.name         # step 5 was finished, then saved
    assert ckpt.latest_step(str(tmp_path / "b" / "ckpt")) == 5 and first.losses == losses_a[:5]
    assert signal.getsignal(sig) == before                                # the handler is put back

    second = Trainer(_cfg(tmp_path / "b"), build_tiny(seed=2), tiny_loss, TinyStream())
    assert second.resumed_from == 5 and second.stream.pos == 5
    losses_b = first.losses + second.train()
    assert losses_b == losses_a                                           # bit for bit
    for p, q in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)


def test_signal_right_after_a_periodic_save_keeps_that_save(dist1, tmp_path, monkeypatch):
    saves, real_save = [], ckpt.save
    monkeypatch.setattr(ckpt, "save", lambda d, step, *a, **k: saves.append(step) or real_save(d, step, *a, **k))
    t = Trainer(_cfg(tmp_path, save_every=2), build_tiny(seed=1), tiny_loss, SignalAt(4, signal.SIGUSR1))
    with pytest.raises(Preempted) as e:
        t.train()
    assert e.value.step == 4 and e.value.checkpoint == ckpt.step_dir(str(tmp_path / "ckpt"), 4)
    assert saves == [2, 4] and ckpt.list_steps(str(tmp_path / "ckpt")) == [2, 4]      # step 4 saved once


def _blocked() -> set:
    """Signals blocked in this thread (/proc's SigBlk mask)."""
    line = next(ln for ln in open(f"/proc/self/task/{threading.get_native_id()}/status") if ln.startswith("SigBlk"))
    mask = int(line.split()[1], 16)
    return {s for s in (signal.SIGTERM, signal.SIGUSR1) if mask >> (s - 1) & 1}


def test_a_signal_during_a_save_is_blocked_for_its_helpers_then_acted_on(dist1, tmp_path, monkeypatch):
    """The save's helper processes (Megatron's spawn Manager, forked writers) inherit the blocked mask, so
    Slurm's SIGTERM to the whole step cannot kill them mid-save; the trainer still stops after it."""
    seen, real_save = [], ckpt.save

    def save(d, step, *a, **k):
        seen.append(_blocked())
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)                 # arrives in the middle of the periodic save
        return real_save(d, step, *a, **k)

    monkeypatch.setattr(ckpt, "save", save)
    t = Trainer(_cfg(tmp_path, save_every=2), build_tiny(seed=1), tiny_loss, TinyStream())
    with pytest.raises(Preempted) as e:
        t.train()
    assert e.value.step == 2 and e.value.signal_name == "SIGTERM"     # acted on at that step's boundary
    assert seen == [{signal.SIGTERM, signal.SIGUSR1}] and _blocked() == set()


def test_save_on_signal_off_leaves_the_default_action(dist1, tmp_path):
    t = Trainer(_cfg(tmp_path, save_on_signal=False, ckpt_dir=None), build_tiny(), tiny_loss, TinyStream())
    seen = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))      # stands in for "terminate"
    try:
        t.stream = SignalAt(3, signal.SIGUSR1)
        assert len(t.train()) == N and seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


# ----------------------------------------------------------------------------- durable saves

def _trainer(tmp_path, seed=1, stream=None, **kw):
    cfg = TrainConfig(**dict(dict(steps=10, lr=1e-2, log_every=100, ckpt_dir=str(tmp_path), progress=False), **kw))
    return Trainer(cfg, build_tiny(seed=seed), tiny_loss, stream or TinyStream())


def test_every_file_and_folder_is_fsynced_before_the_rename(dist1, tmp_path, monkeypatch):
    t = _trainer(tmp_path)
    t.train(until=1)
    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(a, b):
        events.append(("rename", str(a), str(b)))
        return real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    t.train_step()
    final = t.save_checkpoint()
    monkeypatch.undo()
    tmp = final + ".tmp"
    at = events.index(("rename", tmp, final))
    synced = {p for kind, p, *_ in events[:at] if kind == "fsync"}
    written = {os.path.join(d, f).replace(final, tmp, 1) for d, _, fs in os.walk(final) for f in fs}
    folders = {d.replace(final, tmp, 1) for d, _, _ in os.walk(final)}
    assert written and written <= synced and folders <= synced, sorted(written - synced)
    assert ("fsync", str(tmp_path)) in events[at:]                          # the rename itself made durable


def test_crash_while_replacing_a_step_keeps_the_good_copy(dist1, tmp_path, monkeypatch):
    t = _trainer(tmp_path)
    t.train(until=2)
    good = [p.detach().clone() for p in t.model.parameters()]
    real_rename = os.rename

    def crash_on_publish(a, b):
        if str(a) == ckpt.step_dir(str(tmp_path), 2) + ".tmp":      # the new folder, into place
            raise RuntimeError("simulated crash between the renames")
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", crash_on_publish)
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.save_checkpoint()                          # step 2 again (a preemption right after a periodic save)
    monkeypatch.undo()
    assert not os.path.exists(ckpt.step_dir(str(tmp_path), 2)) and os.path.isdir(ckpt.step_dir(str(tmp_path), 2) + ".prev")
    assert ckpt.latest_step(str(tmp_path)) == 2

    fresh = _trainer(tmp_path, seed=5)               # loads the good copy, whole
    assert fresh.step == 2 and fresh.stream.pos == 2
    for a, b in zip(good, fresh.model.parameters()):
        assert torch.equal(a, b)
    fresh.train(until=3)                             # the next save puts the good copy back under its name
    assert ckpt.list_steps(str(tmp_path)) == [2, 3] and not os.path.exists(ckpt.step_dir(str(tmp_path), 2) + ".prev")


# ----------------------------------------------------------------------------- launch

def test_layout_is_resolved_or_refused_in_one_line(capsys):
    from vincie_mcore.config import ConfigError, load_config
    from vincie_mcore.train.launch import resolve_layout
    from vincie_tools.train import main

    cfg = load_config(["experiment=7b"])
    lay = resolve_layout(cfg, 8, 8)
    assert (lay.tp, lay.cp, lay.dp, lay.tokens_per_step) == (4, 2, 8, 8 * 16384)
    with pytest.raises(ConfigError, match=r"^parallel: tp\*cp\*dp = 4\*2\*3 = 24 does not match the allocation's 16"):
        resolve_layout(load_config(["experiment=7b", "parallel.dp=3"]), 2, 8)

    assert main(["--check-layout", "--nodes", "8", "--gpus-per-node", "8", "experiment=7b"]) == 0
    assert "TP 4 x CP 2 x DP 8" in capsys.readouterr().out
    assert main(["--check-layout", "--nodes=1", "--gpus-per-node=2", "experiment=7b"]) == 2
    err = capsys.readouterr().err
    assert err == "error: parallel: tp*cp = 4*2 = 8 does not divide the allocation's 2 GPUs (1 node(s) x 2)\n"


def test_srun_task_variables_become_torch_distributed_ones():
    from vincie_mcore.train.launch import env_from_srun

    env = {"VINCIE_LAUNCHER": "srun", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    assert env_from_srun(env) and (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("5", "8", "1")
    assert not env_from_srun({"SLURM_PROCID": "5"})                   # not started by train.sbatch
    with pytest.raises(RuntimeError, match="MASTER_PORT unset"):
        env_from_srun({k: v for k, v in env.items() if k not in ("RANK", "MASTER_PORT")})


def test_rank0_builds_the_others_wait_then_read(tmp_path):
    import torch.multiprocessing as mp
    from _rank0_worker import rank0_worker

    mp.start_processes(rank0_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    mark = tmp_path / "built"
    for rank in (0, 1):                              # both see rank 0's result, after it was built
        assert (tmp_path / f"got{rank}").read_text() == f"{mark} by rank 0"
    # rank 0's failure reaches rank 1, which does not wait forever
    assert (tmp_path / "error0").read_text() == "OSError: disk full"
    assert (tmp_path / "error1").read_text() == "RuntimeError: rank 0 failed to build the synthetic store: OSError: disk full"


def test_stop_signals_blocked_at_start_still_reach_the_trainer():
    """A rank started from the helpers' fork server (parallel/parity.py, convert/hf.py, a test's
    start_processes) inherits the stop signals blocked (vincie_mcore/signals.py); a handler never
    runs for a blocked signal, so ``StopSignals`` unblocks what it handles, and restores the mask."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        with StopSignals() as stop:
            assert _blocked() == set()
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == "SIGTERM"
        assert _blocked() == {signal.SIGTERM, signal.SIGUSR1}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
