"""Edit images turn after turn in the browser (a Gradio page on this machine).

    vincie-app                          # the demo model (runs/demo, written by `make demo`)
    vincie-app --run runs/3b --port 7860
    vincie-app --export exports/demo    # a folder written by `vincie-convert export`

Prints "vincie-app: open http://HOST:PORT" once the page is served; Ctrl-C stops it. It serves
127.0.0.1 only unless given a login (--auth-file or $VINCIE_APP_AUTH). The page, its limits and
what each control does: docs/web_editor.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_RUN = "runs/demo"


def add_exposure_args(ap, port: int, login_note: str = "") -> None:
    """--host, --port, --auth-file, --share: who may reach a served page (app/serve.py's rules)."""
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to serve on; anything but loopback needs a login (--auth-file)")
    ap.add_argument("--port", type=int, default=port)
    ap.add_argument("--auth-file", default=None,
                    help="logins, one 'user:password' per line (or set $VINCIE_APP_AUTH=user:password)" + login_note)
    ap.add_argument("--share", action="store_true", help="a public gradio.live link (needs a login)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vincie-app", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--run", default=None, help=f"training run folder (default: {DEFAULT_RUN}, the demo's)")
    src.add_argument("--export", default=None, help="export folder (config.json + safetensors)")
    add_exposure_args(ap, 7860)
    ap.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload")
    ap.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest start image, in pixels")
    ap.add_argument("--max-queue", type=int, default=64, help="edits waiting beyond this are refused")
    ap.add_argument("--session-ttl-s", type=float, default=3600.0,
                    help="free a tab's history this long after its last use")
    ap.add_argument("--max-sessions", type=int, default=256, help="open tabs beyond this are refused")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for --run, e.g. sampler.steps=30")
    ap.add_argument("--no-warm-up", action="store_true", help="skip the 1-step edit made before serving")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from vincie_mcore.app.serve import ServeConfig, check_exposure, read_auth, serve
    from vincie_mcore.app.session import AppError, Backend, warm_up
    from vincie_mcore.hf.files import ExportError

    try:                                          # exposure first: refuse before loading a model
        cfg = ServeConfig(host=a.host, port=a.port, auth_file=a.auth_file, share=a.share,
                          max_upload_mb=a.max_upload_mb, max_pixels=a.max_pixels, max_queue=a.max_queue,
                          session_ttl_s=a.session_ttl_s, max_sessions=a.max_sessions)
        check_exposure(cfg, read_auth(cfg.auth_file))
    except AppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = a.run
    if a.export is None and run is None:
        run = DEFAULT_RUN
        if not (Path(run) / "config.yaml").is_file():
            print(f"error: --run: no demo model at {run} (run `make demo` first, or pass --run/--export)",
                  file=sys.stderr)
            return 2
    try:
        backend = Backend.from_export(a.export) if a.export else Backend.from_run(run, a.set)
    except (FileNotFoundError, ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.no_warm_up:
        print(f"vincie-app: warm-up edit {warm_up(backend):.2f} s", flush=True)
    try:
        serve(backend, cfg, announce=lambda line: print(line, flush=True))
    except AppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
