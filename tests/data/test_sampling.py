import numpy as np
import pytest

from vincie_mcore.data.sampling import SamplingConfig, equal_interval, fixed_frame, sample_frames


def _equal_ref(num_frames, fps, interval_s, start_s=0.0, cap=None):
    duration = num_frames / fps
    times = [start_s + k * interval_s for k in range(int(duration / interval_s) + 3)]
    idx = []
    for t in times:
        i = int(np.floor(t * fps + 0.5))
        if i < num_frames and i not in idx:
            idx.append(i)
    return idx[:cap] if cap else idx


@pytest.mark.parametrize("num_frames,fps,interval", [(30, 8, 1.0), (31, 8, 0.5), (100, 29.97, 3.0), (7, 8, 2.0),
                                                    (240, 24, 0.25), (5, 30, 1.0), (40, 10, 0.25)])
def test_equal_interval_matches_reference(num_frames, fps, interval):
    got = equal_interval(num_frames, fps, interval)
    assert got == _equal_ref(num_frames, fps, interval)
    assert got[0] == 0 and all(b > a for a, b in zip(got, got[1:]))
    # spacing is interval_s seconds up to rounding
    assert all(abs((b - a) / fps - interval) <= 1 / fps for a, b in zip(got, got[1:]))


def test_equal_interval_start_and_cap():
    assert equal_interval(100, 10, 1.0, start_s=0.5, max_frames=3) == [5, 15, 25]
    assert equal_interval(100, 10, 0.05) == list(range(100))      # sub-frame interval never repeats a frame


@pytest.mark.parametrize("num_frames", [2, 3, 10, 31, 1000])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_fixed_frame_matches_linspace(num_frames, n):
    got = fixed_frame(num_frames, n)
    m = min(n, num_frames)
    ref = np.floor(np.linspace(0, num_frames - 1, m) + 0.5).astype(int).tolist()
    assert got == ref
    assert got[0] == 0 and got[-1] == num_frames - 1 and len(set(got)) == m


def test_fixed_ignores_duration():
    for N in (20, 200, 2000):
        assert len(fixed_frame(N, 4)) == 4


def test_mixed_uses_both_with_probability():
    cfg = SamplingConfig(strategy="mixed", p_equal=0.3, n_frames=(2, 6))
    rng = np.random.default_rng(0)
    used, ns = [], set()
    for _ in range(2000):
        idx, s = sample_frames(400, 8, cfg, rng)
        used.append(s)
        if s == "fixed":
            ns.add(len(idx))
            assert idx == fixed_frame(400, len(idx))
        else:
            assert idx == equal_interval(400, 8, 1.0, max_frames=20)
    assert abs(np.mean([u == "equal" for u in used]) - 0.3) < 0.04
    assert ns == {2, 3, 4, 5, 6}


def test_fixed_n():
    idx, s = sample_frames(50, 8, SamplingConfig(strategy="fixed", n_frames=(4, 4)), np.random.default_rng(1))
    assert s == "fixed" and idx == [0, 16, 33, 49]


@pytest.mark.parametrize("kw,field", [(dict(strategy="random"), "strategy"), (dict(n_frames=(1, 6)), "n_frames"),
                                      (dict(interval_s=0), "interval_s"), (dict(p_equal=2), "p_equal")])
def test_config_errors(kw, field):
    with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
        SamplingConfig(**kw)


def test_patch_change_is_local_and_drop_static_keeps_changes():
    from vincie_mcore.data.sampling import drop_static, patch_change
    a = np.zeros((32, 32, 3), np.uint8)
    b = a.copy()
    b[8:16, 8:16] = 40                                  # one 8x8 patch changes by 40
    c = b.copy()
    c += 1                                              # noise spread thin: 1 everywhere
    assert patch_change(a, b) == 40.0 and patch_change(b, c) == 1.0
    assert patch_change(a, b) > 10 * float(np.abs(a.astype(float) - b).mean())   # the whole-frame mean dilutes it
    frames = np.stack([a, a, b, c, a])
    assert drop_static(frames, 2.0) == [0, 2, 4]        # a==a dropped; c is b plus noise
    assert drop_static(frames, 0.0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="min_change"):
        SamplingConfig(min_change=-1)
