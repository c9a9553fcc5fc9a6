"""The web editor (``vincie-app``): the session logic in-process, then the real page in headless Chromium.

One 3-step demo-config training run serves every test. The in-process tests check what the page
relies on against independent references: the app's turns equal the library's no-cache editor
path, an exported folder gives the same samples as its run, undo-then-redo gives the same image,
the download holds exactly the session. The browser test starts ``vincie-app`` as a user does
and drives the page through Debian's Chromium with Selenium: two turns (one by the button, one by
Enter), progress in the page, undo, the download, a chain-of-editing turn with its region maps, a drag
painted with the mouse, a composition of two uploaded references, and a bad
image reported in the page while the server keeps serving.
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from browser import browser, css, free_port, serve, text, wait
from vincie_mcore.app.session import AppError, Backend, WebSession

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMPTS = ["add a red square at the top left", "make the red square blue"]


def _tool(name, *args, cwd=ROOT, timeout=600):
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(shared_demo_run):
    return shared_demo_run                      # tests/conftest.py: DEMO_RUN's run, trained once for the suite


@pytest.fixture(scope="module")
def backend(run_dir):
    from vincie_mcore.parallel import cpu_compat, groups
    try:
        yield Backend.from_run(run_dir)
    finally:                                    # load_run started one-process Megatron groups
        groups.destroy()
        cpu_compat.deactivate()


def _image(seed=0, h=24, w=24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path, a, mode=None):
    im = Image.fromarray(a)
    (im.convert(mode) if mode else im).save(path)
    return path


# ----------------------------------------------------------------------------
# The session, without the page
# ----------------------------------------------------------------------------

def test_turns_equal_the_library_s_no_cache_editor(backend):
    """Each turn's sample equals a fresh no-cache EditSession over the same history, seed and settings."""
    ws = WebSession(backend)
    ws.start(_image())
    for i, p in enumerate(PROMPTS):
        ws.edit(p, steps=4, guidance=3.0, seed=7 + i)
    assert [t.kv_cache for t in ws.turns] == [True, True]          # the demo's block_causal mask: cached
    for k, p in enumerate(PROMPTS):
        ed = backend.editor(4, 3.0, 7 + k)
        ed.use_kv_cache = False
        from vincie_mcore.infer.editor import EditSession
        ref = EditSession(ed, images=list(ws.session.images[:k + 1]), texts=list(ws.session.texts[:k]))
        ref.edit(p)
        assert ref.info[-1]["kv_cache"] is False
        torch.testing.assert_close(ws.session.latents[k], ref.latents[-1], atol=1e-5, rtol=0)
    assert [c for _, c in ws.gallery()] == ["start"] + [f"turn {i}: {p}" for i, p in enumerate(PROMPTS, 1)]


def test_undo_then_redo_gives_the_same_image(backend):
    ws = WebSession(backend)
    ws.start(_image(1))
    ws.edit(PROMPTS[0], 3, 3.0, 0)
    second = ws.edit(PROMPTS[1], 3, 3.0, 0)
    sizes = {b: c.sizes() for b, c in ws.session.kv.items()}
    ws.undo()
    assert len(ws.images) == 2 and len(ws.turns) == 1
    assert {b: c.sizes() for b, c in ws.session.kv.items()} != sizes      # taken back, not dropped
    again = ws.edit(PROMPTS[1], 3, 3.0, 0)                # the kept cache, the undone turn's context again
    assert np.abs(again.astype(int) - second.astype(int)).max() <= 1
    assert {b: c.sizes() for b, c in ws.session.kv.items()} == sizes
    fresh = WebSession(backend)                           # and what a session that never had the turn makes
    fresh.start(_image(1))
    fresh.edit(PROMPTS[0], 3, 3.0, 0)
    assert np.abs(fresh.edit(PROMPTS[1], 3, 3.0, 0).astype(int) - again.astype(int)).max() <= 1
    ws.undo()
    ws.undo()
    assert len(ws.images) == 1
    with pytest.raises(AppError, match="^undo: no turn to undo$"):
        ws.undo()


