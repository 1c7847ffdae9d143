"""The eager fast path of the sampling ops: their implementation called without the dispatcher.

Covers ``normal_rsample`` / ``normal_sample`` / ``normal_rsample_log_prob`` and ``normal_log_prob``
(``Normal``) and the event ops ``tanh_normal_rsample`` (``TanhNormal``) and
``normal_rsample_log_prob_sum`` (``IndependentNormal``).

Why: at RL batch sizes (a few thousand elements) a sampling call costs host time, not GPU time.
Through ``torch.ops`` one ``rsample`` is a Python op that draws the stream position into a
new CPU tensor, a second op whose Python autograd wrapper redispatches to the implementation,
and a ``.tolist()`` of that tensor. Here the position is two Python ints read from the
generator, and one ``autograd.Function`` (none at all when no gradient is needed) calls the same
implementation (``ops.rsample_impl``) and the same backward (``ops.rsample_backward_impl``):
the numbers are the op's, bit for bit (tests/test_eager_path.py).

It runs only where skipping the dispatcher changes nothing a user can observe (``direct_ok``):
plain tensors, no ``torch.compile`` or ``torch.jit`` tracing, no dispatch or function modes
(FakeTensor, functionalization, FlopCounter, ...), no functorch transforms (vmap, grad). Any
other call goes through the ops, which are what the compiler, export, the tracer and opcheck see
(``torch.set_default_device`` installs a function mode too: the ops then run, correctly, slower).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import ops, rng
from .functional import counters_for

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def direct_ok(*tensors: torch.Tensor) -> bool:
    """Whether a call on ``tensors`` may skip the dispatcher (see the module docstring)."""
    if torch.compiler.is_compiling():  # first: dynamo folds it, and traces none of the calls below
        ops.kernel_settings()  # read while tracing: dynamo guards on the switches (ops.kernel_settings)
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack():
        return False
    if torch._C._are_functorch_transforms_active() or torch.jit.is_tracing():
        return False
    for t in tensors:  # a loop, not all(<genexpr>): this check runs on every call
        if type(t) not in _PLAIN:
            return False
    return True


class _Rsample(torch.autograd.Function):
    """normal_rsample / normal_rsample_log_prob; the stream position (ints, or the pair in device
    memory under CUDA graph capture) is kept on ctx for the backward to regenerate the noise."""

    @staticmethod
    def forward(ctx, loc, scale, sample_shape, where, with_log_prob):
        ctx.set_materialize_grads(False)
        ctx.loc_shape_where = loc.shape, where
        ctx.save_for_backward(scale)
        seed, offset, position = where
        return ops.rsample_impl(loc, scale, sample_shape, seed, offset, with_log_prob, position, checked=True)

    @staticmethod
    @once_differentiable  # the kernels' gradients are not differentiable again: say so, as the ops do
    def backward(ctx, grad_z, grad_log_prob=None):
        (scale,) = ctx.saved_tensors
        loc_shape, (seed, offset, position) = ctx.loc_shape_where
        grads = ops.rsample_grads(ctx.needs_input_grad, loc_shape, scale, grad_z, grad_log_prob,
                                  lambda gz, glp: ops.rsample_backward_impl(gz, glp, scale, seed, offset, position))
        return grads + (None, None, None)


# torch.autograd.Function.apply's Python wrapper only unwraps functorch wrappers, which direct_ok
# rules out: the C++ apply directly saves ~2 us per call
_apply_rsample = super(torch.autograd.Function, _Rsample).apply


def _where(device: torch.device, numel: int, generator) -> tuple:
    """(seed, offset, position) of a draw: two ints from the generator, or, under CUDA graph
    capture, the pair written on the device at replay time (``rng.take_seed_offset``)."""
    counters = counters_for(numel)
    if rng.capturing(device):
        return 0, 0, rng.take_seed_offset(device, counters, generator)
    return (*rng.take_position(device, counters, generator, capture_checked=True), None)


def rsample(loc, scale, sample_shape, numel: int, generator, with_log_prob: bool, grad: bool = True):
    """``z`` (or ``(z, log_prob)``) of Normal(loc, scale) over ``sample_shape``; ``numel``: the output's.

    ``grad=False`` is ``normal_sample`` (no autograd, the same kernel). Call only where ``direct_ok``,
    with ``loc`` and ``scale`` of one float dtype on one device and a valid ``sample_shape``
    (``distribution._sample_params``, ``_checked_numel``).
    """
    where = _where(loc.device, numel, generator)
    if grad and torch.is_grad_enabled() and (loc.requires_grad or scale.requires_grad):
        return _apply_rsample(loc, scale, sample_shape, where, with_log_prob)
    seed, offset, position = where
    with torch.no_grad():  # the reference implementation is torch code: no graph to the parameters
        return ops.rsample_impl(loc, scale, sample_shape, seed, offset, with_log_prob, position, checked=True)


class _EventRsample(torch.autograd.Function):
    """tanh_normal_rsample / normal_rsample_log_prob_sum, as ``_Rsample`` (the op's autograd:
    ops._event_rsample_grads)."""

    @staticmethod
    def forward(ctx, loc, scale, args, where, with_log_prob, squash):
        ctx.set_materialize_grads(False)
        ctx.args, ctx.where, ctx.with_log_prob, ctx.squash = args, where, with_log_prob, squash
        ctx.save_for_backward(loc, scale)
        return ops.event_rsample_impl(loc, scale, *args, *where, with_log_prob, squash)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_a, grad_log_prob):
        loc, scale = ctx.saved_tensors
        if not ctx.with_log_prob:
            grad_log_prob = None
        mask = list(ctx.needs_input_grad[:2])
        if (grad_a is None and grad_log_prob is None) or not any(mask):
            return (None,) * 6
        grads = ops.event_rsample_backward_impl(grad_a, grad_log_prob, loc, scale, *ctx.args, *ctx.where, mask, ctx.squash)
        return tuple(g if need else None for g, need in zip(grads, mask)) + (None,) * 4


_apply_event_rsample = super(torch.autograd.Function, _EventRsample).apply


def event_rsample(loc, scale, sample_shape, event_dims: int, low: float, high: float, numel: int, generator,
                  with_log_prob: bool, squash: bool):
    """``(a, log_prob)`` of ``tanh_normal_rsample`` (``squash``) or ``normal_rsample_log_prob_sum``
    (``low, high = -1, 1``; log_prob an empty tensor unless ``with_log_prob``). Call only where
    ``direct_ok``, with checked parameters (as ``rsample``)."""
    where = _where(loc.device, numel, generator)
    args = (list(sample_shape), event_dims, float(low), float(high))
    if torch.is_grad_enabled() and (loc.requires_grad or scale.requires_grad):
        return _apply_event_rsample(loc, scale, args, where, with_log_prob, squash)
    with torch.no_grad():
        return ops.event_rsample_impl(loc, scale, *args, *where, with_log_prob, squash)


class _LogProb(torch.autograd.Function):
    """normal_log_prob (the op's autograd: ops._log_prob_backward)."""

    @staticmethod
    def forward(ctx, value, loc, scale):
        ctx.save_for_backward(value, loc, scale)  # the inputs themselves: no new memory
        return ops.log_prob_impl(value, loc, scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        value, loc, scale = ctx.saved_tensors
        mask = list(ctx.needs_input_grad)
        grads = ops.log_prob_backward_impl(grad, value, loc, scale, mask)
        return tuple(g if need else None for g, need in zip(grads, mask))


_apply_log_prob = super(torch.autograd.Function, _LogProb).apply


def log_prob(value, loc, scale):
    """``normal_log_prob(value, loc, scale)`` (one float dtype, one device). Call only where ``direct_ok``."""
    if torch.is_grad_enabled() and (value.requires_grad or loc.requires_grad or scale.requires_grad):
        return _apply_log_prob(value, loc, scale)
    with torch.no_grad():
        return ops.log_prob_impl(value, loc, scale)
