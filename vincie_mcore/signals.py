"""The job's stop signals, and the helper processes kept out of them.

Slurm delivers its stop signals (SIGUSR1 from ``--signal=B:USR1``, passed on by ``srun``; SIGTERM
from a preemption, ``scancel`` or ``scontrol requeue``) to every process of the job step, helpers
included. Only the trainer acts on one (finish the step, save, exit 75: ``train/trainer.py``); a
helper that dies of one breaks its owner:

- a DataLoader worker: the trainer's next batch fails ("DataLoader worker exited unexpectedly");
- the fork server the workers start from: they exit too, since torch's worker watchdog takes a
  new parent for a dead owner;
- multiprocessing's resource tracker, Megatron's checkpoint Manager and writers: the save fails.

So helpers start with the signals blocked. A child inherits its parent's signal mask, through fork
and exec alike, and keeps it; the signals stay pending there and never act. Long-lived helpers
(DataLoader workers) block SIGUSR1 only: SIGTERM is also how their owner ends them
(``Process.terminate``, at exit), and a SIGTERM stop is best effort anyway (KillWait's SIGKILL
follows); SIGUSR1 is Slurm's warning before the time limit, the stop that must end in a save.
"""
from __future__ import annotations

import contextlib
import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_blocked(signals=STOP_SIGNALS):
    """``signals`` blocked in this thread for the duration, so that every process started within
    (and every process those start) has them blocked. This process still gets them: on another
    thread, or once the mask is lifted, and its handler then runs."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    # the tracker starts with SIGTERM blocked and then UNBLOCKS it in this thread: start it (inside
    # the block, so that it too has SIGUSR1 blocked) and block again
    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def block_signals(signals) -> None:
    """Block ``signals`` in this process (a worker forked from a fork server that an earlier caller
    started without the block)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
