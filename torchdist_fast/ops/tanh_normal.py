"""The TanhNormal family: ``tanh_normal_rsample`` (a = mid + half * tanh(loc + scale * eps) and its
log-density summed over the event dims, in one pass) and ``normal_rsample_log_prob_sum`` (the same
kernels without the squashing: Independent(Normal, k)), their backward ops (which regenerate the
noise), and their eager fast path (``eager_event_rsample``), with one gradient formula for both.

Kernels: ``triton_kernels/tanh_normal.py`` (rows of up to ``MAX_FUSED_EVENT`` event elements;
longer rows draw the noise with ``triton_kernels/philox.py`` and run the reference's torch code);
reference: ``reference.tanh_normal``, ``reference.tanh_normal_backward``.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .. import reference, rng
from ..settings import uses_gpu_kernels
from .checks import check_event_dims, check_params, check_shape, needed_only, with_empty_for_none
from .eager_path import apply_without_wrapper, position_for
from .launch import KernelFamily

TANH_NORMAL = KernelFamily("tanh_normal")
MAX_FUSED_EVENT = 2048  # event elements per row the fused kernel takes; longer rows run unfused


def fused_kernel_applies(full_shape, event_dims: int) -> bool:
    d = math.prod(tuple(full_shape)[len(full_shape) - event_dims:]) if event_dims else 1
    return d <= MAX_FUSED_EVENT


def noise(full_shape, seed: int, offset: int, dtype: torch.dtype, device, position=None) -> torch.Tensor:
    """The Philox normals of the stream at (seed, offset) (or ``position`` in device memory, for
    the GPU kernels), in the compute dtype: the unfused path's noise."""
    cdt = reference.compute_dtype(dtype)
    device = torch.device(device)
    launchers = TANH_NORMAL.launchers(device)
    if launchers is not None:
        return launchers.philox_randn(tuple(full_shape), seed, offset, cdt, device, position=position)
    return reference.philox_randn(tuple(full_shape), seed, offset, cdt, device)


def event_rsample_meta(loc, scale, sample_shape, event_dims, low=-1.0, high=1.0):
    """(full shape, log_prob shape); checks with torch's error types."""
    batch = reference.broadcast_shape(loc.shape, scale.shape)
    check_params(loc, scale)
    full = check_shape(sample_shape, "sample_shape") + tuple(batch)
    check_event_dims(event_dims, len(batch))
    if not (low < high) or low != low or high != high or abs(low) == float("inf") or abs(high) == float("inf"):
        raise ValueError(f"torchdist_fast: tanh-normal bounds must be finite with low < high, got low={low}, high={high}")
    return full, full[: len(full) - event_dims]


def event_rsample_impl(loc, scale, sample_shape, event_dims, low, high, seed, offset, position, with_log_prob, squash):
    """What tanh_normal_rsample (``squash``) and normal_rsample_log_prob_sum compute, the stream
    position as in ``normal.rsample_impl``; also the eager fast path's forward."""
    full, _ = event_rsample_meta(loc, scale, sample_shape, event_dims, low, high)
    mid, half = (high + low) / 2, (high - low) / 2
    launchers = TANH_NORMAL.launchers(loc.device)
    if launchers is not None and fused_kernel_applies(full, event_dims):
        a, lp = launchers.tanh_normal_fwd(loc, scale, full, event_dims, mid, half, seed, offset, with_log_prob, squash,
                                          position=position)
    else:
        eps = noise(full, seed, offset, loc.dtype, loc.device, position=position)
        a, lp = reference.tanh_normal(eps, loc, scale, event_dims, mid, half, with_log_prob, squash)
    return a, lp if lp is not None else loc.new_empty(0)


def event_rsample_backward_impl(grad_a, grad_log_prob, loc, scale, sample_shape, event_dims, low, high, seed, offset,
                                position, output_mask, squash):
    """(grad_loc, grad_scale) of ``event_rsample_impl``, regenerating the noise; an unneeded one is empty."""
    full, _ = event_rsample_meta(loc, scale, sample_shape, event_dims, low, high)
    half = (high - low) / 2
    launchers = TANH_NORMAL.launchers(loc.device)
    if launchers is not None and fused_kernel_applies(full, event_dims):
        grads = launchers.tanh_normal_bwd(grad_a, grad_log_prob, loc, scale, full, event_dims, half, seed, offset,
                                          output_mask, squash, position=position)
    else:
        eps = noise(full, seed, offset, loc.dtype, loc.device, position=position)
        grads = reference.tanh_normal_backward(eps, grad_a, grad_log_prob, loc, scale, event_dims, half, output_mask,
                                               squash)
    return with_empty_for_none(grads, (loc, scale))


