"""Triton kernels for VINCIE's interleaved masked attention.

Never imports ``vincie_mcore``: the kernels work from a compact mask *spec*
of plain integer tensors (see ``kernels/vincie_kernels/reference.py`` for the rule).
"""
