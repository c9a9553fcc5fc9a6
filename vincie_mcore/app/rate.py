"""The rating page of ``vincie-human-eval rate``: one MSE-Bench turn at a time, blind to the method and the
judge, answered success or failure. The study, each rater's order and the ratings file are
``eval/human.py``'s; this file only shows them.

A rater is the login name when the server has logins (``--auth-file``), else the name typed on the page.
Each answer is on disk before the next item shows, so closing the tab (or the server) loses nothing, and
the same name resumes where it stopped, in the same order. "Skip for now" moves an item to the end of
this visit's round.
"""
from __future__ import annotations

import html

import gradio as gr

from ..eval.human import Item, Ratings, Study, check_name, order

QUESTION = ("Rate the **last** turn only; the earlier ones are its context. It succeeds when both hold: "
            "(1) its result does what its instruction asks, and (2) nothing else changed that the "
            "instructions did not ask for.")

CSS = "#result img, #history img { object-fit: contain; image-rendering: pixelated; }"


def _prompts_html(prompts: list[str]) -> str:
    rows = [f"<li>{html.escape(p)}</li>" for p in prompts[:-1]]
    rows.append(f"<li><b>{html.escape(prompts[-1])}</b> &larr; rate this turn</li>")
    return f"<ol id='prompt-list'>{''.join(rows)}</ol>"


def build_rating_app(study: Study, ratings: Ratings, seed: int = 0, logins: bool = False):
    """The page (``gr.Blocks``) over ``study``, writing to ``ratings``."""
    orders: dict = {}

    def _order(rater):
        if rater not in orders:
            orders[rater] = order(study.items, rater, seed)
        return orders[rater]

    def _show(rater: str, skipped: list):
        done = ratings.done(rater)
        todo = [it for it in _order(rater) if it not in done]
        n = len(study.items)
        if not todo:
            return (None, [], "", None,
                    f"All {n} items rated by **{html.escape(rater)}**. Thank you: the page can be closed.")
        fresh = [it for it in todo if [it.method, it.index, it.turn] not in skipped]    # the state's lists
        if not fresh:                                        # every item left was skipped: a new round
            skipped, fresh = [], todo
        it = fresh[0]
        v = study.view(it)
        gallery = [(v["source"], "source")] + [(im, f"turn {t}") for t, im in enumerate(v["results"][:-1], 1)]
        state = {"rater": rater, "item": [it.method, it.index, it.turn], "skipped": skipped}
        return (state, gallery, _prompts_html(v["prompts"]), v["results"][-1],
                f"**{html.escape(rater)}**: {len(done)} of {n} rated; turn {it.turn} of a "
                f"{study.turns}-turn session.")

    def on_start(name, request: gr.Request):
        rater = (request.username if logins and request and request.username else (name or "").strip())
        try:
            check_name(rater, "rater")
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return _show(rater, [])

    def on_answer(verdict, state):
        if not state or not state.get("item"):
            raise gr.Error("rater: enter your name and press Start first", print_exception=False)
        it = Item(*state["item"])
        if verdict == "skip":
            return _show(state["rater"], [*state["skipped"], state["item"]])
        ratings.add(state["rater"], it, verdict == "success")
        return _show(state["rater"], state["skipped"])

    with gr.Blocks(title="VINCIE human evaluation") as app:
        gr.Markdown(f"### Multi-turn editing: human evaluation\n{len(study.items)} items "
                    f"({study.turns}-turn sessions). " + ("Press Start." if logins else
                                                          "Type your rater name and press Start; the same "
                                                          "name resumes where you stopped."))
        with gr.Row():
            name = gr.Textbox(label="Rater name", elem_id="rater", visible=not logins, scale=3)
            start = gr.Button("Start", variant="primary", elem_id="start-btn", scale=1)
        progress = gr.Markdown("", elem_id="progress")
        with gr.Row():
            with gr.Column(scale=1):
                history = gr.Gallery(label="Source and earlier turns", elem_id="history", columns=3, height=260,
                                     object_fit="contain", format="png")
                prompts = gr.HTML("", elem_id="prompts")
            with gr.Column(scale=1):
                result = gr.Image(label="The last turn's result", type="numpy", interactive=False,
                                  elem_id="result", height=320, format="png")
        gr.Markdown(QUESTION)
        with gr.Row():
            yes = gr.Button("Success", variant="primary", elem_id="success-btn")
            no = gr.Button("Failure", variant="stop", elem_id="failure-btn")
            skip = gr.Button("Skip for now", elem_id="skip-btn")
        state = gr.State(None)
        outs = [state, history, prompts, result, progress]
        start.click(on_start, [name], outs, api_name=False)
        name.submit(on_start, [name], outs, api_name=False)
        yes.click(lambda s: on_answer("success", s), [state], outs, api_name=False)
        no.click(lambda s: on_answer("failure", s), [state], outs, api_name=False)
        skip.click(lambda s: on_answer("skip", s), [state], outs, api_name=False)
    return app
