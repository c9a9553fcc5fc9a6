"""Megatron-Core without CUDA: the few patches that let it run on CPU over gloo.

Megatron-Core has no CPU mode: it creates tensors with ``device="cuda"`` or
``torch.cuda.current_device()``, keeps dropout RNG in CUDA generators, asserts
``param.type() == "torch.cuda.FloatTensor"`` in the optimizer, and calls
``torch.cuda.synchronize`` / streams around communication. Each patch below
answers exactly one of those, and says which.

``activate()`` is the only entry point. It is idempotent and does nothing when
CUDA is available: on a GPU the real code paths always run. ``deactivate()``
undoes everything (tests use it to leave the process as they found it).

Every patch is guarded by what exists, so the module works with
megatron-core 0.16 and 0.19 alike. Measured cost on CPU: ~16 % (the function
mode sees every torch call).
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import logging

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_ACTIVE = False
_MODE: "_CudaToCpuMode | None" = None
_UNDO: list[tuple[object, str, object]] = []   # (owner, attribute, original) to restore on deactivate()


def is_active() -> bool:
    """True when the CPU patches are in place."""
    return _ACTIVE


# ----------------------------------------------------------------------------
# The function mode: device="cuda" / .cuda() / Tensor.type() names
# ----------------------------------------------------------------------------

def _is_cuda_device(d) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        return d.startswith("cuda")
    return False


def _cpu_type_name(name: str) -> str:
    # 'torch.cuda.FloatTensor' -> 'torch.FloatTensor' (a cast requested by name)
    return name.replace("torch.cuda.", "torch.", 1) if isinstance(name, str) else name


class _CudaToCpuMode(TorchFunctionMode):
    """Sends every CUDA request to the CPU and lies about ``Tensor.type()``.

    * ``device="cuda"`` / ``device=torch.device("cuda", i)`` / ``.to("cuda")``
      on any torch function: Megatron allocates buffers, norms and flags that way.
    * ``Tensor.cuda()``: identity (the tensor is already where it can live).
    * ``pin_memory=True``: needs a CUDA driver; pinned memory means nothing here.
    * ``Tensor.type()`` with no argument answers ``torch.cuda.<X>Tensor``:
      the Megatron optimizer and grad clipping assert on those names.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type:
            if len(args) == 1 and not kwargs:
                return args[0].type().replace("torch.", "torch.cuda.", 1)
            if len(args) > 1:
                args = (args[0], _cpu_type_name(args[1])) + tuple(args[2:])
            if "dtype" in kwargs:
                kwargs["dtype"] = _cpu_type_name(kwargs["dtype"])
            kwargs.pop("non_blocking", None)
            return func(*args, **kwargs)
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------
# torch.cuda stand-ins
# ----------------------------------------------------------------------------

class _NullStream:
    """A stream that is always done: CPU ops run synchronously in order."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or _NullEvent()

    def synchronize(self):
        pass

    def query(self):
        return True


class _NullEvent:
    """An event that is always complete; timings read zero."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _cpu_manual_seed(seed: int):
    # CUDA dropout/init RNG lives in the CPU generator (one generator per process here).
    torch.default_generator.manual_seed(int(seed))


def _get_cpu_rng_state(device="cuda", clone=False, graph_safe=False):
    # replaces tensor_parallel.random._get_cuda_rng_state: its CPU-build path would
    # index torch.cuda.default_generators, which is empty without a driver
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, device=-1, graph_safe=False):
    # replaces tensor_parallel.random._set_cuda_rng_state: upstream defers the
    # set through torch.cuda._lazy_call, which never runs without CUDA (a silent no-op)
    torch.set_rng_state(new_state)


# ----------------------------------------------------------------------------
# Megatron stand-ins
# ----------------------------------------------------------------------------

