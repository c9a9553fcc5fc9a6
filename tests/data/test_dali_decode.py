import io

import numpy as np
import pytest
from PIL import Image

from vincie_mcore.data import dali_decode as dd
from vincie_mcore.data.build import build_sessions, encode_png
from vincie_mcore.data.store import SessionStore
from vincie_mcore.data.video import write_synthetic_corpus
from vincie_mcore.data.world import demo_config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("dali")
    write_synthetic_corpus(d / "v", 10, demo_config(), seed=2)
    build_sessions(d / "v", d / "s", shard_size=4, progress=False)
    return SessionStore(d / "s")


def _random_pngs():
    rng = np.random.default_rng(0)
    out = [encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(24, 24), (17, 31), (64, 40)]]
    return out + [encode_png(rng.integers(0, 2, (24, 24), dtype=np.uint8) * 255)]        # a grayscale mask


def test_decode_exact_vs_pil():
    enc = _random_pngs()
    for a, b in zip(dd.decode_images(enc), dd.decode_images_pil(enc)):
        assert a.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.parametrize("size", [7, 12, 16, 48, (20, 30), (5, 64)])
def test_resize_within_one(size):
    enc = _random_pngs()
    for a, b in zip(dd.decode_images(enc, size), dd.decode_images_pil(enc, size)):
        hw = (size, size) if isinstance(size, int) else size
        assert a.shape == b.shape == (*hw, 3)
        assert np.abs(a.astype(int) - b).max() <= 1


def test_resize_reference_is_plain_bilinear_when_upscaling_2x():
    img = np.array([[0, 100], [200, 40]], np.uint8)[..., None]
    up = dd.resize_reference(img, 4)[..., 0]
    # half-pixel centres, clamped edges: row 0 = [0, 25, 75, 100]
    assert up[0].tolist() == [0, 25, 75, 100] and up[:, 0].tolist() == [0, 50, 150, 200]


def test_pipeline_cache():
    enc = _random_pngs()
    dd.decode_images(enc[:2])
    n = len(dd._PIPES)
    dd.decode_images(enc[:3])
    dd.decode_images(enc[:1])
    assert len(dd._PIPES) == n                    # same power-of-two bucket, same pipeline


def test_decode_session_and_store(store):
    r = store[3]
    s = dd.decode_session(r)
    k = len(r.frames)
    assert s.frames.shape == (k, 24, 24, 3) and s.roe_src.shape == s.roe_tgt.shape == (k - 1, 24, 24)
    for i in range(k):
        assert np.array_equal(s.frames[i], np.asarray(Image.open(io.BytesIO(r.frames[i]))))
    for i in range(k - 1):
        assert np.array_equal(s.roe_src[i], np.asarray(Image.open(io.BytesIO(r.roe_src[i]))))
        assert np.array_equal(s.roe_tgt[i], np.asarray(Image.open(io.BytesIO(r.roe_tgt[i]))))
    assert s.texts == r.texts and s.states == r.states and s.video_id == r.video_id
    all_ = dd.decode_store(store, batch_sessions=3, progress=False)
    assert len(all_) == len(store)
    for i, d in enumerate(all_):
        one = dd.decode_session(store[i])
        assert np.array_equal(d.frames, one.frames) and np.array_equal(d.roe_tgt, one.roe_tgt) and d.texts == one.texts
    small = dd.decode_store(store, [1, 2], size=12, progress=False)
    assert small[0].frames.shape[1:] == (12, 12, 3) and small[1].roe_src.shape[1:] == (12, 12)


def test_bad_args():
    with pytest.raises(ValueError, match="device"):
        dd.decode_images([b"x"], device="gpu")
    assert dd.decode_images([]) == []
