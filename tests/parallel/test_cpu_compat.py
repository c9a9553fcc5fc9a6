"""Megatron-Core on CPU over gloo with cpu_compat active, checked against plain torch."""
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")

from vincie_mcore.parallel import cpu_compat, groups  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="cpu_compat is never active with CUDA")


@pytest.fixture(scope="module")
def dist1(megatron_cpu):
    return megatron_cpu


def _mlp_cfg():
    from megatron.core.transformer import TransformerConfig
    return TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, params_dtype=torch.float32)


def _build_mlp(cfg):
    """Column -> gelu -> Row, created on the 'GPU' path (use_cpu_initialization=False)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.module import MegatronModule

    class MLP(MegatronModule):
        def __init__(self, config):
            super().__init__(config)
            self.fc1 = ColumnParallelLinear(16, 32, config=config, init_method=config.init_method,
                                            bias=True, gather_output=False)
            self.fc2 = RowParallelLinear(32, 16, config=config, init_method=config.output_layer_init_method,
                                         bias=True, input_is_parallel=True, skip_bias_add=False)

        def forward(self, x):
            h, _ = self.fc1(x)
            y, _ = self.fc2(torch.nn.functional.gelu(h))
            return y

    return MLP(cfg)


def _plain_copy(m):
    ref = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    with torch.no_grad():
        ref[0].weight.copy_(m.fc1.weight); ref[0].bias.copy_(m.fc1.bias)
        ref[2].weight.copy_(m.fc2.weight); ref[2].bias.copy_(m.fc2.bias)
    return ref


def test_activate_is_idempotent_and_patches(dist1):
    assert cpu_compat.is_active() and cpu_compat.activate()
    assert torch.cuda.current_device() == torch.device("cpu")
    x = torch.zeros(2, device="cuda")
    assert x.device.type == "cpu" and x.cuda() is x
    assert x.type() == "torch.cuda.FloatTensor"
    assert torch.ones(1).to("cuda:0").device.type == "cpu"
    torch.cuda.synchronize()
    torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())


def test_suspended_leaves_the_mode_and_comes_back(dist1):
    # inside: device="cuda" is torch's own (it fails without a driver); after: mapped to CPU again
    with cpu_compat.suspended():
        with pytest.raises((AssertionError, RuntimeError)):
            torch.zeros(1, device="cuda")
    assert torch.zeros(1, device="cuda").device.type == "cpu"
    # another mode on top: suspending would pop that one, so it must not suspend at all
    class Other(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))
    with Other():
        with cpu_compat.suspended():
            assert torch.zeros(1, device="cuda").device.type == "cpu"
    assert torch.zeros(1, device="cuda").device.type == "cpu"


def test_rng_tracker_uses_cpu_generator(dist1):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    tracker = get_cuda_rng_tracker()
    torch.manual_seed(0)
    with tracker.fork():
        a = torch.rand(4)
    with tracker.fork():
        b = torch.rand(4)
    assert not torch.equal(a, b)                      # the forked stream advances
    assert torch.equal(torch.rand(4), torch.manual_seed(0) and torch.rand(4))  # default stream untouched by forks
    s = torch.cuda.get_rng_state()
    u = torch.rand(3)
    torch.cuda.set_rng_state(s)
    assert torch.equal(u, torch.rand(3))


def test_parallel_linears_match_plain_torch(dist1):
    m = _build_mlp(_mlp_cfg())
    assert all(p.device.type == "cpu" for p in m.parameters())
    ref = _plain_copy(m)
    x = torch.randn(5, 1, 16)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = m(x1), ref(x2)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    (y * y_ref.detach().cos()).sum().backward()
    (y_ref * y_ref.detach().cos()).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.fc1.weight.grad, ref[0].weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.fc2.bias.grad, ref[2].bias.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dist_opt", [False, True])
def test_ddp_optimizer_step_matches_torch_adamw_with_clipping(dist1, dist_opt):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg = _mlp_cfg()
    m = _build_mlp(cfg)
    ref = _plain_copy(m)
    ddp = DistributedDataParallel(cfg, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=dist_opt), m)
    # clip_grad far below the grad norm so the replaced clipping really scales
    ocfg = OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                           adam_eps=1e-8, clip_grad=1e-3, bf16=False, use_distributed_optimizer=dist_opt)
    opt = get_megatron_optimizer(ocfg, [ddp])
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    # (without an OptimizerParamScheduler Megatron decays biases too: wd_mult is applied by the scheduler)
    for _ in range(3):
        x = torch.randn(6, 1, 16)
        ddp.zero_grad_buffer(); opt.zero_grad()
        ddp(x).pow(2).sum().backward()
        ddp.finish_grad_sync()
        ok, gnorm, _ = opt.step()
        assert ok
        ref_opt.zero_grad()
        ref(x).pow(2).sum().backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e-3)
        ref_opt.step()
        assert abs(gnorm - ref_norm.item()) < 1e-5 * max(1.0, ref_norm.item())
    torch.testing.assert_close(m.fc1.weight, ref[0].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.fc2.bias, ref[2].bias, rtol=1e-5, atol=1e-6)


def test_dist_checkpointing_roundtrip(dist1, tmp_path):
    from megatron.core import dist_checkpointing
    m1, m2 = _build_mlp(_mlp_cfg()), _build_mlp(_mlp_cfg())
    assert not torch.equal(m1.fc1.weight, m2.fc1.weight)
    dist_checkpointing.save(m1.sharded_state_dict(), str(tmp_path))
    m2.load_state_dict(dist_checkpointing.load(m2.sharded_state_dict(), str(tmp_path)))
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), k


def test_torch_norm_accepts_sequence_parallel(dist1):
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    cfg = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, sequence_parallel=True,
                            tensor_model_parallel_size=2, normalization="RMSNorm")
    norm = WrappedTorchNorm(cfg, 8)
    assert isinstance(norm, torch.nn.RMSNorm) and norm.weight.sequence_parallel
    assert cfg.sequence_parallel   # the caller's config is untouched


def test_deactivate_restores_everything():
    import megatron.core.optimizer.optimizer as mopt
    was = cpu_compat.is_active()
    cpu_compat.activate()
    cpu_compat.deactivate()
    assert not cpu_compat.is_active()
    assert torch.zeros(1).type() == "torch.FloatTensor"
    assert torch.cuda.synchronize.__module__ == "torch.cuda"
    assert mopt.clip_grad_by_total_norm_fp32.__module__ == "megatron.core.optimizer.clip_grads"
    if was:
        cpu_compat.activate()


# ----------------------------------------------------------------------------
# Two processes over gloo: TP=2 matches one process, and its checkpoint reloads at TP=1
# ----------------------------------------------------------------------------

def _reference_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))


def _tp2_worker(rank, world, port, out_dir):
    import os
    warnings.filterwarnings("ignore")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from megatron.core import dist_checkpointing
    dims = groups.init_distributed(tp=2)
    assert (dims.tp, dims.dp, dims.tp_rank, dims.backend) == (2, 1, rank, "gloo")
    ref, m = _reference_mlp(), _build_mlp(_mlp_cfg_tp(2))
    half = slice(16 * rank, 16 * (rank + 1))          # this rank's rows of fc1 / columns of fc2
    with torch.no_grad():
        m.fc1.weight.copy_(ref[0].weight[half]); m.fc1.bias.copy_(ref[0].bias[half])
        m.fc2.weight.copy_(ref[2].weight[:, half]); m.fc2.bias.copy_(ref[2].bias)
    x = torch.randn(5, 1, 16, generator=torch.Generator().manual_seed(1))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = m(x1), ref(x2)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    errs = torch.tensor([(y - y_ref).abs().max(), (x1.grad - x2.grad).abs().max(),
                         (m.fc1.weight.grad - ref[0].weight.grad[half]).abs().max(),
                         (m.fc2.weight.grad - ref[2].weight.grad[:, half]).abs().max()])
    dist_checkpointing.save(m.sharded_state_dict(), out_dir + "/ckpt")
    torch.save(errs, f"{out_dir}/errs{rank}.pt")
    groups.destroy()


def _mlp_cfg_tp(tp):
    from megatron.core.transformer import TransformerConfig
    return TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, params_dtype=torch.float32,
                             tensor_model_parallel_size=tp)


def test_tp2_over_gloo_matches_one_process_and_reshards(dist1, tmp_path):
    import torch.multiprocessing as mp
    from megatron.core import dist_checkpointing
    (tmp_path / "ckpt").mkdir()
    mp.start_processes(_tp2_worker, args=(2, groups._free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for r in range(2):
        errs = torch.load(tmp_path / f"errs{r}.pt")
        assert errs.max() < 1e-5, (r, errs)
    # the TP=2 checkpoint loads into a TP=1 model as the full reference weights
    m = _build_mlp(_mlp_cfg())
    m.load_state_dict(dist_checkpointing.load(m.sharded_state_dict(), str(tmp_path / "ckpt")))
    ref = _reference_mlp()
    assert torch.equal(m.fc1.weight, ref[0].weight) and torch.equal(m.fc2.weight, ref[2].weight)
