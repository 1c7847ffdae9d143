"""The one backend choice: which launchers run an op family's kernels on a device.

On CUDA tensors the ops run the Triton kernels (``triton_kernels/``), or, under
``gpu_kernel("cuda")``, the hand-written CUDA C++ backend (``cuda_backend.py``); on CPU tensors
the reference (``reference.py``), or, under ``cpu_kernel("triton")``, the Triton kernels through
the interpreter. Every op asks its family's ``KernelFamily.launchers(device)``, so one setting
decides for all of them. The CUDA C++ backend has kernels for some families only
(``cuda_backend.FAMILIES``): an op of another family under ``gpu_kernel("cuda")`` raises
NotImplementedError (a RuntimeError) that names the family, rather than running Triton kernels
beside the CUDA C++ ones unasked.
"""
from __future__ import annotations

import importlib
import types

import torch

from ..settings import get_cpu_kernel, get_gpu_kernel
from . import inductor

_TRITON_PACKAGE = __package__.rsplit(".", 1)[0] + ".triton_kernels"


class KernelFamily:
    """An op family's kernels: the ``triton_kernels`` modules its ops launch (stated per op by
    ``register``) and the launchers for a device (``launchers``)."""

    def __init__(self, name: str):
        self.name = name
        self.triton_modules: tuple = ()
        self._loaded: dict = {}

    def register(self, op, launches: tuple):
        """State that ``op`` (a custom op of this family) calls the launchers of the
        ``triton_kernels`` modules ``launches``: its kernels then appear in compiled graphs and
        key the compile cache (``inductor.expose_kernels``). Returns ``op``."""
        self.triton_modules += tuple(m for m in launches if m not in self.triton_modules)
        inductor.expose_kernels(op, launches)
        return op

    def launchers(self, device: torch.device):
        """The launchers of this family's kernels on ``device`` (a namespace with the launchers of
        its Triton modules, or the ``cuda_backend`` module); None where the reference runs. One
        call on the hot path. Imported on first use, so the package imports without triton."""
        kind = device.type
        if kind == "cuda":
            cuda = get_gpu_kernel() == "cuda"
        elif kind == "cpu" and get_cpu_kernel() == "triton":
            cuda = False
        else:
            return None
        found = self._loaded.get(cuda)
        if found is None:
            found = self._load(cuda)
        return found

    def _load(self, cuda: bool):
        if cuda:
            from .. import cuda_backend

            if self.name not in cuda_backend.FAMILIES:
                raise NotImplementedError(
                    f"torchdist_fast: the CUDA C++ backend (gpu_kernel('cuda')) has no kernels for the {self.name} ops "
                    f"(it has {', '.join(cuda_backend.FAMILIES)}); run them under gpu_kernel('triton')"
                )
            found = cuda_backend
        else:
            found = types.SimpleNamespace()
            for name in self.triton_modules:
                module = importlib.import_module(f"{_TRITON_PACKAGE}.{name}")
                for attr, value in vars(module).items():
                    if callable(value) and not attr.startswith("_") and getattr(value, "__module__", None) == module.__name__:
                        setattr(found, attr, value)
        self._loaded[cuda] = found
        return found
