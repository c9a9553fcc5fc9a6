"""The rating page of ``vincie-human-eval rate``: one item at a time, an MSE-Bench turn (blind to the method
and the judge, answered success or failure) or an annotated transition (its two frames and text, answered
accurate? complete?; with its RoE maps tinted over the frames where a segmenter made them, answered
regions? too; the annotator's own notes folded below the text). The studies, each rater's order and the
ratings file are ``eval/human.py``'s; this file only shows them.

A rater is the login name when the server has logins (``--auth-file``), else the name typed on the page.
Each answer is on disk before the next item shows, so closing the tab (or the server) loses nothing, and
the same name resumes where it stopped, in the same order. "Skip for now" moves an item to the end of
this visit's round.
"""
from __future__ import annotations

import html
import json

import gradio as gr

from ..eval.human import Item, Ratings, check_name, order, todo

QUESTION = {
    "mse": "Rate the **last** turn only; the earlier ones are its context. It succeeds when both hold: "
           "(1) its result does what its instruction asks, and (2) nothing else changed that the "
           "instructions did not ask for.",
    "annotation": "The text was written for the change from the first frame to the second. Answer both: is "
                  "**everything it says** right? does it name **every change** you see? Where the tinted "
                  "frames are shown, also: do the tinted regions mark **what changed** (red on the first "
                  "frame, green on the second), and little else?"}

CSS = "#result img, #history img { object-fit: contain; image-rendering: pixelated; }"


def _prompts_html(prompts: list[str]) -> str:
    rows = [f"<li>{html.escape(p)}</li>" for p in prompts[:-1]]
    rows.append(f"<li><b>{html.escape(prompts[-1])}</b> &larr; rate this turn</li>")
    return f"<ol id='prompt-list'>{''.join(rows)}</ol>"


def _panels(study, it: Item):
    """(gallery, text HTML, large image) of an item."""
    if study.kind == "mse":
        v = study.shown(it)                  # every method's images of a session at one size
        gallery = [(v["source"], "source")] + [(im, f"turn {t}") for t, im in enumerate(v["results"][:-1], 1)]
        return gallery, _prompts_html(v["prompts"]), v["results"][-1]
    v = study.view(it)
    camera = "" if v["camera"] in (None, "", "None") else f"<p>camera: {html.escape(v['camera'])}</p>"
    gallery = [(v["before"], "first frame"), (v["after"], "second frame")]
    if v["regions"] is not None:
        gallery += [(v["regions"][0], "first frame, changed region"), (v["regions"][1], "second frame, changed region")]
    return (gallery, f"<p id='transition-text'>{html.escape(v['text'])}</p>{camera}{_notes_html(v['notes'])}",
            None)


_CHANGES = ("global_change", "camera_change", "other_change")


def _notes_html(notes) -> str:
    """The annotator's notes on a transition, folded: a VLM's reply as a table (each character and object
    as it described them in both frames, and the change it saw), anything else as JSON. Every string is
    the server's and is escaped."""
    if not notes:
        return ""
    esc = html.escape
    f1, f2 = notes.get("frame1_caption"), notes.get("frame2_caption")
    if isinstance(f1, dict) and isinstance(f2, dict):
        changes = {}
        for key in ("character_change", "object_change"):
            if isinstance(notes.get(key), dict):
                changes.update(notes[key])
        rows = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(f1.get(k, '')))}</td><td>{esc(str(f2.get(k, '')))}"
                       f"</td><td>{esc(str(changes.get(k, '')))}</td></tr>" for k in dict.fromkeys([*f1, *f2]))
        body = (f"<table id='notes-table'><tr><th></th><th>first frame</th><th>second frame</th><th>change</th></tr>"
                f"{rows}</table>")
        body += "".join(f"<p>{esc(k.replace('_', ' '))}: {esc(str(notes[k]))}</p>" for k in _CHANGES
                        if str(notes.get(k) or "").strip())
    else:
        body = f"<pre>{esc(json.dumps(notes, indent=1, ensure_ascii=False))}</pre>"
    return f"<details id='notes'><summary>What the annotator saw (its own notes)</summary>{body}</details>"


