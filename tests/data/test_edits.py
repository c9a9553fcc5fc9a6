"""Editing datasets -> session store (data/edits.py): MagicBrush's parquet layout, pairs in JSONL, chains
cut where they break, masks in their three conventions, bad rows one line each, resume, and a trainer
reading the store. Frames are checked against the images as written (no resize) or against PIL's own
resize, masks against the rectangles drawn."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from slurm_cluster import REPO, slurm_cluster  # noqa: F401,F811 - the fixture

from vincie_mcore.data.edits import EditsConfig, build_edit_sessions, dataset_files, format_edits_summary, region
from vincie_mcore.data.store import SessionStore, StoreMismatch, read_failures
from vincie_mcore.perf.bench_sessions import bench_edits, write_magicbrush_parquet

BIN = Path(sys.executable).parent
H, W = 40, 48


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _cell(a) -> dict:
    return {"bytes": a if isinstance(a, bytes) else _png(a), "path": None}


def _picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([(x * 5 + seed * 17) % 200, (y * 6 + seed * 29) % 200, ((x + y) * 3) % 200], -1)
    return (base + rng.integers(0, 40, (H, W, 3))).astype(np.uint8)


def _rect(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _edit(img, m, colour):
    out = img.copy()
    out[m] = colour
    return out


def _masks(src, m):
    """The same region in MagicBrush's three possible conventions."""
    painted = src.copy()
    painted[m] = 255                                           # the source, region painted white
    binary = np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1)
    rgba = np.concatenate([src, np.full((H, W, 1), 255, np.uint8)], -1)
    rgba[m, 3] = 0                                             # DALL-E 2: the region cut out
    return {"painted": painted, "binary": binary, "rgba": rgba}


@pytest.fixture(scope="module")
def magicbrush(tmp_path_factory):
    """A MagicBrush-layout train split in two parquet files, with the truth of every session."""
    d = tmp_path_factory.mktemp("mb") / "data"
    d.mkdir()
    truth = {}
    # 101: three chained turns, one mask per convention
    s0 = _picture(1)
    regions = [_rect(2, 12, 3, 20), _rect(20, 35, 10, 30), _rect(5, 30, 30, 46)]
    frames = [s0]
    for k, m in enumerate(regions):
        frames.append(_edit(frames[-1], m, (250 - 40 * k, 10, 40 * k)))
    conv = ["painted", "binary", "rgba"]
    rows101 = [{"img_id": "101", "turn_index": k + 1, "source_img": _cell(frames[k]),
                "mask_img": _cell(_masks(frames[k], regions[k])[conv[k]]), "instruction": f"paint region  {k + 1}",
                "target_img": _cell(frames[k + 1])} for k in range(3)]
    truth["101"] = (frames, regions, [f"paint region {k + 1}" for k in range(3)])
    # 102: turn 2's source is another picture: the chain breaks there
    a, b = _picture(2), _picture(3)
    m1, m2 = _rect(0, 10, 0, 10), _rect(30, 40, 30, 48)
    rows102 = [{"img_id": "102", "turn_index": 1, "source_img": _cell(a), "mask_img": _cell(_masks(a, m1)["binary"]),
                "instruction": "one", "target_img": _cell(_edit(a, m1, (0, 0, 255)))},
               {"img_id": "102", "turn_index": 2, "source_img": _cell(b), "mask_img": _cell(_masks(b, m2)["binary"]),
                "instruction": "two", "target_img": _cell(_edit(b, m2, (0, 255, 0)))}]
    truth["102"] = (a, _edit(a, m1, (0, 0, 255)), b, _edit(b, m2, (0, 255, 0)))
    # 103: a target that is not an image
    c = _picture(4)
    rows103 = [{"img_id": "103", "turn_index": 1, "source_img": _cell(c), "mask_img": None, "instruction": "x",
                "target_img": _cell(b"not a png at all")}]
    # 104: its turns in the other order, in the two files
    e = _picture(5)
    e1 = _edit(e, _rect(1, 9, 1, 9), (9, 9, 9))
    e2 = _edit(e1, _rect(11, 19, 11, 19), (99, 99, 99))
    r104_1 = {"img_id": "104", "turn_index": 1, "source_img": _cell(e), "mask_img": None,
              "instruction": "first", "target_img": _cell(e1)}
    r104_2 = {"img_id": "104", "turn_index": 2, "source_img": _cell(e1), "mask_img": None,
              "instruction": "second", "target_img": _cell(e2)}
    truth["104"] = [e, e1, e2]
    # 105: turn 1 twice
    r105 = {"img_id": "105", "turn_index": 1, "source_img": _cell(e), "mask_img": None, "instruction": "y",
            "target_img": _cell(e1)}
    write_magicbrush_parquet(d / "train-00000-of-00002.parquet", rows101 + [r104_2] + rows102, 2)
    write_magicbrush_parquet(d / "train-00001-of-00002.parquet", rows103 + [r104_1, r105, r105], 2)
    return d, truth


def _pairs_folder(d: Path, seed: int, n: int = 2) -> Path:
    """A `pairs` dataset as JSONL with its pictures beside it: n edits, each a dark square in one corner."""
    d.mkdir()
    for i in range(n):
        Image.fromarray(_picture(seed + i)).save(d / f"s{i}.png")
        Image.fromarray(_edit(_picture(seed + i), _rect(0, 9, 0, 9), (5, 5, 5))).save(d / f"t{i}.png")
    (d / "p.jsonl").write_text("".join(json.dumps({"source": f"s{i}.png", "instruction": f"e{i}", "target": f"t{i}.png"})
                                       + "\n" for i in range(n)))
    return d


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _by_id(store) -> dict:
    st = SessionStore(store)
    return {st[i].video_id: st[i] for i in range(len(st))}


