"""Multi-turn editing: check inputs -> encode -> pack -> denoise -> decode."""
from .editor import EditSession, Editor, save_strip

__all__ = ["Editor", "EditSession", "save_strip"]
