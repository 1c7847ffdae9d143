"""The argument checks every op family shares, with torch's error types and wording."""
from __future__ import annotations

import torch

from ..reference import FLOAT_DTYPES


def check_params(*tensors: torch.Tensor) -> None:
    """Same device and one floating dtype, with torch's error types and wording."""
    first = tensors[0]
    if all(t.device == first.device and t.dtype == first.dtype for t in tensors) and first.dtype in FLOAT_DTYPES:
        return  # the common case, without building sets
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        a, b = sorted(map(str, devices))[:2]
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, {a} and {b}!")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise RuntimeError(f"torchdist_fast: expected tensors of one dtype, got {sorted(map(str, dtypes))}")
    dtype = tensors[0].dtype
    if dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"torchdist_fast: expected a floating dtype (float32, float64, float16, bfloat16), got {dtype}")


def check_shape(shape, what: str) -> tuple:
    shape = tuple(shape)
    for s in shape:
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(shape)}")
    return shape


def check_event_dims(event_dims, ndim: int) -> int:
    if isinstance(event_dims, bool) or not isinstance(event_dims, int):
        raise TypeError(f"event_dims must be an int, got {type(event_dims).__name__}")
    if not 0 <= event_dims <= ndim:
        raise RuntimeError(f"torchdist_fast: event_dims must be in [0, {ndim}] for a {ndim}-dim shape, got {event_dims}")
    return event_dims


def with_empty_for_none(grads, like) -> tuple:
    """A backward op's outputs: each gradient, or an empty tensor where it was not computed
    (a custom op cannot return None)."""
    return tuple(g if g is not None else t.new_empty(0) for g, t in zip(grads, like))


def needed_only(grads, mask) -> tuple:
    """The gradients autograd gets back from a backward op: None where the input needs none."""
    return tuple(g if need else None for g, need in zip(grads, mask))
