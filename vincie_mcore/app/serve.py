"""Serving the web editor: who may reach it, what a request may carry, and the launch itself.

The defaults let no one in from outside (docs/security.md, "The web editor"):
- bound to 127.0.0.1; any other address, or a share link, needs a login (``auth_file`` or the
  ``VINCIE_APP_AUTH`` environment variable, never a password on the command line, where every
  user of the machine can read it in ``ps``);
- uploads capped in bytes (Gradio refuses larger ones before our code runs) and in pixels;
- Gradio's upload folder is a fresh one per server, so every file it serves is one this app wrote
  or received, and a start image from outside it is refused (``ui.build_app``);
- one edit at a time, a bounded queue, and sessions freed after ``session_ttl_s``.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .session import AppError

AUTH_ENV = "VINCIE_APP_AUTH"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    auth_file: str | None = None      # lines "user:password"
    share: bool = False               # a public gradio.live link (needs a login)
    max_upload_mb: float = 20.0
    max_pixels: int = 4096 * 4096
    max_queue: int = 64               # waiting edits beyond this are refused with a message
    session_ttl_s: float = 3600.0     # a tab's history and KV cache are freed this long after last use
    max_sessions: int = 256           # open tabs beyond this are refused with a message

    def __post_init__(self):
        for name in ("max_upload_mb", "max_pixels", "max_queue", "session_ttl_s", "max_sessions"):
            if not getattr(self, name) > 0:
                raise AppError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:                # a host name: it may resolve to anything
        return False


def read_auth(auth_file: str | None, env=os.environ) -> list[tuple[str, str]] | None:
    """Logins from ``auth_file`` (one ``user:password`` per line, # comments) or ``$VINCIE_APP_AUTH``
    (``user:password``); None when neither is given. Messages never contain a password."""
    if auth_file is not None:
        try:
            lines = Path(auth_file).read_text().splitlines()
        except OSError as e:
            raise AppError(f"--auth-file {auth_file}: cannot read it: {type(e).__name__}") from None
        where = f"--auth-file {auth_file}"
    elif env.get(AUTH_ENV):
        lines, where = [env[AUTH_ENV]], f"${AUTH_ENV}"
    else:
        return None
    out = []
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, pw = line.partition(":")
        if not sep or not user or not pw:
            raise AppError(f"{where}: line {i} is not 'user:password'")
        out.append((user, pw))
    if not out:
        raise AppError(f"{where}: no 'user:password' line")
    return out


def check_exposure(cfg: ServeConfig, auth) -> None:
    """Refuse, in one line, to serve beyond this machine without a login."""
    if auth:
        return
    if cfg.share:
        raise AppError(f"--share: a public link needs a login (--auth-file FILE or ${AUTH_ENV}=user:password)")
    if not is_loopback(cfg.host):
        raise AppError(f"--host {cfg.host}: serving beyond this machine needs a login "
                       f"(--auth-file FILE or ${AUTH_ENV}=user:password)")


def prepare_upload_folder() -> str:
    """A fresh Gradio upload folder for this server, set before Gradio is imported (it reads it then)."""
    root = tempfile.mkdtemp(prefix="vincie_app_")
    os.environ["GRADIO_TEMP_DIR"] = root
    return root


def serve(backend, cfg: ServeConfig, announce=print) -> None:
    """Check the exposure, launch, announce the URL, block until interrupted."""
    auth, upload_root = _prepare(cfg)
    from .ui import CSS, build_app

    app, sessions = build_app(backend, upload_root=upload_root, max_pixels=cfg.max_pixels,
                              max_bytes=int(cfg.max_upload_mb * 2**20), session_ttl_s=cfg.session_ttl_s,
                              max_sessions=cfg.max_sessions)
    stop = threading.Event()

    def reaper():                                   # idle sessions are freed without waiting for a request
        while not stop.wait(min(60.0, cfg.session_ttl_s / 2)):
            sessions.reap()
    threading.Thread(target=reaper, daemon=True, name="vincie-app-reaper").start()
    try:
        run(app, cfg, auth, upload_root, CSS, lambda url: announce(
            f"vincie-app: open {url} ({backend.source}; login {'on' if auth else 'off'})"))
    finally:
        stop.set()


def serve_rating(study, ratings, cfg: ServeConfig, seed: int = 0, protocol: str = "all", announce=print) -> None:
    """``vincie-human-eval rate``: the rating page (``rate.py``) under the same exposure rules."""
    auth, upload_root = _prepare(cfg)
    from .rate import CSS, build_rating_app

    app = build_rating_app(study, ratings, seed, logins=bool(auth), protocol=protocol)
    run(app, cfg, auth, upload_root, CSS, lambda url: announce(
        f"vincie-human-eval: open {url} ({len(study.items)} items; ratings {ratings.path}; "
        f"login {'on' if auth else 'off'})"))


def _prepare(cfg: ServeConfig):
    """-> (logins, a fresh upload folder): refused in one line when it would serve beyond this machine
    without a login; set up before Gradio is imported."""
    auth = read_auth(cfg.auth_file)
    check_exposure(cfg, auth)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")      # no calls home from a lab machine
    return auth, prepare_upload_folder()


def run(app, cfg: ServeConfig, auth, upload_root: str, css: str, announce) -> None:
    """Launch a built page (one request at a time, a bounded queue), ``announce(url)``, block until
    interrupted (Ctrl-C or SIGTERM); the upload folder goes with the server."""
    app.queue(default_concurrency_limit=1, max_size=cfg.max_queue)  # one model: one edit at a time
    try:
        try:
            _, url, share_url = app.launch(server_name=cfg.host, server_port=cfg.port, auth=auth, share=cfg.share,
                                           max_file_size=int(cfg.max_upload_mb * 2**20), quiet=True, css=css,
                                           show_error=True, footer_links=[], prevent_thread_lock=True,
                                           mcp_server=False)
        except OSError as e:                                          # port taken
            raise AppError(f"--port {cfg.port}: {e}") from None
        announce(share_url or url)
        signal.signal(signal.SIGTERM, signal.default_int_handler)     # `kill` stops it as Ctrl-C does
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
    finally:
        shutil.rmtree(upload_root, ignore_errors=True)           # uploads and downloads go with the server
