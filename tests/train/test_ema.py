"""EMA of the weights: the average the Trainer keeps equals one computed by hand from the
weights after every step; it survives a resume exactly; ``applied()`` swaps it in and back."""
import pytest
import torch
from _train_tiny import TinyStream, build_tiny, tiny_loss

from vincie_mcore.train.ema import EMA
from vincie_mcore.train.trainer import Trainer, TrainConfig

N = 8


def _cfg(tmp, **kw):
    base = dict(steps=N, lr=3e-2, warmup=2, log_every=4, ckpt_dir=str(tmp / "ckpt"), seed=3, progress=False,
                ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_ema_is_the_hand_average_of_the_weight_trajectory(dist1, tmp_path):
    t = Trainer(_cfg(tmp_path, ckpt_dir=None), build_tiny(seed=1), tiny_loss, TinyStream())
    params = [p for p in t.model.module.parameters() if p.requires_grad]
    avg = [p.detach().double().clone() for p in params]            # independent: float64, plain formula
    for k in range(N):
        t.train_step()
        d = min(0.9, (1 + k) / (10 + k))
        avg = [d * a + (1 - d) * p.detach().double() for a, p in zip(avg, params)]
    for a, s, p in zip(avg, t.ema.shadow, params):
        torch.testing.assert_close(s.double(), a, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(s, p.detach())                    # the average lags the weights
    before = [p.detach().clone() for p in params]
    with t.ema.applied():
        for p, s in zip(params, t.ema.shadow):
            assert torch.equal(p.detach(), s)
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


def test_ema_resumes_exactly(dist1, tmp_path):
    a = Trainer(_cfg(tmp_path / "a"), build_tiny(seed=1), tiny_loss, TinyStream())
    a.train()
    Trainer(_cfg(tmp_path / "b"), build_tiny(seed=1), tiny_loss, TinyStream()).train(until=N // 2)
    b = Trainer(_cfg(tmp_path / "b"), build_tiny(seed=2), tiny_loss, TinyStream())
    assert b.resumed_from == N // 2 and b.ema.updates == N // 2
    b.train()
    for x, y in zip(a.ema.shadow, b.ema.shadow):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    # a checkpoint without an EMA cannot feed a run that wants one: one line
    Trainer(_cfg(tmp_path / "c", ema_decay=0.0), build_tiny(seed=1), tiny_loss, TinyStream()).train(until=2)
    with pytest.raises(ValueError, match="holds no EMA"):
        Trainer(_cfg(tmp_path / "c"), build_tiny(seed=1), tiny_loss, TinyStream())


def test_ema_config_and_state_errors():
    with pytest.raises(ValueError, match=r"^TrainConfig\.ema_decay:"):
        TrainConfig(steps=4, ema_decay=1.0)
    m = torch.nn.Linear(3, 2)
    e = EMA(m, 0.99)
    with pytest.raises(ValueError, match="weight has shape"):
        e.load_state_dict({"updates": 0, "shadow": {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}})