def build_rating_app(study, ratings: Ratings, seed: int = 0, logins: bool = False, protocol: str = "all"):
    """The page (``gr.Blocks``) over ``study`` (``human.Study`` or ``human.AnnotationStudy``), writing to
    ``ratings``; ``protocol``: which items a rater is asked (``human.todo``)."""
    orders: dict = {}
    n, items = len(study.items), set(study.items)
    mse = study.kind == "mse"

    def _order(rater):
        if rater not in orders:
            orders[rater] = order(study.items, rater, seed)
        return orders[rater]

    def _show(rater: str, skipped: list):
        done = ratings.done(rater)
        left = todo(study, ratings, rater, _order(rater), protocol)
        if not left:
            return (None, [], "", None, None, None, gr.update(value=None, visible=False),
                    f"All items rated by **{html.escape(rater)}** ({len(done & items)} answers). "
                    f"Thank you: the page can be closed.")
        fresh = [it for it in left if [it.method, it.index, it.turn] not in skipped]    # the state's lists
        if not fresh:                                        # every item left was skipped: a new round
            skipped, fresh = [], left
        it = fresh[0]
        gallery, text, image = _panels(study, it)
        where = f"turn {it.turn} of a {study.turns}-turn session" if mse else "a transition"
        state = {"rater": rater, "item": [it.method, it.index, it.turn], "skipped": skipped}
        regions = gr.update(value=None, visible=not mse and "regions" in study.asks(it))
        return (state, gallery, text, image, None, None, regions,
                f"**{html.escape(rater)}**: {len(done & items)} rated, {len(left)} to go; {where}.")

    def on_start(name, request: gr.Request):
        rater = (request.username if logins and request and request.username else (name or "").strip())
        try:
            check_name(rater, "rater")
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return _show(rater, [])

    def on_answer(state, answers):
        # a warning, the page left as it is (gr.Error would cover the outputs, the answer radios among them)
        if not state or not state.get("item"):
            gr.Warning("rater: enter your name and press Start first")
            return tuple(gr.skip() for _ in outs)
        if answers is None:                                  # skipped
            return _show(state["rater"], [*state["skipped"], state["item"]])
        item = Item(*state["item"])
        if not mse:                                          # only what this item asks (regions: where maps exist)
            answers = {q: answers[q] for q in study.asks(item)}
        if None in answers.values():
            gr.Warning(f"answer {'all' if len(answers) > 2 else 'both'} questions (or skip)")
            return tuple(gr.skip() for _ in outs)
        ratings.add(state["rater"], item, answers)
        return _show(state["rater"], state["skipped"])

    with gr.Blocks(title="VINCIE human evaluation") as app:
        what = (f"Multi-turn editing ({study.turns}-turn sessions)" if mse else
                "The annotator's transition texts")
        gr.Markdown(f"### Human evaluation: {what}\n{n} items. " +
                    ("Press Start." if logins else "Type your rater name and press Start; the same name "
                                                   "resumes where you stopped."))
        with gr.Row():
            name = gr.Textbox(label="Rater name", elem_id="rater", visible=not logins, scale=3)
            start = gr.Button("Start", variant="primary", elem_id="start-btn", scale=1)
        progress = gr.Markdown("", elem_id="progress")
        with gr.Row():
            with gr.Column(scale=1):
                history = gr.Gallery(label="Source and earlier turns" if mse else "The transition",
                                     elem_id="history", columns=3 if mse else 4, height=260, object_fit="contain",
                                     format="png")
                text = gr.HTML("", elem_id="prompts")
            with gr.Column(scale=1, visible=mse):
                result = gr.Image(label="The last turn's result", type="numpy", interactive=False,
                                  elem_id="result", height=320, format="png")
        gr.Markdown(QUESTION[study.kind])
        with gr.Row(visible=not mse):
            accurate = gr.Radio(["yes", "no"], label="Everything it says is right", elem_id="accurate")
            complete = gr.Radio(["yes", "no"], label="It names every change", elem_id="complete")
            regions = gr.Radio(["yes", "no"], label="The tinted regions mark what changed", elem_id="regions",
                               visible=False)
        with gr.Row():
            yes = gr.Button("Success" if mse else "Save", variant="primary", elem_id="success-btn")
            no = gr.Button("Failure", variant="stop", elem_id="failure-btn", visible=mse)
            skip = gr.Button("Skip for now", elem_id="skip-btn")
        state = gr.State(None)
        outs = [state, history, text, result, accurate, complete, regions, progress]
        start.click(on_start, [name], outs, api_name=False)
        name.submit(on_start, [name], outs, api_name=False)
        if mse:
            yes.click(lambda s: on_answer(s, {"success": True}), [state], outs, api_name=False)
            no.click(lambda s: on_answer(s, {"success": False}), [state], outs, api_name=False)
        else:
            yes.click(lambda s, *a: on_answer(s, {q: None if v is None else v == "yes"
                                                  for q, v in zip(study.questions, a)}),
                      [state, accurate, complete, regions], outs, api_name=False)
        skip.click(lambda s: on_answer(s, None), [state], outs, api_name=False)
    return app
