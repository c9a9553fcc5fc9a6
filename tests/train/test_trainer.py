"""Trainer: resume reproduces an uninterrupted run; config errors name the key; logging works."""
import os

import pytest
import torch
from _train_tiny import TinyStream, build_tiny, tiny_loss

from vincie_mcore.config import build
from vincie_mcore.train import checkpoint as ckpt
from vincie_mcore.train.trainer import Trainer, TrainConfig

N = 8


def _cfg(tmp, **kw):
    base = dict(steps=N, lr=3e-2, warmup=2, weight_decay=0.05, grad_clip=0.5, log_every=4,
                ckpt_dir=str(tmp / "ckpt"), seed=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("dist_opt", [False, True])
def test_resume_matches_uninterrupted_run(dist1, tmp_path, dist_opt):
    def run(name, model_seed, until=None):
        t = Trainer(_cfg(tmp_path / name, use_distributed_optimizer=dist_opt), build_tiny(seed=model_seed),
                    tiny_loss, TinyStream())
        return t, t.train(until=until)

    straight, losses_a = run("a", 1)
    assert len(losses_a) == N and ckpt.latest_step(str(tmp_path / "a" / "ckpt")) == N
    _, losses_b1 = run("b", 1, until=N // 2)
    assert ckpt.latest_step(str(tmp_path / "b" / "ckpt")) == N // 2
    # a new Trainer from a differently initialised model, RNGs disturbed on purpose
    torch.manual_seed(999)
    second = Trainer(_cfg(tmp_path / "b", use_distributed_optimizer=dist_opt), build_tiny(seed=2), tiny_loss,
                     TinyStream())
    assert second.resumed_from == N // 2 and second.stream.pos == N // 2
    losses_b2 = second.train()
    assert len(losses_b1) + len(losses_b2) == N
    torch.testing.assert_close(torch.tensor(losses_b1 + losses_b2, dtype=torch.float64),
                               torch.tensor(losses_a, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    for p, q in zip(straight.model.parameters(), second.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # losses really move (the comparison above is not between constants)
    assert losses_a[-1] < losses_a[0]


def test_lr_schedule_warmup_then_cosine(dist1, tmp_path):
    t = Trainer(_cfg(tmp_path, ckpt_dir=None, steps=10, warmup=2, min_lr=3e-3), build_tiny(), tiny_loss, TinyStream())
    lrs = [t.train_step()["lr"] for _ in range(10)]
    assert lrs[0] == pytest.approx(1.5e-2) and lrs[1] == pytest.approx(3e-2)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] == pytest.approx(3e-3)


def test_max_minutes_stops_and_saves(dist1, tmp_path):
    t = Trainer(_cfg(tmp_path, steps=50, max_minutes=1e-9), build_tiny(), tiny_loss, TinyStream())
    assert len(t.train()) == 1
    assert ckpt.latest_step(str(tmp_path / "ckpt")) == 1


def test_logging_console_and_tensorboard(dist1, tmp_path, capsys):
    t = Trainer(_cfg(tmp_path, ckpt_dir=None, tensorboard_dir=str(tmp_path / "tb"), log_every=2, steps=4),
                build_tiny(), tiny_loss, TinyStream())
    t.train()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "step       2 | loss" in text and "tok/s" in text and "TFLOP/s/dev" in text
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


@pytest.mark.parametrize("key,value", [
    ("steps", 0), ("lr", -1.0), ("warmup", 8), ("dtype", "fp16"), ("log_every", 0),
    ("betas", (0.9,)), ("grad_clip", float("nan")), ("max_minutes", 0), ("seed", 1.5),
])
def test_bad_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{key}:") as e:
        TrainConfig(**{"steps": 8, key: value} if key != "steps" else {key: value})
    assert "\n" not in str(e.value)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"^train\.stpes: unknown key"):
        build(TrainConfig, {"stpes": 3}, "train")


# ----------------------------------------------------------------------------
# The real pieces: MMDiT + rectified-flow loss + PackedStream
# ----------------------------------------------------------------------------

class _WordText:
    """Deterministic text 'encoder': one row per word."""
    dim = 4

    def encode(self, texts):
        return [torch.full((len(t.split()), self.dim), float(len(t) % 7)) for t in texts]


def _real_parts(model_seed):
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from vincie_mcore.data.packing import EncodedSession, PackConfig, PackedStream
    from vincie_mcore.data.recipe import RecipeConfig
    from vincie_mcore.diffusion.flow import FlowConfig, training_loss
    from vincie_mcore.model.config import MMDiTConfig
    from vincie_mcore.model.mmdit import build_model

    def session(K, seed):
        g = torch.Generator().manual_seed(seed)
        return EncodedSession(frames=torch.randn(K, 3, 8, 8, generator=g), texts=[f"edit {j} now" for j in range(K - 1)],
                              cameras=["pan left"] * (K - 1))

    stream = PackedStream([session(K, K) for K in (2, 3)], _WordText(), RecipeConfig(mask_type="block_causal"),
                          PackConfig(patch_size=4, token_budget=40), seed=1)
    torch.manual_seed(model_seed)
    model_parallel_cuda_manual_seed(model_seed)
    model = build_model(MMDiTConfig(hidden_size=32, num_layers=2, mm_layers=1, num_heads=2, text_dim=4, patch_dim=48,
                                    frequency_embedding_size=32, adaln_zero_init=False))
    flow = FlowConfig(prediction="x0")
    return model, (lambda m, b, g: training_loss(m, b, flow, g)), stream


def test_resume_matches_uninterrupted_run_with_real_model_loss_stream(dist1, tmp_path):
    cfg = lambda d: _cfg(d, steps=4, warmup=1, log_every=2)
    straight = Trainer(cfg(tmp_path / "a"), *_real_parts(1))
    losses_a = straight.train()
    first = Trainer(cfg(tmp_path / "b"), *_real_parts(1))
    losses_b = first.train(until=2)
    second = Trainer(cfg(tmp_path / "b"), *_real_parts(2))
    assert second.resumed_from == 2 and second.stream.step == 2
    losses_b += second.train()
    torch.testing.assert_close(torch.tensor(losses_b, dtype=torch.float64),
                               torch.tensor(losses_a, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    assert len(set(losses_a)) == 4


def test_source_counts_are_summed_over_the_data_parallel_ranks(tmp_path):
    """The log's source shares (``| sources ...``) count every DP rank's sessions: two gloo ranks' counts
    summed, key order kept, on both ranks; an empty dict (one source) needs no collective."""
    import json

    import torch.multiprocessing as mp
    from _rank0_worker import counts_worker

    mp.start_processes(counts_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    want = {"mb": 7, "ip2p": 10, "videos": 0}
    for rank in (0, 1):
        mine, got, empty = json.loads((tmp_path / f"sum{rank}").read_text())
        assert mine == {"mb": 3 + rank, "ip2p": 10 * rank, "videos": 0}
        assert got == want and list(got) == list(want) and empty == {}