def test_download_holds_the_session(backend, tmp_path):
    ws = WebSession(backend)
    ws.start(_image(2))
    outs = [ws.edit(p, 2, 1.0, 3) for p in PROMPTS]
    with zipfile.ZipFile(ws.download(tmp_path)) as z:
        assert sorted(z.namelist()) == ["session.json", "strip.png", "turn_0.png", "turn_1.png", "turn_2.png"]
        meta = json.loads(z.read("session.json"))
        got = [np.asarray(Image.open(io.BytesIO(z.read(f"turn_{i}.png")))) for i in range(3)]
        strip = Image.open(io.BytesIO(z.read("strip.png")))
    assert [t["prompt"] for t in meta["turns"]] == PROMPTS and meta["turns"][0]["steps"] == 2
    assert meta["source"] == backend.source and meta["image_size"] == [24, 24]
    for a, b in zip(got, [_image(2), *outs]):
        assert np.array_equal(a, b)
    assert strip.width == 3 * (24 * 4 + 4)                   # three panels at 4x


def test_compose_starts_a_session_that_edits_on(backend, tmp_path):
    """Composition as a session's first turn: the composed image is the one ``applications.compose`` samples
    (its re-packing path; here the session's KV cache), later turns edit it, undo goes back to the
    references, the download labels them; fewer than two references, two sizes or a bad size: one line."""
    from vincie_mcore.infer import applications as apps

    refs = [_image(5), _image(6)]
    ws = WebSession(backend)
    out = ws.compose([refs[0], str(_png(tmp_path / "r2.png", refs[1]))], " both squares ", 3, 3.0, 5)
    want = apps.compose(backend.editor(3, 3.0, 5), refs, "both squares")
    assert ws.turns[0].kv_cache is True and np.abs(out.astype(int) - want.image.astype(int)).max() <= 1
    assert ws.session.texts == ["reference image 2 of 2", "both squares"]
    ws.edit(PROMPTS[0], 2, 3.0, 1)
    assert [c for _, c in ws.gallery()] == ["reference 1", "reference 2", "turn 1: both squares",
                                            f"turn 2: {PROMPTS[0]}"]
    with zipfile.ZipFile(ws.download(tmp_path)) as z:
        assert json.loads(z.read("session.json"))["references"] == 2 and "turn_3.png" in z.namelist()
    ws.undo()
    ws.undo()
    assert len(ws.images) == 2 and ws.references == 2
    with pytest.raises(AppError, match="^undo: no turn to undo$"):
        ws.undo()
    for args, pattern in (([refs[0]], r"^references: upload two or more images to compose$"),
                          ([refs[0], _image(7, h=16)], r"^references: reference 2 is \[16, 24, 3\], reference 1"),
                          ([refs[0], _image(7, h=20)], r"^reference 2: size 24x20 \(WxH\) is not a multiple of 8")):
        with pytest.raises(AppError, match=pattern):
            WebSession(backend).compose(args, "x", 2, 3.0, 0)
    assert WebSession(backend).compose([_image(7, h=16), _image(8, h=40)], "x", 1, 3.0, 0, fit=True).shape == \
        (24, 24, 3)                                            # fit: both to the training size first


