"""The MM-DiT on Megatron-Core: config, specs (backend choice), attention, blocks, embeddings, model.

Names are imported lazily so that ``from vincie_mcore.model.config import MMDiTConfig`` (the
parallel planner) does not pull in Megatron-Core.
"""
import importlib

_EXPORTS = {"MMDiTConfig": "config", "MMDiT": "mmdit", "build_model": "mmdit"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
