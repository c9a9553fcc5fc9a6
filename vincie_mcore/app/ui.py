"""The Gradio page of ``vincie-app``: widgets wired to ``WebSession`` (app/session.py).

Upload a start image, type an instruction, get the edited image; the next instruction edits that
result with the whole history as context. The history shows every turn with its prompt; undo drops
the last turn; the download button always holds the current session as a zip. Bad input raises
``gr.Error`` with the one-line message, which the page shows; the server keeps running.
"""
from __future__ import annotations

import logging
import tempfile

from .session import AppError, Backend, WebSession

log = logging.getLogger(__name__)

# Small frames (the demo's are 24x24) fill their box, scaled up without blur.
CSS = """
#start-image img, #result img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#history img { object-fit: contain; image-rendering: pixelated; }
"""


def _header(backend: Backend) -> str:
    size = "%dx%d images" % backend.image_size[::-1] if backend.image_size else \
        f"images whose sides are multiples of {backend.size_multiple}"
    return (f"### VINCIE in-context editor\nModel: `{backend.source}` ({size}, `{backend.mask_type}` mask, "
            f"device {backend.device}). Upload a start image, type an instruction, press **Edit**; each "
            f"next instruction edits the latest result with the whole history as context.")


def _status(ws: WebSession | None) -> str:
    if ws is None or ws.session is None:
        return "No session: upload a start image."
    if not ws.turns:
        h, w = ws.images[0].shape[:2]
        return f"Start image {w}x{h}. Type the first instruction."
    t = ws.turns[-1]
    return (f"**Turn {len(ws.turns)}** done: {t.steps} steps, guidance {t.guidance:g}, seed {t.seed}, "
            f"{t.seconds:.2f} s, KV cache {'on' if t.kv_cache else 'off'}.")


def build_app(backend: Backend, download_dir: str | None = None):
    """-> gr.Blocks (not launched)."""
    import gradio as gr

    download_dir = download_dir or tempfile.mkdtemp(prefix="vincie_app_")

    def _session_outputs(ws):
        """(state, result, history, status, download) for the current session."""
        last = ws.images[-1] if ws is not None and ws.images else None
        zip_path = ws.download(download_dir) if ws is not None and ws.session is not None else None
        return ws, last, ws.gallery() if ws is not None else [], _status(ws), zip_path

    def on_start(path, fit):
        if path is None:                                     # image cleared: no session
            return None, None, [], _status(None), None
        ws = WebSession(backend)
        try:
            ws.start(path, fit=bool(fit))
        except AppError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return _session_outputs(ws)

    def on_edit(ws, prompt, steps, guidance, seed, progress=gr.Progress()):
        turn = len(ws.turns) + 1 if ws is not None else 1
        try:
            if ws is None:
                raise AppError("image: upload a start image first")
            ws.edit(prompt, steps, guidance, seed,
                    progress=lambda done, n: progress((done, n), desc=f"turn {turn}: sampling", unit="steps"))
        except (AppError, ValueError) as e:                  # the library's input errors are one line
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:                               # anything else: say so in the page, keep serving
            log.exception("edit failed")
            raise gr.Error(f"internal error: {type(e).__name__}: {e}") from None
        return (*_session_outputs(ws), "")

    def on_undo(ws):
        try:
            if ws is None:
                raise AppError("undo: no turn to undo")
            ws.undo()
        except AppError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return _session_outputs(ws)

    s = backend.sampler
    with gr.Blocks(title="VINCIE editor", analytics_enabled=False) as app:
        state = gr.State(None)
        gr.Markdown(_header(backend), elem_id="header")
        with gr.Row():
            with gr.Column(scale=1):
                start = gr.Image(label="Start image", type="filepath", sources=["upload"], elem_id="start-image",
                                 height=256)
                fit = gr.Checkbox(label="Fit to the model's size (centre-crop and resize)", value=False,
                                  elem_id="fit")
                prompt = gr.Textbox(label="Edit instruction", placeholder="e.g. add a red square at the top left",
                                    elem_id="prompt", lines=1)
                with gr.Row():
                    edit = gr.Button("Edit", variant="primary", elem_id="edit-btn")
                    undo = gr.Button("Undo last turn", elem_id="undo-btn")
                with gr.Accordion("Sampler", open=False, elem_id="sampler"):
                    steps = gr.Slider(1, 100, value=s.steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Number(value=s.guidance, label="Guidance (CFG)", elem_id="guidance")
                    seed = gr.Number(value=s.seed, precision=0, label="Seed", elem_id="seed")
                download = gr.DownloadButton("Download session (zip)", value=None, elem_id="download")
            with gr.Column(scale=2):
                result = gr.Image(label="Latest result", type="numpy", interactive=False, elem_id="result",
                                  height=256, format="png")
                history = gr.Gallery(label="History", elem_id="history", columns=6, height=220, object_fit="contain",
                                     format="png")
                status = gr.Markdown(_status(None), elem_id="status")
        if backend.examples:
            gr.Examples(examples=[list(e) for e in backend.examples], inputs=[start, prompt],
                        label="Held-out sessions of this run (first frame, first instruction)")

        outs = [state, result, history, status, download]
        start.change(on_start, [start, fit], outs)
        for trigger in (edit.click, prompt.submit):
            trigger(on_edit, [state, prompt, steps, guidance, seed], [*outs, prompt])
        undo.click(on_undo, [state], outs)
    return app

