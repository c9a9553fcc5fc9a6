"""vincie_mcore/parallel/plan.py: its memory and FLOP model against the real model on CPU, and the CLI
(tools/vincie_tools/plan_parallel.py).

The references are independent of the planner's arithmetic: parameter counts of the real model
(meta device, TP shards through a stand-in group of size tp), the bytes Megatron's DDP + optimizer
really allocate after a step (tensor storages), the tensors autograd really saves in a forward
(saved_tensors_hooks), and ``MMDiT.flops_per_step`` on a real packed batch.
"""
import json
import sys
from itertools import repeat
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "model"))
from model_batches import make_batch  # noqa: E402

from vincie_mcore.model import MMDiTConfig, build_model  # noqa: E402
from vincie_mcore.parallel import plan as pp  # noqa: E402
from vincie_tools import plan_parallel as cli  # noqa: E402

TINY = dict(hidden_size=128, num_heads=4, ffn_hidden_size=384, text_dim=64, patch_dim=64, max_turns=8,
            rope_axes_dim=[8, 12, 12], attention_backend="torch", adaln_zero_init=False)
SESSION = [("clean", 8, 8, 0), ("text", 32, 0), ("clean", 8, 8, 1), ("noisy", 8, 8, 1), ("text", 32, 1)]
FULL_SESSION = [("clean", 6, 8, 0), ("text", 24, 0), ("clean", 6, 8, 1), ("text", 16, 1), ("noisy", 6, 8, 2)]
CPU_PROFILE = pp.ActivationProfile(core="torch", fused_swiglu=False, fused_qk_norm=False)   # CPU: no bias-swiglu fusion


class _StandInTP:
    """A process group of size tp for meta-device builds (Megatron only asks size() and rank())."""

    def __init__(self, n):
        self.n = n

    def size(self):
        return self.n

    def rank(self):
        return 0


@pytest.fixture(scope="module")
def megatron():
    """One-process Megatron groups (gloo; cpu_compat on a machine without CUDA)."""
    from vincie_mcore.parallel import groups
    dims = groups.init_distributed(tp=1, cp=1)
    yield dims
    groups.destroy()


# ----------------------------------------------------------------------------
# Parameters and static memory
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["tiny", "3b", "7b"])
def test_param_counts_match_the_model(megatron, preset):
    cfg = pp.load_preset(preset)
    assert pp.param_counts(cfg)["total"] == build_model(cfg, meta=True).num_parameters()
    for tp in (2, 4):
        m = build_model(cfg, meta=True, tensor_model_parallel_size=tp, tp_group=_StandInTP(tp))
        assert pp.param_counts(cfg, tp)["local"] == m.num_parameters(), tp


def test_param_counts_per_layer_adaln(megatron):
    cfg = MMDiTConfig(**dict(TINY, adaln="per_layer"), num_layers=3, mm_layers=1)
    assert pp.param_counts(cfg)["total"] == build_model(cfg, meta=True).num_parameters()


def _storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("distributed_optimizer", [False, True])
def test_static_bytes_match_megatron_after_a_step(megatron, distributed_optimizer):
    """Weights + fp32 main grads + Adam state that Megatron DDP and its optimizer hold after one step."""
    from vincie_mcore.train.trainer import TrainConfig, Trainer
    cfg = MMDiTConfig(**TINY, num_layers=2, mm_layers=1)
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu")
    batch = make_batch([SESSION], "block_causal", 64, 64)[0]

    def loss_fn(m, b, gen):
        return m(b.img_x0, b).pow(2).mean(), {}

    tcfg = TrainConfig(steps=1, lr=1e-3, dtype="fp32", progress=False, log_every=1,
                       use_distributed_optimizer=distributed_optimizer)
    tr = Trainer(tcfg, model, loss_fn, repeat(batch))
    tr.train()
    params = list(tr.model.parameters())
    held = [p.data for p in params] + [p.main_grad for p in params]
    opt = tr.optimizer
    inner = getattr(opt, "optimizer", opt)
    for st in inner.state.values():
        held += [v for v in st.values() if isinstance(v, torch.Tensor) and v.numel() > 1]
    for g in inner.param_groups:                   # fp32 master copies (distributed optimizer shards)
        held += [p for p in g["params"]]
    measured = _storage_bytes(held)
    expect = sum(pp.static_bytes(pp.param_counts(cfg)["local"], "fp32", 1, distributed_optimizer).values())
    assert abs(measured - expect) / expect < 0.02, (measured, expect)


def test_static_bytes_rules():
    bf16 = pp.static_bytes(1000, "bf16", shard=8, distributed_optimizer=True)
    assert bf16 == dict(weights=2000, grads=4000, optimizer=1500)
    assert pp.static_bytes(1000, "bf16", shard=8, distributed_optimizer=False)["optimizer"] == 12000
    with pytest.raises(pp.PlanError, match=r"^--dtype:"):
        pp.static_bytes(10, "fp16")


# ----------------------------------------------------------------------------
# Activations: what autograd keeps, per block and in all
# ----------------------------------------------------------------------------

def _saved_bytes(cfg, batch) -> int:
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch.img_x0, batch)
    return sum(seen.values())


