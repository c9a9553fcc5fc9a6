"""Hugging Face-style use of exported VINCIE models, with no Megatron-Core and no process groups.

``VincieMMDiT`` (modeling.py: the model in plain PyTorch, ``from_pretrained`` / ``save_pretrained``),
``VincieEditPipeline`` (pipeline.py: multi-turn editing), files.py (the folder format; docs/export.md).
Names load lazily: ``import vincie_mcore.hf.modeling`` alone pulls in torch and nothing heavier.
"""
import importlib

_EXPORTS = {"VincieMMDiT": "modeling", "VincieEditPipeline": "pipeline", "ExportError": "files"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
