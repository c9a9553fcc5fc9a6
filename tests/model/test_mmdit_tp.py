"""TP = 2 (with and without sequence parallelism) over gloo matches one process.

The TP = 1 model saves a dist_checkpoint; two spawned ranks load it resharded, run the same
batch, and their output and gradients (after the reductions finalize_model_grads applies:
sum over TP of sequence-parallel-tagged and q/k_layernorm grads) must equal TP = 1.
"""
import os
import warnings

import torch

from model_batches import BLOCK_CAUSAL_SESSION, make_batch, tiny_cfg
from vincie_mcore.model import build_model
from vincie_mcore.parallel import groups

# text 7 + 5 and image 26 + 14 tokens: both streams split evenly over 2 ranks
SESSIONS = [BLOCK_CAUSAL_SESSION, [("clean", 2, 3, 0), ("text", 5, 0), ("clean", 2, 2, 1), ("noisy", 2, 2, 1)]]


def _batch():
    return make_batch(SESSIONS, "block_causal", 64, 192, seed=7)[0]


def _tp2_worker(rank, world, port, tmp):
    warnings.filterwarnings("ignore")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state
    groups.init_distributed(tp=2)
    tp_group = parallel_state.get_tensor_model_parallel_group()
    batch, res = _batch(), {}
    for sp in (False, True):
        torch.manual_seed(100 + rank)
        m = build_model(tiny_cfg(), tensor_model_parallel_size=2, sequence_parallel=sp, device="cpu")
        m.load_state_dict(dist_checkpointing.load(m.sharded_state_dict(), tmp + "/ckpt"))
        out = m(batch.img_x0, batch)
        out.pow(2).sum().backward()
        grads = {}
        for n, p in m.named_parameters():
            g = p.grad.clone()
            if (sp and getattr(p, "sequence_parallel", False)) or "q_layernorm" in n or "k_layernorm" in n:
                dist.all_reduce(g, group=tp_group)
            grads[n] = (g, getattr(p, "partition_dim", -1) if getattr(p, "tensor_model_parallel", False) else -1)
        res[sp] = dict(out=out.detach(), grads=grads)
    torch.save(res, f"{tmp}/rank{rank}.pt")
    groups.destroy()


def _unshard(name, locals_, dim):
    if dim < 0:
        return locals_[0]
    if "linear_fc1" in name:   # SwiGLU: each rank holds [gate_r; up_r]
        halves = [t.chunk(2, dim=0) for t in locals_]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(locals_, dim=dim)


def test_tp2_and_sequence_parallel_match_one_process(megatron_cpu, tmp_path):
    import torch.multiprocessing as mp
    from megatron.core import dist_checkpointing
    torch.manual_seed(0)
    ref = build_model(tiny_cfg(), device="cpu")
    (tmp_path / "ckpt").mkdir()
    dist_checkpointing.save(ref.sharded_state_dict(), str(tmp_path / "ckpt"))
    batch = _batch()
    out_ref = ref(batch.img_x0, batch)
    out_ref.pow(2).sum().backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}

    mp.start_processes(_tp2_worker, args=(2, groups._free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for sp in (False, True):
        for r in range(2):
            torch.testing.assert_close(ranks[r][sp]["out"], out_ref.detach(), rtol=1e-5, atol=1e-5)
        for n, g_ref in ref_grads.items():
            dim = ranks[0][sp]["grads"][n][1]
            g = _unshard(n, [ranks[r][sp]["grads"][n][0] for r in range(2)], dim)
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5, msg=f"sp={sp} grad of {n}")
            if dim < 0:   # replicated: both ranks agree
                torch.testing.assert_close(ranks[1][sp]["grads"][n][0], ranks[0][sp]["grads"][n][0],
                                           rtol=1e-5, atol=1e-6, msg=f"sp={sp} ranks differ on {n}")
