"""The Normal family: ``normal_rsample``, ``normal_sample``, ``normal_rsample_log_prob`` (one pass:
z and log_prob(z) from the noise), their backward ``normal_rsample_backward`` (regenerates the
noise: nothing of the output's size is saved), ``normal_log_prob`` and ``normal_log_prob_backward``;
and their eager fast path (``eager_rsample``, ``eager_log_prob``: ``eager_path``), which calls the
same implementations and the same gradient formulas.

Kernels: ``triton_kernels/normal_rsample.py``, ``triton_kernels/normal_log_prob.py`` (or the CUDA
C++ backend); reference: ``reference.normal_rsample``, ``reference.normal_log_prob``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import reference, rng
from ..settings import uses_gpu_kernels
from .checks import check_params, check_shape, needed_only, with_empty_for_none
from .eager_path import apply_without_wrapper, position_for
from .launch import KernelFamily

NORMAL = KernelFamily("normal")


# ---------------------------------------------------------------------------- rsample
def rsample_shape(loc, scale, sample_shape) -> tuple:
    """The output shape of the rsample ops, checked (torch's error types)."""
    check_params(loc, scale)
    return check_shape(sample_shape, "sample_shape") + reference.broadcast_shape(loc.shape, scale.shape)


def rsample_impl(loc, scale, sample_shape, seed: int, offset: int, with_log_prob: bool, position=None, checked=False):
    """What normal_rsample(_log_prob) computes, with the stream position as two ints, or as the
    pair in device memory (``position``, GPU kernels only; ``rng.kernel_position``). Also the eager
    fast path's forward, which passes ``checked`` (its caller checked the parameters and the
    sample shape)."""
    if not checked:
        rsample_shape(loc, scale, sample_shape)
    launchers = NORMAL.launchers(loc.device)
    if launchers is not None:
        return launchers.normal_rsample_fwd(loc, scale, sample_shape, seed, offset, with_log_prob, position=position)
    return reference.normal_rsample(loc, scale, sample_shape, seed, offset, with_log_prob)


def rsample_backward_impl(grad_z, grad_log_prob, scale, seed: int, offset: int, position=None):
    """What normal_rsample_backward computes (stream position as in ``rsample_impl``)."""
    if grad_z is None and grad_log_prob is None:
        return torch.zeros_like(scale)
    launchers = NORMAL.launchers(scale.device)
    if launchers is not None:
        return launchers.normal_rsample_bwd(grad_z, grad_log_prob, scale, seed, offset, position=position)
    return reference.normal_rsample_backward(grad_z, grad_log_prob, scale, seed, offset)


def _rsample_op_impl(loc, scale, sample_shape, seed_offset, with_log_prob):
    seed, offset, position = rng.kernel_position(seed_offset, loc.device, uses_gpu_kernels(loc.device))
    return rsample_impl(loc, scale, sample_shape, seed, offset, with_log_prob, position)


_RSAMPLE_SCHEMA = "(Tensor loc, Tensor scale, SymInt[] sample_shape, Tensor seed_offset) -> Tensor"


@torch.library.custom_op("torchdist_fast::normal_rsample", mutates_args=(), schema=_RSAMPLE_SCHEMA)
def normal_rsample(loc, scale, sample_shape, seed_offset):
    return _rsample_op_impl(loc, scale, sample_shape, seed_offset, with_log_prob=False)


@torch.library.custom_op("torchdist_fast::normal_sample", mutates_args=(), schema=_RSAMPLE_SCHEMA)
def normal_sample(loc, scale, sample_shape, seed_offset):
    """normal_rsample without autograd (the same kernel)."""
    return _rsample_op_impl(loc, scale, sample_shape, seed_offset, with_log_prob=False)


@torch.library.custom_op(
    "torchdist_fast::normal_rsample_log_prob", mutates_args=(),
    schema="(Tensor loc, Tensor scale, SymInt[] sample_shape, Tensor seed_offset) -> (Tensor, Tensor)",
)
def normal_rsample_log_prob(loc, scale, sample_shape, seed_offset):
    return _rsample_op_impl(loc, scale, sample_shape, seed_offset, with_log_prob=True)


@normal_rsample.register_fake
def _(loc, scale, sample_shape, seed_offset):
    return loc.new_empty(rsample_shape(loc, scale, sample_shape))


@normal_sample.register_fake
def _(loc, scale, sample_shape, seed_offset):
    return loc.new_empty(rsample_shape(loc, scale, sample_shape))


@normal_rsample_log_prob.register_fake
def _(loc, scale, sample_shape, seed_offset):
    shape = rsample_shape(loc, scale, sample_shape)
    return loc.new_empty(shape), loc.new_empty(shape)


@torch.library.custom_op(
    "torchdist_fast::normal_rsample_backward", mutates_args=(),
    schema="(Tensor? grad_z, Tensor? grad_log_prob, Tensor scale, Tensor seed_offset) -> Tensor",
)
def normal_rsample_backward(grad_z, grad_log_prob, scale, seed_offset):
    """grad_scale of normal_rsample(_log_prob), regenerating eps; reduced to scale.shape."""
    return rsample_backward_impl(grad_z, grad_log_prob, scale,
                                 *rng.kernel_position(seed_offset, scale.device, uses_gpu_kernels(scale.device)))


@normal_rsample_backward.register_fake
def _(grad_z, grad_log_prob, scale, seed_offset):
    return torch.empty_like(scale)


def rsample_grads(needs_input_grad, loc_shape, scale, grad_z, grad_log_prob, grad_scale_fn):
    """(grad_loc, grad_scale) of normal_rsample(_log_prob), the one formula of the op's autograd and
    the eager path's; ``grad_scale_fn(grad_z, grad_log_prob)`` regenerates the noise (the backward
    op, or ``rsample_backward_impl`` on the eager fast path)."""
    grad_loc = grad_scale = None
    if needs_input_grad[0]:
        # log_prob(z) does not depend on loc through the reparameterization: a zero gradient,
        # as torch.distributions gives for log_prob(rsample())
        grad_loc = reference.reduce_to(grad_z, loc_shape) if grad_z is not None else scale.new_zeros(loc_shape)
    if needs_input_grad[1]:
        grad_scale = grad_scale_fn(grad_z, grad_log_prob)
    return grad_loc, grad_scale


def _rsample_setup_context(ctx, inputs, output):
    loc, scale, _, seed_offset = inputs
    ctx.set_materialize_grads(False)
    ctx.loc_shape = loc.shape
    # scale (an input) and the 2-word seed_offset: nothing of the output's size
    ctx.save_for_backward(scale, seed_offset)


def _rsample_op_grads(ctx, grad_z, grad_log_prob):
    scale, seed_offset = ctx.saved_tensors
    return rsample_grads(ctx.needs_input_grad, ctx.loc_shape, scale, grad_z, grad_log_prob, lambda gz, glp: (
        torch.ops.torchdist_fast.normal_rsample_backward(gz, glp, scale, seed_offset))) + (None, None)


normal_rsample.register_autograd(lambda ctx, grad_z: _rsample_op_grads(ctx, grad_z, None),
                                 setup_context=_rsample_setup_context)
normal_rsample_log_prob.register_autograd(_rsample_op_grads, setup_context=_rsample_setup_context)


# ---------------------------------------------------------------------------- log_prob
def _log_prob_shape(value, loc, scale):
    check_params(value, loc, scale)
    return reference.broadcast_shape(value.shape, loc.shape, scale.shape)


def log_prob_impl(value, loc, scale):
    """What normal_log_prob computes (also the eager fast path's forward)."""
    _log_prob_shape(value, loc, scale)
    launchers = NORMAL.launchers(value.device)
    if launchers is not None:
        return launchers.normal_log_prob_fwd(value, loc, scale)
    return reference.normal_log_prob(value, loc, scale)


def log_prob_backward_impl(grad, value, loc, scale, output_mask):
    """(grad_value, grad_loc, grad_scale) of normal_log_prob; None where ``output_mask`` is False."""
    launchers = NORMAL.launchers(value.device)
    if launchers is not None:
        return launchers.normal_log_prob_bwd(grad, value, loc, scale, output_mask)
    return reference.normal_log_prob_backward(grad, value, loc, scale, output_mask)


@torch.library.custom_op(
    "torchdist_fast::normal_log_prob", mutates_args=(),
    schema="(Tensor value, Tensor loc, Tensor scale) -> Tensor",
)
def normal_log_prob(value, loc, scale):
    return log_prob_impl(value, loc, scale)


@normal_log_prob.register_fake
def _(value, loc, scale):
    return value.new_empty(_log_prob_shape(value, loc, scale))


@torch.library.custom_op(
    "torchdist_fast::normal_log_prob_backward", mutates_args=(),
    schema="(Tensor grad, Tensor value, Tensor loc, Tensor scale, bool[] output_mask) -> (Tensor, Tensor, Tensor)",
)
def normal_log_prob_backward(grad, value, loc, scale, output_mask):
    """(grad_value, grad_loc, grad_scale); an unneeded one (output_mask False) is an empty tensor."""
    return with_empty_for_none(log_prob_backward_impl(grad, value, loc, scale, output_mask), (value, loc, scale))


@normal_log_prob_backward.register_fake
def _(grad, value, loc, scale, output_mask):
    return tuple(t.new_empty(t.shape if need else 0) for t, need in zip((value, loc, scale), output_mask))


def log_prob_grads(needs_input_grad, grad, value, loc, scale, backward_fn):
    """(grad_value, grad_loc, grad_scale) of normal_log_prob, None where not needed: the one formula
    of the op's autograd (``backward_fn`` the backward op) and the eager path's (``log_prob_backward_impl``)."""
    mask = list(needs_input_grad[:3])
    return needed_only(backward_fn(grad, value, loc, scale, mask), mask)


def _log_prob_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # the inputs themselves: no new memory


def _log_prob_op_grads(ctx, grad):
    return log_prob_grads(ctx.needs_input_grad, grad, *ctx.saved_tensors, torch.ops.torchdist_fast.normal_log_prob_backward)


normal_log_prob.register_autograd(_log_prob_op_grads, setup_context=_log_prob_setup_context)

for _op in (normal_rsample, normal_sample, normal_rsample_log_prob, normal_rsample_backward):
    NORMAL.register(_op, launches=("normal_rsample",))
for _op in (normal_log_prob, normal_log_prob_backward):
    NORMAL.register(_op, launches=("normal_log_prob",))


# ---------------------------------------------------------------------------- the eager fast path
class EagerRsample(torch.autograd.Function):
    """normal_rsample / normal_rsample_log_prob without the dispatcher; the stream position (ints, or
    the pair in device memory under CUDA graph capture) is kept on ctx for the backward."""

    @staticmethod
    def forward(ctx, loc, scale, sample_shape, where, with_log_prob):
        ctx.set_materialize_grads(False)
        ctx.loc_shape_where = loc.shape, where
        ctx.save_for_backward(scale)
        seed, offset, position = where
        return rsample_impl(loc, scale, sample_shape, seed, offset, with_log_prob, position, checked=True)

    @staticmethod
    @once_differentiable  # the kernels' gradients are not differentiable again: say so, as the ops do
    def backward(ctx, grad_z, grad_log_prob=None):
        (scale,) = ctx.saved_tensors
        loc_shape, (seed, offset, position) = ctx.loc_shape_where
        grads = rsample_grads(ctx.needs_input_grad, loc_shape, scale, grad_z, grad_log_prob,
                              lambda gz, glp: rsample_backward_impl(gz, glp, scale, seed, offset, position))
        return grads + (None, None, None)


_apply_rsample = apply_without_wrapper(EagerRsample)


def eager_rsample(loc, scale, sample_shape, numel: int, generator, with_log_prob: bool, grad: bool = True):
    """``z`` (or ``(z, log_prob)``) of Normal(loc, scale) over ``sample_shape``; ``numel``: the output's.

    ``grad=False`` is ``normal_sample`` (no autograd, the same kernel). Call only where
    ``eager_path.direct_ok``, with ``loc`` and ``scale`` of one float dtype on one device and a valid
    ``sample_shape`` (``routing.sample_params``, ``routing.checked_numel``).
    """
    where = position_for(loc.device, numel, generator)
    if grad and torch.is_grad_enabled() and (loc.requires_grad or scale.requires_grad):
        return _apply_rsample(loc, scale, sample_shape, where, with_log_prob)
    seed, offset, position = where
    with torch.no_grad():  # the reference implementation is torch code: no graph to the parameters
        return rsample_impl(loc, scale, sample_shape, seed, offset, with_log_prob, position, checked=True)


class EagerLogProb(torch.autograd.Function):
    """normal_log_prob without the dispatcher."""

    @staticmethod
    def forward(ctx, value, loc, scale):
        ctx.save_for_backward(value, loc, scale)  # the inputs themselves: no new memory
        return log_prob_impl(value, loc, scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return log_prob_grads(ctx.needs_input_grad, grad, *ctx.saved_tensors, log_prob_backward_impl)


_apply_log_prob = apply_without_wrapper(EagerLogProb)


def eager_log_prob(value, loc, scale):
    """``normal_log_prob(value, loc, scale)`` (one float dtype, one device). Call only where ``direct_ok``."""
    if torch.is_grad_enabled() and (value.requires_grad or loc.requires_grad or scale.requires_grad):
        return _apply_log_prob(value, loc, scale)
    with torch.no_grad():
        return log_prob_impl(value, loc, scale)
