"""Names from ids and files stay where they belong (issue 16): ``vincie_mcore.paths`` and the store.

``safe_name`` is checked against an independent decoder (the test's own inverse of the escape):
every hostile name maps to one harmless file-name component, and decodes back to the input, so
distinct inputs stay distinct. ``inside`` refuses every way out of its root. The session store
skips and records a session whose id is an escaping path, and refuses a shard name that is one.
"""
import json
import os
import re

import pytest

from vincie_mcore.data.store import RawSession, SessionStore, SessionWriter, read_failures
from vincie_mcore.paths import MAX_NAME, inside, safe_name

HOSTILE = ["../../etc/passwd", "/abs", "a/../../b", "con", "CON.txt", "nul", "", ".", "..", ".hidden",
           "héllo wörld 日本", "x" * 300, "x" * 299 + "y", "a\x00b", "a\\b", "a~2fb", "a/b", "~2ex", ".x",
           "~63on", "line\nbreak", "$(touch MARK)", "\ud800"]


def _decode(name: str) -> str:
    """The inverse of safe_name's escape, written independently: '~xx' -> byte 0xxx, others literal."""
    out, i = bytearray(), 0
    while i < len(name):
        if name[i] == "~":
            out.append(int(name[i + 1:i + 3], 16))
            i += 3
        else:
            out += name[i].encode()
            i += 1
    return out.decode("utf-8", "surrogatepass")


@pytest.mark.parametrize("s", [h for h in HOSTILE if h])
def test_safe_name_is_one_harmless_component(s, tmp_path):
    n = safe_name(s)
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", n) and not n.startswith(".") and len(n) <= MAX_NAME, n
    assert n.split(".")[0].lower() not in {"con", "nul", "prn", "aux"}
    (tmp_path / n).write_text("x")                       # a real file, directly in the folder
    assert os.listdir(tmp_path) == [n]
    if "~~" not in n:                                    # not cut: decodes back to the input
        assert _decode(n) == s


def test_distinct_inputs_stay_distinct():
    names = [safe_name(s) for s in HOSTILE if s]
    assert len(set(names)) == len(names)
    long = [safe_name("x" * 300 + str(i)) for i in range(50)]
    assert len(set(long)) == 50 and all(len(n) == MAX_NAME and "~~" in n for n in long)
    assert safe_name(safe_name("x" * 300)) != safe_name("x" * 300)   # a cut name is not an input's image


def test_safe_name_refuses_empty_and_non_strings():
    with pytest.raises(ValueError, match="run name: empty name"):
        safe_name("", what="run name")
    with pytest.raises(TypeError, match="expected a string"):
        safe_name(None)


@pytest.mark.parametrize("rel, why", [("../../etc/passwd", "climbs out"), ("a/../../b", "climbs out"),
                                      ("/abs", "absolute"), ("C:\\x", "absolute"), ("\\\\srv\\share", "absolute"),
                                      ("a\x00b", "NUL"), ("", "empty"), ("a\\..\\..\\b", "climbs out")])
def test_inside_refuses_ways_out(tmp_path, rel, why):
    with pytest.raises(ValueError, match=why) as e:
        inside(tmp_path, rel, what="video id")
    assert "\n" not in str(e.value) and str(e.value).startswith("video id: ")


def test_inside_follows_symlinks(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    out.mkdir()
    (root / "leave").symlink_to(out)
    (root / "stay").symlink_to(root / "sub")
    with pytest.raises(ValueError, match="leads out of"):
        inside(root, "leave/f.png")
    assert inside(root, "stay/f.png") == root / "stay" / "f.png"
    assert inside(root, "a/b.png") == root / "a" / "b.png"


def _session(vid):
    return RawSession(video_id=vid, frames=[b"f0", b"f1"], roe_src=[b"s"], roe_tgt=[b"t"], texts=["edit"],
                      cameras=["None"])


def test_store_skips_and_records_escaping_ids(tmp_path):
    root = tmp_path / "store"
    bad = ["../../evil", "/abs/evil", "a/../../evil", "", "a\x00b"]
    with SessionWriter(root, shard_size=2) as w:
        assert w.add(_session("cat/ok_1"))
        for vid in bad:
            assert not w.add(_session(vid))
        assert w.add(_session("ok 2"))
    assert sorted(os.listdir(tmp_path)) == ["store"]            # nothing written beside the store
    assert SessionStore(root).video_ids() == ["cat/ok_1", "ok 2"]
    fails = read_failures(root)
    assert sorted(fails) == sorted(bad) and all("\n" not in r for r in fails.values())


def test_store_refuses_a_shard_name_that_is_a_path(tmp_path):
    root = tmp_path / "store"
    with SessionWriter(root) as w:
        w.add(_session("v"))
    idx = root / "index.jsonl"
    idx.write_text(json.dumps({"shard": "../../outside", "video_ids": ["v"]}) + "\n")
    with pytest.raises(ValueError, match=r"shard name '\.\./\.\./outside' is not shard_NNNNN") as e:
        SessionStore(root)
    assert "\n" not in str(e.value)
