"""Rectified flow: noising, loss target and the Euler sampler against the analytic flow, and the
sampler's time shift, guidance, the training loss and the text-dropout rate against hand-written math."""
import math

import numpy as np
import pytest
import torch

from vincie_mcore.data.packing import EncodedSession, PackConfig, pack
from vincie_mcore.data.recipe import RecipeConfig, build_sample, draw_plan
from vincie_mcore.diffusion.flow import FlowConfig, drop_text, euler_sample, noise_batch, shift_time, training_loss
from vincie_mcore.packed.maskspec import KIND_NOISY


class FakeText:
    def encode(self, texts):
        return [torch.ones(len(t.split()), 4) for t in texts]


def batch(mask_type="block_causal", n=3):
    rng = np.random.default_rng(0)
    cfg = RecipeConfig(mask_type=mask_type, roe_prob=0.0, camera_prompts=False)
    items = []
    for s in range(n):
        g = torch.Generator().manual_seed(s)
        sess = EncodedSession(frames=torch.randn(4, 3, 8, 8, generator=g), texts=["a b", "c d e", "f"], cameras=[None] * 3)
        items.append((build_sample(sess.texts, sess.cameras, draw_plan(4, cfg, rng, has_roe=False), cfg), sess))
    return pack(items, FakeText().encode, PackConfig(patch_size=4), mask_type)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_noise_batch_follows_the_path(prediction):
    b = batch()
    x_t, target, nb = noise_batch(b, FlowConfig(prediction=prediction), torch.Generator().manual_seed(1))
    noisy_blocks = nb.spec.block_kind == KIND_NOISY
    assert (nb.block_t[~noisy_blocks] == 0).all() and (nb.block_t[noisy_blocks] > 0).all()
    m = b.img_loss_mask
    assert torch.equal(x_t[~m], b.img_x0[~m])                       # clean context untouched
    t = nb.token_t()[b.s_txt:][m].unsqueeze(1)
    eps = (x_t[m] - (1 - t) * b.img_x0[m]) / t
    want = eps - b.img_x0[m] if prediction == "v" else b.img_x0[m]
    torch.testing.assert_close(target[m], want, rtol=1e-4, atol=1e-4)
    # one t per block: every token of a noisy block shares it
    tb = nb.spec.token_blocks()[b.s_txt:]
    for blk in torch.nonzero(noisy_blocks).flatten():
        assert nb.token_t()[b.s_txt:][tb == blk].unique().numel() == 1


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_with_the_exact_field_lands_on_x0(prediction, shift):
    """For a single target the straight-path field is known in closed form; Euler must end at x0."""
    b = batch("full")
    x0 = b.img_x0.clone()
    m = b.img_loss_mask.unsqueeze(1)

    def oracle(x, bb):
        t = bb.token_t()[bb.s_txt:].unsqueeze(1)
        if prediction == "x0":
            return torch.where(m, x0, x)
        return torch.where(m, (x - x0) / t.clamp(min=1e-6), torch.zeros_like(x))

    noisy_in = b.img_x0.clone()
    noisy_in[b.img_loss_mask] = 0.0                                   # the sampler must not read the target
    b2 = type(b)(**{**b.__dict__, "img_x0": noisy_in})
    flow = FlowConfig(prediction=prediction)
    if prediction == "x0":
        out = euler_sample(lambda x, bb: torch.where(m, x0, x), b2, flow, steps=7, shift=shift)
    else:
        out = euler_sample(oracle, b2, flow, steps=7, shift=shift)
    torch.testing.assert_close(out[b.img_loss_mask], x0[b.img_loss_mask], rtol=1e-4, atol=1e-4)
    assert torch.equal(out[~b.img_loss_mask], noisy_in[~b.img_loss_mask])