@pytest.mark.parametrize("mask_type,sessions", [("block_causal", [SESSION]), ("full", [FULL_SESSION] * 2)])
def test_activation_model_matches_saved_tensors(megatron, mask_type, sessions):
    batch = make_batch(sessions, mask_type, 64, 64)[0]
    S = batch.spec.seq_len
    two = _saved_bytes(MMDiTConfig(**TINY, num_layers=2, mm_layers=1), batch)
    four = _saved_bytes(MMDiTConfig(**TINY, num_layers=4, mm_layers=2), batch)
    cfg4 = MMDiTConfig(**TINY, num_layers=4, mm_layers=2)
    per_layer = (four - two) / 2                                   # one dual + one shared block, averaged
    model_layer = pp.layer_activation_bytes(cfg4, S, S, 1, 4, CPU_PROFILE, len(sessions), mask_type)
    assert abs(per_layer - model_layer) / per_layer < 0.03, (per_layer, model_layer)
    model_total = pp.activation_bytes(cfg4, S, 1, 1, False, 4, CPU_PROFILE, batch.s_txt / S, len(sessions), mask_type)
    assert abs(four - model_total) / four < 0.05, (four, model_total)


def test_activation_model_scales_as_expected():
    cfg = pp.load_preset("3b")
    base = pp.activation_bytes(cfg, 11584)
    assert pp.activation_bytes(cfg, 11584, tp=2) < 0.55 * base            # sequence parallel splits it all
    assert pp.activation_bytes(cfg, 11584, recompute=True) < 0.1 * base
    assert pp.activation_bytes(cfg, 11584, cp=2) < 0.6 * base             # K/V stay whole under CP
    torch_core = pp.activation_bytes(cfg, 11584, prof=pp.ActivationProfile(core="torch"))
    assert torch_core > base                                             # the dense per-session mask


# ----------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("mask_type,sessions", [("block_causal", [SESSION]), ("full", [FULL_SESSION] * 2)])
def test_step_flops_match_the_model(megatron, mask_type, sessions):
    cfg = MMDiTConfig(**TINY, num_layers=2, mm_layers=1)
    model = build_model(cfg, meta=True)
    batch = make_batch(sessions, mask_type, 64, 64)[0]
    pairs = float(batch.spec.dense().sum())                        # the dense oracle counts the pairs
    assert pp.step_flops(cfg, batch.s_txt, batch.s_img, pairs) == pytest.approx(model.flops_per_step(batch), rel=1e-12)


# ----------------------------------------------------------------------------
# Layouts and the command line
# ----------------------------------------------------------------------------

def test_plan_layouts_are_valid_and_ranked():
    cfg = pp.load_preset("3b")
    rows = pp.plan(cfg, 16, pp.Workload(tokens=11584), pp.Hardware(gpu_mem_gb=79))
    assert rows and all(r["tp"] * r["cp"] * r["dp"] == 16 for r in rows)
    assert all(r["tp"] in (1, 2, 4) for r in rows)                 # tp | 20 heads and <= 8
    assert all(r["cp"] == 1 or 11584 / r["cp"] >= 1024 for r in rows)
    fit = [r for r in rows if r["fits"]]
    assert fit and fit == rows[:len(fit)]
    assert [r["tokens_per_s"] for r in fit] == sorted((r["tokens_per_s"] for r in fit), reverse=True)
    assert all(r["mem_gib"] <= 79 for r in fit) and all(r["mem_gib"] > 79 for r in rows[len(fit):])


def test_cli_json(capsys):
    assert cli.main(["--preset", "7b", "--tokens", "11584", "--gpu-mem-gb", "79", "--gpus", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["preset"] == "7b" and out["feasible"]
    best = out["feasible"][0]
    assert best["fits"] and best["tp"] * best["cp"] * best["dp"] == 16


def test_cli_table_and_recompute(capsys):
    assert cli.main(["--preset", "3b", "--tokens", "45341", "--gpu-mem-gb", "79", "--gpus", "8", "--recompute"]) == 0
    out = capsys.readouterr().out
    assert "tp  cp" in out.splitlines()[1] and "yes" in out


@pytest.mark.parametrize("argv,rc,pattern", [
    (["--gpus", "0"], 2, r"^plan_parallel: --gpus: must be >= 1, got 0$"),
    (["--tokens", "0"], 2, r"^plan_parallel: --tokens: must be >= 1, got 0$"),
    (["--gpu-mem-gb", "-1"], 2, r"^plan_parallel: --gpu-mem-gb: must be > 0"),
    (["--density", "1.5"], 2, r"^plan_parallel: --density:"),
    (["--sessions", "0"], 2, r"^plan_parallel: --sessions: must be >= 1, got 0$"),
    (["--gpu-mem-gb", "4"], 1, r"^plan_parallel: no layout fits in 4 GB"),
])
def test_cli_bad_inputs_are_one_line(capsys, argv, rc, pattern):
    import re
    base = {"--preset": "3b", "--tokens": "11584", "--gpu-mem-gb": "79", "--gpus": "8"}
    args = dict(base)
    args.update(dict(zip(argv[::2], argv[1::2])))
    flat = [x for kv in args.items() for x in kv]
    got = cli.main(flat)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == rc and len(err) == 1 and re.match(pattern, err[0]), err