def test_draw_starts_a_session_that_edits_on(backend, tmp_path):
    """A start image drawn from a caption: the image ``Editor.text_to_image`` draws with the same settings and
    seed, at the training size; later turns edit it (equal to the no-cache editor); the history and the
    download name the caption; an upload afterwards forgets it; bad input is one line."""
    from vincie_mcore.infer.editor import EditSession

    ws = WebSession(backend)
    cap = "a large red square at the top left"
    drawn = ws.draw(f" {cap} ", 3, 3.0, 4)
    (want,) = backend.editor(3, 3.0, 4).text_to_image([cap], (24, 24), seeds=[4])
    assert drawn.shape == (24, 24, 3) and np.array_equal(drawn, want)
    out = ws.edit(PROMPTS[0], 2, 3.0, 1)
    ed = backend.editor(2, 3.0, 1)
    ed.use_kv_cache = False
    ref = EditSession(ed, images=[torch.from_numpy(drawn)], texts=[])
    ref.edit(PROMPTS[0])
    torch.testing.assert_close(ws.session.latents[-1], ref.latents[-1], atol=1e-5, rtol=0)
    assert out.shape == (24, 24, 3)
    assert [c for _, c in ws.gallery()] == [f"drawn: {cap}", f"turn 1: {PROMPTS[0]}"]
    with zipfile.ZipFile(ws.download(tmp_path)) as z:
        assert json.loads(z.read("session.json"))["drawn_from"] == cap
    ws.undo()
    with pytest.raises(AppError, match="^undo: no turn to undo$"):
        ws.undo()
    ws.start(_image(3))
    assert ws.caption is None and ws.gallery()[0][1] == "start"
    with pytest.raises(AppError, match="^caption: type what to draw$"):
        WebSession(backend).draw("  ", 2, 3.0, 0)