def test_magicbrush_parquet_to_sessions(magicbrush, tmp_path):
    data, truth = magicbrush
    cfg = EditsConfig(size=(H, W), timeout_s=0, max_mb=0)
    s = build_edit_sessions([data], tmp_path / "store", cfg, progress=False)
    assert (s["sessions"], s["stored"], s["turns"], s["failed"], s["chain_breaks"]) == (5, 4, 7, 2, 1)
    got = _by_id(tmp_path / "store")
    assert sorted(got) == ["magicbrush/101", "magicbrush/102/part_1", "magicbrush/102/part_2", "magicbrush/104"]

    frames, regions, texts = truth["101"]
    one = got["magicbrush/101"]
    assert all(np.array_equal(_decode(p), f) for p, f in zip(one.frames, frames)) and len(one.frames) == 4
    assert one.texts == texts and one.cameras == ["None"] * 3       # whitespace in instructions folded
    for k, m in enumerate(regions):                                   # painted, binary, RGBA hole: the same region
        assert np.array_equal(_decode(one.roe_src[k]) > 0, m) and np.array_equal(_decode(one.roe_tgt[k]) > 0, m)
    assert s["mask_rules"] == {"painted": 2, "binary": 3, "diff": 2}  # the RGBA hole reads as painted white
    assert one.meta["turns"] == [1, 2, 3] and one.meta["segmenter"] == "edits:dataset"

    a, a1, b, b1 = truth["102"]
    p1, p2 = got["magicbrush/102/part_1"], got["magicbrush/102/part_2"]
    assert [np.array_equal(_decode(x), y) for x, y in zip(p1.frames + p2.frames, (a, a1, b, b1))] == [True] * 4
    assert (p1.texts, p2.texts, p2.meta["turns"]) == (["one"], ["two"], [2])

    four = got["magicbrush/104"]                                      # rows in two files, out of order: one chain
    assert all(np.array_equal(_decode(p), f) for p, f in zip(four.frames, truth["104"]))
    assert four.texts == ["first", "second"]
    assert np.array_equal(_decode(four.roe_src[1]) > 0, _rect(11, 19, 11, 19))   # no mask: the changed pixels

    fails = read_failures(tmp_path / "store")
    assert fails["magicbrush/103"].startswith("image train-00001-of-00002.parquet row 0 target: not an image,")
    assert fails["magicbrush/105"] == "turn 1 appears 2 times"

    again = build_edit_sessions([data], tmp_path / "store", cfg, progress=False)   # resumes: nothing left to do
    assert (again["skipped"], again["stored"], again["failed"]) == (5, 0, 0)
    assert len(SessionStore(tmp_path / "store")) == 4
    with pytest.raises(ValueError, match=r"other settings \(edits.size: \[\[40, 48\]\] there, \[\[20, 24\]\] now\)"):
        build_edit_sessions([data], tmp_path / "store", EditsConfig(size=(20, 24)), progress=False)


def _contents(store) -> dict:
    return {k: (s.frames, s.roe_src, s.roe_tgt, s.texts) for k, s in _by_id(store).items()}


def test_parts_then_merge_equal_one_build(magicbrush, tmp_path):
    """Plans of 2 and 3 parts over the fixture's 5 row groups (3 in file 0, 2 in file 1; part i owns row groups
    i, i + N, ...: session 101 starts in part 0's row group and ends in part 1's, 104 starts in file 0 and ends
    in file 1), each part run as a Slurm task runs it, in any order, then merge: the sessions and failures of
    one build."""
    from vincie_tools.build_sessions import main

    from vincie_mcore.data.edits import count_edit_sessions, plan_edits, units

    data, _ = magicbrush
    one = build_edit_sessions([data], tmp_path / "one", EditsConfig(size=(H, W)), progress=False)
    files = dataset_files([data])
    assert units(files) == [(0, 0, 2), (0, 2, 4), (0, 4, 6), (1, 0, 2), (1, 2, 4)]
    for n, counts, part0 in ((2, [3, 2], ["magicbrush/101", "magicbrush/102/part_1", "magicbrush/102/part_2"]),
                             (3, [2, 2, 1], ["magicbrush/101"])):
        assert [count_edit_sessions(files, EditsConfig(), (i, n)) for i in range(n)] == counts
        store = tmp_path / f"parts{n}"
        args = ["--data", str(data), "--store", str(store), "--size", str(H), str(W), "--quiet"]
        assert main(["edits", *args, "--shards", str(n)]) == 0
        for i in reversed(range(n)):                         # any order, as array tasks finish
            assert main(["run", "--store", str(store), "--shard", f"{i}/{n}", "--quiet"]) == 0
        assert main(["merge", "--store", str(store)]) == 0
        assert _contents(store) == _contents(tmp_path / "one") and len(_contents(store)) == one["stored"] == 4
        assert read_failures(store) == read_failures(tmp_path / "one")
        assert sorted(_by_id(store / "parts" / "00000")) == part0
    assert count_edit_sessions(files, EditsConfig()) == 5
    with pytest.raises(ValueError, match="--shards: 6 parts for 5 parquet row groups and JSONL row blocks; parts "
                                         "split those, so at most 5"):
        plan_edits([data], tmp_path / "six", 6, EditsConfig())
    with pytest.raises(ValueError, match=r"no column target=edited \(it has"):
        plan_edits([data], tmp_path / "cols", 2, EditsConfig(columns={"target": "edited"}))
    assert not (tmp_path / "cols").exists()


