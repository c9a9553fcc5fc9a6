"""The web editor lets no one in and keeps each user's session its own (docs/security.md, "The web editor").

Real servers: ``vincie-app`` started as a user starts it, on a 3-step demo-config run, talked to
over HTTP with ``httpx`` and Gradio's own client (``gradio_client``), as a browser or a script would.
- Exposure: anything but loopback, or a share link, needs a login; with one, nothing answers
  without it, and the password never reaches the server's output.
- Files: the app serves only files it wrote; a request naming a server path is refused; uploads
  have a byte and a pixel limit.
- Load: 16 concurrent two-turn sessions through a bounded queue: each completes or is refused with
  a message, none sees another's history, every session is freed, and memory comes back.
"""
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vincie_mcore.app.serve import ServeConfig, check_exposure, is_loopback, read_auth
from vincie_mcore.app.session import AppError

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "s3cret-Pw-4a7e"


# ----------------------------------------------------------------------------
# Exposure rules, without a server
# ----------------------------------------------------------------------------

def test_public_bind_or_share_needs_a_login(tmp_path):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        check_exposure(ServeConfig(host=host), None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(AppError, match=f"^--host {re.escape(host)}: serving beyond this machine needs a login"):
            check_exposure(ServeConfig(host=host), None)
        check_exposure(ServeConfig(host=host), [("u", "p")])
    with pytest.raises(AppError, match="^--share: a public link needs a login"):
        check_exposure(ServeConfig(share=True), None)


def test_logins_come_from_a_file_or_the_environment_and_errors_never_show_them(tmp_path):
    f = tmp_path / "auth"
    f.write_text(f"# who may edit\nalice:{PASSWORD}\nbob:pw:with:colons\n")
    assert read_auth(str(f), env={}) == [("alice", PASSWORD), ("bob", "pw:with:colons")]
    assert read_auth(None, env={"VINCIE_APP_AUTH": f"alice:{PASSWORD}"}) == [("alice", PASSWORD)]
    assert read_auth(None, env={}) is None
    f.write_text(f"alice:{PASSWORD}\n{PASSWORD}\n")                 # a line without user:
    with pytest.raises(AppError, match=r"line 2 is not 'user:password'") as e:
        read_auth(str(f), env={})
    with pytest.raises(AppError) as e2:
        read_auth(None, env={"VINCIE_APP_AUTH": PASSWORD})
    with pytest.raises(AppError, match="cannot read it"):
        read_auth(str(tmp_path / "missing"), env={})
    for err in (e, e2):
        assert PASSWORD not in str(err.value) and "\n" not in str(err.value)


def _tool(*args, env=None, timeout=120):
    return subprocess.run([str(BIN / "vincie-app"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_cli_refuses_before_loading_a_model():
    for args, msg in ((["--host", "0.0.0.0"], "error: --host 0.0.0.0: serving beyond this machine needs a login"),
                      (["--share"], "error: --share: a public link needs a login"),
                      (["--max-queue", "0"], "error: --max-queue: must be > 0")):
        r = _tool("--run", "/nonexistent", *args, env={"VINCIE_APP_AUTH": ""})
        assert r.returncode == 2 and r.stderr.strip().startswith(msg), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = _tool("--run", "/nonexistent", "--host", "0.0.0.0", env={"VINCIE_APP_AUTH": PASSWORD})
    assert r.returncode == 2 and "VINCIE_APP_AUTH: line 1 is not 'user:password'" in r.stderr
    assert PASSWORD not in r.stderr + r.stdout


# ----------------------------------------------------------------------------
# Real servers
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(shared_demo_run):
    return shared_demo_run                      # tests/conftest.py: DEMO_RUN's run, trained once for the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``vincie-app`` in a subprocess; its output collected line by line."""

    def __init__(self, run_dir, *args, env=None):
        self.port = _free_port()
        self.proc = subprocess.Popen([str(BIN / "vincie-app"), "--run", str(run_dir), "--port", str(self.port), *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        t0 = time.monotonic()
        while not any(line.startswith("vincie-app: open ") for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() - t0 > 180:
                self.stop()
                pytest.fail("vincie-app did not come up:\n" + self.output[-3000:])
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def count(self, pattern: str) -> int:
        return sum(bool(re.search(pattern, line)) for line in self.lines)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(run_dir):
    s = Server(run_dir, "--max-upload-mb", "1", "--max-pixels", "100000", "--max-queue", "8",
               "--session-ttl-s", "20", "--no-warm-up")
    yield s
    s.stop()


def _png(path, a) -> str:
    Image.fromarray(a).save(path)
    return str(path)


def _image(seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)


def test_serves_only_what_it_wrote(server, run_dir, tmp_path):
    import httpx

    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-not-for-the-web")
    for path in (secret, run_dir / "config.yaml", Path("/etc/passwd")):
        r = httpx.get(f"{server.url}/gradio_api/file={path}", timeout=30)
        assert r.status_code in (403, 404) and "MARKER" not in r.text and "root:" not in r.text, (path, r.status_code)
    # a request that names a server file as the start image: refused, the file never read back
    r = httpx.post(f"{server.url}/gradio_api/call/start",
                   json={"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, False]}, timeout=30)
    assert r.status_code == 200
    events = httpx.get(f"{server.url}/gradio_api/call/start/{r.json()['event_id']}", timeout=60).text
    assert "event: error" in events and "MARKER" not in events


def test_the_start_image_must_come_from_the_upload_folder(tmp_path):
    """Our own check behind Gradio's: a path outside the upload folder, or a link out of it, is refused."""
    from vincie_mcore.app.ui import check_upload

    root = tmp_path / "uploads"
    (root / "abc").mkdir(parents=True)
    ok = root / "abc" / "image.png"
    ok.write_bytes(b"")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"")
    (root / "abc" / "link.png").symlink_to(outside)
    assert check_upload(ok, root) == ok.resolve()
    for bad in (outside, root / "abc" / ".." / ".." / "secret.png", root / "abc" / "link.png"):
        with pytest.raises(AppError, match="^image: not an upload of this page$"):
            check_upload(bad, root)


def test_uploads_have_a_byte_and_a_pixel_limit(server, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    big = os.urandom(2 * 2**20)                                      # over --max-upload-mb 1
    r = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=60)
    assert r.status_code in (400, 413) and "maximum" in r.text.lower(), (r.status_code, r.text[:300])
    wide = _png(tmp_path / "wide.png", np.zeros((320, 320, 3), np.uint8))   # small file, 102,400 pixels
    c = Client(server.url, verbose=False)
    with pytest.raises(Exception, match="exceeds max_pixels=100000"):
        c.predict(handle_file(wide), False, api_name="/start")


def _client_session(url, i, tmp_path, results):
    """One user: start image, two turns; -> results[i] = ("done", zip) | ("refused", message)."""
    from gradio_client import Client, handle_file

    prompts = [f"client {i}: add a red square", f"client {i}: make it blue"]
    try:
        c = Client(url, verbose=False)
        c.predict(handle_file(_png(tmp_path / f"start_{i}.png", _image(100 + i))), False, api_name="/start")
        for p in prompts:
            out = c.predict(p, 2, 3.0, i, False, api_name="/edit")
        results[i] = ("done", out, prompts)
    except Exception as e:                                           # refused: it must say why
        results[i] = ("refused", str(e), prompts)


def _rss_mb(pid) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20


def test_sixteen_concurrent_sessions_complete_or_are_refused_and_never_mix(server, tmp_path):
    # one session first: everything the model and Gradio allocate once is in place before the baseline
    warm = {}
    _client_session(server.url, 99, tmp_path, warm)
    assert warm[99][0] == "done", warm[99]
    _wait_live(server, 0)
    before = _rss_mb(server.proc.pid)

    results = {}
    threads = [threading.Thread(target=_client_session, args=(server.url, i, tmp_path, results)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sorted(results) == list(range(16)), "a session was lost (no answer)"
    done = [(i, r) for i, r in results.items() if r[0] == "done"]
    refused = [(i, r) for i, r in results.items() if r[0] == "refused"]
    assert done, results
    for i, (_, message, _) in refused:                     # the queue holds 8: the rest are told so
        assert "queue" in message.lower() or "busy" in message.lower(), message
    for i, (_, out, prompts) in done:
        _, history, status, zip_path, _canvas, regions, cleared = out
        assert regions == []                                # plain turns: no region maps
        assert [h["caption"] for h in history] == ["start", *(f"turn {k}: {p}" for k, p in enumerate(prompts, 1))]
        assert "**Turn 2** done" in status and cleared == ""
        with zipfile.ZipFile(zip_path) as z:                # the session as the server holds it
            meta = json.loads(z.read("session.json"))
            start = np.asarray(Image.open(io.BytesIO(z.read("turn_0.png"))))
        assert [t["prompt"] for t in meta["turns"]] == prompts and [t["seed"] for t in meta["turns"]] == [i, i]
        assert np.array_equal(start, _image(100 + i))       # its own start image, no one else's
    print(f"\n16 concurrent sessions: {len(done)} done, {len(refused)} refused (queue full)")

    _wait_live(server, 0)                                   # every session freed (idle > --session-ttl-s 20)
    assert server.count(r"session opened") == server.count(r"session freed")
    print("freed because: " + ", ".join(f"{why} {server.count(f'session freed: {why}')}"
                                        for why in ("tab closed", "idle", "new start image")))
    after = _rss_mb(server.proc.pid)
    print(f"server RSS {before:.0f} MiB before, {after:.0f} MiB after")
    assert after - before < 64, (before, after)


def _wait_live(server, n, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        lines = [line for line in server.lines if re.search(r"session (opened|freed).*\((\d+) live\)", line)]
        if lines and re.search(rf"\({n} live\)", lines[-1]):
            return
        time.sleep(0.25)
    raise AssertionError(f"sessions not freed to {n} live:\n" + server.output[-2000:])


def test_with_a_login_nothing_answers_without_it_and_the_password_stays_out_of_the_output(run_dir, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    auth = tmp_path / "auth"
    auth.write_text(f"alice:{PASSWORD}\n")
    s = Server(run_dir, "--host", "0.0.0.0", "--auth-file", str(auth), "--no-warm-up")
    try:
        assert "login on" in s.output
        for path in ("/config", "/gradio_api/info"):
            assert httpx.get(s.url + path, timeout=30).status_code == 401
        with pytest.raises(Exception):
            Client(s.url, auth=("alice", "wrong"), verbose=False)
        c = Client(s.url, auth=("alice", PASSWORD), verbose=False)
        out = c.predict(handle_file(_png(tmp_path / "s.png", _image(1))), False, api_name="/start")
        assert "Start image 24x24" in out[2]
    finally:
        s.stop()
    assert PASSWORD not in s.output


def test_sessions_are_freed_when_idle_and_capped_without_evicting_anyone(monkeypatch):
    from vincie_mcore.app import ui

    now = [1000.0]
    monkeypatch.setattr(ui.time, "monotonic", lambda: now[0])

    class Fake:                                            # what Sessions needs of a WebSession
        closed = False

        def close(self):
            self.closed = True

    table = ui.Sessions(ttl_s=10, max_sessions=2)
    a, b, c = Fake(), Fake(), Fake()
    table.put("a", a)
    now[0] += 6
    table.put("b", b)
    with pytest.raises(AppError, match="^server busy: 2 sessions open; try again later$"):
        table.put("c", c)                                  # full: the newcomer is told, no one is evicted
    assert table.get("a") is a and table.get("b") is b and not (a.closed or b.closed)
    now[0] += 8                                            # a was touched by get() 8 s ago: both still live
    assert table.reap() == 0 and len(table) == 2
    now[0] += 3
    assert table.reap() == 2 and a.closed and b.closed and len(table) == 0
    table.put("c", c)
    assert table.drop("c", "tab closed") and c.closed and not table.drop("c", "again")


def test_the_log_counts_live_sessions_in_the_order_it_prints_them(caplog):
    # tabs closing at once: the last "(n live)" line must be the count after them all, which the
    # 16-session test and an operator reading the log rely on (it once printed "(0 live)", "(1 live)")
    import random

    from vincie_mcore.app import ui

    class Slow:                                            # a close that takes a while, as a real one may
        def close(self):
            time.sleep(random.uniform(0, 0.004))

    table = ui.Sessions(ttl_s=1e9, max_sessions=64)
    for i in range(64):
        table.put(str(i), Slow())
    with caplog.at_level("INFO", logger="vincie_mcore.app.ui"):
        threads = [threading.Thread(target=lambda j=j: [table.drop(str(k), "tab closed") for k in range(j, 64, 8)])
                   for j in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    counts = [int(re.search(r"\((\d+) live\)", r.getMessage()).group(1)) for r in caplog.records
              if "session freed" in r.getMessage()]
    assert len(counts) == 64 and counts == sorted(counts, reverse=True) and counts[-1] == 0 and len(table) == 0