def test_drag_is_a_turn_that_edits_on(backend, tmp_path):
    """A region painted on the latest result and moved: the turn is the image ``applications.drag`` makes from
    that image alone (the same re-packing path: equal), its instruction joins the history, the next turn edits
    with it as context (the KV cache prefills it: equal to the no-cache editor), undo drops it; bad input is one
    line; a released model refuses before any sampling."""
    import dataclasses

    from vincie_mcore.app.ui import painted_mask
    from vincie_mcore.infer import applications as apps
    from vincie_mcore.infer.editor import EditSession

    ws = WebSession(backend)
    ws.start(_image(9))
    ws.edit(PROMPTS[0], 2, 3.0, 1)
    latest = ws.images[-1]
    layer = np.zeros((24, 24, 4), np.uint8)
    layer[4:10, 5:9] = (255, 59, 48, 255)                      # a brush stroke: colour and full alpha
    clear = np.full_like(layer, 255)
    clear[..., 3] = 0                                          # colour under a transparent pixel counts for nothing
    mask = painted_mask({"background": latest, "layers": [clear, layer], "composite": latest})
    assert mask.sum() == 24 and mask[4:10, 5:9].all()
    out = ws.drag(mask, 8, 2, 1.0, 0.0, 3, 3.0, 5)
    want = apps.drag(backend.editor(3, 3.0, 5), latest, mask, 8, 2, backend.recipe)
    assert np.array_equal(out, want.image) and np.array_equal(want.moved, apps.shift_mask(mask, 8, 2))
    own = dataclasses.replace(backend.recipe, mask_prompt_src="paint where the object was")   # a run's own prompts
    other = WebSession(dataclasses.replace(backend, recipe=own))
    other.start(latest)
    moved = other.drag(mask, 8, 2, 1.0, 0.0, 3, 3.0, 5)
    assert np.array_equal(moved, apps.drag(backend.editor(3, 3.0, 5), latest, mask, 8, 2, own).image)
    assert not np.array_equal(moved, out)                    # the mask prompts are part of the drag's context
    assert np.array_equal(ws.maps[2]["roe_src"], mask) and np.array_equal(ws.maps[2]["roe_tgt"], want.moved)
    t = ws.turns[-1]
    assert (t.kind, t.prompt, t.kv_cache) == ("drag", "move the object in the marked region 8 px right and 2 px down",
                                              False)
    ws.edit(PROMPTS[1], 2, 3.0, 2)                            # the drag's image and instruction are context
    ed = backend.editor(2, 3.0, 2)
    ed.use_kv_cache = False
    ref = EditSession(ed, images=list(ws.session.images[:3]), texts=list(ws.session.texts[:2]))
    ref.edit(PROMPTS[1])
    assert ws.turns[-1].kv_cache is True
    torch.testing.assert_close(ws.session.latents[-1], ref.latents[-1], atol=1e-5, rtol=0)
    assert [c for _, c in ws.gallery()][2] == f"turn 2: {t.prompt}"
    with zipfile.ZipFile(ws.download(tmp_path)) as z:
        assert [x["kind"] for x in json.loads(z.read("session.json"))["turns"]] == ["edit", "drag", "edit"]
    ws.undo()
    ws.undo()
    assert len(ws.images) == 2 and len(ws.session.latents) == 1
    assert [m[0] for m in ws.session.kv_marks] == [0] and len(ws.session.kv["cond"]) > 0   # turn 1's context kept
    turned = ws.drag(mask, 0, 0, 1.5, 90, 2, 3.0, 5)          # scale and turn only
    assert ws.turns[-1].prompt == ("scale the object in the marked region by 1.5x, then rotate it 90 degrees "
                                   "counter-clockwise") and turned.shape == (24, 24, 3)
    for call, pattern in (
            (lambda: ws.drag(None, 4, 0, 1, 0, 2, 3.0, 0), r"^mask: paint the region to move, or type an instruction"),
            (lambda: ws.drag(np.zeros((24, 24), bool), 4, 0, 1, 0, 2, 3.0, 0, prompt=" "), r"^mask: paint the region"),
            (lambda: ws.drag(mask[:12, :12], 4, 0, 1, 0, 2, 3.0, 0), r"^mask: 12x12 painted over a 24x24 image"),
            (lambda: ws.drag(mask, 20, 0, 1, 0, 2, 3.0, 0), r"^dx/dy: \(20, 0\) moves the region .* off the 24x24"),
            (lambda: ws.drag(mask, 0, 0, 1, 0, 2, 3.0, 0), r"^dx/dy: the displacement is zero"),
            (lambda: ws.drag(mask, 1, 0, -1, 0, 2, 3.0, 0), r"^scale: must be a number > 0"),
            (lambda: painted_mask({"layers": [np.zeros((24, 24, 3), np.uint8)]}), r"^mask: expected an RGBA layer"),
            (lambda: WebSession(dataclasses.replace(backend, variant="official")).drag(mask, 4, 0, 1, 0, 2, 3.0, 0),
             r"^image: upload a start image first$")):
        with pytest.raises(AppError, match=pattern) as e:
            call()
        assert "\n" not in str(e.value)
    assert len(ws.turns) == 2                                   # nothing half-done was kept
    # nothing painted: the instruction names the object, the model locates it first (as applications.drag)
    latest = ws.images[-1]
    try:
        want = apps.drag(backend.editor(2, 3.0, 6), latest, None, 3, 0, backend.recipe, prompt="the red square")
    except ValueError as e:                                     # the tiny model may locate nothing: same line
        with pytest.raises(AppError, match=f"^{re.escape(str(e))}$"):
            ws.drag(None, 3, 0, 1, 0, 2, 3.0, 6, prompt="the red square")
    else:
        assert np.array_equal(ws.drag(None, 3, 0, 1, 0, 2, 3.0, 6, prompt=" the red square "), want.image)
        assert ws.turns[-1].prompt == "the red square"
    released = WebSession(dataclasses.replace(backend, variant="official"))
    released.session = ws.session                               # a session open, on a release: refused first
    with pytest.raises(AppError, match=r"^drag: not for a released model"):
        released.drag(mask, 4, 0, 1, 0, 2, 3.0, 0)
    assert painted_mask(None) is None and painted_mask({"layers": [np.zeros((24, 24, 4), np.uint8)]}) is None


