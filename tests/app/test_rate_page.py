"""The rating page of ``vincie-human-eval rate`` in headless Chromium, started as a user starts it over two
methods' MSE-Bench results (tests/eval/mse_results.py): a rater sees the items in their own order (the
library's), with the prompts and images of each; Success, Failure and Skip write what they say to the
ratings file, a reload resumes with the skipped item, a bad name is refused in the page; serving beyond
this machine without a login is refused in one line."""
import contextlib
import io
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from browser import browser, css, free_port, serve, text, wait  # noqa: E402
from mse_results import methods, write_annotated_store, write_study, write_vlm_store  # noqa: E402

from vincie_mcore.eval.human import AnnotationStudy, Ratings, Study, order  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = write_study(tmp_path_factory.mktemp("rate"))
    args = [a for name, folder in methods(root).items() for a in ("--method", f"{name}={folder}")]
    return root, args


@pytest.fixture(scope="module")
def page(study):
    root, args = study
    yield from serve([BIN / "vincie-human-eval", "rate", *args, "--ratings", root / "ratings.jsonl",
                      "--port", free_port()], "vincie-human-eval:")


def _shown_prompts(d) -> list[str]:
    from selenium.common.exceptions import StaleElementReferenceException
    try:
        return [li.text.replace(" ← rate this turn", "") for li in css(d, "#prompt-list li")]
    except StaleElementReferenceException:                  # re-rendered under us: read again next poll
        return []


def _shown_result(d):
    from selenium.common.exceptions import StaleElementReferenceException
    try:
        src = css(d, "#result img")[0].get_attribute("src")
        with urllib.request.urlopen(src, timeout=30) as f:
            return np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
    except (IndexError, StaleElementReferenceException, OSError, ValueError):    # not there yet
        return None


