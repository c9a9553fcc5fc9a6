"""Store stats and previews against a store written by hand, where every number is known."""
import json

import numpy as np
import pytest
from PIL import Image

from vincie_mcore.data.build import encode_png
from vincie_mcore.data.report import edit_types, format_stats, preview, store_stats, write_stats
from vincie_mcore.data.store import RawSession, SessionWriter

H = W = 16


def _mask(frac_rows: int) -> bytes:
    m = np.zeros((H, W), np.uint8)
    m[:frac_rows] = 255                           # the top rows: frac_rows / 16 of the frame
    return encode_png(m)


def _frame(v) -> bytes:
    return encode_png(np.full((H, W, 3), v, np.uint8))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "s"
    sessions = [
        RawSession("a", [_frame(10), _frame(20), _frame(30)], [_mask(4), _mask(0)], [_mask(8), _mask(0)],
                   ["add a red ball", "the camera pans left"], ["None", "pan left"]),
        RawSession("b", [_frame(40), _frame(50)], [_mask(16)], [_mask(0)],
                   ["remove the cup from the table now"], ["None"]),
        RawSession("c", [_frame(60), _frame(70), _frame(80), _frame(90)], [_mask(0)] * 3, [_mask(0)] * 3,
                   ["nothing to see", "make the sky blue", "move the chair"], ["None", "None", "tilt up"]),
    ]
    with SessionWriter(root, shard_size=2) as w:
        for s in sessions:
            w.add(s)
        w.fail("bad1", "decode timed out after 3 s")
        w.fail("bad2", "decode timed out after 5 s")
        w.fail("bad3", "annotator: reply is not JSON")
    return root


def test_edit_types_by_words():
    assert edit_types("add a red ball") == ["add", "attribute"]
    assert edit_types("the camera pans left") == ["camera"]           # "pans" is not "pan": camera via "camera"
    assert edit_types("nothing to see") == ["other"]
    assert edit_types("Remove the cup") == ["remove"]


def test_stats_are_the_known_numbers(store):
    s = store_stats(store)
    assert s["sessions"] == 3 and s["transitions"] == 6
    assert s["frames_per_session"] == {"min": 2, "mean": 3.0, "max": 4, "histogram": {"2": 1, "3": 1, "4": 1}}
    assert s["text_words"]["max"] == 7 and s["text_words"]["mean"] == pytest.approx((4 + 4 + 7 + 3 + 4 + 3) / 6, abs=0.01)
    assert s["edit_types"] == {"add": 1, "remove": 1, "move": 1, "attribute": 2, "camera": 1, "other": 1}
    assert s["cameras"] == {"None": 4, "pan left": 1, "tilt up": 1}
    # source masks: 4/16, 0, 16/16, 0, 0, 0 rows; target 8/16, 0, 0, ...; both empty in 4 of 6 transitions
    assert s["roe"] == {"src_mean_coverage": pytest.approx((0.25 + 1.0) / 6, abs=1e-4),
                        "tgt_mean_coverage": pytest.approx(0.5 / 6, abs=1e-4), "empty_share": pytest.approx(4 / 6, abs=1e-4),
                        "sessions": 3, "sampled": False}
    assert s["failures"] == 3 and s["failures_by_reason"] == {"decode timed out after # s": 2,
                                                              "annotator: reply is not JSON": 1}
    text = format_stats(s)
    assert "3 sessions, 6 transitions, 3 failed videos" in text and "2 x decode timed out after # s" in text


def test_write_stats_beside_the_store(store):
    s = write_stats(store)
    assert json.loads((store / "stats.json").read_text())["sessions"] == s["sessions"] == 3