def test_chain_of_editing_turns(backend, tmp_path):
    """``edit(chain=True)``: the turn is a ``ChainSession`` turn over the session's history (plain turns
    without maps, earlier chain turns with theirs), run by hand with the same editor settings; its maps are
    kept, shown and downloaded; undo drops them and takes the session's chain back to the undone turn's start,
    from where the turn made again equals the first; a released model refuses in one line."""
    import dataclasses

    from vincie_mcore.infer.applications import MAP_KINDS, ChainSession
    from vincie_mcore.infer.editor import _inner_model

    ws = WebSession(backend)
    ws.start(_image(11))
    ws.edit(PROMPTS[0], 2, 3.0, 1)
    out = ws.edit(PROMPTS[1], 2, 3.0, 2, chain=True)
    ref = ChainSession(backend.editor(2, 3.0, 2), ws.images[0], backend.recipe, MAP_KINDS)
    ref.add_turn(PROMPTS[0], ws.images[1], None)
    assert np.array_equal(out, ref.turn(PROMPTS[1]))
    assert set(ws.maps) == {2} and all(np.array_equal(ws.maps[2][k], ref.masks[-1][k]) for k in MAP_KINDS)
    cached = backend.editor(2, 3.0, 2).kv_cache_reason() is None       # the demo run: block_causal
    assert (ws.turns[-1].kind, ws.turns[-1].kv_cache) == ("chain", cached) and cached
    assert [c for _, c in ws.regions()] == ["turn 2: where it changes", "turn 2: where it will be"]
    chain = ws.chain
    start3 = {b: chain.kv[b].sizes() for b in ("cond", "uncond")}
    third = ws.edit("make it green", 2, 3.0, 3, chain=True)              # sees turn 2's maps
    ref = ChainSession(backend.editor(2, 3.0, 3), ws.images[0], backend.recipe, MAP_KINDS)
    ref.add_turn(PROMPTS[0], ws.images[1], None)
    ref.add_turn(PROMPTS[1], ws.images[2], ws.maps[2])
    assert np.abs(third.astype(int) - ref.turn("make it green").astype(int)).max() <= 1   # float reordering
    # one ChainSession (and its KV cache) across chain turns, a plain turn between them appended to it
    ws.edit("make it small", 2, 3.0, 4)
    ref.add_turn("make it small", ws.images[4], None)
    added, inner = [], _inner_model(backend.model)
    real = inner.prefill
    inner.prefill = lambda b, kv: added.append(real(b, kv)) or added[-1]
    try:
        fifth = ws.edit("make it round", 2, 3.0, 5, chain=True)
    finally:
        del inner.prefill
    ref.editor = backend.editor(2, 3.0, 5)
    assert ws.chain is chain and np.abs(fifth.astype(int) - ref.turn("make it round").astype(int)).max() <= 1
    assert len(added) == 6 and sum(added) < sum(len(ref.kv[b]) for b in ("cond", "uncond"))  # the new context only
    ws.undo(), ws.undo()
    with zipfile.ZipFile(ws.download(tmp_path)) as z:
        names = set(z.namelist())
        assert {"turn_2_roe_src.png", "turn_3_roe_tgt.png"} <= names and "turn_1_roe_src.png" not in names
        assert [t["kind"] for t in json.loads(z.read("session.json"))["turns"]] == ["edit", "chain", "chain"]
        src = np.asarray(Image.open(io.BytesIO(z.read("turn_2_roe_src.png"))))
        assert np.array_equal(src > 127, ws.maps[2]["roe_src"])
    ws.undo()
    assert set(ws.maps) == {2} and len(ws.regions()) == 2
    # undo took the chain back with the session: the same chain goes on from turn 3's start, computing only
    # turn 3's context again
    assert ws.chain is chain and len(chain.texts) == 2 and {b: chain.kv[b].sizes() for b in chain.kv} == start3
    again = ws.edit("make it green", 2, 3.0, 3, chain=True)
    assert ws.chain is chain and len(chain.texts) == 3
    assert np.abs(again.astype(int) - third.astype(int)).max() <= 1
    # a drag between chain turns joins the chain with its maps (the region, and where it went)
    region = np.zeros((24, 24), bool)
    region[4:10, 5:9] = True
    ws.drag(region, 4, 0, 1.0, 0.0, 2, 3.0, 6)
    after = ws.edit("make it round", 2, 3.0, 7, chain=True)
    ref = ChainSession(backend.editor(2, 3.0, 7), ws.images[0], backend.recipe, MAP_KINDS)
    for j in range(1, 5):
        ref.add_turn(ws.session.texts[j - 1], ws.images[j], ws.maps.get(j))
    assert set(ws.maps) == {2, 3, 4, 5} and len(chain.texts) == 5
    assert np.abs(after.astype(int) - ref.turn("make it round").astype(int)).max() <= 1
    for _ in range(4):
        ws.undo()
    assert ws.maps == {} and ws.regions() == []
    released = WebSession(dataclasses.replace(backend, variant="official"))
    released.session = ws.session
    with pytest.raises(AppError, match=r"^chain-of-editing: not for a released model"):
        released.edit("x", 2, 3.0, 0, chain=True)


