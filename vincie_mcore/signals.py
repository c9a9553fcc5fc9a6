"""The job's stop signals, and the helper processes kept out of them.

Slurm delivers its stop signals (SIGUSR1 from ``--signal=B:USR1``, passed on by ``srun``; SIGTERM
from a preemption, ``scancel`` or ``scontrol requeue``) to every process of the job step, helpers
included. Only the trainer acts on one (finish the step, save, exit 75: ``train/trainer.py``); a
helper that dies of one breaks its owner:

- a DataLoader worker: the trainer's next batch not already fetched fails ("DataLoader worker
  exited unexpectedly");
- the fork server the workers start from: they exit too, since torch's worker watchdog takes a
  new parent for a dead owner;
- multiprocessing's resource tracker, Megatron's checkpoint Manager and writers: the save fails.

So helpers start with the signals blocked. A child inherits its parent's signal mask, through fork
and exec alike, and keeps it; a blocked signal stays pending there and never acts.

- ``helper_context``: the fork server every helper starts from is started with both blocked, so it
  lives while its owner does (it exits when the owner's end of its "alive" pipe closes); and so does
  each child it forks, until the child decides.
- ``become_helper``, first thing in each helper: SIGUSR1 stays blocked; SIGTERM ends the helper only
  when its owner sends it (``Process.terminate``, multiprocessing's exit handler, ``Pool.terminate``).
  A SIGTERM from anyone else (Slurm) leaves it serving while its owner lives; the owner decides.
- A process that is not a helper but was started from that server (a rank of ``parallel/parity.py``)
  calls ``unblock_signals``; the trainer's ``StopSignals`` unblocks what it handles.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

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
    """Block ``signals`` in this thread (and so in the threads and processes it starts)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)


def unblock_signals(signals=STOP_SIGNALS) -> None:
    """Unblock ``signals`` in this thread: a process started from ``helper_context``'s fork server
    that is not a helper (a training rank) and must act on them, or die of them."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def helper_context(preload=()):
    """The multiprocessing context helpers start from: children of a fork server, never forks of
    the calling process (whose threads, gloo's, zarr's, DALI's, may hold locks mid-use: a DataLoader
    worker forked from the trainer died of SIGSEGV in CI). The server imports ``preload`` once, so a
    helper starts in well under a second.

    There is one server per process, shared by every caller, and the first start's preload wins;
    a later call's ``preload`` is only a hint. This starts the server, when nobody has yet, with the
    stop signals blocked, so that Slurm's stop does not end it (and with it every worker)."""
    import multiprocessing
    import multiprocessing.forkserver as forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    with stop_signals_blocked(STOP_SIGNALS):
        forkserver.ensure_running()
    return ctx


def become_helper(owner: int) -> None:
    """First thing in a helper process that ``owner`` (a pid) started and ends: the stop signals
    stay away from it; SIGTERM from ``owner`` ends it, at once and by that signal, as
    ``Process.terminate`` expects; SIGTERM from anyone else (Slurm, to every process of the step)
    leaves it running until ``owner`` is gone. Also lets go of the fork server (see below).

    Needs Linux's ``sigtimedwait``; elsewhere only SIGUSR1 is kept away."""
    _leave_forkserver_alive()
    if not hasattr(signal, "sigtimedwait"):
        block_signals((signal.SIGUSR1,))
        return
    block_signals(STOP_SIGNALS)
    # a thread started now has the signals blocked as well: sigtimedwait on a signal blocked in
    # every thread is the only way to read its sender
    threading.Thread(target=_serve_sigterm, args=(owner, os.getppid()), name="vincie-sigterm",
                     daemon=True).start()


def _serve_sigterm(owner: int, parent: int) -> None:
    stray = False                           # a SIGTERM not from the owner came: watch the owner
    while True:
        info = signal.sigtimedwait([signal.SIGTERM], 0.5 if stray else 3600)
        if info is not None and info.si_pid == owner:
            _die_of_sigterm()
        stray = stray or info is not None
        if stray and _gone(owner, parent):
            _die_of_sigterm()


def _gone(owner: int, parent: int) -> bool:
    """``owner`` exited (a zombie counts), or this process lost its parent (the owner, or the fork
    server, which exits with the owner)."""
    if os.getppid() != parent:
        return True
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{owner}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return False


def _die_of_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)   # the default action ends the process
    os._exit(128 + signal.SIGTERM)          # a handler was installed instead: end anyway


def _leave_forkserver_alive() -> None:
    """Close this process's copy of the fork server's "alive" pipe. The server exits when no process
    holds it, and torch's worker watchdog ends a worker whose parent (the server) is gone; but every
    child of the server is handed a copy, so while a helper held one, an owner killed outright
    (SIGKILL, the OOM killer) left its server and helpers running forever. Helpers start no processes
    of their own, so they never need it. (multiprocessing keeps the fd in a private attribute; if a
    Python version renames it, this does nothing and a killed owner's helpers outlive it.)"""
    import multiprocessing.forkserver as forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    server._forkserver_alive_fd = None
