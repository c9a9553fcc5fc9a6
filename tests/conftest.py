"""Shared test setup.

Triton's interpreter must be chosen before triton is first imported, so it is
set here, ahead of every test module, when no GPU is present.
"""
import os
import shutil

if not shutil.which("nvidia-smi") and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