def _gallery(d) -> list:
    """The images of ``#history`` as served (PNG, decoded), in page order; [] while any is not there yet."""
    from selenium.common.exceptions import StaleElementReferenceException
    try:
        out = []
        for img in css(d, "#history img"):
            with urllib.request.urlopen(img.get_attribute("src"), timeout=30) as f:
                out.append(np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB")))
        return out
    except (StaleElementReferenceException, OSError, ValueError):
        return []


@contextlib.contextmanager
def _rating(driver, args: list, rater: str):
    """``vincie-human-eval rate ARGS`` served for the test's length, its page open and started as ``rater``."""
    gen = serve([BIN / "vincie-human-eval", "rate", *args, "--port", free_port()], "vincie-human-eval:")
    try:
        driver.get(next(gen))
        wait(lambda: css(driver, "#start-btn"), what="the page")
        _start(driver, rater)
        yield driver
    finally:
        for _ in gen:
            pass


def _start(d, name):
    from selenium.webdriver.common.keys import Keys
    box = css(d, "#rater textarea, #rater input")[0]
    box.clear()
    box.send_keys(name + Keys.ENTER)


@browser
def test_rate_in_the_browser(study, page, driver):
    root, _ = study
    s = Study(methods(root))
    mine = order(s.items, "alice")
    d = driver
    d.get(page)
    wait(lambda: css(d, "#start-btn"), what="the page")
    _start(d, "not a name!")
    wait(lambda: "is not a name" in d.page_source, what="the refused name")
    _start(d, "alice")
    assert {it.method for it in mine[:4]} == {"ours", "other"}    # both sizes of result reach the page
    for k, verdict in enumerate(["success-btn", "failure-btn", "skip-btn", "success-btn"]):
        want, done = s.view(mine[k])["prompts"], k - (k > 2)       # (two items may share their prompts)
        wait(lambda: f"alice: {done} rated, {len(s.items) - done} to go" in text(d, "#progress") and
             _shown_prompts(d) == want and len(css(d, "#history img")) == mine[k].turn,   # source, earlier turns
             what=f"item {k}: its prompts and images")
        want_image = s.shown(mine[k])["results"][-1]                # one size for every method (Study.shown)
        assert want_image.shape == (24, 24, 3)
        wait(lambda: np.array_equal(_shown_result(d), want_image), what=f"item {k}'s result, pixel for pixel")
        css(d, f"#{verdict}")[0].click()
    wait(lambda: "3 rated" in text(d, "#progress"), what="the third answer")
    r = Ratings(root / "ratings.jsonl")
    assert r.done("alice") == {mine[0], mine[1], mine[3]}
    assert (r.get("alice", mine[0]), r.get("alice", mine[1]), r.get("alice", mine[3])) == (True, False, True)
    d.get(page)                                                   # a new visit: the skipped item comes first
    wait(lambda: css(d, "#start-btn"), what="the page again")
    _start(d, "alice")
    wait(lambda: _shown_prompts(d) == s.view(mine[2])["prompts"], what="the skipped item")
    assert "alice: 3 rated, 27 to go" in text(d, "#progress")


def test_serving_beyond_this_machine_needs_a_login(study):
    root, args = study
    r = subprocess.run([str(BIN / "vincie-human-eval"), "rate", *args, "--ratings", str(root / "x.jsonl"),
                        "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: --host 0.0.0.0: serving beyond this machine needs a login")
    assert len(r.stderr.strip().splitlines()) == 1 and not (root / "x.jsonl").exists()


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("annot")
    store = write_annotated_store(root / "sessions")
    return root, ["--store", str(store), "--sample", "5"]


@browser
def test_rate_annotations_in_the_browser(annotated, driver):
    """The transition's two frames (pixel for pixel) and its text; Save needs both answers; the answers land
    in the file."""
    root, args = annotated
    s = AnnotationStudy(args[1], sample=5)
    mine = order(s.items, "carol")
    with _rating(driver, [*args, "--ratings", root / "a.jsonl"], "carol") as d:
        v = s.view(mine[0])
        wait(lambda: text(d, "#transition-text") == v["text"] and len(css(d, "#history img")) == 2,
             what="the first transition")
        wait(lambda: (lambda g: len(g) == 2 and all(np.array_equal(a, b) for a, b in zip(g, (v["before"], v["after"]))))(
            _gallery(d)), what="its two frames, pixel for pixel")
        assert not css(d, "#notes") and not [e for e in css(d, "#regions") if e.is_displayed()]   # none kept, no maps
        css(d, "#success-btn")[0].click()                             # "Save" with nothing answered
        wait(lambda: "answer both questions" in d.page_source, what="the refusal")
        for q, answer in (("accurate", "yes"), ("complete", "no")):
            next(e for e in css(d, f"#{q} label") if e.text.strip() == answer).click()
        css(d, "#success-btn")[0].click()
        wait(lambda: text(d, "#transition-text") == s.view(mine[1])["text"], what="the next transition")
        r = Ratings(root / "a.jsonl")
        assert r.done("carol") == {mine[0]}
        assert (r.get("carol", mine[0], "accurate"), r.get("carol", mine[0], "complete")) == (True, False)


@browser
def test_with_logins_the_login_is_the_rater(study, driver, tmp_path):
    """``--auth-file``: the page asks for the login first, then rates under the login's name (no name box)."""
    from selenium.webdriver.common.keys import Keys

    root, args = study
    (tmp_path / "auth").write_text("bea:correct-horse-9\n")
    s = Study(methods(root))
    first = order(s.items, "bea")[0]
    gen = serve([BIN / "vincie-human-eval", "rate", *args, "--ratings", tmp_path / "r.jsonl", "--auth-file",
                 tmp_path / "auth", "--port", free_port()], "vincie-human-eval:")
    url = next(gen)
    try:
        d = driver
        d.delete_all_cookies()
        d.get(url)
        user = wait(lambda: css(d, "input[type=text], input:not([type])"), what="the login form")[0]
        user.send_keys("bea")
        css(d, "input[type=password]")[0].send_keys("correct-horse-9" + Keys.ENTER)
        wait(lambda: css(d, "#start-btn"), what="the page after login")
        assert not [e for e in css(d, "#rater textarea, #rater input") if e.is_displayed()]
        css(d, "#start-btn")[0].click()
        wait(lambda: "bea: 0 rated" in text(d, "#progress") and _shown_prompts(d) == s.view(first)["prompts"],
             what="the login's first item")
        css(d, "#failure-btn")[0].click()
        wait(lambda: "bea: 1 rated" in text(d, "#progress"), what="the answer")
        assert Ratings(tmp_path / "r.jsonl").get("bea", first) is False
    finally:
        for _ in gen:
            pass


@browser
def test_rate_a_vlm_built_store_with_its_maps_and_notes(tmp_path, driver):
    """A store from the VLM annotator and a segmenter: the two frames and the two tinted ones pixel for pixel,
    the VLM's notes folded below the text (its markup shown as text, not run), and Save refused until the
    regions question is answered too; the three answers land in the file."""
    store = write_vlm_store(tmp_path)
    s = AnnotationStudy(store, sample=3)
    mine = order(s.items, "dana")
    with _rating(driver, ["--store", store, "--sample", "3", "--ratings", tmp_path / "r.jsonl"], "dana") as d:
        v = s.view(mine[0])
        want = [v["before"], v["after"], *v["regions"]]
        wait(lambda: text(d, "#transition-text") == v["text"] and len(css(d, "#history img")) == 4,
             what="the first transition")
        wait(lambda: (lambda g: len(g) == 4 and all(np.array_equal(a, b) for a, b in zip(g, want)))(_gallery(d)),
             what="its frames and tinted maps, pixel for pixel")
        notes = css(d, "#notes")[0]
        assert "a <b>grid</b> of cells" in notes.get_attribute("textContent") and not css(d, "#notes-table b")
        assert v["notes"]["frame1_caption"]["obj1"] in notes.get_attribute("textContent")
        for q, answer in (("accurate", "yes"), ("complete", "no")):
            next(e for e in css(d, f"#{q} label") if e.text.strip() == answer).click()
        css(d, "#success-btn")[0].click()                             # regions unanswered
        wait(lambda: "answer all questions" in d.page_source, what="the refusal")
        next(e for e in css(d, "#regions label") if e.text.strip() == "yes").click()
        css(d, "#success-btn")[0].click()
        wait(lambda: text(d, "#transition-text") == s.view(mine[1])["text"], what="the next transition")
        r = Ratings(tmp_path / "r.jsonl")
        assert [r.get("dana", mine[0], q) for q in s.questions] == [True, False, True]