def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Same contract as megatron.core.optimizer.clip_grads.clip_grad_by_total_norm_fp32.

    Upstream scales through multi_tensor_applier with a CUDA overflow buffer and
    asserts CUDA type names; here the grads are scaled in place with torch ops.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for p in parameters:
        g = getattr(p, "decoupled_grad", None) if use_decoupled_grad else p.grad
        if g is not None:
            if hasattr(g, "to_local"):   # DTensor
                g = g.to_local()
            grads.append(g.detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


def _wrap_torch_norm_new(orig_new):
    """WrappedTorchNorm asserts ``not config.sequence_parallel``.

    Under SP a norm sees a sequence shard, and is still correct; its weights
    just need their grads all-reduced across TP, which Megatron does for params
    tagged ``sequence_parallel = True`` (finalize_model_grads).
    """

    def __new__(cls, config, hidden_size, *args, **kwargs):
        if not getattr(config, "sequence_parallel", False):
            return orig_new(cls, config, hidden_size, *args, **kwargs)
        cfg = copy.copy(config)          # shallow: avoids re-running __post_init__
        cfg.sequence_parallel = False
        norm = orig_new(cls, cfg, hidden_size, *args, **kwargs)
        for p in norm.parameters():
            p.sequence_parallel = True
        return norm

    return __new__


class _SameGeneratorFilter(logging.Filter):
    """The RNG tracker warns when the CPU RNG moves inside a "GPU" fork; here the
    forked state IS the CPU generator, so the warning would fire on every fork."""

    def filter(self, record):
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


_RNG_LOGGER = logging.getLogger("megatron.core.tensor_parallel.random")
_RNG_FILTER = _SameGeneratorFilter()


# ----------------------------------------------------------------------------
# activate / deactivate
# ----------------------------------------------------------------------------

def _patch(owner, name: str, value) -> None:
    if owner is None or not hasattr(owner, name):
        return   # this Megatron/torch version has no such attribute: nothing to patch
    _UNDO.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def activate() -> bool:
    """Patch torch.cuda and Megatron-Core for CPU. Returns True if (now) active.

    A no-op returning False when CUDA is available.
    """
    global _ACTIVE, _MODE
    if _ACTIVE:
        return True
    if torch.cuda.is_available():
        return False

    cuda = torch.cuda
    # Megatron allocates on torch.cuda.current_device(); the CPU device is the answer.
    _patch(cuda, "current_device", lambda: _CPU)
    _patch(cuda, "set_device", lambda device: None)
    # Synchronization and streams: CPU kernels run in order, nothing to wait for.
    _patch(cuda, "synchronize", lambda device=None: None)
    _patch(cuda, "current_stream", lambda device=None: _NullStream())
    _patch(cuda, "default_stream", lambda device=None: _NullStream())
    _patch(cuda, "Stream", _NullStream)
    _patch(cuda, "Event", _NullEvent)
    _patch(cuda, "stream", lambda stream=None: contextlib.nullcontext())
    _patch(cuda, "empty_cache", lambda: None)
    # The CUDA RNG (dropout, TP weight init under the tracker) is the CPU generator.
    _patch(cuda, "manual_seed", _cpu_manual_seed)
    _patch(cuda, "manual_seed_all", _cpu_manual_seed)
    _patch(cuda, "get_rng_state", lambda device="cuda": torch.get_rng_state())
    _patch(cuda, "set_rng_state", lambda new_state, device="cuda": torch.set_rng_state(new_state))
    rnd = _module("megatron.core.tensor_parallel.random")
    _patch(rnd, "_get_cuda_rng_state", _get_cpu_rng_state)
    _patch(rnd, "_set_cuda_rng_state", _set_cpu_rng_state)
    _RNG_LOGGER.addFilter(_RNG_FILTER)

    # Grad clipping: the upstream version is imported by name into optimizer.py.
    for mod in ("megatron.core.optimizer.clip_grads", "megatron.core.optimizer.optimizer"):
        _patch(_module(mod), "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_fp32)

    # torch LayerNorm/RMSNorm under sequence parallelism.
    tn = _module("megatron.core.transformer.torch_norm")
    if tn is not None and hasattr(tn, "WrappedTorchNorm"):
        cls = tn.WrappedTorchNorm
        orig_new = cls.__dict__["__new__"]
        orig_fn = orig_new.__func__ if isinstance(orig_new, staticmethod) else orig_new
        _UNDO.append((cls, "__new__", orig_new))
        cls.__new__ = _wrap_torch_norm_new(orig_fn)

    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _ACTIVE = True
    return True


@contextlib.contextmanager
def suspended():
    """Leave the function mode inside the block, for code that never asks for CUDA by name.

    A Python function mode costs ~20 us on every torch call it sees (docs/measured.md); the
    model's forward and backward make thousands of calls a step and allocate only through
    ``torch.cuda.current_device()`` (patched, not the mode). A no-op when the patches are
    off or another mode sits above ours (popping would remove that one instead).
    """
    stack = torch._C._len_torch_function_stack()
    if not _ACTIVE or _MODE is None or stack == 0 or torch._C._get_function_stack_at(stack - 1) is not _MODE:
        yield
        return
    _MODE.__exit__(None, None, None)
    try:
        yield
    finally:
        _MODE.__enter__()


def deactivate() -> None:
    """Undo activate(): restore every patched attribute and leave the function mode."""
    global _ACTIVE, _MODE
    if not _ACTIVE:
        return
    if _MODE is not None:
        _MODE.__exit__(None, None, None)
        _MODE = None
    _RNG_LOGGER.removeFilter(_RNG_FILTER)
    while _UNDO:
        owner, name, orig = _UNDO.pop()
        setattr(owner, name, orig)
    _ACTIVE = False
