"""Where a distribution's call runs: the predicates ``Normal``, ``IndependentNormal``, ``TanhNormal``
and ``kl_divergence`` share (read at every call, so the switches in ``settings`` take effect at once).

- ``philox_sampling_on``: sampling goes through the Philox ops (CUDA; CPU under ``cpu_sampling("philox")``).
- ``stable_log_prob_on``: log_prob (and its sums, KL) take the fused op's formula instead of torch's.
- ``sample_params`` / ``log_prob_args``: the parameters, of one float dtype, for the ops, or None
  for torch's own code.
- ``checked_numel`` / ``sample_shape_numel``: refuse what torch refuses before a generator moves.
"""
from __future__ import annotations

import math

import torch

from .reference import FLOAT_DTYPES
from .settings import get_cpu_log_prob, get_cpu_sampling, uses_gpu_kernels

# torch's class, captured at import (before any patch() can rebind the name)
TorchNormal = torch.distributions.normal.Normal

_INT64_MAX = (1 << 63) - 1
_EMPTY_SIZE = torch.Size()


def promote_float(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types`` for two float dtypes (in plain Python: dynamo cannot trace
    dtype-valued torch functions such as ``torch.result_type``)."""
    if a == b:
        return a
    if a.itemsize == b.itemsize:  # float16 with bfloat16
        return torch.float32
    return a if a.itemsize > b.itemsize else b


def result_type(value: torch.Tensor, loc: torch.Tensor) -> torch.dtype:
    """``torch.result_type(value, loc)`` for a float ``loc`` and a bool/int/float ``value``.

    Zero-dim tensors take part only where their category (bool < int < float) is higher.
    """
    if not value.dtype.is_floating_point:
        return loc.dtype
    if (value.dim() == 0) == (loc.dim() == 0):
        return promote_float(value.dtype, loc.dtype)
    return loc.dtype if value.dim() == 0 else value.dtype


def checked_numel(shape: torch.Size) -> int:
    """numel of a sample's shape, refusing what torch refuses before any generator is advanced
    (``torch.Size.numel()`` wraps around silently on overflow)."""
    for s in shape:
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(shape)}")
    numel = math.prod(shape)
    if numel > _INT64_MAX:
        raise RuntimeError(f"Storage size calculation overflowed with sizes={list(shape)}")
    return numel


def sample_shape_numel(d, sample_shape) -> tuple:
    """(``sample_shape`` as a torch.Size, numel of ``d``'s sample of that shape), checked as
    ``checked_numel``; without building the extended shape for the common ``d.rsample()``."""
    if type(sample_shape) in (torch.Size, tuple, list) and not sample_shape:
        return _EMPTY_SIZE, checked_numel(d._batch_shape + d._event_shape)
    sample_shape = torch.Size(sample_shape)
    return sample_shape, checked_numel(d._extended_shape(sample_shape))


def philox_sampling_on(t: torch.Tensor) -> bool:
    """Whether sampling on ``t``'s device goes through the Philox ops (read at call time)."""
    kind = t.device.type
    return kind == "cuda" or (kind == "cpu" and get_cpu_sampling() == "philox")


def stable_log_prob_on(device: torch.device) -> bool:
    """Whether ``log_prob`` on ``device`` takes the fused op's formula instead of torch's.

    CUDA (and CPU under ``cpu_kernel("triton")``): the fused kernel. CPU: only under
    ``cpu_sampling("philox")`` (the device-consistent mode) or ``cpu_log_prob("stable")``; the
    default is torch's own formula, bit for bit.
    """
    if uses_gpu_kernels(device):
        return True
    return device.type == "cpu" and (get_cpu_sampling() == "philox" or get_cpu_log_prob() == "stable")


def sample_params(d, promote: bool):
    """(loc, scale) of one float dtype for the Philox ops, or None to use torch's code.

    ``promote``: the dtype of ``rsample`` (promote(loc, scale)); else that of ``sample``
    (``torch.normal``: loc's dtype).
    """
    loc, scale = d.loc, d.scale
    if not (isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor)) or not philox_sampling_on(loc):
        return None
    if loc.device != scale.device:
        return None
    loc_dtype, scale_dtype = loc.dtype, scale.dtype
    if loc_dtype is scale_dtype and loc_dtype in FLOAT_DTYPES:  # the common case
        return loc, scale
    if loc_dtype not in FLOAT_DTYPES or scale_dtype not in FLOAT_DTYPES:
        return None
    dtype = promote_float(loc_dtype, scale_dtype) if promote else loc_dtype
    if loc_dtype == dtype and scale_dtype == dtype:
        return loc, scale
    return loc.to(dtype), scale.to(dtype)


def log_prob_args(d, value):
    """(value, loc, scale) of one float dtype for the stable formula, or None for torch's."""
    loc, scale = d.loc, d.scale
    if not (isinstance(value, torch.Tensor) and isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor)):
        return None
    if loc.dtype != scale.dtype or loc.dtype not in FLOAT_DTYPES:
        return None
    if value.dtype.is_complex or value.dtype == torch.bool:  # torch: complex result / RuntimeError
        return None
    device = loc.device
    if value.device != device or scale.device != device or not stable_log_prob_on(device):
        return None
    # torch's formula promotes (value, loc, scale); with loc and scale of one dtype and shape
    # that is result_type(value, loc)
    dtype = result_type(value, loc)
    if dtype not in FLOAT_DTYPES:
        return None
    if value.dtype != dtype:
        value = value.to(dtype)
    if loc.dtype != dtype:
        loc, scale = loc.to(dtype), scale.to(dtype)
    return value, loc, scale