def _op_impl(loc, scale, sample_shape, event_dims, low, high, seed_offset, with_log_prob, squash):
    where = rng.kernel_position(seed_offset, loc.device, uses_gpu_kernels(loc.device))
    return event_rsample_impl(loc, scale, sample_shape, event_dims, low, high, *where, with_log_prob, squash)


def _op_backward_impl(grad_a, grad_log_prob, loc, scale, sample_shape, event_dims, low, high, seed_offset,
                      output_mask, squash):
    where = rng.kernel_position(seed_offset, loc.device, uses_gpu_kernels(loc.device))
    return event_rsample_backward_impl(grad_a, grad_log_prob, loc, scale, sample_shape, event_dims, low, high, *where,
                                       output_mask, squash)


@torch.library.custom_op(
    "torchdist_fast::tanh_normal_rsample", mutates_args=(),
    schema="(Tensor loc, Tensor scale, SymInt[] sample_shape, int event_dims, float low, float high, "
    "Tensor seed_offset, bool with_log_prob) -> (Tensor, Tensor)",
)
def tanh_normal_rsample(loc, scale, sample_shape, event_dims, low, high, seed_offset, with_log_prob):
    """(a, log_prob(a)): a = mid + half * tanh(loc + scale * eps), log_prob summed over the
    ``event_dims`` rightmost batch dims; log_prob is an empty tensor unless ``with_log_prob``."""
    return _op_impl(loc, scale, sample_shape, event_dims, low, high, seed_offset, with_log_prob, True)


@tanh_normal_rsample.register_fake
def _(loc, scale, sample_shape, event_dims, low, high, seed_offset, with_log_prob):
    full, lp_shape = event_rsample_meta(loc, scale, sample_shape, event_dims, low, high)
    return loc.new_empty(full), loc.new_empty(lp_shape if with_log_prob else (0,))


@torch.library.custom_op(
    "torchdist_fast::tanh_normal_rsample_backward", mutates_args=(),
    schema="(Tensor? grad_a, Tensor? grad_log_prob, Tensor loc, Tensor scale, SymInt[] sample_shape, int event_dims, "
    "float low, float high, Tensor seed_offset, bool[] output_mask) -> (Tensor, Tensor)",
)
def tanh_normal_rsample_backward(grad_a, grad_log_prob, loc, scale, sample_shape, event_dims, low, high, seed_offset,
                                 output_mask):
    """(grad_loc, grad_scale), regenerating the noise; an unneeded one is an empty tensor."""
    return _op_backward_impl(grad_a, grad_log_prob, loc, scale, sample_shape, event_dims, low, high, seed_offset,
                             output_mask, True)


@torch.library.custom_op(
    "torchdist_fast::normal_rsample_log_prob_sum", mutates_args=(),
    schema="(Tensor loc, Tensor scale, SymInt[] sample_shape, int event_dims, Tensor seed_offset) -> (Tensor, Tensor)",
)
def normal_rsample_log_prob_sum(loc, scale, sample_shape, event_dims, seed_offset):
    """normal_rsample_log_prob with log_prob summed over the ``event_dims`` rightmost batch dims
    in the kernel (Independent(Normal, k)): the same noise as normal_rsample."""
    return _op_impl(loc, scale, sample_shape, event_dims, -1.0, 1.0, seed_offset, True, False)


@normal_rsample_log_prob_sum.register_fake
def _(loc, scale, sample_shape, event_dims, seed_offset):
    full, lp_shape = event_rsample_meta(loc, scale, sample_shape, event_dims)
    return loc.new_empty(full), loc.new_empty(lp_shape)


@torch.library.custom_op(
    "torchdist_fast::normal_rsample_log_prob_sum_backward", mutates_args=(),
    schema="(Tensor? grad_z, Tensor? grad_log_prob, Tensor loc, Tensor scale, SymInt[] sample_shape, int event_dims, "
    "Tensor seed_offset, bool[] output_mask) -> (Tensor, Tensor)",
)
def normal_rsample_log_prob_sum_backward(grad_z, grad_log_prob, loc, scale, sample_shape, event_dims, seed_offset,
                                         output_mask):
    return _op_backward_impl(grad_z, grad_log_prob, loc, scale, sample_shape, event_dims, -1.0, 1.0, seed_offset,
                             output_mask, False)


for _backward_op in (tanh_normal_rsample_backward, normal_rsample_log_prob_sum_backward):
    @_backward_op.register_fake
    def _(grad_a, grad_log_prob, loc, scale, *args):
        output_mask = args[-1]
        return tuple(t.new_empty(t.shape if need else (0,)) for t, need in zip((loc, scale), output_mask))


