"""The Gradio page of ``vincie-app``: widgets wired to ``WebSession`` (app/session.py).

Upload a start image, type an instruction, get the edited image; the next instruction edits that
result with the whole history as context. Or compose: several reference images and an instruction make
the first image of a session (``WebSession.compose``). Or drag: paint an object on the latest result, say
how far to move it (and how much to scale and turn it), and the model redraws it there (``WebSession.drag``). The history shows every turn with its prompt; undo drops
the last turn; the download button always holds the current session as a zip. Bad input raises
``gr.Error`` with the one-line message, which the page shows; the server keeps running.

Sessions live in our own ``Sessions`` table keyed by Gradio's per-tab session hash, not in a
``gr.State``: Gradio keeps a closed tab's state for an hour whatever its time-to-live, and we want
a closed tab freed at once (the page's unload event) and an idle one after ``session_ttl_s``.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr          # at module level: gradio resolves the handlers' `gr.Request` hints here
import numpy as np
from gradio.utils import get_upload_folder

from ..data.media import MAX_BYTES, MAX_PIXELS
from .session import AppError, Backend, WebSession

log = logging.getLogger(__name__)

# Small frames (the demo's are 24x24) fill their box, scaled up without blur.
CSS = """
#start-image img, #result img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#history img, #regions img { object-fit: contain; image-rendering: pixelated; }
#drag-canvas canvas { image-rendering: pixelated; }
"""


def _header(backend: Backend) -> str:
    size = "%dx%d images" % backend.image_size[::-1] if backend.image_size else \
        f"images whose sides are multiples of {backend.size_multiple}"
    return (f"### VINCIE in-context editor\nModel: `{backend.source}` ({size}, `{backend.mask_type}` mask, "
            f"device {backend.device}). Upload a start image, type an instruction, press **Edit**; each "
            f"next instruction edits the latest result with the whole history as context.")


def _brush_radius(backend: Backend):
    """A twelfth of the training image's shorter side, in image pixels (Gradio's "auto" paints most of a small
    image in one dab); "auto" when the model takes any size."""
    return max(1, min(backend.image_size) // 12) if backend.image_size else "auto"


def _status(ws: WebSession | None) -> str:
    if ws is None or ws.session is None:
        return "No session: upload a start image."
    if not ws.turns:
        h, w = ws.images[0].shape[:2]
        drawn = "" if ws.caption is None else " (drawn from the caption)"
        return f"Start image {w}x{h}{drawn}. Type the first instruction."
    t = ws.turns[-1]
    return (f"**Turn {len(ws.turns)}** done: {t.steps} steps, guidance {t.guidance:g}, seed {t.seed}, "
            f"{t.seconds:.2f} s, KV cache {'on' if t.kv_cache else 'off'}.")


def check_upload(path, upload_root) -> Path:
    """``path`` resolved, if it lies in Gradio's upload folder; refused otherwise (a server path sent by
    a client, a ``..``, or a link out of the folder). Gradio checks this too; this does not rely on it."""
    p = Path(path).resolve()
    if not p.is_relative_to(Path(upload_root).resolve()):
        raise AppError("image: not an upload of this page")
    return p


def painted_mask(value) -> np.ndarray | None:
    """The drag canvas's value (``gr.ImageEditor``, RGBA numpy layers) -> bool [H, W]: every pixel a brush
    stroke covers in any layer; None when nothing is painted (or the canvas is empty)."""
    if not isinstance(value, dict) or not value.get("layers"):
        return None
    mask = None
    for layer in value["layers"]:
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[2] != 4:
            raise AppError(f"mask: expected an RGBA layer from the canvas, got shape {list(a.shape)}")
        mask = a[..., 3] > 0 if mask is None else mask | (a[..., 3] > 0)
    return mask if mask is not None and mask.any() else None


class Sessions:
    """Live ``WebSession``s by tab: freed when the tab closes, after ``ttl_s`` idle, or never more
    than ``max_sessions`` (a new tab beyond that is refused with a message; no one's history is evicted)."""

    def __init__(self, ttl_s: float, max_sessions: int):
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self._d: OrderedDict[str, tuple[WebSession, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> WebSession | None:
        with self._lock:
            hit = self._d.get(key)
            if hit is None:
                return None
            self._d[key] = (hit[0], time.monotonic())
            self._d.move_to_end(key)
            return hit[0]

    def put(self, key: str, ws: WebSession) -> None:
        self.reap()
        with self._lock:
            if key not in self._d and len(self._d) >= self.max_sessions:
                raise AppError(f"server busy: {self.max_sessions} sessions open; try again later")
            self._d[key] = (ws, time.monotonic())
            self._d.move_to_end(key)
            log.info("session opened (%d live)", len(self._d))

    def drop(self, key: str, why: str) -> bool:
        with self._lock:
            hit = self._d.pop(key, None)
        if hit is None:
            return False
        hit[0].close()      # outside the lock: a slow close holds up no other tab
        # counted and logged under the lock, so the log's last "(n live)" is the count now: counted
        # before a close and logged after it, two tabs closing at once logged "(0 live)", "(1 live)"
        with self._lock:
            log.info("session freed: %s (%d live)", why, len(self._d))
        return True

    def reap(self) -> int:
        """Free every session idle for more than ttl_s -> how many."""
        now = time.monotonic()
        with self._lock:
            old = [k for k, (_, t) in self._d.items() if now - t > self.ttl_s]
        return sum(self.drop(k, "idle") for k in old)

    def __len__(self) -> int:
        return len(self._d)


def build_app(backend: Backend, upload_root: str | None = None, max_pixels: int = MAX_PIXELS,
              max_bytes: int = MAX_BYTES, session_ttl_s: float = 3600.0, max_sessions: int = 256):
    """-> (gr.Blocks not launched, its Sessions).

    ``upload_root``: Gradio's upload folder (GRADIO_TEMP_DIR); a start image from anywhere else is
    refused, so no request can make the app read a server file. Downloads are written under it too.
    """
    upload_root = Path(upload_root or get_upload_folder()).resolve()
    upload_root.mkdir(parents=True, exist_ok=True)
    download_dir = Path(tempfile.mkdtemp(prefix="downloads_", dir=upload_root))
    sessions = Sessions(session_ttl_s, max_sessions)

    def _outputs(ws):
        """(result, history, status, download, drag canvas, regions) for the current session; the canvas shows
        the latest result, unpainted; regions the maps of the last turn, when it predicted or was given them."""
        if ws is None or ws.session is None:
            return None, [], _status(None), None, None, []
        return ws.images[-1], ws.gallery(), _status(ws), ws.download(download_dir), ws.images[-1], ws.regions()

    def _fail(e: Exception):
        if isinstance(e, (AppError, ValueError)):            # the library's input errors are one line
            raise gr.Error(str(e), print_exception=False) from None
        log.exception("request failed")                      # anything else: say so in the page, keep serving
        raise gr.Error(f"internal error: {type(e).__name__}: {e}") from None

    def on_start(path, fit, request: gr.Request):
        key = request.session_hash
        sessions.drop(key, "new start image")
        if path is None:                                     # image cleared: no session
            return _outputs(None)
        try:
            ws = WebSession(backend, max_pixels=max_pixels, max_bytes=max_bytes)
            ws.start(check_upload(path, upload_root), fit=bool(fit))
            sessions.put(key, ws)
            return _outputs(ws)
        except Exception as e:
            _fail(e)

    def on_edit(prompt, steps, guidance, seed, chain, request: gr.Request, progress=gr.Progress()):
        ws = sessions.get(request.session_hash)
        try:
            if ws is None:
                raise AppError("image: upload a start image first")
            turn = len(ws.turns) + 1
            what = "chain-of-editing" if chain else "sampling"
            ws.edit(prompt, steps, guidance, seed, chain=bool(chain),
                    progress=lambda done, n: progress((done, n), desc=f"turn {turn}: {what}", unit="steps"))
            return (*_outputs(ws), "")
        except Exception as e:
            _fail(e)

    def on_compose(files, prompt, steps, guidance, seed, fit, request: gr.Request, progress=gr.Progress()):
        key = request.session_hash
        try:
            paths = [check_upload(f, upload_root) for f in (files or [])]
            ws = WebSession(backend, max_pixels=max_pixels, max_bytes=max_bytes)
            ws.compose(paths, prompt, steps, guidance, seed, fit=bool(fit),
                       progress=lambda done, n: progress((done, n), desc="composing", unit="steps"))
            sessions.drop(key, "new composition")
            sessions.put(key, ws)
            return (*_outputs(ws), "")
        except Exception as e:
            _fail(e)

    def on_drag(painted, dx, dy, scale, angle, prompt, steps, guidance, seed, request: gr.Request,
                progress=gr.Progress()):
        ws = sessions.get(request.session_hash)
        try:
            if ws is None:
                raise AppError("image: upload a start image first")
            mask = painted_mask(painted)
            turn = len(ws.turns) + 1
            ws.drag(mask, dx, dy, scale, angle, steps, guidance, seed, prompt=prompt,
                    progress=lambda done, n: progress((done, n), desc=f"turn {turn}: dragging", unit="steps"))
            return (*_outputs(ws), prompt if mask is not None else "")    # a located region used the instruction
        except Exception as e:
            _fail(e)

    def on_draw(caption, steps, guidance, seed, request: gr.Request, progress=gr.Progress()):
        key = request.session_hash
        try:
            ws = WebSession(backend, max_pixels=max_pixels, max_bytes=max_bytes)
            ws.draw(caption, steps, guidance, seed,
                    progress=lambda done, n: progress((done, n), desc="drawing", unit="steps"))
            sessions.drop(key, "new drawing")
            sessions.put(key, ws)
            return _outputs(ws)
        except Exception as e:
            _fail(e)

    def on_undo(request: gr.Request):
        ws = sessions.get(request.session_hash)
        try:
            if ws is None:
                raise AppError("undo: no turn to undo")
            ws.undo()
            return _outputs(ws)
        except Exception as e:
            _fail(e)

    def on_unload(request: gr.Request):
        sessions.drop(request.session_hash, "tab closed")

    s = backend.sampler
    with gr.Blocks(title="VINCIE editor", analytics_enabled=False,
                   delete_cache=(600, int(max(session_ttl_s, 600)))) as app:
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
                    chain = gr.Checkbox(label="Chain-of-editing: predict where the edit happens first (the region "
                                              "maps, then the image; ~3x the sampling)", value=False, elem_id="chain",
                                        visible=backend.variant != "official")    # the release has no RoE maps
                with gr.Accordion("Compose from several images", open=False, elem_id="compose"):
                    refs = gr.File(label="Reference images (two or more, in order)", file_count="multiple",
                                   file_types=["image"], type="filepath", elem_id="references")
                    compose = gr.Button("Compose", elem_id="compose-btn")
                    gr.Markdown("The instruction above says what to make of them; the result starts a new "
                                "session, edited on like any other.")
                with gr.Accordion("Draw the start image from a caption", open=False, elem_id="draw",
                                  visible=backend.variant != "official"):     # the release has no T2I layout
                    caption = gr.Textbox(label="Caption", placeholder="e.g. a large red square at the top left",
                                         elem_id="caption", lines=1)
                    draw = gr.Button("Draw", elem_id="draw-btn")
                    gr.Markdown("For a model trained with text-to-image samples (`data.recipe.t2i_prob` > 0). "
                                "The drawing starts a new session, edited on like an uploaded image.")
                with gr.Accordion("Move an object (drag)", open=False, elem_id="drag",
                                  visible=backend.variant != "official"):     # the release has no RoE maps
                    canvas = gr.ImageEditor(label="Paint the object to move on the latest result", type="numpy",
                                            image_mode="RGBA", sources=(), transforms=(), layers=False,
                                            brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed",
                                                           default_size=_brush_radius(backend)), format="png",
                                            height=256, elem_id="drag-canvas")
                    with gr.Row():
                        dx = gr.Number(value=0, precision=0, label="Right (px)", elem_id="drag-dx")
                        dy = gr.Number(value=0, precision=0, label="Down (px)", elem_id="drag-dy")
                        scale = gr.Number(value=1.0, label="Scale", elem_id="drag-scale")
                        angle = gr.Number(value=0.0, label="Turn (degrees, counter-clockwise)", elem_id="drag-angle")
                    move = gr.Button("Move", elem_id="drag-btn")
                    gr.Markdown("Negative values move left and up. Nothing painted: the instruction above names "
                                "the object and the model finds it first. The result is the next turn.")
                download = gr.DownloadButton("Download session (zip)", value=None, elem_id="download")
            with gr.Column(scale=2):
                result = gr.Image(label="Latest result", type="numpy", interactive=False, elem_id="result",
                                  height=256, format="png")
                history = gr.Gallery(label="History", elem_id="history", columns=6, height=220, object_fit="contain",
                                     format="png")
                status = gr.Markdown(_status(None), elem_id="status")
                regions = gr.Gallery(label="Region maps of the last turn (chain-of-editing or drag)", elem_id="regions",
                                     columns=4, height=140, object_fit="contain", format="png")
        if backend.examples:
            gr.Examples(examples=[list(e) for e in backend.examples], inputs=[start, prompt],
                        label="Held-out sessions of this run (first frame, first instruction)")

        outs = [result, history, status, download, canvas, regions]
        start.change(on_start, [start, fit], outs, api_name="start")
        edit.click(on_edit, [prompt, steps, guidance, seed, chain], [*outs, prompt], api_name="edit")
        prompt.submit(on_edit, [prompt, steps, guidance, seed, chain], [*outs, prompt], api_name=False)
        undo.click(on_undo, None, outs, api_name="undo")
        draw.click(on_draw, [caption, steps, guidance, seed], outs, api_name="draw")
        compose.click(on_compose, [refs, prompt, steps, guidance, seed, fit], [*outs, prompt], api_name="compose")
        move.click(on_drag, [canvas, dx, dy, scale, angle, prompt, steps, guidance, seed], [*outs, prompt],
                   api_name="drag")
        app.unload(on_unload)
    return app, sessions
