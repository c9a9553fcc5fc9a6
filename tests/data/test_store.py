import json

import pytest

from vincie_mcore.data.store import RawSession, SessionStore, SessionWriter


def _session(i, k):
    return RawSession(
        video_id=f"v{i}", frames=[f"f{i}.{j}".encode() * (j + 1) for j in range(k)],
        roe_src=[bytes([i % 256, j]) for j in range(k - 1)], roe_tgt=[bytes([j]) * (i + 1) for j in range(k - 1)],
        texts=[f"text {i} {j} é" for j in range(k - 1)], cameras=["None" if j % 2 else "pan left" for j in range(k - 1)],
        meta={"frame_indices": list(range(k)), "sampling": "fixed", "video_path": f"/x/v{i}.webm"},
        states=[{"camera": [0, 0], "objects": [{"oid": j}]} for j in range(k)] if i % 2 else None)


def _eq(a, b):
    return all(getattr(a, f) == getattr(b, f) for f in ("video_id", "frames", "roe_src", "roe_tgt", "texts", "cameras",
                                                         "meta", "states"))


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
    with pytest.raises(ValueError, match="needs >= 2 frames"):
        RawSession("x", [b"a"], [], [], [], [])


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no session store"):
        SessionStore(tmp_path)
