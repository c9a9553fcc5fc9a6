"""Trainer health: non-finite steps are skipped (and stop the run when in a row), data-wait share,
loss per task and turn, run_info.json."""
import json
import re
import time

import megatron.core
import numpy as np
import pytest
import torch
from _train_tiny import TinyStream, build_tiny, tiny_loss

from vincie_mcore.runinfo import arithmetic_info, code_version
from vincie_mcore.train import checkpoint as ckpt
from vincie_mcore.train.trainer import BadStepsError, Trainer, TrainConfig


def _cfg(**kw):
    base = dict(steps=6, lr=3e-2, warmup=2, weight_decay=0.05, grad_clip=0.5, log_every=3, seed=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


class PoisonedLoss:
    """tiny_loss, except on the chosen calls (1-based): a non-finite loss ("loss") or a finite loss with
    NaN gradients ("grad"). A poisoned call draws no noise and runs no forward (no RNG moves), so the
    run should equal one whose stream never held that batch."""

    def __init__(self, bad_calls, kind="loss"):
        self.bad, self.kind, self.calls = set(bad_calls), kind, 0

    def __call__(self, model, batch, gen):
        self.calls += 1
        if self.calls not in self.bad:
            return tiny_loss(model, batch, gen)
        s = sum(p.sum() for p in model.parameters())
        # d sqrt(x)/dx at 0 is inf, times dx/dp = 0: NaN grads under a loss of 0
        loss = s * float("nan") if self.kind == "loss" else torch.sqrt(0.0 * s)
        return loss, {"loss": loss.detach(), "tokens": batch.shape[0]}


class DropStream(TinyStream):
    """TinyStream without the batches at the given positions (0-based)."""

    def __init__(self, drop, **kw):
        super().__init__(**kw)
        self.drop = set(drop)

    def __next__(self):
        while self.pos in self.drop:
            self.pos += 1
        return super().__next__()


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_skipped_step_equals_a_run_without_that_batch(dist1, kind):
    poisoned = Trainer(_cfg(ema_decay=0.5), build_tiny(seed=1), PoisonedLoss({3}, kind), TinyStream())
    losses_a = poisoned.train()
    clean = Trainer(_cfg(ema_decay=0.5), build_tiny(seed=1), tiny_loss, DropStream({2}))
    losses_b = clean.train()
    assert poisoned.skipped_steps == 1 and clean.skipped_steps == 0
    assert poisoned.step == clean.step == 6 and poisoned.stream.pos == clean.stream.pos == 7
    assert poisoned.scheduler.num_steps == 6 and poisoned.ema.updates == clean.ema.updates == 6
    assert losses_a == losses_b and len(losses_a) == 6
    for (n, p), q in zip(poisoned.model.named_parameters(), clean.model.parameters()):
        assert torch.equal(p, q), n
    for a, b in zip(poisoned.ema.shadow, clean.ema.shadow):
        assert torch.equal(a, b)
    assert torch.isfinite(torch.cat([p.flatten() for p in poisoned.model.parameters()])).all()


def test_bad_steps_in_a_row_stop_without_saving(dist1, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(steps=10, save_every=2, max_bad_steps=3, ckpt_dir=str(tmp_path / "ckpt"),
               tensorboard_dir=str(tmp_path / "tb"), log_every=2)
    t = Trainer(cfg, build_tiny(), PoisonedLoss(range(3, 100)), TinyStream())
    with pytest.raises(BadStepsError) as e:
        t.train()
    msg = str(e.value)
    assert "\n" not in msg
    assert re.match(r"^train: 3 non-finite steps in a row after step 2 \(train\.max_bad_steps=3\)", msg), msg
    assert t.step == 2 and t.skipped_steps == 3 and t.stream.pos == 5
    assert ckpt.list_steps(str(tmp_path / "ckpt")) == [2] and ckpt.latest_step(str(tmp_path / "ckpt")) == 2
    out = capsys.readouterr()
    skips = [ln for ln in (out.out + out.err).splitlines() if "skipped: loss nan" in ln]
    assert len(skips) == 3 and "3 in a row, 3 in all" in skips[-1]
    acc = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [s.value for s in acc.Scalars("train/skipped_steps")][-1] == 3


def test_max_bad_steps_zero_never_stops(dist1):
    t = Trainer(_cfg(steps=3, max_bad_steps=0), build_tiny(), PoisonedLoss({2, 3, 4, 5}), TinyStream())
    assert len(t.train()) == 3
    assert t.step == 3 and t.skipped_steps == 4 and t.bad_in_row == 0


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_max_bad_steps_is_named(value):
    with pytest.raises(ValueError, match=r"^TrainConfig\.max_bad_steps: must be an int >= 0"):
        TrainConfig(steps=8, max_bad_steps=value)


class SlowStream(TinyStream):
    def __init__(self, delay, **kw):
        super().__init__(**kw)
        self.delay = delay

    def __next__(self):
        time.sleep(self.delay)
        return super().__next__()


@pytest.mark.parametrize("delay", [0.0, 0.25])
def test_data_wait_pct_on_console_and_tensorboard(dist1, tmp_path, capsys, delay):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Trainer(_cfg(steps=3, log_every=3, tensorboard_dir=str(tmp_path / "tb")), build_tiny(), tiny_loss,
                SlowStream(delay))
    t0 = time.perf_counter()
    t.train()
    wall = time.perf_counter() - t0
    out = capsys.readouterr()
    pct = float(re.search(r"\| data wait ([0-9.]+)%", out.out + out.err).group(1))
    if delay:
        # 3 waits of 0.25 s in a window no longer than the whole train() call
        assert 100 * 3 * delay / wall - 0.1 <= pct <= 100
    else:
        assert pct < 20
    tb = EventAccumulator(str(tmp_path / "tb")).Reload().Scalars("train/data_wait_pct")
    assert [s.step for s in tb] == [3] and tb[0].value == pytest.approx(pct, abs=0.051)


# ----------------------------------------------------------------------------
# loss per task and turn
# ----------------------------------------------------------------------------

def test_loss_parts_match_a_hand_computation(dist1):
    from vincie_mcore.diffusion.flow import prediction_loss
    from vincie_mcore.packed.builder import BatchBuilder
    from vincie_mcore.packed.maskspec import KIND_CLEAN, KIND_NOISY

    P, g = 6, torch.Generator().manual_seed(0)
    # (session, order, ref, noisy, tokens); each target's task / turn by hand in `truth`
    layout = [(0, 1, ("frame", 0), False, 4), (0, 2, ("frame", 1), True, 4), (0, 3, ("roe_src", 1), True, 2),
              (0, 4, ("roe_tgt", 2), True, 3), (0, 5, ("frame", 3), True, 4), (1, 1, ("frame", 0), False, 2),
              (1, 2, ("frame", 1), False, 2), (1, 2, ("frame", 1), True, 2), (1, 3, ("frame", 4), True, 1),
              (2, 1, ("t2v", 0), True, 3), (2, 2, ("t2v", 1), True, 2)]          # a text-to-video clip
    truth = {("frame", 1): ("task_nip", "turn_1"), ("roe_src", 1): ("task_csp", "turn_2"),
             ("roe_tgt", 2): ("task_nsp", "turn_3plus"), ("frame", 3): ("task_nip", "turn_3plus"),
             ("frame", 4): ("task_nip", "turn_3plus"), ("t2v", 0): ("task_t2v",), ("t2v", 1): ("task_t2v",)}
    b = BatchBuilder("block_causal", pad_multiple=16)
    rows = []
    for sess in (0, 1, 2):
        b.session()
        b.text(0, 0, torch.randn(2, 4, generator=g))
        for s, order, ref, noisy, n in layout:
            if s == sess:
                b.image(order, KIND_NOISY if noisy else KIND_CLEAN, (1, n), torch.randn(n, P, generator=g),
                        rope_turn=order, ref=ref, joins=ref == ("t2v", 1))
                rows.append((ref, noisy, n))
    batch = b.build()
    assert batch.s_img > sum(n for _, _, n in rows)                 # padding rows are in the stream
    target = torch.randn(batch.s_img, P, generator=g)
    x_t = torch.randn(batch.s_img, P, generator=g)
    loss, metrics = prediction_loss(lambda x, _b: 0.5 * x + 0.1, x_t, target, batch)

    want, start = {}, 0
    for ref, noisy, n in rows:
        if noisy:
            sq = sum(float((0.5 * x_t[i, j] + 0.1 - target[i, j]) ** 2) for i in range(start, start + n) for j in range(P))
            for name in truth[ref]:
                s, c = want.get(name, (0.0, 0))
                want[name] = (s + sq, c + n * P)
        start += n
    parts = metrics["loss_parts"]
    assert set(parts) == {"task_nip", "task_csp", "task_nsp", "task_t2i", "task_t2v", "turn_1", "turn_2", "turn_3plus"}
    assert parts["task_t2i"][1].item() == 0                       # no text-to-image target in this batch
    assert set(want) == set(parts) - {"task_t2i"}
    for name, (s, c) in want.items():
        assert parts[name][1].item() == c, name
        assert parts[name][0].item() == pytest.approx(s, rel=1e-6), name
    tasks = sum(parts[k] for k in ("task_nip", "task_csp", "task_nsp", "task_t2v"))
    assert (tasks[0] / tasks[1]).item() == pytest.approx(loss.item(), rel=1e-6)


def test_loss_task_follows_the_recipe_target():
    """flow's image-kind -> task table agrees with the recipe's choice of target."""
    from vincie_mcore.data.recipe import TASKS, RecipeConfig, SessionPlan, build_sample
    from vincie_mcore.diffusion.flow import LOSS_TASKS, _TASK_OF_REF
    from vincie_mcore.packed.maskspec import KIND_NOISY

    for task in TASKS:
        plan = SessionPlan(num_turns=3, use_roe=True, task=task, target_turn=1)
        sample = build_sample(["a", "b", "c"], [None] * 3, plan, RecipeConfig(mask_type="full"))
        (target,) = [blk for blk in sample.blocks if blk.kind == KIND_NOISY]
        assert LOSS_TASKS[_TASK_OF_REF[target.image[0]]] == f"task_{task}"


class _WordText:
    dim = 4

    def encode(self, texts):
        return [torch.full((len(t.split()), self.dim), float(len(t) % 7)) for t in texts]


def test_loss_parts_window_means_in_tensorboard(dist1, tmp_path):
    """Real MMDiT + flow loss + packed stream (RoE maps on): loss/<group> is each window's sum/count."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vincie_mcore.data.packing import EncodedSession, PackConfig, PackedStream
    from vincie_mcore.data.recipe import RecipeConfig
    from vincie_mcore.diffusion.flow import FlowConfig, training_loss
    from vincie_mcore.model.config import MMDiTConfig
    from vincie_mcore.model.mmdit import build_model

    def session(K, seed):
        g = torch.Generator().manual_seed(seed)
        lat = lambda n: torch.randn(n, 3, 4, 4, generator=g)
        return EncodedSession(frames=lat(K), texts=[f"edit {j}" for j in range(K - 1)], cameras=[None] * (K - 1),
                              roe_src=lat(K - 1), roe_tgt=lat(K - 1))

    recipe = RecipeConfig(mask_type="block_causal", roe_prob=1.0, drop_roe_src=0.0, drop_roe_tgt=0.0,
                          camera_prompts=False)
    stream = PackedStream([session(4, 4), session(3, 3)], _WordText(), recipe,
                          PackConfig(patch_size=2, token_budget=96), seed=1)
    torch.manual_seed(0)
    model_parallel_cuda_manual_seed(0)
    model = build_model(MMDiTConfig(hidden_size=32, num_layers=1, mm_layers=1, num_heads=2, text_dim=4, patch_dim=12,
                                    frequency_embedding_size=32, adaln_zero_init=False))
    flow, seen = FlowConfig(prediction="x0"), []

    def loss_fn(m, b, g):
        loss, metrics = training_loss(m, b, flow, g)
        seen.append({k: v.clone() for k, v in metrics["loss_parts"].items()})
        return loss, metrics

    t = Trainer(_cfg(steps=4, warmup=1, log_every=2, tensorboard_dir=str(tmp_path / "tb")), model, loss_fn, stream)
    losses = t.train()
    acc = EventAccumulator(str(tmp_path / "tb")).Reload()
    for name in ("task_nip", "task_csp", "task_nsp", "turn_1", "turn_2", "turn_3plus"):
        logged = {s.step: s.value for s in acc.Scalars(f"train/loss/{name}")}
        for step, window in ((2, seen[0:2]), (4, seen[2:4])):
            s, c = sum(w[name] for w in window).tolist()
            assert c > 0 and logged[step] == pytest.approx(s / c, rel=1e-6), (name, step)
    for step_parts, loss in zip(seen, losses):     # the task split covers every noisy element once
        tasks = sum(step_parts[k] for k in ("task_nip", "task_csp", "task_nsp"))
        turns = sum(step_parts[k] for k in ("turn_1", "turn_2", "turn_3plus"))
        assert torch.equal(tasks[1], turns[1]) and (tasks[0] / tasks[1]).item() == pytest.approx(loss, rel=1e-5)


# ----------------------------------------------------------------------------
# provenance
# ----------------------------------------------------------------------------

def test_run_info_json(dist1, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(steps=3, ckpt_dir=str(run / "checkpoints"))
    Trainer(cfg, build_tiny(), tiny_loss, TinyStream()).train(until=2)
    info = json.loads((run / "run_info.json").read_text())
    assert info["code"] == code_version() and "git_sha" in info["code"]
    v = info["versions"]
    assert v["torch"] == torch.__version__ and v["megatron-core"] == megatron.core.__version__
    assert v["numpy"] == np.__version__ and v["python"].count(".") == 2
    assert {"transformer-engine", "triton"} <= set(v)
    assert info["arithmetic"] == arithmetic_info()
    assert info["world_size"] == 1 and info["layout"] == {"tp": 1, "cp": 1, "dp": 1} and info["host"]
    assert (info["backend"], info["torch_device"], info["dtype"]) == ("gloo", "cpu", "fp32")   # what really ran
    assert info["train_config"]["steps"] == 3 and info["train_config"]["max_bad_steps"] == 8
    assert info["start_step"] == 0 and info["previous"] == []
    # a resume records its own start and keeps the first
    t = Trainer(cfg, build_tiny(), tiny_loss, TinyStream())
    t.train()
    info = json.loads((run / "run_info.json").read_text())
    assert info["start_step"] == 2 and [p["start_step"] for p in info["previous"]] == [0]
    # no run_dir and no ckpt_dir: nothing written, nothing fails
    assert Trainer(_cfg(steps=3), build_tiny(), tiny_loss, TinyStream()).write_run_info() is None