def test_bad_input_is_one_line_naming_it(backend, tmp_path):
    ws = WebSession(backend)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_png(tmp_path / "ok.png", _image()).read_bytes()[:200])
    cases = [
        (lambda: ws.start(_image(h=20)), r"^image: size 24x20 \(WxH\) is not a multiple of 8"),
        (lambda: ws.start(str(truncated)), r"^image cut.png"),
        (lambda: ws.start(None), r"^image: upload a start image first$"),
        (lambda: ws.edit("x", 3, 3.0, 0), r"^image: upload a start image first$"),
        (lambda: ws.start(np.zeros((24, 24), np.uint8)), r"^image: expected RGB uint8"),
    ]
    for call, pattern in cases:
        with pytest.raises(AppError, match=pattern) as e:
            call()
        assert "\n" not in str(e.value)
    ws.start(str(_png(tmp_path / "cmyk.jpg", _image(), "CMYK")))   # other modes convert (data/media.py)
    for call, pattern in [(lambda: ws.edit("  ", 3, 3.0, 0), "^prompt: "),
                          (lambda: ws.edit("x", 0, 3.0, 0), "^sampler.steps: must be >= 1")]:
        with pytest.raises(AppError, match=pattern):
            call()
    assert ws.turns == []                                      # nothing half-done was kept


def test_fit_crops_and_resizes_to_the_training_size(backend):
    a = np.zeros((60, 100, 3), np.uint8)
    a[:, 20:80] = 255                                        # the centre 60x60 is white: the crop keeps only it
    ws = WebSession(backend)
    out = ws.start(a, fit=True)
    assert out.shape == (24, 24, 3) and out.min() == 255


