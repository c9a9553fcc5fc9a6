import json

import pytest
import zarr

from vincie_mcore.data.store import RawSession, SessionStore, SessionWriter


def _session(i, k):
    return RawSession(
        video_id=f"v{i}", frames=[f"f{i}.{j}".encode() * (j + 1) for j in range(k)],
        roe_src=[bytes([i % 256, j]) for j in range(k - 1)], roe_tgt=[bytes([j]) * (i + 1) for j in range(k - 1)],
        texts=[f"text {i} {j} é" for j in range(k - 1)], cameras=["None" if j % 2 else "pan left" for j in range(k - 1)],
        meta={"frame_indices": list(range(k)), "sampling": "fixed", "video_path": f"/x/v{i}.webm"},
        states=[{"camera": [0, 0], "objects": [{"oid": j}]} for j in range(k)] if i % 2 else None,
        notes=[{"frame1_caption": {"obj1": f"cup {i}"}} if j else None for j in range(k - 1)] if i % 3 == 0 else None)


def _eq(a, b):
    return all(getattr(a, f) == getattr(b, f) for f in ("video_id", "frames", "roe_src", "roe_tgt", "texts", "cameras",
                                                         "meta", "states", "notes"))


def test_roundtrip_sharded(tmp_path):
    sessions = [_session(i, 2 + i % 5) for i in range(11)]
    with SessionWriter(tmp_path / "s", shard_size=4) as w:
        for s in sessions:
            w.add(s)
    st = SessionStore(tmp_path / "s")
    assert len(st) == 11 and st.video_ids() == [f"v{i}" for i in range(11)]
    assert sorted(p.name for p in (tmp_path / "s").glob("shard_*")) == ["shard_00000", "shard_00001", "shard_00002"]
    assert st.location(9) == ("shard_00002", 1)
    for i in [0, 5, 10, 3, -1]:
        assert _eq(st[i], sessions[i])
    with pytest.raises(IndexError):
        st[11]
    # notes are in a record only where an annotator kept some: a record without them is as it always was
    recs = {vid: r for _, vid, r in st.records()}
    assert [vid for vid, r in recs.items() if "notes" in r] == ["v0", "v3", "v6", "v9"]
    assert recs["v3"]["notes"] == [None] + [{"frame1_caption": {"obj1": "cup 3"}}] * 3 and st[1].notes is None


def test_resume_and_crash_cleanup(tmp_path):
    root = tmp_path / "s"
    with SessionWriter(root, shard_size=3) as w:
        for i in range(4):
            w.add(_session(i, 3))
        w.fail("bad1", "corrupt video bad1.webm:\n  details")
    (root / "shard_00099").mkdir()                       # left by a crashed writer: not in the index
    w = SessionWriter(root, shard_size=3)
    assert not (root / "shard_00099").exists()
    assert w.done_video_ids() == {"v0", "v1", "v2", "v3"}
    for i in range(4, 6):
        w.add(_session(i, 4))
    w.close()
    st = SessionStore(root)
    assert len(st) == 6 and _eq(st[5], _session(5, 4)) and _eq(st[1], _session(1, 3))
    assert st.failures() == {"bad1": "corrupt video bad1.webm: details"}
    assert all(len(json.loads(l)) == 2 for l in (root / "failures.jsonl").read_text().splitlines())


def test_session_validation():
    with pytest.raises(ValueError, match="texts has 1 entries for 3 frames"):
        RawSession("x", [b"a"] * 3, [b"m"] * 2, [b"m"] * 2, ["t"], ["None"] * 2)
    with pytest.raises(ValueError, match="notes has 3 entries for 3 frames"):
        RawSession("x", [b"a"] * 3, [b"m"] * 2, [b"m"] * 2, ["t"] * 2, ["None"] * 2, notes=[None] * 3)
    with pytest.raises(ValueError, match="needs >= 2 frames"):
        RawSession("x", [b"a"], [], [], [], [])


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no session store"):
        SessionStore(tmp_path)


def test_blob_streams_in_chunks_and_a_crash_mid_shard_leaves_nothing(tmp_path, monkeypatch):
    """A session's images go onto disk a chunk at a time as it is added (the writer keeps under a chunk of
    image bytes, whatever the shard size); each shard's blob is exactly its images' bytes in order, in
    chunks of BLOB_CHUNK; a writer that dies mid-shard leaves no session of that shard behind."""
    import vincie_mcore.data.store as store

    monkeypatch.setattr(store, "BLOB_CHUNK", 64)
    sessions = [_session(i, 2 + i % 5) for i in range(40)]      # images of 2-21 bytes: many a chunk, some across
    w = SessionWriter(tmp_path / "s", shard_size=16)
    for s in sessions:
        w.add(s)
        assert len(w._pending) < 64
    w.close()
    st = SessionStore(tmp_path / "s")
    assert all(_eq(st[i], s) for i, s in enumerate(sessions))
    for k, name in enumerate(("shard_00000", "shard_00001", "shard_00002")):
        raw = b"".join(im for s in sessions[16 * k:16 * (k + 1)] for im in s.images())
        blob = zarr.open_array(str(tmp_path / "s" / name / "blob"), mode="r")
        assert blob.chunks == (64,) and blob[:].tobytes() == raw
    dead = SessionWriter(tmp_path / "s", shard_size=16)
    for i in range(40, 45):
        dead.add(_session(i, 6))
    assert (tmp_path / "s" / "shard_00003" / "blob").is_dir() and dead.done_video_ids() >= {"v44"}
    del dead                                                     # killed: never flushed
    again = SessionWriter(tmp_path / "s", shard_size=16)
    assert not (tmp_path / "s" / "shard_00003").exists() and "v40" not in again.done_video_ids()
    assert len(SessionStore(tmp_path / "s")) == 40
