"""Helper processes and the job's stop signals (vincie_mcore/signals.py), with real processes and
real signals: a SIGTERM from anyone but its owner leaves a helper running while the owner lives (Slurm
signals every process of the step; the trainer decides); the owner's own SIGTERM ends it at once;
an owner gone ends it. What the stream's workers do under a Slurm stop is in tests/data/test_stream.py."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from vincie_mcore.signals import become_helper, helper_context

pytestmark = pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="needs Linux's sigtimedwait")


def _serve(owner, ready):
    become_helper(owner)
    ready.set()
    while True:
        time.sleep(0.05)


def _from_elsewhere(sig: str, *pids: int) -> None:
    """Send ``sig`` from another process, as slurmstepd does (the owner's own would end them)."""
    subprocess.run(["kill", "-s", sig, *map(str, pids)], check=True)


def _start(ctx, n=1):
    procs = []
    for _ in range(n):
        ready = ctx.Event()
        p = ctx.Process(target=_serve, args=(os.getpid(), ready), daemon=True)
        p.start()
        assert ready.wait(60)
        procs.append(p)
    return procs


def test_a_stop_from_elsewhere_leaves_a_helper_running_and_its_owner_ends_it():
    ctx = helper_context()
    a, b = _start(ctx, 2)
    try:
        _from_elsewhere("TERM", a.pid, b.pid)
        _from_elsewhere("USR1", a.pid, b.pid)
        time.sleep(1.5)                                  # the owner-watch looks every 0.5 s
        assert a.is_alive() and b.is_alive()
        t0 = time.monotonic()
        a.terminate()                                    # from the owner: ends it at once, by the signal
        a.join(10)
        assert a.exitcode == -signal.SIGTERM and time.monotonic() - t0 < 5
    finally:                                             # a failed check leaves nothing running
        for p in (a, b):
            p.kill()
            p.join(10)


_OWNER = """
import os, sys, time
sys.path.insert(0, {here!r})
from test_signals import _start
from vincie_mcore.signals import helper_context
p, = _start(helper_context())
print(p.pid, flush=True)
time.sleep(600)
"""


def test_a_helper_told_to_stop_from_elsewhere_goes_when_its_owner_does(tmp_path):
    import psutil

    owner = subprocess.Popen([sys.executable, "-c", _OWNER.format(here=os.path.dirname(__file__))],
                             stdout=subprocess.PIPE, text=True)
    helper = None
    try:
        helper = int(owner.stdout.readline())
        _from_elsewhere("TERM", helper)
        time.sleep(1.0)
        assert psutil.Process(helper).status() != psutil.STATUS_ZOMBIE
        owner.kill()                                     # the OOM killer: no clean-up runs in the owner
        owner.wait(30)
        t0 = time.monotonic()
        while psutil.pid_exists(helper) and psutil.Process(helper).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() - t0 < 30, "the helper outlived its owner"   # 0.5 s polls; a loaded box
            time.sleep(0.1)
    finally:
        owner.kill()
        if helper is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(helper).kill()            # a failed check leaves nothing running


def test_every_process_the_library_starts_comes_from_the_helpers_server():
    """A new pool or worker started from a plain fork-server context would start the shared server
    without the stop signals blocked (and a fork of a threaded process is the SIGSEGV of CI's past):
    the library starts processes through ``signals.helper_context`` only. Allowed exceptions, each
    deliberate: data/build.py forks when a job does not pickle (logged)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vincie_mcore"
    allowed = {("data/build.py", 'mp.get_context("fork")')}
    bad = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if rel == "signals.py":
            continue
        text = f.read_text()
        for m in re.finditer(r"[\w.]*(get_context\([^)]*\)|set_forkserver_preload|set_start_method)", text):
            if (rel, m.group(0)) not in allowed:
                bad.append(f"{rel}: {m.group(0)}")
        if 'start_method="forkserver"' in text and "_start_forkserver()" not in text and "helper_context(" not in text:
            bad.append(f"{rel}: start_method=forkserver without helper_context")
    assert not bad, bad
