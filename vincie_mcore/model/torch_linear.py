"""Plain-PyTorch linears with Megatron's linear interface (``transformer_impl: torch``, one GPU).

Megatron's MLP and our attention build their linears through a spec slot with Megatron's keyword
arguments and expect ``forward(x) -> (output, bias_or_None)``. ``TorchLinear`` honours that
interface over one ``weight [out, in]`` and ``bias [out]`` (the names and shapes Megatron's
``ColumnParallelLinear`` / ``RowParallelLinear`` use at TP = 1, so checkpoints load across the two),
with no tensor-parallel communication at all.

Why a third implementation: it is the one an FP8 library that works on ``nn.Linear``-shaped
GEMMs can take over. ``model/fp8.py`` (``backend: torchao``) gives each ``TorchLinear`` a
torchao ``Float8Linear`` sharing its parameters; that is the FP8 path carried where Transformer
Engine is not installed (its wheel is too large for a GPU check; clusters keep TE). TP > 1 and
sequence parallelism are refused: use ``local`` or ``transformer_engine`` there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class TorchLinear(torch.nn.Module):
    """y = x W^T + b; ``skip_bias_add`` returns b apart (Megatron's contract)."""

    def __init__(self, input_size: int, output_size: int, *, config, init_method, bias: bool = True,
                 skip_bias_add: bool = False, tp_group=None, **_megatron_kwargs):
        super().__init__()
        tp = tp_group.size() if tp_group is not None else 1
        if tp > 1 or getattr(config, "tensor_model_parallel_size", 1) > 1:
            raise ValueError(f"model.transformer_impl: 'torch' linears are single-device (tensor parallel size "
                             f"{max(tp, config.tensor_model_parallel_size)}); use 'local' or 'transformer_engine'")
        if getattr(config, "sequence_parallel", False):
            raise ValueError("model.transformer_impl: 'torch' linears do not support sequence parallelism; "
                             "use 'local' or 'transformer_engine'")
        self.in_features, self.out_features = input_size, output_size
        self.skip_bias_add = skip_bias_add
        dtype = config.params_dtype
        self.weight = torch.nn.Parameter(torch.empty(output_size, input_size, dtype=dtype))
        if getattr(config, "perform_initialization", True):
            init_method(self.weight)
        self.bias = torch.nn.Parameter(torch.zeros(output_size, dtype=dtype)) if bias else None
        self._fp8 = None        # a torchao Float8Linear sharing weight/bias (model/fp8.py); not a child module

    def set_fp8(self, fp8_linear) -> None:
        """Run the GEMM through ``fp8_linear`` (built over this module's own parameters). Kept off the
        module tree so the state dict and ``parameters()`` list each tensor once."""
        object.__setattr__(self, "_fp8", fp8_linear)

    # Megatron's linears carry an (empty) ``_extra_state`` entry; carrying one too keeps state dicts
    # interchangeable with the local spec in both directions.
    def get_extra_state(self):
        return None

    def set_extra_state(self, state) -> None:
        pass

    def forward(self, x: torch.Tensor):
        bias = self.bias
        if self._fp8 is not None:
            return self._fp8(x), (bias if self.skip_bias_add else None)
        if self.skip_bias_add:
            return F.linear(x, self.weight), bias
        return F.linear(x, self.weight, bias), None

    def extra_repr(self) -> str:
        fp8 = f", fp8={type(self._fp8).__name__}" if self._fp8 is not None else ""
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}{fp8}"


def fp8_eligible(m: TorchLinear) -> bool:
    """FP8 GEMMs need both dims multiples of 16 (torch._scaled_mm)."""
    return m.in_features % 16 == 0 and m.out_features % 16 == 0