# Two fake branches whose fields are nonlinear in t and x: Euler is then *not* exact, so the
# output depends on the time grid (the shift) as well as on how the branches are combined.
# The model is a stand-in on purpose: what is tested is the sampler's arithmetic, not a network.
def _branch(prediction, cond, x, t):
    if prediction == "v":
        return 1.5 * t * x + 0.7 if cond else -0.5 * x + t * t
    return 0.5 * x + t if cond else -t * x                         # x0-hat of each branch


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_guided_shifted_euler_output_matches_hand_integration(prediction, guidance):
    b = batch("full")
    m = b.img_loss_mask
    assert m.any() and (~m).any()
    noisy_blocks = b.spec.block_kind == KIND_NOISY
    calls = []                                                     # (cond?, t, x) of every model call

    def model(x, bb):
        ts = bb.block_t[noisy_blocks].unique()
        assert ts.numel() == 1 and (bb.block_t[~noisy_blocks] == 0).all()   # one t, on noisy blocks only
        cond = bool(bb.txt_emb.abs().sum() > 0)                    # the unconditional branch has no text
        calls.append((cond, float(ts), x.clone()))
        return _branch(prediction, cond, x, float(ts))

    progress = []                                                  # the callback: after each step's calls
    out = euler_sample(model, b, FlowConfig(prediction=prediction), steps=4, shift=3.0, guidance=guidance,
                       gen=torch.Generator().manual_seed(0),
                       callback=lambda done, steps: progress.append((done, steps, len(calls))))

    # s t / (1 + (s-1) t) at s = 3 on the uniform grid 1, .75, .5, .25, 0, worked out by hand
    grid = [1.0, 0.9, 0.75, 0.5, 0.0]
    per_step = 2 if guidance != 1.0 else 1
    assert [c[0] for c in calls] == [True, False][:per_step] * 4
    assert progress == [(i + 1, 4, per_step * (i + 1)) for i in range(4)]
    assert [c[1] for c in calls[::per_step]] == pytest.approx(grid[:-1], abs=1e-6)

    x = calls[0][2].double()                                       # the sampler's starting noise
    assert torch.equal(x[~m], b.img_x0[~m].double())
    x0 = b.img_x0.double()
    for i in range(4):
        t, dt = grid[i], grid[i + 1] - grid[i]

        def vel(cond):
            pred = _branch(prediction, cond, x, t)
            return pred if prediction == "v" else (x - pred) / t

        v = vel(True) if guidance == 1.0 else vel(False) + guidance * (vel(True) - vel(False))
        x = torch.where(m.unsqueeze(1), x + dt * v, x0)
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-5)


def test_drop_text_zeroes_only_chosen_sessions():
    b = batch("full", n=3)
    d = drop_text(b, torch.tensor([False, True, False]))
    sess = b.spec.block_session.long()[b.spec.token_blocks()[: b.s_txt]]
    assert (d.txt_emb[sess == 1] == 0).all()
    assert torch.equal(d.txt_emb[sess != 1], b.txt_emb[sess != 1])


def test_shift_time_at_interior_points():
    """SD3 shift t' = s t / (1 + (s-1) t); values worked out by hand. s > 1 moves every interior
    time towards the noisy end (t = 1, docs/design.md), s < 1 towards the clean end, s = 1 is the identity."""
    t = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_time(t, 3.0), torch.tensor([0, 0.3 / 1.2, 0.5, 0.75, 0.9, 1], dtype=torch.float64))
    torch.testing.assert_close(shift_time(t, 10.0)[1:5], torch.tensor([1 / 1.9, 2.5 / 3.25, 5 / 5.5, 7.5 / 7.75],
                                                                     dtype=torch.float64))
    torch.testing.assert_close(shift_time(t, 0.5), torch.tensor([0, 0.05 / 0.95, 0.125 / 0.875, 0.25 / 0.75,
                                                                 0.375 / 0.625, 1], dtype=torch.float64))
    torch.testing.assert_close(shift_time(t, 1.0), t)
    inner = shift_time(t, 10.0)[1:-1]
    assert (inner > t[1:-1]).all() and (shift_time(t, 0.5)[1:-1] < t[1:-1]).all()


def test_shift_time_endpoints_and_monotone():
    t = torch.linspace(0, 1, 11)
    s = shift_time(t, 10.0)
    assert s[0] == 0 and s[-1] == 1 and (s[1:] > s[:-1]).all() and (s >= t).all()


def test_loss_is_the_masked_mse_over_noisy_targets_only():
    """x0 prediction, a model that predicts 0 on noisy tokens: the loss is mean(x0^2) over the noisy
    tokens' elements, by hand. The model's rows for clean tokens are huge: they must not count."""
    b = batch()
    m = b.img_loss_mask
    assert m.any() and (~m).any()
    seen = {}

    def model(x, bb):
        seen["x_t"] = x
        return torch.where(m.unsqueeze(1), torch.zeros_like(x), torch.full_like(x, 1e3))

    loss, metrics = training_loss(model, b, FlowConfig(prediction="x0", text_drop=0.0), torch.Generator().manual_seed(3))
    x0 = b.img_x0
    want = sum(float(x0[i, j]) ** 2 for i in range(x0.shape[0]) if m[i] for j in range(x0.shape[1]))
    want /= int(m.sum()) * x0.shape[1]
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert metrics["noisy_tokens"] == int(m.sum())
    assert torch.equal(seen["x_t"][~m], x0[~m]) and not torch.equal(seen["x_t"][m], x0[m])


