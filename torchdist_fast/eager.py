"""The eager fast path of the sampling ops: their implementation called without the dispatcher.

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
other call goes through the ops, which are what the compiler, export, the tracer and opcheck see.
"""
from __future__ import annotations

import torch

from . import ops, rng
from .functional import counters_for

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def direct_ok(*tensors: torch.Tensor) -> bool:
    """Whether a call on ``tensors`` may skip the dispatcher (see the module docstring)."""
    if torch.compiler.is_compiling():  # first: dynamo folds it, and traces none of the calls below
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack():
        return False
    if torch._C._are_functorch_transforms_active() or torch.jit.is_tracing():
        return False
    return all(type(t) in _PLAIN for t in tensors)


class _Rsample(torch.autograd.Function):
    """normal_rsample / normal_rsample_log_prob; the stream position (ints, or the pair in device
    memory under CUDA graph capture) is kept on ctx for the backward to regenerate the noise."""

    @staticmethod
    def forward(ctx, loc, scale, sample_shape, where, with_log_prob):
        ctx.set_materialize_grads(False)
        ctx.loc_shape = loc.shape
        ctx.where = where
        ctx.save_for_backward(scale)
        seed, offset, position = where
        return ops.rsample_impl(loc, scale, sample_shape, seed, offset, with_log_prob, position, checked=True)

    @staticmethod
    def backward(ctx, grad_z, grad_log_prob=None):
        (scale,) = ctx.saved_tensors
        seed, offset, position = ctx.where
        grads = ops.rsample_grads(ctx.needs_input_grad, ctx.loc_shape, scale, grad_z, grad_log_prob,
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
    return (*rng.take_position(device, counters, generator), None)


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
