"""Manifest rows that name files outside the input root are refused before anything opens them
(docs/security.md, "Names and paths"): '..' climbing out, an absolute path where a relative one is
expected, a symlink leading out of the root, an id that would climb out. Each is one line in the
plan or store, the good rows go on, and only the config flags written by you let absolute paths or
outward symlinks in."""
import json
import os

import pytest

from vincie_mcore.data.inputs import InputsConfig, from_directory, from_manifest


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.mp4").write_bytes(b"x")
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"MARKER")
    os.symlink(secret, root / "link.mp4")
    os.symlink(tmp_path, root / "up")                        # a directory link out of the root
    rows = [{"path": "sub/ok.mp4"}, {"path": "../secret.mp4"}, {"path": str(secret)}, {"path": "link.mp4"},
            {"path": "up/secret.mp4"}, {"path": "sub/../../secret.mp4"}, {"path": "sub/ok.mp4", "id": "../../x"},
            {"path": "sub/ok.mp4", "id": "/etc/x"}, {"path": "sub\\..\\..\\secret.mp4"}]
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, man, secret


def test_escaping_rows_are_refused_and_named(tree):
    root, man, secret = tree
    got = from_manifest(man, root=root)
    assert [v.video_id for v in got.videos] == ["sub/ok.mp4"]
    reasons = dict(got.skipped)
    assert sorted(reasons) == [f"m.jsonl:{i}" for i in range(2, 10)]
    assert all("\n" not in r and str(secret.read_bytes()) not in r for r in reasons.values())
    assert "absolute path" in reasons["m.jsonl:3"] and "leads out" in reasons["m.jsonl:4"]
    assert "leads out" in reasons["m.jsonl:5"] and "climbs out" in reasons["m.jsonl:6"]


def test_only_your_config_lets_absolute_paths_or_outward_links_in(tree):
    root, man, secret = tree
    loose = from_manifest(man, root=root, cfg=InputsConfig(allow_absolute=True, allow_symlinks_out=True))
    paths = {str(v.path) for v in loose.videos}
    assert str(secret) in paths and str(root / "link.mp4") in paths
    assert not any(v.video_id.startswith(("..", "/")) for v in loose.videos)    # ids still may not climb
    assert "climbs out" in dict(loose.skipped)["m.jsonl:2"]                      # '..' never


def test_a_folder_walk_does_not_follow_links_out(tree):
    root, _, secret = tree
    got = from_directory(root)
    assert [v.video_id for v in got.videos] == ["sub/ok.mp4"]
    assert all("secret" not in str(v.path) for v in got.videos)