def event_rsample_grads(needs_input_grad, with_log_prob: bool, grad_a, grad_log_prob, backward_fn) -> tuple:
    """(grad_loc, grad_scale) of both ops, None where not needed: the one formula of the ops'
    autograd and the eager path's; ``backward_fn(grad_a, grad_log_prob, mask)`` regenerates the
    noise (the backward op, or ``event_rsample_backward_impl``)."""
    if not with_log_prob:
        grad_log_prob = None
    mask = list(needs_input_grad[:2])
    if (grad_a is None and grad_log_prob is None) or not any(mask):
        return None, None
    return needed_only(backward_fn(grad_a, grad_log_prob, mask), mask)


def _tanh_setup_context(ctx, inputs, output):
    loc, scale, sample_shape, event_dims, low, high, seed_offset, with_log_prob = inputs
    ctx.set_materialize_grads(False)
    ctx.args, ctx.with_log_prob = (list(sample_shape), event_dims, low, high), with_log_prob
    ctx.save_for_backward(loc, scale, seed_offset)  # inputs and the 16-byte stream position


def _tanh_op_grads(ctx, grad_a, grad_log_prob):
    loc, scale, seed_offset = ctx.saved_tensors
    return event_rsample_grads(ctx.needs_input_grad, ctx.with_log_prob, grad_a, grad_log_prob, lambda ga, glp, mask: (
        torch.ops.torchdist_fast.tanh_normal_rsample_backward(ga, glp, loc, scale, *ctx.args, seed_offset, mask)
    )) + (None,) * 6


def _sum_setup_context(ctx, inputs, output):
    loc, scale, sample_shape, event_dims, seed_offset = inputs
    ctx.set_materialize_grads(False)
    ctx.args = (list(sample_shape), event_dims)
    ctx.save_for_backward(loc, scale, seed_offset)  # inputs and the 16-byte stream position


def _sum_op_grads(ctx, grad_z, grad_log_prob):
    loc, scale, seed_offset = ctx.saved_tensors
    return event_rsample_grads(ctx.needs_input_grad, True, grad_z, grad_log_prob, lambda gz, glp, mask: (
        torch.ops.torchdist_fast.normal_rsample_log_prob_sum_backward(gz, glp, loc, scale, *ctx.args, seed_offset, mask)
    )) + (None,) * 3


tanh_normal_rsample.register_autograd(_tanh_op_grads, setup_context=_tanh_setup_context)
normal_rsample_log_prob_sum.register_autograd(_sum_op_grads, setup_context=_sum_setup_context)

# the fused kernels, or Philox noise and torch code where they do not apply
for _op in (tanh_normal_rsample, tanh_normal_rsample_backward, normal_rsample_log_prob_sum,
            normal_rsample_log_prob_sum_backward):
    TANH_NORMAL.register(_op, launches=("tanh_normal", "philox"))


# ---------------------------------------------------------------------------- the eager fast path
class EagerEventRsample(torch.autograd.Function):
    """tanh_normal_rsample / normal_rsample_log_prob_sum without the dispatcher (as ``normal.EagerRsample``)."""

    @staticmethod
    def forward(ctx, loc, scale, args, where, with_log_prob, squash):
        ctx.set_materialize_grads(False)
        ctx.args, ctx.where, ctx.with_log_prob, ctx.squash = args, where, with_log_prob, squash
        ctx.save_for_backward(loc, scale)
        return event_rsample_impl(loc, scale, *args, *where, with_log_prob, squash)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_a, grad_log_prob):
        loc, scale = ctx.saved_tensors
        return event_rsample_grads(ctx.needs_input_grad, ctx.with_log_prob, grad_a, grad_log_prob, lambda ga, glp, mask: (
            event_rsample_backward_impl(ga, glp, loc, scale, *ctx.args, *ctx.where, mask, ctx.squash))) + (None,) * 4


_apply_event_rsample = apply_without_wrapper(EagerEventRsample)


def eager_event_rsample(loc, scale, sample_shape, event_dims: int, low: float, high: float, numel: int, generator,
                        with_log_prob: bool, squash: bool):
    """``(a, log_prob)`` of ``tanh_normal_rsample`` (``squash``) or ``normal_rsample_log_prob_sum``
    (``low, high = -1, 1``; log_prob an empty tensor unless ``with_log_prob``). Call only where
    ``eager_path.direct_ok``, with checked parameters (as ``normal.eager_rsample``)."""
    where = position_for(loc.device, numel, generator)
    args = (list(sample_shape), event_dims, float(low), float(high))
    if torch.is_grad_enabled() and (loc.requires_grad or scale.requires_grad):
        return _apply_event_rsample(loc, scale, args, where, with_log_prob, squash)
    with torch.no_grad():
        return event_rsample_impl(loc, scale, *args, *where, with_log_prob, squash)
