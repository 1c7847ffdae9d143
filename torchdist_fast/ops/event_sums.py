"""The event-sums family (``Independent(Normal, k)``): ``normal_log_prob_sum`` and
``normal_entropy_sum``, summed over the rightmost ``event_dims`` dims inside the kernel; their
backward is ``normal_log_prob_backward`` (the Normal family's) and a closed form.

Kernels: ``triton_kernels/normal_event_sum.py``; reference: ``reference.normal_log_prob_sum``,
``reference.normal_entropy_sum``.
"""
from __future__ import annotations

import torch

from .. import reference
from .checks import check_event_dims, check_params, needed_only
from .launch import KernelFamily

EVENT_SUMS = KernelFamily("event_sums")


def _log_prob_sum_shape(value, loc, scale, event_dims) -> tuple:
    check_params(value, loc, scale)
    full = reference.broadcast_shape(value.shape, loc.shape, scale.shape)
    check_event_dims(event_dims, len(full))
    return full


@torch.library.custom_op(
    "torchdist_fast::normal_log_prob_sum", mutates_args=(),
    schema="(Tensor value, Tensor loc, Tensor scale, int event_dims) -> Tensor",
)
def normal_log_prob_sum(value, loc, scale, event_dims):
    """normal_log_prob summed over the rightmost ``event_dims`` dims (Independent's log_prob)."""
    _log_prob_sum_shape(value, loc, scale, event_dims)
    launchers = EVENT_SUMS.launchers(value.device)
    if launchers is not None:
        return launchers.normal_log_prob_sum_fwd(value, loc, scale, event_dims)
    return reference.normal_log_prob_sum(value, loc, scale, event_dims)


@normal_log_prob_sum.register_fake
def _(value, loc, scale, event_dims):
    full = _log_prob_sum_shape(value, loc, scale, event_dims)
    return value.new_empty(full[: len(full) - event_dims])


def _log_prob_sum_op_grads(ctx, grad):
    value, loc, scale = ctx.saved_tensors
    full = reference.broadcast_shape(value.shape, loc.shape, scale.shape)
    # the summed gradient, broadcast back along the event dims (a stride-0 view, not a copy)
    grad_full = grad.reshape(tuple(grad.shape) + (1,) * ctx.event_dims).expand(full)
    mask = list(ctx.needs_input_grad[:3])
    grads = torch.ops.torchdist_fast.normal_log_prob_backward(grad_full, value, loc, scale, mask)
    return needed_only(grads, mask) + (None,)


def _log_prob_sum_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])  # the inputs themselves: no new memory
    ctx.event_dims = inputs[3]


normal_log_prob_sum.register_autograd(_log_prob_sum_op_grads, setup_context=_log_prob_sum_setup_context)


@torch.library.custom_op(
    "torchdist_fast::normal_entropy_sum", mutates_args=(), schema="(Tensor scale, int event_dims) -> Tensor",
)
def normal_entropy_sum(scale, event_dims):
    """Normal entropy ``1/2 + log(sqrt(2 pi)) + log(scale)`` summed over the rightmost ``event_dims`` dims."""
    check_params(scale)
    check_event_dims(event_dims, scale.dim())
    launchers = EVENT_SUMS.launchers(scale.device)
    if launchers is not None:
        return launchers.normal_entropy_sum_fwd(scale, event_dims)
    return reference.normal_entropy_sum(scale, event_dims)


@normal_entropy_sum.register_fake
def _(scale, event_dims):
    check_params(scale)
    check_event_dims(event_dims, scale.dim())
    return scale.new_empty(scale.shape[: scale.dim() - event_dims])


def _entropy_sum_op_grads(ctx, grad):
    (scale,) = ctx.saved_tensors
    cdt = reference.compute_dtype(scale.dtype)
    grad_full = grad.reshape(tuple(grad.shape) + (1,) * ctx.event_dims).to(cdt)
    return (grad_full / scale.to(cdt)).to(scale.dtype), None


def _entropy_sum_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.event_dims = inputs[1]


normal_entropy_sum.register_autograd(_entropy_sum_op_grads, setup_context=_entropy_sum_setup_context)

for _op in (normal_log_prob_sum, normal_entropy_sum):
    EVENT_SUMS.register(_op, launches=("normal_event_sum",))
