"""Human evaluation (eval/human.py, vincie-human-eval): the study read from real `vincie-benchmark mse`
result folders (judged by a local server on the OpenAI protocol), the ratings file, each rater's order, the
success rates and rater agreement worked out by hand, the correlations against their definitions, and the
report through the command line with a tiny random CLIP and DINO."""
import io
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mse_results import PROMPTS, frame, frame_tag, write_annotated_store, write_study, write_vlm_store  # noqa: E402
from mse_results import methods as _methods  # noqa: E402
from tiny_clip_dino import save_tiny_clip, save_tiny_dino  # noqa: E402

from vincie_mcore.data.video import fit_frame  # noqa: E402
from vincie_mcore.eval import human  # noqa: E402
from vincie_mcore.eval.human import Item, Ratings, Study  # noqa: E402


@pytest.fixture(scope="module")
def study_dirs(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("human"))


def _decoded(root, method, index, turn):
    path = root / ("ours_gen.parquet" if method == "ours" else "other/generated.parquet")
    rows = {r["index"]: r for r in pq.read_table(path).to_pylist()}
    return np.asarray(Image.open(io.BytesIO(rows[index][f"turn_{turn}_image"]["bytes"])).convert("RGB"))


def test_the_study_holds_every_turn_of_every_method_as_the_judge_saw_it(study_dirs):
    s = Study(_methods(study_dirs))
    assert s.turns == 5 and len(s.items) == 2 * 3 * 5 and len(set(s.items)) == len(s.items)
    v = s.view(Item("other", "b", 3))
    assert len(v["results"]) == 3 and v["prompts"] == PROMPTS["b"][:3]
    for t, im in enumerate(v["results"], 1):
        assert np.array_equal(im, _decoded(study_dirs, "other", "b", t))
    assert v["source"].shape == (32, 40, 3)            # the source at the results' size, as the judge compared
    # shown to raters: both methods' images of a session at one size, the smaller one (ours, 24 x 24); other's
    # 32 x 40 scaled into it whole (bars above and below), the source centre-cropped to it as the judge crops
    for it in (Item("other", "b", 3), Item("ours", "b", 3)):
        shown = s.shown(it)
        assert {im.shape for im in (shown["source"], *shown["results"])} == {(24, 24, 3)}
        assert shown["prompts"] == PROMPTS["b"][:3]
    assert all(np.array_equal(a, b) for a, b in zip(s.shown(Item("ours", "b", 2))["results"],
                                                     s.view(Item("ours", "b", 2))["results"]))
    other = s.shown(Item("other", "b", 1))["results"][0]
    assert np.array_equal(other, fit_frame(_decoded(study_dirs, "other", "b", 1), (24, 24), "pad"))
    assert not other[:2].any() and other[3:21].any()                      # 19 rows of image between bars
    assert np.array_equal(s.shown(Item("other", "b", 1))["source"], s.shown(Item("ours", "b", 1))["source"])
    # the judge's verdicts as it gave them: it stops at a session's first failure
    assert s.judge(Item("ours", "a", 5)) is not None and s.judge(Item("ours", "c", 1))["prompt_following"] == 3
    assert s.judge(Item("ours", "c", 2)) is None and s.judge(Item("ours", "b", 2))["prompt_following"] == 3
    assert s.methods["ours"].judge_success == pytest.approx([2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3], abs=1e-4)