def test_loss_v_target_is_eps_minus_x0_on_noisy_tokens():
    """v prediction: with a model that returns its input, the loss is mean((x_t - (eps - x0))^2) over
    noisy tokens, eps recovered by hand from x_t = (1 - t) x0 + t eps and each token's block t (a
    nonzero prediction, so that a target of the wrong sign shows)."""
    b = batch()
    m = b.img_loss_mask
    seen = {}

    def model(x, bb):
        seen["x_t"], seen["block_t"] = x, bb.block_t
        return x.clone()

    loss, _ = training_loss(model, b, FlowConfig(prediction="v", text_drop=0.0), torch.Generator().manual_seed(4))
    offs = b.spec.block_offsets.tolist()
    t_img = torch.tensor([float(seen["block_t"][k]) for k in range(len(offs) - 1)
                          for _ in range(offs[k + 1] - offs[k])])[b.s_txt:].double().unsqueeze(1)
    x0, x_t = b.img_x0.double(), seen["x_t"].double()
    eps = (x_t - (1 - t_img) * x0) / t_img.clamp(min=1e-12)
    want = float((x_t - (eps - x0))[m].pow(2).mean())
    assert float(loss) == pytest.approx(want, rel=1e-4)


def _binomial_two_sided_tail(n, p, lo, hi):
    """P(X < lo) + P(X > hi) for X ~ Binomial(n, p), exactly (log-space pmf)."""
    pmf = lambda k: math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)  # noqa: E731
                             + k * math.log(p) + (n - k) * math.log1p(-p))
    return sum(pmf(k) for k in range(lo)) + sum(pmf(k) for k in range(hi + 1, n + 1))


def test_text_drop_rate_is_binomial_with_p_text_drop():
    """training_loss drops each session's text with probability flow.text_drop (0.1).

    Binomial test over n = 40 sessions x 100 steps = 4000 draws: [310, 496] holds a correct
    p = 0.1 with false-alarm probability 8.1e-7 (< 1e-6, computed exactly below), so with
    any seed this fails on a right rate about once in a million; p = 0.9 (inverted) lands
    near 3600, and even p = 0.15 or 0.05 pass with probability < 2e-6.
    """
    n_sess, steps, lo, hi = 40, 100, 310, 496
    assert _binomial_two_sided_tail(n_sess * steps, 0.1, lo, hi) < 1e-6
    b = batch("full", n=n_sess)
    tok_sess = b.spec.block_session.long()[b.spec.token_blocks()[: b.s_txt]]
    words = b.txt_emb.abs().sum(1) > 0                              # rows with features (not <TURN>)
    dropped = []

    def model(x, bb):
        for s in range(n_sess):
            rows = bb.txt_emb[(tok_sess == s) & words]
            assert rows.numel() and ((rows == 0).all() or (rows != 0).all())   # all of a session, or none
            dropped.append(bool((rows == 0).all()))
        return torch.zeros_like(x)

    gen = torch.Generator().manual_seed(5)
    cfg = FlowConfig(prediction="x0", text_drop=0.1)
    for _ in range(steps):
        training_loss(model, b, cfg, gen)
    assert len(dropped) == n_sess * steps
    assert lo <= sum(dropped) <= hi, sum(dropped)


@pytest.mark.parametrize("p,want", [(0.0, 0), (1.0, 1)])
def test_text_drop_zero_and_one_are_never_and_always(p, want):
    b = batch("full", n=3)
    words = b.txt_emb.abs().sum(1) > 0
    frac = []
    training_loss(lambda x, bb: frac.append(float((bb.txt_emb[words] == 0).float().mean())) or torch.zeros_like(x),
                  b, FlowConfig(prediction="x0", text_drop=p), torch.Generator().manual_seed(0))
    assert frac == [want]


def test_bad_flow_config_names_key():
    with pytest.raises(ValueError, match="flow.prediction"):
        FlowConfig(prediction="eps")
