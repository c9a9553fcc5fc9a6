"""Edit images turn after turn in the browser (a Gradio page on this machine).

    vincie-app                          # the demo model (runs/demo, written by `make demo`)
    vincie-app --run runs/3b --port 7860
    vincie-app --export exports/demo    # a folder written by `vincie-convert export`

Prints "vincie-app: open http://HOST:PORT" once the page is served; Ctrl-C stops it. The page and
what each control does: docs/web_editor.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_RUN = "runs/demo"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vincie-app", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--run", default=None, help=f"training run folder (default: {DEFAULT_RUN}, the demo's)")
    src.add_argument("--export", default=None, help="export folder (config.json + safetensors)")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for --run, e.g. sampler.steps=30")
    ap.add_argument("--no-warm-up", action="store_true", help="skip the 1-step edit made before serving")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from vincie_mcore.app.session import Backend, warm_up
    from vincie_mcore.hf.files import ExportError

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

    from vincie_mcore.app.ui import CSS, build_app

    app = build_app(backend)
    app.queue(default_concurrency_limit=1)        # one model, one edit at a time; others wait in line
    try:
        _, url, _ = app.launch(server_name=a.host, server_port=a.port, quiet=True, css=CSS, show_error=True,
                               footer_links=[], prevent_thread_lock=True)
    except OSError as e:                          # port taken
        print(f"error: --port {a.port}: {e}", file=sys.stderr)
        return 2
    print(f"vincie-app: open {url} ({backend.source})", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
