"""vincie_mcore: VINCIE (in-context image editing learned from video) on Megatron-Core.

The packed sequence every stage shares (streams, joint coordinates, mask spec) and
its layout convention: ``vincie_mcore/packed/__init__.py``. Data flows one way:
data -> packing -> diffusion (noise) -> model -> loss; ``tests/test_layers.py`` holds
the layer order.
"""
__version__ = "0.1.0"
