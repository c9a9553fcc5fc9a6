"""The layout is given to a model (``parallel/dims.py``), never read from Megatron's globals.

Inside one initialised CP=2 group (2 gloo ranks), a tiny MM-DiT given ``ParallelDims.single()``
computes the whole sequence and the one-device loss, while one given the group's dims computes
its shard and the global loss mean; both against a one-process reference. ``parallelize``
refuses what it cannot apply in one line.
"""
import os
import warnings

import pytest
import torch

from vincie_mcore.packed.builder import BatchBuilder
from vincie_mcore.packed.maskspec import KIND_CLEAN, KIND_NOISY

TOL = 1e-5


def _cfg():
    from vincie_mcore.model import MMDiTConfig
    return MMDiTConfig(hidden_size=32, num_layers=2, mm_layers=1, num_heads=2, text_dim=8, patch_dim=12,
                       frequency_embedding_size=32, attention_backend="torch", adaln_zero_init=False)


def _inputs():
    """A block-causal session (image, then twice: text, clean image and its noisy twin) -> (batch, x_t, target)."""
    b = BatchBuilder("block_causal")
    b.session()
    b.image(0, KIND_CLEAN, (2, 3), rope_turn=0)
    for turn, hw in ((1, (2, 3)), (2, (3, 2))):
        t = b.text(2 * turn - 1, turn - 1, length=4)
        b.image(2 * turn, KIND_CLEAN, hw, rope_turn=turn, text_block=t)
        b.image(2 * turn, KIND_NOISY, hw, rope_turn=turn, text_block=t)
    g = torch.Generator().manual_seed(0)
    batch = b.build(g, text_dim=8, patch_dim=12, random_t=True)
    x_t = batch.img_x0 + torch.randn(batch.img_x0.shape, generator=g)
    return batch, x_t, torch.randn(batch.img_x0.shape, generator=g)


def _model(dims):
    from vincie_mcore.model import build_model
    from vincie_mcore.parallel.dims import parallelize
    torch.manual_seed(0)
    return parallelize(build_model(_cfg(), device="cpu"), dims)


def _run(model):
    from vincie_mcore.diffusion.flow import prediction_loss
    batch, x_t, target = _inputs()
    with torch.no_grad():
        out = model(x_t, batch)
        loss, _ = prediction_loss(model, x_t, target, batch)
    rows = model.cp_shard(batch).img_rows
    return out, (rows.start, rows.stop), float(loss)       # a slice does not pass torch.load's safe loader


def _cp2_worker(rank, world, port, tmp):
    warnings.filterwarnings("ignore")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vincie_mcore.model import build_model
    from vincie_mcore.parallel import groups
    from vincie_mcore.parallel.dims import ParallelDims
    from vincie_mcore.train.trainer import TrainConfig, Trainer
    dims = groups.init_distributed(tp=1, cp=2)
    res = {"single": _run(_model(ParallelDims.single())), "cp": _run(_model(ParallelDims.current()))}
    try:                                  # the trainer will not run a model that never got the CP layout
        Trainer(TrainConfig(steps=1, dtype="fp32", ckpt_dir=None), build_model(_cfg(), device="cpu"), None, None)
        res["trainer"] = "accepted"
    except ValueError as e:
        res["trainer"] = str(e)
    res["cp_rank"] = dims.cp_rank
    # FP8 scales agree across TP x CP x DP (None would mean no reduction; get_world_size(None) is the world's)
    res["amax_ranks"] = None if dims.amax_group is None else torch.distributed.get_world_size(dims.amax_group)
    torch.save(res, f"{tmp}/rank{rank}.pt")
    groups.destroy()


def test_the_model_computes_under_the_dims_it_was_given(megatron_cpu, tmp_path):
    import torch.multiprocessing as mp

    from vincie_mcore.parallel import groups
    from vincie_mcore.parallel.dims import ParallelDims
    ref_out, ref_rows, ref_loss = _run(_model(ParallelDims.single()))
    assert ref_rows == (0, ref_out.shape[0])

    mp.start_processes(_cp2_worker, args=(2, groups._free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = sorted((torch.load(tmp_path / f"rank{r}.pt") for r in range(2)), key=lambda r: r["cp_rank"])
    for r in ranks:
        out, rows, loss = r["single"]                    # inside the CP group, but given one device's dims
        assert rows == ref_rows and out.shape == ref_out.shape
        torch.testing.assert_close(out, ref_out, rtol=TOL, atol=TOL)
        assert loss == pytest.approx(ref_loss, rel=TOL)
        out, rows, loss = r["cp"]                        # the group's dims: this rank's shard only
        assert 0 < out.shape[0] < ref_out.shape[0] and out.shape[0] == rows[1] - rows[0]
        torch.testing.assert_close(out, ref_out[rows[0]:rows[1]], rtol=TOL, atol=TOL)
        assert loss == pytest.approx(ref_loss, rel=TOL)  # the global mean over both shards
        assert r["trainer"].startswith("Trainer: MMDiT was never given its layout (dp=1, cp=2)"), r["trainer"]
        assert r["amax_ranks"] == 2
    (_, a, _), (_, b, _) = ranks[0]["cp"], ranks[1]["cp"]
    assert (a[0], a[1], b[1]) == (0, b[0], ref_out.shape[0])     # the shards tile the image stream


class _NoOffsetCore(torch.nn.Module):
    """A core attention that only attends a whole sequence: it cannot run on a CP shard."""

    def forward(self, q, k, v, spec):
        return q


def test_parallelize_refuses_what_it_cannot_apply_in_one_line(megatron_cpu):
    from vincie_mcore.parallel.dims import ParallelDims, parallelize
    cp2 = ParallelDims(tp=1, cp=2, dp=1, world_size=2, rank=0)          # sizes only: every check fails first
    model = _model(ParallelDims.single())
    with pytest.raises(RuntimeError, match=r"^parallelize: this MMDiT was already parallelized as ParallelDims\("):
        parallelize(model, cp2)
    from vincie_mcore.model import build_model
    bare = build_model(_cfg(), device="cpu")
    bare.layers[1].attention.core_attention = _NoOffsetCore()
    with pytest.raises(ValueError, match=r"^parallelize: cp=2 needs cores that take q_start/k_start \(a shard of "
                                         r"the joint sequence\); _NoOffsetCore does not$"):
        parallelize(bare, cp2)
    assert bare.parallel_dims is None and not any(           # nothing was half-applied
        type(m).__name__ == "ContextParallelAttention" for m in bare.modules())
    with pytest.raises(ValueError, match=r"^parallelize: MMDiT was built for tp=1, the dims say tp=2$"):
        parallelize(bare, ParallelDims(tp=2, world_size=2))
    with pytest.raises(TypeError, match=r"^parallelize: Linear has no cp_shard/parallel_dims; it cannot take"):
        parallelize(torch.nn.Linear(2, 2), cp2)
    with pytest.raises(ValueError, match=r"^ParallelDims: world_size 3 != tp\*cp\*dp = 1\*2\*1$"):
        ParallelDims(cp=2, world_size=3)


def test_the_trainer_without_process_groups_says_so_in_one_line():
    # a fresh process: no Megatron groups (this one may hold a fixture's)
    import subprocess
    import sys
    code = ("import warnings; warnings.filterwarnings('ignore')\n"
            "from vincie_mcore.train.trainer import TrainConfig, Trainer\n"
            "try:\n"
            "    Trainer(TrainConfig(steps=1, dtype='fp32', ckpt_dir=None), object(), None, None)\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert "ERR ParallelDims.current: Megatron's parallel groups are not initialised; call " \
           "parallel.groups.init_distributed() first" in out, out
