"""Triton kernels, one file per op, each launcher beside its kernels.

Imported lazily by ``torchdist_fast.ops`` so that the package imports without triton.
"""
