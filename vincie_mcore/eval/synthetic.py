"""Multi-turn editing on the synthetic world, judged exactly: the demo's and ``vincie-evaluate``'s numbers.

``evaluate`` edits held-out sessions turn after turn (each turn sees the model's own earlier
outputs) next to a copy baseline that returns its input; ``summarize_eval`` turns the judge
records into the per-turn success rates the demo records in ``results.json``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..infer.applications import COE
from ..infer.editor import Editor
from .judge import edit_kinds, judge_edit


CONTEXTS = ("full", "none")


def evaluate(editor: Editor, sessions, world, turns: int = 3, batch: int = 64, progress: bool = True,
             context: str = "full", coe: str = "none", recipe=None):
    """Multi-turn editing of held-out sessions, judged exactly per turn.

    Turn k edits the model's own output of turn k-1 (the in-context setting);
    the copy baseline returns its input unchanged. ``context="full"`` gives the editor every
    earlier turn (I0, T0, ..., I_{k-1}, T_{k-1}, I_k); ``"none"`` only the image being edited,
    I_k (the model's previous output), with no earlier image or text: the paper's "w/o context"
    (Table 4), sequential single-turn editing. ``coe`` (Table 3's inference rows): ``"none"`` predicts each
    frame directly ("I"); ``"cs"``, ``"ns"``, ``"cs_ns"`` first predict the current / next / both RoE maps of
    the turn and give them as context (chain-of-editing, ``applications.ChainSession`` with the run's
    ``recipe``; ``batch`` chains per packed model call); earlier turns' maps stay in context under ``"full"``. Returns
    (results, baseline, strips)
    with results[k] (baseline[k]) a list of judge dicts for turn k+1 and strips the
    first six sessions' (outputs, prompts, ground-truth frames).
    """
    from tqdm import tqdm

    if context not in CONTEXTS:
        raise ValueError(f"eval.context: expected one of {CONTEXTS}, got {context!r}")
    if coe not in COE:
        raise ValueError(f"eval.coe: expected one of {tuple(COE)}, got {coe!r}")
    # judged turns must each be exactly one edit (sampling can also give "no change" or several)
    sessions = [s for s in sessions if s.frames.shape[0] > turns and s.states
                and all(len(edit_kinds(s.states[k], s.states[k + 1], world)) == 1 for k in range(turns))]
    results = [[] for _ in range(turns)]
    baseline = [[] for _ in range(turns)]
    strips = []
    if coe != "none":
        return _evaluate_chains(editor, sessions, world, turns, progress, context, COE[coe], recipe, results, baseline,
                                batch)
    for a in tqdm(range(0, len(sessions), batch), desc="edit", disable=not progress):
        chunk = sessions[a:a + batch]
        hist = [([torch.from_numpy(np.ascontiguousarray(s.frames[0]))], []) for s in chunk]
        for k in range(turns):
            prompts = [s.texts[k] for s in chunk]
            ctx = hist if context == "full" else [([h[0][-1]], []) for h in hist]
            outs = editor.edit_many(ctx, prompts)
            for s, h, out, prompt in zip(chunk, hist, outs, prompts):
                results[k].append(judge_edit(out, s.states[k], s.states[k + 1], world))
                # the copy baseline returns its input each turn, so its chain stays at I0
                baseline[k].append(judge_edit(s.frames[0], s.states[k], s.states[k + 1], world))
                h[0].append(torch.from_numpy(out))
                h[1].append(prompt)
        if a == 0:
            strips = [(h[0], h[1], s.frames[: turns + 1]) for h, s in zip(hist[:6], chunk[:6])]
    return results, baseline, strips


def _evaluate_chains(editor, sessions, world, turns, progress, context, maps, recipe, results, baseline, batch):
    """``evaluate`` with chain-of-editing turns: ``batch`` sessions' chains advance together, each of a turn's
    calls (its maps, then its frame) one packed model pass for all of them (``applications.chain_turns``)."""
    from tqdm import tqdm

    from ..infer.applications import ChainSession, chain_turns

    strips = []
    for a in tqdm(range(0, len(sessions), batch), desc="edit (chain-of-editing)", disable=not progress):
        chunk = sessions[a:a + batch]
        images = [[np.ascontiguousarray(s.frames[0])] for s in chunk]
        chains = None
        for k in range(turns):
            if chains is None or context == "none":             # none: a fresh chain on the image it edits
                chains = [ChainSession(editor, ims[-1], recipe, maps) for ims in images]
            outs = chain_turns(chains, [s.texts[k] for s in chunk])
            for s, ims, out in zip(chunk, images, outs):
                results[k].append(judge_edit(out, s.states[k], s.states[k + 1], world))
                baseline[k].append(judge_edit(s.frames[0], s.states[k], s.states[k + 1], world))
                ims.append(out)
        if a == 0:
            strips = [([torch.from_numpy(im) for im in ims], list(s.texts[:turns]), s.frames[: turns + 1])
                      for ims, s in zip(images[:6], chunk[:6])]
    return results, baseline, strips


def evaluate_t2i(editor: Editor, sessions, world, batch: int = 64, progress: bool = True):
    """Text-to-image on the synthetic world, judged exactly: each held-out session's first frame is
    described by its exact caption (``world.scene_caption``), generated from it alone, and judged as an
    edit from an empty scene (``judge_edit(out, Scene(), state)``): success when every object is the
    right shape, colour and size in the right cell and everything else is background. The baseline is
    a blank (background) frame, which passes only an empty scene. Returns (results, baseline, strips:
    the first six (caption, generated, true frame))."""
    from tqdm import tqdm

    from ..data.world import Scene, render, scene_caption
    from .judge import as_scene

    sessions = [s for s in sessions if s.states]
    results, baseline, strips = [], [], []
    blank = render(Scene(), world)
    for a in tqdm(range(0, len(sessions), batch), desc="text-to-image", disable=not progress):
        chunk = sessions[a:a + batch]
        states = [as_scene(s.states[0]) for s in chunk]
        captions = [scene_caption(st, world) for st in states]
        # a seed per session: the same images however the sessions are batched or what ran before
        seeds = [editor.sampler.seed + a + i for i in range(len(chunk))]
        outs = editor.text_to_image(captions, tuple(chunk[0].frames.shape[1:3]), seeds=seeds)
        for st, out, cap, s in zip(states, outs, captions, chunk):
            results.append(judge_edit(out, Scene(), st, world) | {"objects": len(st.objects)})
            baseline.append(judge_edit(blank, Scene(), st, world))
            if len(strips) < 6:
                strips.append((cap, out, s.frames[0]))
    return results, baseline, strips


def summarize_t2i(results, baseline) -> dict:
    """Text-to-image success (every cell right), the share of objects drawn right, success by object
    count, the blank baseline, and the mean cell error."""
    rate = lambda rs, k="success": round(float(np.mean([r[k] for r in rs])), 4) if rs else 0.0
    by_n = {}
    for r in results:
        by_n.setdefault(r["objects"], []).append(r)
    objects = sum(r["objects"] for r in results)           # from an empty scene, each object's cell "changed"
    right = sum(c not in r["wrong_cells"] for r in results for c in r["changed_cells"])
    return {"t2i_success": rate(results), "t2i_objects_right": round(right / objects, 4) if objects else None,
            "t2i_background_right": rate(results, "consistent"), "t2i_baseline_success": rate(baseline),
            "t2i_success_by_objects": {str(n): rate(v) for n, v in sorted(by_n.items())},
            "t2i_cell_error": mean_cell_error(results), "t2i_sessions": len(results)}


def evaluate_t2v(editor: Editor, sessions, world, turns: int = 3, batch: int = 64, progress: bool = True):
    """Text-to-video on the synthetic world, judged exactly frame by frame: each held-out session's clip of
    ``turns + 1`` frames is generated at once from its first frame's exact caption and its first ``turns``
    transition texts (``Editor.text_to_video``); frame 0 is judged as text-to-image (against an empty scene),
    frame k as the edit ``states[k-1] -> states[k]`` (success: every cell of frame k right). The baseline
    holds the true first frame still: right at frame 0, and later only where an edit changed nothing.
    Returns (results, baseline, strips): results[k] (baseline[k]) the judge dicts of frame k, strips the
    first six (caption, texts, generated frames, true frames)."""
    from tqdm import tqdm

    from ..data.world import Scene, scene_caption
    from .judge import as_scene

    sessions = [s for s in sessions if s.states and s.frames.shape[0] > turns]
    results, baseline, strips = [[] for _ in range(turns + 1)], [[] for _ in range(turns + 1)], []
    for a in tqdm(range(0, len(sessions), batch), desc="text-to-video", disable=not progress):
        chunk = sessions[a:a + batch]
        captions = [scene_caption(as_scene(s.states[0]), world) for s in chunk]
        texts = [list(s.texts[:turns]) for s in chunk]
        seeds = [editor.sampler.seed + a + i for i in range(len(chunk))]       # as evaluate_t2i
        clips = editor.text_to_video(captions, texts, tuple(chunk[0].frames.shape[1:3]), seeds=seeds)
        for s, clip, cap, tx in zip(chunk, clips, captions, texts):
            for k, out in enumerate(clip):
                before = Scene() if k == 0 else s.states[k - 1]
                results[k].append(judge_edit(out, before, s.states[k], world))
                baseline[k].append(judge_edit(s.frames[0], before, s.states[k], world))
            if len(strips) < 6:
                strips.append((cap, tx, clip, list(s.frames[:turns + 1])))
    return results, baseline, strips


def summarize_t2v(results, baseline) -> dict:
    """Per-frame success of the clips, the share of clips right in every frame, the still baseline's per
    frame, and the mean cell error per frame."""
    rate = lambda rs: round(float(np.mean([r["success"] for r in rs])), 4) if rs else 0.0
    whole = [all(fr[i]["success"] for fr in results) for i in range(len(results[0]))] if results else []
    return {"t2v_frame_success": [rate(r) for r in results],
            "t2v_clip_success": round(float(np.mean(whole)), 4) if whole else 0.0,
            "t2v_still_baseline": [rate(b) for b in baseline],
            "t2v_cell_error": [mean_cell_error(r) for r in results], "t2v_sessions": len(whole)}


def summarize_eval(results, baseline) -> dict:
    """Success rates per turn (model and copy baseline), turn 1 by edit type, sessions judged."""
    rate = lambda rs: float(np.mean([r["success"] for r in rs])) if rs else 0.0
    by_edit = {}
    for r in results[0]:
        by_edit.setdefault(r["edit_type"], []).append(r["success"])
    return dict(turn_success=[round(rate(r), 4) for r in results],
                baseline_success=[round(rate(b), 4) for b in baseline],
                success_by_edit={k: round(float(np.mean(v)), 4) for k, v in sorted(by_edit.items())},
                sessions=len(results[0]) if results else 0)


def mean_cell_error(judged: list[dict]) -> float | None:
    """Mean over sessions of a turn's mean absolute grid-cell error to the expected frame (``judge_edit``)."""
    import numpy as np
    return float(np.mean([np.mean(r["cell_error"]) for r in judged])) if judged else None