def test_preview_sheets_show_frames_masks_and_texts(store, tmp_path):
    paths = preview(store, tmp_path, sessions=3, per_sheet=2, seed=0, tile=32)
    assert [p.name for p in paths] == ["preview_00.png", "preview_01.png"]
    sheets = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    assert sheets[0].shape[0] == 2 * (32 + 12 * 4 + 16) and sheets[1].shape[0] == 32 + 12 * 4 + 16
    # session "a" (wherever it landed): frame 0 of grey 10 with the top quarter tinted red by its source map
    found = False
    for sh in sheets:
        for r in range(sh.shape[0] // (32 + 64)):
            y = r * (32 + 64) + 14
            tile = sh[y:y + 32, 4:36].astype(int)
            if tile[-1, -1].tolist() == [10, 10, 10]:          # untinted bottom right: frame 0 of session a
                assert tile[0, 0].tolist() == [132, 5, 5]       # (10 + 255) / 2, 10 / 2, 10 / 2
                assert tile[12, 0].tolist() == [10, 10, 10]     # below the mask's 4 rows (scaled x2 -> 8)
                found = True
    assert found


def test_aesthetic_scores_in_stats_and_preview_by_ranking(tmp_path, capsys):
    """Sessions with meta.aesthetic (data/quality.py) and logo_frames: the stats give numpy's percentiles and
    the logo counts; preview --by aesthetic shows sessions evenly over the ranking, lowest first, listed in
    preview.json with their scores; a store without scores is one line."""
    from vincie_tools.build_sessions import main

    scores = [6.1, 3.2, 5.0, 4.4, 7.9, 2.5, 5.5]
    root = tmp_path / "s"
    with SessionWriter(root, shard_size=3) as w:
        for k, a in enumerate(scores):
            w.add(RawSession(f"v{k}", [_frame(10 * k), _frame(10 * k + 5)], [_mask(0)], [_mask(0)], ["x"], ["None"],
                             meta={"aesthetic": a, "logo_frames": "0/3" if k % 3 else "1/3"}))
    s = store_stats(root)
    assert s["aesthetic"] == {"sessions": 7, "mean": pytest.approx(np.mean(scores), abs=1e-4),
                              **{f"p{q}": pytest.approx(np.percentile(scores, q), abs=1e-4) for q in (5, 25, 50, 75, 95)}}
    assert s["logo_frames"] == {"0/3": 4, "1/3": 3} and "aesthetic       mean 4.9429" in format_stats(s)
    paths = preview(root, tmp_path / "pv", sessions=4, per_sheet=2, tile=16, by="aesthetic")
    listing = json.loads((tmp_path / "pv" / "preview.json").read_text())
    shown = [r for sh in listing["sheets"] for r in sh["sessions"]]
    ranked = sorted(range(7), key=lambda k: scores[k])          # v5 2.5, v1 3.2, v3 4.4, v2 5.0, v6 5.5, v0 6.1, v4 7.9
    assert [r["video_id"] for r in shown] == [f"v{ranked[k]}" for k in (0, 2, 4, 6)] and len(paths) == 2
    assert [r["aesthetic"] for r in shown] == [2.5, 4.4, 5.5, 7.9] and listing["by"] == "aesthetic"
    plain = tmp_path / "plain"
    with SessionWriter(plain, shard_size=3) as w:
        w.add(RawSession("u", [_frame(1), _frame(2)], [_mask(0)], [_mask(0)], ["x"], ["None"]))
    assert store_stats(plain)["aesthetic"] is None
    with pytest.raises(SystemExit):
        main(["preview", "--store", str(plain), "--out", str(tmp_path / "pv2"), "--by", "aesthetic"])
    err = capsys.readouterr().err
    assert err.startswith("error: preview --by aesthetic: no session of") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pv2").exists()


def test_a_large_store_reads_records_only_and_draws_the_coverage_sample(tmp_path, capsys):
    """Over more sessions than ``coverage_sessions``: every number but RoE coverage comes from the records
    alone (they still come out with the blobs' chunks deleted), coverage from the drawn sessions, each read
    alone (``SessionStore.read``, the same sessions as ``store[i]``), and equal to coverage worked out by hand
    on those sessions."""
    import shutil

    from vincie_mcore.data.store import SessionStore

    root = tmp_path / "s"
    n = 11
    with SessionWriter(root, shard_size=4) as w:
        for k in range(n):
            w.add(RawSession(f"v{k}", [_frame(k), _frame(k + 1), _frame(k + 2)], [_mask(k % 5), _mask(0)],
                             [_mask(16 - k), _mask(k % 3)], [f"add {k} cups", "zoom in"], ["None", "zoom in"],
                             meta={"aesthetic": float(k)}))
    st = SessionStore(root)
    for i in range(n):
        a, b = st[i], st.read(i)
        assert (a.video_id, a.frames, a.roe_src, a.roe_tgt, a.texts, a.meta) == \
               (b.video_id, b.frames, b.roe_src, b.roe_tgt, b.texts, b.meta)
    full = store_stats(root)
    assert full["roe"]["sessions"] == n and full["roe"]["sampled"] is False

    got = store_stats(root, coverage_sessions=4, seed=3)
    drawn = np.sort(np.random.default_rng(3).choice(n, 4, replace=False))
    src = [(k % 5) / 16 for k in drawn] + [0.0] * 4
    tgt = [(16 - k) / 16 for k in drawn] + [(k % 3) / 16 for k in drawn]
    assert got["roe"] == {"src_mean_coverage": pytest.approx(np.mean(src), abs=1e-4),
                          "tgt_mean_coverage": pytest.approx(np.mean(tgt), abs=1e-4),
                          "empty_share": pytest.approx(np.mean([a == 0 and b == 0 for a, b in zip(src, tgt)]),
                                                       abs=1e-4),
                          "sessions": 4, "sampled": True}
    assert got["roe"] != full["roe"] and "(4 sessions drawn at random)" in format_stats(got)
    assert {k: v for k, v in got.items() if k != "roe"} == {k: v for k, v in full.items() if k != "roe"}
    with pytest.raises(ValueError, match=r"^coverage_sessions: must be >= 1 or None, got 0"):
        store_stats(root, coverage_sessions=0)
    from vincie_tools.build_sessions import main
    with pytest.raises(SystemExit):
        main(["stats", "--store", str(root), "--coverage-sessions", "-1"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --coverage-sessions: must be >= 0 (0: every session), got -1"]        # before any pass over the store

    for blob in root.glob("shard_*/blob/c"):                 # every image gone: the records still read
        shutil.rmtree(blob)
    rec = [(i, v, r["meta"]["aesthetic"]) for i, v, r in SessionStore(root).records()]
    assert rec == [(k, f"v{k}", float(k)) for k in range(n)]
