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
                        "tgt_mean_coverage": pytest.approx(0.5 / 6, abs=1e-4), "empty_share": pytest.approx(4 / 6, abs=1e-4)}
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
