"""Rectified flow: noising, loss target and the Euler sampler against the analytic flow."""
import numpy as np
import pytest
import torch

from vincie_mcore.data.packing import EncodedSession, PackConfig, pack
from vincie_mcore.data.recipe import RecipeConfig, build_sample, draw_plan
from vincie_mcore.diffusion.flow import FlowConfig, drop_text, euler_sample, noise_batch, shift_time
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


def test_guidance_combines_branches():
    b = batch("full")
    seen = []

    def model(x, bb):
        seen.append(float(bb.txt_emb.abs().sum()))
        return torch.full_like(x, 1.0 if bb.txt_emb.abs().sum() > 0 else 0.0)

    euler_sample(model, b, FlowConfig(prediction="v"), steps=1, guidance=3.0, gen=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and seen[0] > 0 and seen[1] == 0            # conditional, then text-dropped branch


def test_drop_text_zeroes_only_chosen_sessions():
    b = batch("full", n=3)
    d = drop_text(b, torch.tensor([False, True, False]))
    sess = b.spec.block_session.long()[b.spec.token_blocks()[: b.s_txt]]
    assert (d.txt_emb[sess == 1] == 0).all()
    assert torch.equal(d.txt_emb[sess != 1], b.txt_emb[sess != 1])


def test_shift_time_endpoints_and_monotone():
    t = torch.linspace(0, 1, 11)
    s = shift_time(t, 10.0)
    assert s[0] == 0 and s[-1] == 1 and (s[1:] > s[:-1]).all() and (s >= t).all()


def test_bad_flow_config_names_key():
    with pytest.raises(ValueError, match="flow.prediction"):
        FlowConfig(prediction="eps")
