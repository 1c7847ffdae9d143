"""Which implementation runs where.

Two settings, each with an environment variable (read at import), a setter and a context manager:

``cpu_kernel`` (``TORCHDIST_FAST_CPU_KERNEL``): what the ops run on CPU tensors.
    "reference" (default): the pure-torch reference.
    "triton": the Triton kernels themselves, through Triton's interpreter. Needs
    ``TRITON_INTERPRET=1`` in the environment before triton is imported; this is how the GPU
    kernels are tested on machines without a GPU.

``cpu_sampling`` (``TORCHDIST_FAST_CPU_SAMPLING``): how ``torchdist_fast.Normal`` draws on CPU.
    "torch" (default): exactly as ``torch.distributions.Normal`` (same generator, same numbers).
    "philox": the Philox ops, the stream the GPU kernels draw for the same (seed, offset).
``cpu_log_prob`` (``TORCHDIST_FAST_CPU_LOG_PROB``): the ``log_prob`` formula of ``torchdist_fast.Normal``
    on CPU in the "torch" sampling mode.
    "torch" (default): torch's own formula, bit-identical to ``torch.distributions.Normal``.
    "stable": the fused op's formula ``-((x - loc) / scale)**2 / 2 - log(scale) - log(sqrt(2 pi))``,
    which never forms ``scale**2`` (finite for tiny scales and far values, where torch's
    under/overflows). The "philox" sampling mode always uses it (the numbers of the GPU path).
``gpu_kernel`` (``TORCHDIST_FAST_GPU_KERNEL``): what the ops run on CUDA tensors.
    "triton" (default): the Triton kernels.
    "cuda": the hand-written CUDA C++ backend (``kernels/``, built by ``python setup_cuda.py
    build_ext --inplace``); setting it without the built extension raises RuntimeError.
"""
from __future__ import annotations

import contextlib
import os

import torch

CPU_KERNELS = ("reference", "triton")
CPU_SAMPLINGS = ("torch", "philox")
CPU_LOG_PROBS = ("torch", "stable")
GPU_KERNELS = ("triton", "cuda")


def _validated(name: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    if name == "cpu_kernel" and value == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "cpu_kernel='triton' runs the Triton kernels on CPU tensors through Triton's interpreter: "
            "set TRITON_INTERPRET=1 in the environment before starting Python"
        )
    if name == "gpu_kernel" and value == "cuda":
        from . import cuda_backend

        if not cuda_backend.available():
            raise RuntimeError(f"gpu_kernel='cuda': {cuda_backend.unavailable_reason()}")
    return value


_settings = {
    "cpu_kernel": _validated("cpu_kernel", os.environ.get("TORCHDIST_FAST_CPU_KERNEL", "reference"), CPU_KERNELS),
    "cpu_sampling": _validated("cpu_sampling", os.environ.get("TORCHDIST_FAST_CPU_SAMPLING", "torch"), CPU_SAMPLINGS),
    "cpu_log_prob": _validated("cpu_log_prob", os.environ.get("TORCHDIST_FAST_CPU_LOG_PROB", "torch"), CPU_LOG_PROBS),
    "gpu_kernel": _validated("gpu_kernel", os.environ.get("TORCHDIST_FAST_GPU_KERNEL", "triton"), GPU_KERNELS),
}


def get_cpu_kernel() -> str:
    return _settings["cpu_kernel"]


def set_cpu_kernel(value: str) -> None:
    _settings["cpu_kernel"] = _validated("cpu_kernel", value, CPU_KERNELS)


def get_cpu_sampling() -> str:
    return _settings["cpu_sampling"]


def set_cpu_sampling(value: str) -> None:
    _settings["cpu_sampling"] = _validated("cpu_sampling", value, CPU_SAMPLINGS)


@contextlib.contextmanager
def _setting(name: str, value: str, choices):
    old = _settings[name]
    _settings[name] = _validated(name, value, choices)
    try:
        yield
    finally:
        _settings[name] = old


def cpu_kernel(value: str):
    """Context manager: ``with torchdist_fast.cpu_kernel("triton"): ...``."""
    return _setting("cpu_kernel", value, CPU_KERNELS)


def cpu_sampling(value: str):
    """Context manager: ``with torchdist_fast.cpu_sampling("philox"): ...``."""
    return _setting("cpu_sampling", value, CPU_SAMPLINGS)


def get_cpu_log_prob() -> str:
    return _settings["cpu_log_prob"]


def set_cpu_log_prob(value: str) -> None:
    _settings["cpu_log_prob"] = _validated("cpu_log_prob", value, CPU_LOG_PROBS)


def cpu_log_prob(value: str):
    """Context manager: ``with torchdist_fast.cpu_log_prob("stable"): ...``."""
    return _setting("cpu_log_prob", value, CPU_LOG_PROBS)


def get_gpu_kernel() -> str:
    return _settings["gpu_kernel"]


def set_gpu_kernel(value: str) -> None:
    _settings["gpu_kernel"] = _validated("gpu_kernel", value, GPU_KERNELS)


def gpu_kernel(value: str):
    """Context manager: ``with torchdist_fast.gpu_kernel("cuda"): ...`` (the CUDA C++ backend)."""
    return _setting("gpu_kernel", value, GPU_KERNELS)


def uses_gpu_kernels(device: torch.device) -> bool:
    """True where the ops run GPU kernels (Triton, or the CUDA backend under gpu_kernel='cuda'):
    CUDA, and CPU under cpu_kernel='triton'."""
    kind = device.type
    return kind == "cuda" or (kind == "cpu" and _settings["cpu_kernel"] == "triton")