def test_an_export_folder_edits_like_its_run(backend, run_dir, tmp_path):
    r = _tool("vincie-convert", "export", "--ckpt", str(run_dir), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr[-2000:]
    exp = Backend.from_export(tmp_path / "hf")
    assert exp.source.startswith("export ") and exp.mask_type == backend.mask_type
    a, b = WebSession(backend), WebSession(exp)
    region = np.zeros((24, 24), bool)
    region[2:8, 2:8] = True
    for ws in (a, b):
        ws.start(_image(3))
        ws.edit(PROMPTS[0], 3, 3.0, 1)
        ws.drag(region, 6, 6, 1.0, 0.0, 2, 3.0, 4)               # the export's recipe reaches the drag
    for k in (0, 1):
        torch.testing.assert_close(b.session.latents[k], a.session.latents[k], atol=1e-5, rtol=0)


def test_cli_refuses_missing_model_in_one_line(tmp_path):
    r = _tool("vincie-app", cwd=tmp_path, timeout=120)             # no runs/demo here
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --run: no demo model at runs/demo (run `make demo` first, or pass --run/--export)")
    r = _tool("vincie-app", "--export", str(tmp_path / "nope"), timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: export folder") and "nope" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------
# The page in a real browser
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(run_dir):
    """``vincie-app --run RUN`` as a user starts it; -> its URL once it says so."""
    yield from serve([BIN / "vincie-app", "--run", run_dir, "--port", free_port()], "vincie-app:", cwd=ROOT)


def _fetch(url) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _set_number(d, sel, value):
    from selenium.webdriver.common.keys import Keys
    (box,) = css(d, sel)
    box.clear()
    box.send_keys(str(value) + Keys.TAB)                     # the page takes the value when the box loses focus


@browser
def test_two_turns_undo_download_and_a_bad_image_in_the_browser(server, driver, downloads, tmp_path):
    from selenium.webdriver.common.keys import Keys

    d = driver
    d.get(server)
    wait(lambda: css(d, "#prompt textarea"), what="the page")
    assert "24x24 images" in text(d, "#header")

    # 1. a start image of the wrong size: one line in the page, and the server keeps serving
    css(d, "#start-image input[type=file]")[0].send_keys(str(_png(tmp_path / "bad.png", _image(h=20))))
    msg = wait(lambda: text(d, ".toast-body.error .toast-message-text"), what="the error in the page")
    assert msg.startswith("image: size 24x20 (WxH) is not a multiple of 8") and "trained at 24x24" in msg
    css(d, ".toast-body.error .toast-close")[0].click()
    wait(lambda: not css(d, ".toast-body.error"), what="the error to close")
    css(d, "#start-image button[aria-label='Remove Image']")[0].click()

    # 2. the start image, then turn 1 by the button
    css(d, "#start-image input[type=file]")[0].send_keys(str(_png(tmp_path / "start.png", _image(4))))
    wait(lambda: "Start image 24x24" in text(d, "#status"), what="the start image")
    css(d, "#prompt textarea")[0].send_keys(PROMPTS[0])
    css(d, "#edit-btn")[0].click()
    wait(lambda: "Turn 1 done" in text(d, "#status"), what="turn 1")
    assert len(css(d, "#history img")) == 2 and css(d, "#prompt textarea")[0].get_attribute("value") == ""

    # 3. turn 2 by Enter, with 60 steps: the page shows the sampling progress while it runs
    css(d, "#sampler button.label-wrap")[0].click()            # open the "Sampler" accordion
    wait(lambda: css(d, "#steps input[type=number]"), what="the sampler settings")
    _set_number(d, "#steps input[type=number]", 60)
    css(d, "#prompt textarea")[0].send_keys(PROMPTS[1] + Keys.ENTER)
    progress = wait(lambda: re.search(r"(\d+)/60 steps", text(d, ".progress-text")), timeout=60,
                     every=0.02, what="progress text")
    assert 0 <= int(progress.group(1)) <= 60
    wait(lambda: "Turn 2 done: 60 steps" in text(d, "#status"), what="turn 2")
    assert len(css(d, "#history img")) == 3
    shot = tmp_path / "web_editor.png"
    d.save_screenshot(str(shot))
    if os.environ.get("VINCIE_SCREENSHOT_DIR"):                 # docs/images/web_editor.png is made this way
        shutil.copy(shot, Path(os.environ["VINCIE_SCREENSHOT_DIR"]) / "web_editor.png")
    assert Image.open(shot).size[0] > 0

    # the images came back: the latest result is a 24x24 picture, and the history's last is the same image
    result = np.asarray(Image.open(io.BytesIO(_fetch(css(d, "#result img")[0].get_attribute("src")))).convert("RGB"))
    assert result.shape == (24, 24, 3)

    # 4. the download holds both turns, the second with its 60 steps
    css(d, "#download")[0].click()
    (zpath,) = wait(lambda: [p for p in downloads.glob("*.zip")], what="the downloaded zip")
    wait(lambda: not list(downloads.glob("*.crdownload")), what="the download to finish")
    z = zipfile.ZipFile(zpath)
    meta = json.loads(z.read("session.json"))
    assert [t["prompt"] for t in meta["turns"]] == PROMPTS and meta["turns"][1]["steps"] == 60
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read("turn_2.png")))), result)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read("turn_0.png")))), _image(4))

    # 5. undo: back to turn 1
    css(d, "#undo-btn")[0].click()
    wait(lambda: "Turn 1 done" in text(d, "#status"), what="undo")
    wait(lambda: len(css(d, "#history img")) == 2, what="the shorter history")

    # 6. chain-of-editing: the regions first, shown beside the history; then undone
    css(d, "#chain input[type=checkbox]")[0].click()
    css(d, "#prompt textarea")[0].send_keys(PROMPTS[1] + Keys.ENTER)
    wait(lambda: "Turn 2 done: 60 steps" in text(d, "#status"), what="the chain-of-editing turn")
    wait(lambda: len(css(d, "#regions img")) == 2, what="the turn's two region maps")
    css(d, "#chain input[type=checkbox]")[0].click()
    css(d, "#undo-btn")[0].click()
    wait(lambda: "Turn 1 done" in text(d, "#status") and not css(d, "#regions img"), what="undo of the chain turn")

    # 7. drag: a stroke painted on the latest result with the mouse, moved 8 px right: the next turn
    from selenium.webdriver.common.action_chains import ActionChains
    css(d, "#drag button.label-wrap")[0].click()               # open the "Move an object" accordion
    canvas = wait(lambda: css(d, "#drag-canvas canvas"), what="the drag canvas")[-1]
    [b for b in css(d, "#drag-canvas button") if b.get_attribute("aria-label") == "Brush"][0].click()
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    stroke = ActionChains(d).move_to_element_with_offset(canvas, -30, -30).click_and_hold()
    for _ in range(10):
        stroke.move_by_offset(3, 3)
    stroke.release().perform()
    _set_number(d, "#drag-dx input[type=number]", 8)
    css(d, "#drag-btn")[0].click()
    wait(lambda: "Turn 2 done: 60 steps" in text(d, "#status"), what="the drag's turn")
    # it succeeded, so the region is a stroke, not the image: a mask reaching x 16..23 would leave it
    assert "turn 2: move the object in the marked region 8 px right" in text(d, "#history")
    css(d, "#undo-btn")[0].click()
    wait(lambda: "Turn 1 done" in text(d, "#status"), what="undo of the drag")

    # 8. compose: two reference images and the instruction start a new session (60 steps still set)
    css(d, "#compose button.label-wrap")[0].click()            # open the "Compose" accordion
    wait(lambda: css(d, "#references input[type=file]"), what="the references' upload")
    refs = [_png(tmp_path / f"ref{i}.png", _image(10 + i)) for i in (1, 2)]
    css(d, "#references input[type=file]")[0].send_keys("\n".join(str(r) for r in refs))
    css(d, "#prompt textarea")[0].send_keys("both squares")
    wait(lambda: len(css(d, "#references .file-preview tr")) >= 2 or "ref2.png" in text(d, "#references"),
          what="both references uploaded")
    css(d, "#compose-btn")[0].click()
    wait(lambda: "Turn 1 done: 60 steps" in text(d, "#status"), what="the composition")
    wait(lambda: len(css(d, "#history img")) == 3, what="references and the composed image")

    # 9. draw: a caption starts a new session from a drawn image (60 steps still set)
    css(d, "#draw button.label-wrap")[0].click()               # open the "Draw ... from a caption" accordion
    wait(lambda: css(d, "#caption textarea"), what="the caption box")
    css(d, "#caption textarea")[0].send_keys("a large red square at the top left")
    css(d, "#draw-btn")[0].click()
    wait(lambda: "Start image 24x24 (drawn from the caption)" in text(d, "#status"), what="the drawing")
    wait(lambda: len(css(d, "#history img")) == 1, what="the drawn start image alone")
    assert "drawn: a large red square at the top left" in text(d, "#history")