def test_the_ratings_file_resumes_keeps_the_latest_and_survives_a_torn_line(tmp_path):
    f = tmp_path / "r.jsonl"
    r = Ratings(f)
    a1, a2 = Item("ours", "a", 1), Item("ours", "a", 2)
    r.add("alice", a1, {"success": True}), r.add("bob", a1, {"success": False})
    r.add("alice", a2, {"success": False})
    r.add("alice", a2, {"success": True})              # she changed her mind: the latest counts
    again = Ratings(f)
    assert again.get("alice", a2) is True and again.votes(a2) == [True] and sorted(again.votes(a1)) == [False, True]
    assert again.raters() == ["alice", "bob"] and again.done("alice") == {a1, a2}
    with open(f, "a") as fh:
        fh.write('{"rater": "alice", "meth')               # a crash mid-line
    torn = Ratings(f)
    assert torn.done("alice") == {a1, a2}
    torn.add("carol", a1, {"success": True})           # starts a fresh line after the torn one
    assert Ratings(f).get("carol", a1) is True and len(f.read_text().splitlines()) == 5   # the fragment cut off
    f.write_text(f.read_text().rstrip("\n"))              # a whole last answer that lost its newline: kept
    whole = Ratings(f)
    assert whole.get("carol", a1) is True
    whole.add("dave", a2, {"success": False})            # ... and the next answer starts a line of its own
    assert Ratings(f).get("carol", a1) is True and Ratings(f).get("dave", a2) is False
    lines = f.read_text().splitlines()
    f.write_text("\n".join([*lines, "not json"]) + "\n")   # a bad line that is not torn: refused
    with pytest.raises(ValueError, match=r"r.jsonl line 7: not a rating"):
        Ratings(f)
    f.write_text("\n".join([lines[0], "not json", *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl line 2: not a rating") as e:
        Ratings(f)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^rater: 'a b' is not a name"):
        r.add("a b", a1, {"success": True})


def test_each_rater_has_an_order_of_their_own(study_dirs):
    s = Study(_methods(study_dirs))
    o = human.order(s.items, "alice")
    assert sorted(o) == sorted(s.items) and o == human.order(list(s.items), "alice")
    assert o != human.order(s.items, "bob") and o != human.order(s.items, "alice", seed=1)


def test_success_per_turn_and_agreement_worked_by_hand(study_dirs, tmp_path):
    """ours: a rated success to the end by alice, bob fails its turn 3 (a tie: failure); b's turn 1 only
    (success); c's turn 2 only (failure: c fails from turn 2 on, undecided at turn 1)."""
    s = Study(_methods(study_dirs))
    r = Ratings(tmp_path / "r.jsonl")
    for t in range(1, 6):
        r.add("alice", Item("ours", "a", t), {"success": True})
    for t, ok in ((1, True), (2, True), (3, False)):
        r.add("bob", Item("ours", "a", t), {"success": ok})
    r.add("alice", Item("ours", "b", 1), {"success": True})
    r.add("alice", Item("ours", "c", 2), {"success": False})
    h = human.human_success(s, r)
    assert h["ours"]["turn_success"] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert [p["sessions_counted"] for p in h["ours"]["per_turn"]] == [2, 2, 2, 2, 2]
    assert h["other"]["turn_success"] == [None] * 5 and h["other"]["per_turn"][0]["sessions_counted"] == 0
    (pair,) = human.rater_agreement(r, s.items)
    assert pair == {"raters": ["alice", "bob"], "items": 3, "agreement": round(2 / 3, 4), "cohen_kappa": 0.0}
    # the textbook table: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o 0.7, p_e 0.5, kappa 0.4
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert human.cohen_kappa(a, b) == pytest.approx(0.4)
    assert human.cohen_kappa([True] * 4, [True] * 4) is None


def _avg_ranks(x):
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _tau_b(x, y):
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / np.sqrt((conc + disc + tx) * (conc + disc + ty))


def test_correlations_match_their_definitions():
    rng = np.random.default_rng(0)
    x = np.array([0, 0.5, 1, 1, 0, 0.5, 1, 0, 1.0])              # the human side: shares of raters, ties
    y = x * 4 + rng.normal(0, 1.5, len(x))
    c = human.correlation(x, y)
    assert c["n"] == 9
    assert c["pearson"]["r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-4)
    assert c["spearman"]["r"] == pytest.approx(np.corrcoef(_avg_ranks(x), _avg_ranks(y))[0, 1], abs=1e-4)
    assert c["kendall"]["r"] == pytest.approx(_tau_b(x, y), abs=1e-4)
    assert all(0 < c[k]["p"] < 1 for k in ("pearson", "spearman", "kendall"))
    # without ties Kendall's p is exact: the share of all 7! orders whose |tau| reaches the observed one
    x7, y7 = np.arange(7.0), np.array([2, 0, 1, 4, 3, 6, 5.0])
    c7 = human.correlation(x7, y7)
    taus = np.array([_tau_b(x7, np.array(p)) for p in itertools.permutations(y7)])
    assert c7["kendall"]["p"] == pytest.approx(np.mean(np.abs(taus) >= abs(_tau_b(x7, y7)) - 1e-12), rel=1e-3)
    assert human.correlation([1, 1, 1, 1], [1, 2, 3, 4])["pearson"] is None      # a constant side
    assert human.correlation([0, 1], [1, 2])["kendall"] is None                  # too few


def test_report_through_the_command_line(study_dirs, tmp_path, capsys):
    """Ratings on 12 items by two raters; the report's judge correlation is the one over the pairs read
    straight from results.json; CLIP-T, CLIP-I and DINO (tiny random models) over every rated item, CLIP-I
    against the turn's input; a PNG; bad input is one line."""
    from vincie_tools.human_eval import main

    s = Study(_methods(study_dirs))
    r = Ratings(tmp_path / "r.jsonl")
    rng = np.random.default_rng(3)
    rated = human.order(s.items, "x")[:12]
    for it in rated:
        r.add("alice", it, {"success": bool(rng.random() > 0.4)})
    for it in rated[:6]:
        r.add("bob", it, {"success": bool(rng.random() > 0.4)})
    r.add("alice", Item("gone", "a", 1), {"success": True})         # answers of other studies in the same file:
    r.add("bob", Item("gone", "a", 1), {"success": False})
    r.add("carol", Item("annotations", "3", 1), {"accurate": True, "complete": False})   # not counted here
    clip, dino = save_tiny_clip(tmp_path / "clip"), save_tiny_dino(tmp_path / "dino")
    args = ["--method", f"ours={study_dirs / 'ours'}", "--method", f"other={study_dirs / 'other'}",
            "--ratings", str(tmp_path / "r.jsonl")]
    assert main(["report", *args, "--clip-path", clip, "--dino-path", dino, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "12 of 30 items rated by 2 raters" in out and out.count("vs raters") == 4
    res = json.loads((tmp_path / "out" / "human_eval.json").read_text())
    assert res["items_rated"] == 12 and res["raters"] == {"alice": 12, "bob": 6} and res["ratings"] == 18
    assert [p["items"] for p in res["agreement"]] == [6]
    details = {m: {d["index"]: d for d in json.loads((study_dirs / m / "results.json").read_text())["sessions_detail"]}
               for m in ("ours", "other")}
    pairs = []
    for it in rated:
        v = details[it.method][it.index]["verdicts"]
        if len(v) >= it.turn:
            votes = [r.get(n, it) for n in ("alice", "bob") if r.get(n, it) is not None]
            pairs.append((np.mean(votes), np.sqrt(v[it.turn - 1]["prompt_following"] * v[it.turn - 1]["consistency"])))
    assert res["correlation"]["judge"]["n"] == len(pairs)
    want = human.correlation(*zip(*pairs))
    assert want["pearson"] is not None
    for k in ("pearson", "spearman", "kendall"):
        assert res["correlation"]["judge"][k] == pytest.approx(want[k], rel=1e-3)
    assert all(res["correlation"][k]["n"] == 12 for k in ("clip_t", "clip_i", "dino"))
    from vincie_mcore.eval.magicbrush import MagicBrushConfig, MagicBrushMetrics

    m = MagicBrushMetrics(MagicBrushConfig(clip_path=clip, dino_path=dino))
    it = next(i for i in rated if i.turn > 1)
    got = human.metric_scores(s, [it], m)[it]
    e = m.clip_image([s.view(it)["results"][-1], s.view(it)["results"][-2]])
    assert got["clip_i"] == pytest.approx(float(e[0] @ e[1] / (e[0].norm() * e[1].norm())), abs=1e-5)
    assert (tmp_path / "out" / "human_eval.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()                                  # the weights' loading bars
    # one line each: a bad method, a folder that is no result, the same name twice, CLIP without DINO
    for bad, msg in ((["--method", "ours"], "expected NAME=RESULT_FOLDER"),
                     (["--method", f"ours={tmp_path}"], "no results.json"),
                     (["--method", f"o k={study_dirs / 'ours'}"], "is not a name"),
                     ([*args[:2], "--method", f"ours={study_dirs / 'other'}"], "given twice")):
        assert main(["report", *bad, "--ratings", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    assert main(["report", *args, "--clip-path", clip, "--out", str(tmp_path / "x")]) == 2
    assert "give both" in capsys.readouterr().err
    # a result whose images are gone is named
    gone = tmp_path / "gone"
    gone.mkdir()
    res_json = json.loads((study_dirs / "ours" / "results.json").read_text())
    res_json["source"]["generated"] = str(tmp_path / "missing.parquet")
    (gone / "results.json").write_text(json.dumps(res_json))
    assert main(["report", "--method", f"g={gone}", "--ratings", str(tmp_path / "r.jsonl"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "missing.parquet) are not there" in capsys.readouterr().err


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_annotated_store(tmp_path_factory.mktemp("annot") / "sessions")


def test_annotation_study_draws_transitions_and_shows_them_as_stored(store):
    from vincie_mcore.data.store import SessionStore

    st = SessionStore(store)
    s = human.AnnotationStudy(store, sample=8, seed=0)
    assert len(s.items) == 8 and len({it.index for it in s.items}) == 8
    assert [it for it in s.items] == human.AnnotationStudy(store, sample=8, seed=0).items
    assert s.items != human.AnnotationStudy(store, sample=8, seed=1).items
    for it in s.items:
        i, j = int(it.index), it.turn - 1
        assert 0 <= j < st[i].num_frames - 1 and it.method == "annotations"
        v = s.view(it)
        assert np.array_equal(v["before"], frame(100 * i + j)) and np.array_equal(v["after"], frame(100 * i + j + 1))
        assert v["text"] == f"session {i}: change {j}" and v["video_id"] == f"v{i}"
        # no segmenter recorded, no annotator's notes kept: the text is all there is to rate
        assert s.asks(it) == ("accurate", "complete") and v["regions"] is None and v["notes"] is None
    assert len(human.AnnotationStudy(store, sample=50).items) == 12        # at most every session once
    with pytest.raises(ValueError, match="^sample: must be >= 1, got 0$"):
        human.AnnotationStudy(store, sample=0)


def test_annotation_report_worked_by_hand(store, tmp_path, capsys):
    from vincie_tools.human_eval import main

    s = human.AnnotationStudy(store, sample=6, seed=2)
    r = Ratings(tmp_path / "a.jsonl")
    a, b, c, d = s.items[:4]
    r.add("alice", a, {"accurate": True, "complete": True})
    r.add("alice", b, {"accurate": True, "complete": False})
    r.add("alice", c, {"accurate": False, "complete": False})
    r.add("bob", c, {"accurate": True, "complete": False})            # a tie on c's accuracy: no
    r.add("bob", d, {"accurate": True, "complete": True})
    r.add("bob", Item("ours", "a", 1), {"success": True})               # another study's rating: not counted
    res = human.annotation_report(s, r)
    assert res["questions"]["accurate"]["share_yes"] == 0.75 and res["questions"]["accurate"]["items_rated"] == 4
    assert res["questions"]["complete"]["share_yes"] == 0.5
    assert res["questions"]["accurate"]["agreement"] == [{"raters": ["alice", "bob"], "items": 1, "agreement": 0.0,
                                                          "cohen_kappa": 0.0}]
    assert res["raters"] == {"alice": 3, "bob": 2}
    args = ["--store", str(store), "--sample", "6", "--sample-seed", "2", "--ratings", str(tmp_path / "a.jsonl")]
    assert main(["report", *args, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "accurate: 0.750" in out and "complete: 0.500" in out and "regions: not asked" in out
    assert res["questions"]["regions"]["items_asked"] == 0 and res["questions"]["regions"]["share_yes"] is None
    assert json.loads((tmp_path / "out" / "human_eval_annotations.json").read_text())["questions"] == res["questions"]
    assert main(["report", *args, "--clip-path", "x", "--dino-path", "y", "--out", str(tmp_path / "o")]) == 2
    assert "not annotations" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown question 'nice'"):
        r.add("alice", a, {"nice": True})
    with pytest.raises(ValueError, match="accurate is not true/false"):
        r.add("alice", a, {"accurate": 1})


def test_the_judge_protocol_asks_a_later_turn_only_after_success(study_dirs, tmp_path):
    """``todo(protocol="judge")``: turn 1 of every session at first; a session's turn t once the rater said
    success to turns 1..t-1; after a failure nothing more of it. ``"all"``: everything not answered."""
    s = Study(_methods(study_dirs))
    r = Ratings(tmp_path / "r.jsonl")
    mine = human.order(s.items, "alice")
    first = human.todo(s, r, "alice", mine, "judge")
    assert first == [it for it in mine if it.turn == 1] and len(first) == 6
    r.add("alice", Item("ours", "a", 1), {"success": True})
    r.add("alice", Item("ours", "b", 1), {"success": False})
    r.add("alice", Item("ours", "a", 3), {"success": True})           # answered out of turn (protocol "all")
    left = set(human.todo(s, r, "alice", mine, "judge"))
    assert Item("ours", "a", 2) in left and Item("ours", "a", 4) not in left    # turn 2 not answered yet
    assert not any(it.method == "ours" and it.index == "b" for it in left)      # failed at turn 1
    assert len(human.todo(s, r, "alice", mine, "all")) == 30 - 3
    assert human.todo(s, r, "bob", mine, "judge") == first                      # per rater
    with pytest.raises(ValueError, match="^protocol: one of all, judge, got 'x'$"):
        human.todo(s, r, "alice", mine, "x")


@pytest.fixture(scope="module")
def vlm_store(tmp_path_factory):
    return write_vlm_store(tmp_path_factory.mktemp("vlm"))


def _png(b: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b)))


def test_a_vlm_built_store_shows_each_transitions_reply_and_its_maps(vlm_store):
    """A store built by the VLM annotator (a local server whose reply names both frames it was sent) and the
    world's exact segmenter: each drawn transition shows the reply to exactly its two frames, and its maps
    tinted over them as worked out here (source red on the first, target green on the second)."""
    from vincie_mcore.data.store import SessionStore

    st = SessionStore(vlm_store)
    s = human.AnnotationStudy(vlm_store, sample=len(st), seed=0)
    marked = moved = 0
    for it in s.items:
        sess, j = st[int(it.index)], it.turn - 1
        v, a, b = s.view(it), frame_tag(sess.frames[j]), frame_tag(sess.frames[j + 1])
        assert v["text"] == f"change {a} into {b}" and s.asks(it) == ("accurate", "complete", "regions")
        moved += a != b                                      # (a static pair's two frames share a tag)
        assert v["notes"]["frame1_caption"] == {"scene": "a <b>grid</b> of cells", "obj1": f"shape {a}"}
        assert v["notes"]["frame2_caption"]["obj1"] == f"shape {b}" and v["notes"]["object_change"]["obj2"] == "appears"
        for shown, im, mask, rgb in ((v["regions"][0], sess.frames[j], sess.roe_src[j], (255, 0, 0)),
                                     (v["regions"][1], sess.frames[j + 1], sess.roe_tgt[j], (0, 255, 0))):
            want, m = _png(im).astype(int), _png(mask) > 127
            want[m] = (want[m] + np.array(rgb)) // 2
            assert np.array_equal(shown, want.astype(np.uint8))
            marked += int(m.any())
    assert marked >= 2 and moved >= 2                        # checked where there is a tint, and an order


def test_regions_are_reported_over_the_transitions_with_maps(vlm_store, tmp_path, capsys):
    from vincie_tools.human_eval import main

    s = human.AnnotationStudy(vlm_store, sample=4, seed=1)
    r = Ratings(tmp_path / "a.jsonl")
    a, b, c = s.items[:3]
    r.add("alice", a, {"accurate": True, "complete": True, "regions": True})
    r.add("alice", b, {"accurate": True, "complete": False, "regions": False})
    r.add("bob", b, {"accurate": True, "complete": False, "regions": True})        # a tie on b's regions: no
    r.add("bob", c, {"accurate": False, "complete": True, "regions": True})
    res = human.annotation_report(s, r)["questions"]["regions"]
    assert (res["items_asked"], res["items_rated"], res["share_yes"]) == (4, 3, round(2 / 3, 4))
    assert res["agreement"] == [{"raters": ["alice", "bob"], "items": 1, "agreement": 0.0, "cohen_kappa": 0.0}]
    args = ["--store", str(vlm_store), "--sample", "4", "--sample-seed", "1", "--ratings", str(tmp_path / "a.jsonl")]
    assert main(["report", *args, "--out", str(tmp_path / "out")]) == 0
    assert "regions: 0.667" in capsys.readouterr().out
