"""vincie_mcore: VINCIE (in-context image editing learned from video) on Megatron-Core.

The packed sequence every stage shares (streams, joint coordinates, mask spec) and
its layout convention: ``vincie_mcore/packed/__init__.py``. Data flows one way:
data -> packing -> diffusion (noise) -> model -> loss; ``tests/test_layers.py`` holds
the layer order.
"""
__version__ = "0.1.0"


def _quiet_torchao_on_cpu() -> None:
    """torchao's import loads its CUDA-only kernel libraries (``_C_mxfp8``, ``_C_cutlass_90a``) and logs
    "Failed to load ..." for each it cannot: on a host without a GPU, in every process that imports
    transformers (which imports torchao). Those records are dropped there, before torchao is imported;
    with a GPU they stay, since there they mean missing kernels. Its other warnings are untouched."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to load "):
            return True
        import torch
        return torch.cuda.is_available()

    logging.getLogger("torchao").addFilter(keep)


_quiet_torchao_on_cpu()
