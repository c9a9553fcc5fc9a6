"""The only place that creates process groups.

``init_distributed(tp, cp, dp)`` starts torch.distributed (from torchrun's
environment, or as a lone process on a free localhost port), lets Megatron's
``parallel_state`` build the TP/CP/DP groups (order tp-cp-dp, pipeline = 1),
and seeds Megatron's RNG tracker. On a machine without CUDA it turns on
``cpu_compat`` first and uses gloo. It returns the layout as a ``ParallelDims``
(``dims.py``: sizes, ranks and groups), which ``dims.parallelize`` gives to a model.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from . import cpu_compat
from .dims import ParallelDims


_DIMS: ParallelDims | None = None
_OWNS_PG = False   # True when init_distributed started torch.distributed (so destroy() ends it)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_size(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"init_distributed: {name} must be a positive int, got {value!r}")
    return value


def init_distributed(tp: int = 1, cp: int = 1, dp: int | None = None, backend: str | None = None,
                     seed: int = 1234) -> ParallelDims:
    """Start torch.distributed and Megatron's model-parallel groups; return the layout.

    tp, cp: tensor- and context-parallel sizes. dp: data-parallel size; None means
    ``world_size // (tp * cp)``. backend: None picks nccl with CUDA, gloo without.
    Reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (torchrun);
    without them starts a single process on a free localhost port.
    Calling it again with the same layout returns the existing one.
    """
    global _DIMS, _OWNS_PG
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    tp, cp = _check_size("tp", tp), _check_size("cp", cp)
    if dp is not None:
        _check_size("dp", dp)
    cuda = torch.cuda.is_available()
    if not cuda:
        cpu_compat.activate()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"init_distributed: backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl" and not cuda:
        raise ValueError("init_distributed: backend 'nccl' needs CUDA, and none is available")

    if _DIMS is not None:
        if (_DIMS.tp, _DIMS.cp) != (tp, cp) or (dp is not None and dp != _DIMS.dp):
            raise RuntimeError(f"init_distributed: already initialised as tp={_DIMS.tp} cp={_DIMS.cp} "
                               f"dp={_DIMS.dp}; call destroy() first")
        return _DIMS

    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            init_method = "env://"
        else:
            rank, world = 0, 1
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world)
        _OWNS_PG = True
    world = dist.get_world_size()

    if dp is None:
        if world % (tp * cp):
            raise ValueError(f"init_distributed: world size {world} is not divisible by tp*cp = {tp * cp}")
        dp = world // (tp * cp)
    if tp * cp * dp != world:
        raise ValueError(f"init_distributed: world size {world} != tp*cp*dp = {tp}*{cp}*{dp} = {tp * cp * dp}")

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)
    # TP ranks get different init/dropout streams, DP ranks share them (Megatron's convention);
    # on CPU cpu_compat routes the "CUDA" tracker to the CPU generator.
    model_parallel_cuda_manual_seed(seed)
    _DIMS = ParallelDims.current()
    return _DIMS


def get_dims() -> ParallelDims:
    """The layout set by init_distributed()."""
    if _DIMS is None:
        raise RuntimeError("parallel groups are not initialised: call init_distributed() first")
    return _DIMS


def is_initialized() -> bool:
    return _DIMS is not None


def destroy() -> None:
    """Tear down Megatron's groups and, if we started it, torch.distributed."""
    global _DIMS, _OWNS_PG
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if _OWNS_PG and dist.is_initialized():
        dist.destroy_process_group()
    _DIMS, _OWNS_PG = None, False