def test_jsonl_parts_by_row_blocks(tmp_path, monkeypatch):
    """A JSONL file is dealt out in blocks of ``JSONL_UNIT_ROWS`` rows (3 here: 4 blocks of 10 rows), chained
    sessions interleaved across blocks (a: rows 0, 1, 4; c: rows 5, 6, 9): three parts, in any order, then
    merge, give the one build's sessions; each part counts only the sessions that start in its blocks."""
    from vincie_tools.build_sessions import main

    from vincie_mcore.data import edits

    monkeypatch.setattr(edits, "JSONL_UNIT_ROWS", 3)
    d = tmp_path / "chains"
    d.mkdir()
    order = [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("a", 2), ("c", 0), ("c", 1), ("d", 0), ("d", 1), ("c", 2)]
    now, rows = {}, []
    for sid, k in order:
        src = now.get(sid, _picture(ord(sid)))
        now[sid] = _edit(src, _rect(6 * k, 6 * k + 6, 0, 9), (5, 200, 5 + 40 * k))     # each turn edits the last
        Image.fromarray(src).save(d / f"{sid}{k}s.png")
        Image.fromarray(now[sid]).save(d / f"{sid}{k}t.png")
        rows.append({"sid": sid, "k": k, "source": f"{sid}{k}s.png", "instruction": f"{sid} edit {k}",
                     "target": f"{sid}{k}t.png"})
    (d / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")      # a blank last line
    files = edits.dataset_files([d / "c.jsonl"])
    assert edits.units(files) == [(0, 0, 3), (0, 3, 6), (0, 6, 9), (0, 9, 10)]
    cfg = EditsConfig(format="pairs", columns={"session": "sid", "turn": "k"})
    assert [edits.count_edit_sessions(files, cfg, (i, 3)) for i in range(3)] == [2, 1, 1]   # a b | c | d
    args = ["--format", "pairs", "--columns", "session=sid,turn=k", "--data", str(d / "c.jsonl"),
            "--size", str(H), str(W), "--quiet"]
    assert main(["edits", *args, "--store", str(tmp_path / "one")]) == 0
    assert main(["edits", *args, "--store", str(tmp_path / "parts"), "--shards", "3"]) == 0
    for i in (2, 0, 1):
        assert main(["run", "--store", str(tmp_path / "parts"), "--shard", f"{i}/3", "--quiet"]) == 0
    assert main(["merge", "--store", str(tmp_path / "parts")]) == 0
    one = _contents(tmp_path / "one")
    assert _contents(tmp_path / "parts") == one and len(one) == 4
    assert [len(one[f"pairs/{s}"][3]) for s in "abcd"] == [3, 2, 3, 2]           # every chain whole
    assert sorted(_by_id(tmp_path / "parts" / "parts" / "00002")) == ["pairs/d"]


def test_slurm_array_runs_the_plan(slurm_cluster, magicbrush, tmp_path):  # noqa: F811 - the fixture
    """The same plan through slurm/sessions.sh on a real one-node Slurm: 2 array tasks, then the merge job
    (merge + stats), into the store one build gives."""
    from vincie_tools.build_sessions import main

    data, _ = magicbrush
    build_edit_sessions([data], tmp_path / "one", EditsConfig(size=(H, W)), progress=False)
    store = tmp_path / "store"
    main(["edits", "--data", str(data), "--store", str(store), "--size", str(H), str(W), "--shards", "2", "--quiet"])
    env = dict(slurm_cluster, PATH=f"{BIN}:{os.environ['PATH']}")
    r = subprocess.run(["bash", str(REPO / "slurm" / "sessions.sh"), str(store), f"--chdir={tmp_path}",
                        "--cpus-per-task=1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    merge = int(re.findall(r"job (\d+)", r.stdout)[-1])
    end = time.monotonic() + 300
    state = ""
    while time.monotonic() < end and state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        time.sleep(0.2)
        out = subprocess.run(["scontrol", "-o", "show", "job", str(merge)], env=env, capture_output=True, text=True).stdout
        state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")
    logs = "".join(p.read_text()[-1500:] for p in tmp_path.glob("vincie-sessions*.out"))
    assert state == "COMPLETED", logs
    assert _contents(store) == _contents(tmp_path / "one") and (store / "stats.json").is_file()


def test_resized_frames_and_masks_follow_the_same_geometry(magicbrush, tmp_path):
    data, truth = magicbrush
    cfg = EditsConfig(size=(20, 24), workers=2, max_mb=0)
    s = build_edit_sessions([data], tmp_path / "small", cfg, limit=1, progress=False)   # workers, in a pool
    assert (s["sessions"], s["stored"]) == (1, 1)
    one = _by_id(tmp_path / "small")["magicbrush/101"]
    frames, regions, _ = truth["101"]
    for png, f in zip(one.frames, frames):                            # same aspect: PIL's bicubic resize itself
        ref = np.asarray(Image.fromarray(f).resize((24, 20), Image.BICUBIC))
        assert np.array_equal(_decode(png), ref)
    for k, m in enumerate(regions):
        small = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((24, 20), Image.BICUBIC)) >= 128
        got = _decode(one.roe_src[k]) > 0
        assert (got != small).mean() < 0.03 and set(np.unique(_decode(one.roe_src[k]))) <= {0, 255}


def test_pairs_from_jsonl_with_files(tmp_path):
    """instructpix2pix-style pairs from JSONL (file names under its folder), each row its own session."""
    d = tmp_path / "pairs"
    d.mkdir()
    rows = []
    for i in range(3):
        src = _picture(10 + i)
        m = _rect(5 * i, 5 * i + 8, 4, 20)
        Image.fromarray(src).save(d / f"s{i}.png")
        Image.fromarray(_edit(src, m, (1, 2, 3))).save(d / f"t{i}.png")
        rows.append({"original_image": f"s{i}.png", "edit_prompt": f"edit {i}", "edited_image": f"t{i}.png"})
    big = np.repeat(np.repeat(_edit(_picture(13), _rect(8, 30, 10, 40), (250, 0, 0)), 2, 0), 2, 1)
    Image.fromarray(_picture(13)).save(d / "s3.png")
    Image.fromarray(big).save(d / "t3.png")                  # a target saved at twice the size
    rows.append({"original_image": "s3.png", "edit_prompt": "edit 3", "edited_image": "t3.png"})
    rows.append({"original_image": "s3.png", "edit_prompt": ["", "make it red", "redden the box"],
                 "edited_image": "t3.png"})                 # paraphrases: one of them, chosen by the session id
    rows.append({"original_image": "../outside.png", "edit_prompt": "escape", "edited_image": "t0.png"})
    rows.append({"original_image": "s0.png", "edit_prompt": "  ", "edited_image": "t0.png"})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EditsConfig(format="instructpix2pix", name="ip2p", size=(H, W), timeout_s=0, max_mb=0)
    s = build_edit_sessions([d / "train.jsonl"], tmp_path / "store", cfg, progress=False)
    assert (s["sessions"], s["stored"], s["failed"], s["mask_rules"]) == (7, 5, 2, {"diff": 5})
    import zlib
    said = ["make it red", "redden the box"]
    assert _by_id(tmp_path / "store")["ip2p/train/00000004"].texts == \
        [said[zlib.crc32(b"ip2p/train/00000004/0") % 2]]
    from vincie_mcore.data.edits import count_edit_sessions
    assert count_edit_sessions([d / "train.jsonl"], cfg) == 7                     # the progress bar's total
    got = _by_id(tmp_path / "store")
    assert sorted(got) == [f"ip2p/train/0000000{i}" for i in range(5)]
    three = got["ip2p/train/00000003"]                          # brought to the store's size, then compared
    ref = np.asarray(Image.fromarray(big).resize((W, H), Image.BICUBIC))
    assert np.array_equal(_decode(three.frames[1]), ref)
    m = _decode(three.roe_src[0]) > 0
    assert (m & _rect(8, 30, 10, 40)).sum() / (m | _rect(8, 30, 10, 40)).sum() > 0.9
    two = got["ip2p/train/00000002"]
    assert two.texts == ["edit 2"] and np.array_equal(_decode(two.frames[0]), _picture(12))
    assert np.array_equal(_decode(two.roe_tgt[0]) > 0, _rect(10, 18, 4, 20))
    fails = read_failures(tmp_path / "store")
    assert "leads out of" in fails["ip2p/train/00000005"] or ".." in fails["ip2p/train/00000005"]
    assert fails["ip2p/train/00000006"] == "train.jsonl row 6: empty instruction"


def test_mask_conventions_are_read_alike():
    src = _picture(7)
    m = _rect(3, 17, 5, 25)
    for name, mask in _masks(src, m).items():
        if name == "rgba":
            continue                                      # load_image composites it: covered in the store test
        got, rule = region(mask, src, 24)
        assert rule == name and np.array_equal(got, m)


def test_seed_data_edit_multi_turn_rows_with_images_elsewhere(tmp_path):
    """SEED-Data-Edit Part-3's layout: one session per JSONL row, its turns as columns (instruction_k,
    edit_image_k; inverse_instruction_k unused), image paths under the extracted archive (--images), rows of
    2 and 3 turns; a turn without its image and a path climbing out fail their session in one line each."""
    from vincie_tools.build_sessions import main

    root = tmp_path / "multi_turn_editing"
    (root / "annotations").mkdir(parents=True)
    pics = root / "images" / "data"
    rows, truth = [], {}
    for r, turns in enumerate((2, 3)):
        (pics / f"d{r}").mkdir(parents=True)
        now = _picture(40 + r)
        Image.fromarray(now).save(pics / f"d{r}" / "src.png")
        row, frames = {"source_image": f"d{r}/src.png"}, [now]
        for k in range(1, turns + 1):
            now = _edit(now, _rect(6 * k, 6 * k + 6, 4, 16), (200, 10 * k, 10))
            Image.fromarray(now).save(pics / f"d{r}" / f"e{k}.png")
            row.update({f"instruction_{k}": f"session {r} edit {k}", f"edit_image_{k}": f"d{r}/e{k}.png",
                        f"inverse_instruction_{k}": f"undo {k}"})
            frames.append(now)
        rows.append(row)
        truth[f"seed/split_0001/{r:08d}"] = (frames, [f"session {r} edit {k}" for k in range(1, turns + 1)])
    rows.append({"source_image": "d0/src.png", "instruction_1": "a", "edit_image_1": "d0/e1.png",
                 "instruction_2": "b"})                              # turn 2 without its image
    rows.append({"source_image": "../../escape.png", "instruction_1": "a", "edit_image_1": "d0/e1.png"})
    (root / "annotations" / "split_0001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["edits", "--format", "seed_multi_turn", "--name", "seed", "--data", str(root / "annotations"),
                 "--images", str(pics), "--store", str(tmp_path / "s"), "--size", str(H), str(W), "--quiet"]) == 0
    got = _by_id(tmp_path / "s")
    assert sorted(got) == sorted(truth)
    for sid, (frames, texts) in truth.items():
        assert got[sid].texts == texts and len(got[sid].frames) == len(frames)
        assert all(np.array_equal(_decode(p), f) for p, f in zip(got[sid].frames, frames))
        assert all(_decode(m).any() for m in got[sid].roe_src)          # each turn's changed region
    fails = read_failures(tmp_path / "s")
    assert "split_0001.jsonl row 2 target: no image" in fails["seed/split_0001/00000002"]
    assert "climbs out" in fails["seed/split_0001/00000003"]
    with pytest.raises(ValueError, match=r"edits.images: .*/nowhere is not a folder"):
        build_edit_sessions([root / "annotations"], tmp_path / "x", EditsConfig(format="seed_multi_turn",
                            images=str(tmp_path / "nowhere")), progress=False)
    with pytest.raises(ValueError, match=r"a wide layout .* marks both instruction and target with \{k\}"):
        EditsConfig(format="pairs", columns={"instruction": "i_{k}"})


def test_omniedit_and_anyedit_presets(tmp_path):
    """OmniEdit's card layout: its id, a list of paraphrased prompts (one taken, by the id; empty ones
    skipped), changed pixels as maps. AnyEdit's: ids from file and row, and a row whose edit needs its
    visual_input image refused in one line while the others are stored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = [_picture(40 + i) for i in range(3)]
    m = _rect(5, 15, 8, 28)
    tgt = [_edit(s, m, (250, 0, 0)) for s in src]
    (tmp_path / "omni").mkdir()
    prompts = [["make the box red", "paint it red", ""], ["redden the box"]]
    pq.write_table(pa.table({"omni_edit_id": ["o-1", "o-2"], "task": ["swap", "swap"],
                             "src_img": [_cell(s) for s in src[:2]], "edited_img": [_cell(t) for t in tgt[:2]],
                             "edited_prompt_list": prompts, "o_score": [8.5, 9.0]}), tmp_path / "omni" / "train-0.parquet",
                   row_group_size=1)
    cfg = EditsConfig(format="omniedit", size=(H, W), timeout_s=0, max_mb=0)
    s = build_edit_sessions([tmp_path / "omni"], tmp_path / "st_omni", cfg, progress=False)
    assert (s["stored"], s["failed"], s["mask_rules"]) == (2, 0, {"diff": 2})
    # one file of pairs in two parts, a row group each: the parts together are the one build
    from vincie_mcore.data.edits import plan_edits, run_edits_part
    from vincie_mcore.data.sharded import merge, read_plan

    plan_edits([tmp_path / "omni"], tmp_path / "omni_parts", 2, cfg)
    conf = read_plan(tmp_path / "omni_parts")[1]["edits"]
    assert [run_edits_part(tmp_path / "omni_parts", i, 2, conf, progress=False)["stored"] for i in (1, 0)] == [1, 1]
    merge(tmp_path / "omni_parts")
    assert _contents(tmp_path / "omni_parts") == _contents(tmp_path / "st_omni")
    plan_edits([tmp_path / "omni"], tmp_path / "omni_best", 2, dataclasses.replace(cfg, keep=("o_score>=8.8",)))
    conf = read_plan(tmp_path / "omni_best")[1]["edits"]                # the plan carries the conditions
    assert [run_edits_part(tmp_path / "omni_best", i, 2, conf, progress=False)["filtered"] for i in (0, 1)] == [1, 0]
    got = _by_id(tmp_path / "st_omni")
    assert set(got) == {"omniedit/o-1", "omniedit/o-2"} and got["omniedit/o-2"].texts == ["redden the box"]
    assert got["omniedit/o-1"].texts[0] in prompts[0][:2] and np.array_equal(_decode(got["omniedit/o-1"].roe_src[0]) > 0, m)
    (tmp_path / "any").mkdir()
    pq.write_table(pa.table({"image_id": ["same", "same", "other"], "edit_instruction": ["a", "b", "c"],
                             "edit_type": ["color_alter", "visual_reference", "remove"],
                             "image_file": [_cell(x) for x in src], "edited_file": [_cell(t) for t in tgt],
                             "visual_input": [None, _cell(src[2]), None]}), tmp_path / "any" / "train-0.parquet")
    cfg = EditsConfig(format="anyedit", size=(H, W), timeout_s=0, max_mb=0)
    s = build_edit_sessions([tmp_path / "any"], tmp_path / "st_any", cfg, progress=False)
    assert (s["stored"], s["failed"]) == (2, 1)
    assert set(_by_id(tmp_path / "st_any")) == {"anyedit/train-0/00000000", "anyedit/train-0/00000002"}
    (why,) = read_failures(tmp_path / "st_any").values()
    assert why == "train-0.parquet row 1: the edit needs a second input image (visual_input), which a session cannot hold"
    pq.write_table(pa.table({"image_file": [_cell(src[0])], "edit_instruction": ["a"], "edited_file": [_cell(tgt[0])]}),
                   tmp_path / "any" / "train-1.parquet")        # a file without the optional column: rows without it
    s = build_edit_sessions([tmp_path / "any"], tmp_path / "st_any", cfg, progress=False)
    assert (s["stored"], s["skipped"]) == (1, 3)
    # --keep: OmniEdit by its score, AnyEdit by its edit type (a file without the column refused in one line)
    s = build_edit_sessions([tmp_path / "omni"], tmp_path / "st_best", EditsConfig(
        format="omniedit", size=(H, W), timeout_s=0, max_mb=0, keep=("o_score >= 8.8",)), progress=False)
    assert (s["stored"], s["filtered"]) == (1, 1) and set(_by_id(tmp_path / "st_best")) == {"omniedit/o-2"}
    assert "1 left out by --keep" in format_edits_summary(s)
    keep = EditsConfig(format="anyedit", size=(H, W), timeout_s=0, max_mb=0,
                       keep=("edit_type!=visual_reference|remove",))
    with pytest.raises(ValueError, match=r"train-1.parquet: no column edit_type \(--keep\)"):
        build_edit_sessions([tmp_path / "any"], tmp_path / "st_types", keep, progress=False)
    s = build_edit_sessions([tmp_path / "any" / "train-0.parquet"], tmp_path / "st_types", keep, progress=False)
    assert (s["stored"], s["failed"], s["filtered"]) == (1, 0, 2)
    assert set(_by_id(tmp_path / "st_types")) == {"anyedit/train-0/00000000"}
    with pytest.raises(StoreMismatch, match=r"edits.keep: .*'edit_type!=visual_reference\|remove'.* there, .*\[\].* now"):
        build_edit_sessions([tmp_path / "any" / "train-0.parquet"], tmp_path / "st_types",
                            EditsConfig(format="anyedit", size=(H, W)), progress=False)


def test_keep_conditions():
    """--keep's conditions: numbers compared as numbers (also in text cells), alternatives for == and !=, a
    missing value meeting only !=, a chained session kept whole or not at all; bad conditions one line each."""
    from vincie_mcore.data.edits import holds, parse_condition

    c = parse_condition
    assert c(" o_score>=8 ") == ("o_score", ">=", [8.0]) and c("edit_type==a|b") == ("edit_type", "==", ["a", "b"])
    assert holds(c("turn==1"), 1.0) and holds(c("turn==1"), "1") and not holds(c("turn==1"), 2)
    assert holds(c("s>=8"), "8.5") and not holds(c("s>=8"), "high") and not holds(c("s>8"), None)
    assert not holds(c("s<1"), True)                               # a flag is not a number
    assert holds(c("t!=a|b"), None) and not holds(c("t==a|b"), None) and holds(c("t==a|b"), "b")
    assert not holds(c("t!=a|b"), "a") and holds(c("t!=a|b"), "c")
    for bad, msg in (("o_score=>8", r"is not COLUMN OP VALUE"), ("o_score>=high", r"needs a number, got 'high'"),
                     ("==3", r"is not COLUMN OP VALUE")):
        with pytest.raises(ValueError, match=f"edits.keep: .*{msg}"):
            EditsConfig(keep=(bad,))


def test_keep_drops_a_whole_chain(magicbrush, tmp_path):
    data, _ = magicbrush
    s = build_edit_sessions([data], tmp_path / "s", EditsConfig(size=(H, W), timeout_s=0, max_mb=0,
                                                               keep=("turn_index<=1",)), progress=False)
    # 101, 102 and 104 have a second turn: left out whole; 103 (a bad target) and 105 (turn 1 twice) fail
    assert (s["stored"], s["failed"], s["filtered"]) == (0, 2, 3)


def test_bad_input_is_one_line(magicbrush, tmp_path):
    data, _ = magicbrush
    with pytest.raises(ValueError, match="edits.format: must be one of magicbrush, instructpix2pix, ultraedit, omniedit, anyedit, seed_multi_turn, pairs, got 'mb'"):
        EditsConfig(format="mb")
    with pytest.raises(ValueError, match="edits.columns: unknown role 'caption'"):
        EditsConfig(columns={"caption": "x"})
    with pytest.raises(ValueError, match="session and turn go together"):
        EditsConfig(format="pairs", columns={"session": "sid"})
    with pytest.raises(ValueError, match=r"no column instruction=edit_prompt \(it has: img_id, instruction"):
        build_edit_sessions([data], tmp_path / "s", EditsConfig(columns={"instruction": "edit_prompt"}), progress=False)
    assert not (tmp_path / "s").exists()                   # no store with the wrong columns recorded
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        dataset_files([tmp_path / "missing"])
    s = build_edit_sessions([data], tmp_path / "slow", EditsConfig(size=(H, W), timeout_s=1e-4), limit=1,
                            progress=False)                # past the worker's time limit: killed, one line
    assert (s["failed"], s["stored"]) == (1, 0)
    assert read_failures(tmp_path / "slow") == {"magicbrush/101": "session timed out after 0.0001 s"}
    r = subprocess.run([str(BIN / "vincie-build-sessions"), "edits", "--data", str(data), "--store",
                        str(tmp_path / "s"), "--columns", "instruction"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: --columns: expected ROLE=COLUMN, got 'instruction'"


def test_the_command_then_the_trainer(magicbrush, tmp_path, capsys):
    """`vincie-build-sessions edits` twice (MagicBrush, pairs), `union`, then the demo recipe trains two steps on
    the union with the sources weighed (`data.corpus.mix`), and the released models' variant (tiny) two steps
    on it weighed (its in-memory path; a bad name refused in one line first) and unweighed; 24 px frames."""
    data, _ = magicbrush
    cli = str(BIN / "vincie-build-sessions")
    r = subprocess.run([cli, "edits", "--data", *map(str, sorted(data.glob("*.parquet"))),
                        "--store", str(tmp_path / "mb"), "--size", "24", "24", "--quiet"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "edits: 4 sessions (7 turns) stored from 5 dataset sessions, 1 chain breaks cut, 2 failed" in r.stdout
    d = _pairs_folder(tmp_path / "pairs", seed=60)
    store = tmp_path / "sft"
    for args in (["edits", "--format", "pairs", "--data", str(d), "--store", str(tmp_path / "pairs_store"), "--size",
                  "24", "24", "--quiet"],
                 ["union", "--store", str(store), "--from", f"mb={tmp_path / 'mb'}", f"pairs={tmp_path / 'pairs_store'}"]):
        r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    assert "sources: mb (4 sessions), pairs (2 sessions)" in r.stdout
    from vincie_tools.train import main as train_main

    rc = train_main(["experiment=demo", f"data.corpus.store={store}", "data.corpus.heldout_videos=2",
                     "data.corpus.workers=1", "data.pack.token_budget=400", "train.steps=2", "train.warmup=0",
                     "train.progress=false", "train.log_every=1", "model.num_layers=2", "model.mm_layers=1",
                     "data.corpus.mix={mb:1,pairs:3}", f"run_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"step +\d+ \| loss ([0-9.]+)", out)]
    assert rc == 0 and len(losses) == 2 and all(np.isfinite(losses)), out[-2000:]
    assert "mix: pairs: weight 0.750, 4 draws an epoch from 2 units (2.00 passes)" in out
    shares = re.findall(r"\| sources mb (\d+)% pairs (\d+)%", out)          # each log line: what was drawn
    assert len(shares) == 2 and all(int(a) + int(b) in (99, 100, 101) for a, b in shares), out[-2000:]
    from vincie_mcore.data.latents import LatentStore

    lat = LatentStore(tmp_path / "run" / "latents")                  # the union's sessions, all of them encoded
    assert len(lat) == 6 and lat.sources() == [("mb", 0, 4), ("pairs", 4, 6)]
    assert (tmp_path / "run" / "checkpoints").is_dir()
    # the released models' variant (docs/official.md, "Fine-tuning") reads the same store
    official = ["model=official_tiny", f"data.corpus.store={store}", "data.corpus.heldout_videos=2",
                "data.corpus.workers=1", "data.pack.token_budget=300", "data.pack.pad_multiple=8", "train.steps=2",
                "train.warmup=0", "train.progress=false", "train.log_every=1", f"run_dir={tmp_path / 'official'}"]
    assert train_main(official + ["data.corpus.mix={mb:1,nope:1}"]) == 2
    assert "error: data.corpus.mix: no source 'nope' in the corpus (its sources: mb, pairs)" in capsys.readouterr().err
    from vincie_mcore.build import official_weights
    from vincie_mcore.data.corpus import CorpusConfig

    w = official_weights(store, CorpusConfig(mix={"mb": 1, "pairs": 3}), log=False)     # per session: w / size
    assert np.allclose(w, [1 / 16] * 4 + [3 / 8] * 2)
    assert np.allclose(official_weights(store, CorpusConfig(mix={"pairs": 1}, max_sessions=5), log=False),
                       [0, 0, 0, 0, 1])                                 # the first 5 sessions: one of pairs
    rc = train_main(official[:-1] + ["data.corpus.mix={mb:1}", f"run_dir={tmp_path / 'official_mix'}"])
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"step +\d+ \| loss ([0-9.]+)", out)]
    assert rc == 0 and len(losses) == 2 and "mix: mb: weight 1.000, 4 sessions drawn at random" in out, out[-2000:]
    rc = train_main(["model=official_tiny", f"data.corpus.store={store}", "data.corpus.heldout_videos=2",
                     "data.corpus.workers=1", "data.pack.token_budget=300", "data.pack.pad_multiple=8",
                     "train.steps=2", "train.warmup=0", "train.progress=false", "train.log_every=1",
                     f"run_dir={tmp_path / 'official'}"])
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"step +\d+ \| loss ([0-9.]+)", out)]
    assert rc == 0 and len(losses) == 2 and all(np.isfinite(losses)), out[-2000:]


def test_the_benchmark_checks_its_own_run():
    r = bench_edits(3, turns=2, source_size=64, store_size=32, workers=1)
    assert r["check"] == {"stored": 3, "expected": 3, "failed": 0, "first_frame_equals_pil_resize": True}
    assert r["turns"] == 6 and r["turns_per_s"] > 0 and r["mask_rules"] == {"binary": 6}


def test_ultraedit_preset_with_and_without_its_mask_column(tmp_path):
    """UltraEdit's columns: the region-based split's mask_image read as the map; the free-form split has no
    such column, so its maps are the changed pixels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = _picture(20)
    m = _rect(4, 20, 6, 30)
    tgt = _edit(src, m, (0, 0, 0))
    loose = np.repeat((_rect(2, 24, 2, 36) * 255).astype(np.uint8)[..., None], 3, -1)   # drawn larger than the edit
    base = {"source_image": [_cell(src)], "edit_prompt": ["darken it"], "edited_image": [_cell(tgt)]}
    (tmp_path / "region").mkdir()
    (tmp_path / "free").mkdir()
    pq.write_table(pa.table({**base, "mask_image": [_cell(loose)]}), tmp_path / "region" / "r.parquet")
    pq.write_table(pa.table(base), tmp_path / "free" / "f.parquet")
    cfg = EditsConfig(format="ultraedit", size=(H, W), timeout_s=0, max_mb=0)
    for split, want, rule in (("region", _rect(2, 24, 2, 36), "binary"), ("free", m, "diff")):
        s = build_edit_sessions([tmp_path / split], tmp_path / f"store_{split}", cfg, progress=False)
        assert s["mask_rules"] == {rule: 1}
        (one,) = _by_id(tmp_path / f"store_{split}").values()
        assert one.video_id == f"ultraedit/{split[0]}/00000000" and np.array_equal(_decode(one.roe_src[0]) > 0, want)


def test_union_of_stores_reads_every_session_in_place(magicbrush, tmp_path):
    """Several fine-tuning datasets for one run: `union` of a merged store (parts) and a plain one reads every
    session of both, byte for byte, from hard-linked files; a repeated id, an existing folder and writing into
    the union are refused in one line."""
    import os

    from vincie_mcore.data.sharded import union
    from vincie_mcore.data.store import SessionWriter
    from vincie_tools.build_sessions import main, run_cli

    data, _ = magicbrush
    mb = tmp_path / "mb"
    main(["edits", "--data", str(data), "--store", str(mb), "--size", str(H), str(W), "--shards", "2", "--quiet"])
    for i in (0, 1):
        main(["run", "--store", str(mb), "--shard", f"{i}/2", "--quiet"])
    main(["merge", "--store", str(mb)])
    d = _pairs_folder(tmp_path / "pairs", seed=30)
    pairs = tmp_path / "pairs_store"
    build_edit_sessions([d], pairs, EditsConfig(format="pairs", size=(H, W), timeout_s=0, max_mb=0), progress=False)
    s = run_cli(["union", "--store", str(tmp_path / "all"), "--from", str(mb), str(pairs)])
    assert (s["sources"], s["sessions"], s["failed"], s["files_copied"]) == (2, 6, 2, 0) and s["files_linked"] > 0
    assert _contents(tmp_path / "all") == {**_contents(mb), **_contents(pairs)}
    assert list(SessionStore(tmp_path / "all").video_ids()) == SessionStore(mb).video_ids() + SessionStore(pairs).video_ids()
    shard = SessionStore(pairs).location(0)[0]
    blob = next((pairs / shard).rglob("c/0"))                   # a chunk file of the pairs store's blob
    linked = [p for p in (tmp_path / "all" / "parts").rglob("c/0") if p.stat().st_ino == blob.stat().st_ino]
    assert len(linked) == 1 and os.stat(blob).st_nlink == 2     # the same file, not a copy
    assert set(read_failures(tmp_path / "all")) == {"magicbrush/103", "magicbrush/105"}
    # the sources by name and row: what data.corpus.mix weighs; the stats count them
    from vincie_mcore.data.report import store_stats

    assert s["named"] == SessionStore(tmp_path / "all").sources() == [("mb", 0, 4), ("pairs_store", 4, 6)]
    assert store_stats(tmp_path / "all")["sources"] == {"mb": 4, "pairs_store": 2}
    assert SessionStore(mb).sources() == [] and store_stats(mb)["sources"] == {}
    assert union(tmp_path / "named", [f"edits={mb}", f"pairs={pairs}"])["named"] == [("edits", 0, 4), ("pairs", 4, 6)]
    more = tmp_path / "more_store"                                 # a union of that union and one more store
    build_edit_sessions([d], more, EditsConfig(format="pairs", name="more", size=(H, W), timeout_s=0, max_mb=0),
                        progress=False)
    nested = union(tmp_path / "nested", [f"sft={tmp_path / 'named'}", f"more={more}"])
    assert nested["named"] == [("sft.edits", 0, 4), ("sft.pairs", 4, 6), ("more", 6, 8)]
    assert _contents(tmp_path / "nested") == {**_contents(tmp_path / "named"), **_contents(more)}
    assert store_stats(tmp_path / "nested")["sources"] == {"sft.edits": 4, "sft.pairs": 2, "more": 2}
    with pytest.raises(ValueError, match=r"union: two sources are named 'sft.edits' once unions in it are opened up"):
        union(tmp_path / "clash", [f"sft={tmp_path / 'named'}", f"sft.edits={more}"])
    with pytest.raises(ValueError, match=r"union: two sources are named 'x'; name them apart with NAME=PATH"):
        union(tmp_path / "twice", [f"x={mb}", f"x={pairs}"])
    with pytest.raises(ValueError, match=r"union: source name 'a b' .* must be letters, digits"):
        union(tmp_path / "spaced", [f"a b={mb}", str(pairs)])
    g = zarr.open_group(str(tmp_path / "named"), mode="r+")     # a store from elsewhere whose rows do not tile it
    g.attrs["build"] = {"union": [{"name": "edits", "rows": [0, 4]}, {"name": "pairs", "rows": [5, 6]}]}
    with pytest.raises(ValueError, match=r"union source 'pairs' has rows \[5, 6\], expected \[4, ...\]"):
        SessionStore(tmp_path / "named").sources()
    with pytest.raises(ValueError, match=r"is a union of stores: build into one of them"):
        SessionWriter(tmp_path / "all")
    with pytest.raises(ValueError, match=r"union: .*/all exists already; give a new folder"):
        union(tmp_path / "all", [mb, pairs])
    with pytest.raises(ValueError, match=r"union: session 'magicbrush/101' is in both .*/mb and .*/one; build one "
                                         r"of them with another --name"):
        build_edit_sessions([data], tmp_path / "one", EditsConfig(size=(H, W), timeout_s=0, max_mb=0), progress=False)
        union(tmp_path / "dup", [mb, tmp_path / "one"])
