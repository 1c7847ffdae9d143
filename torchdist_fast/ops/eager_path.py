"""The eager fast path: an op family's implementation called without the dispatcher.

Why: at RL batch sizes (a few thousand elements) a sampling call costs host time, not GPU time.
Through ``torch.ops`` one ``rsample`` is a Python op that draws the stream position into a
new CPU tensor, a second op whose Python autograd wrapper redispatches to the implementation,
and a ``.tolist()`` of that tensor. On the fast path the position is two Python ints read from the
generator (``position_for``), and one ``autograd.Function`` per op (none at all when no gradient
is needed; each in its family's module, beside the op) calls the same implementation and the same
gradient formula as the op: the numbers are the op's, bit for bit (tests/test_eager_path.py).

It runs only where skipping the dispatcher changes nothing a user can observe (``direct_ok``):
plain tensors, no ``torch.compile`` or ``torch.jit`` tracing, no dispatch or function modes
(FakeTensor, functionalization, FlopCounter, ...), no functorch transforms (vmap, grad). Any
other call goes through the ops, which are what the compiler, export, the tracer and opcheck see
(``torch.set_default_device`` installs a function mode too: the ops then run, correctly, slower).

It relies on torch internals (not public API), listed in ``TORCH_INTERNALS`` and checked, each,
by tests/test_torch_internals.py.
"""
from __future__ import annotations

import torch

from .. import rng
from . import inductor

# (module, attribute): what this module uses of it
TORCH_INTERNALS = {
    ("torch._C", "_len_torch_dispatch_stack"): "direct_ok: no dispatch mode (FakeTensor, functionalization, ...)",
    ("torch._C", "_len_torch_function_stack"): "direct_ok: no function mode (set_default_device, ...)",
    ("torch._C", "_are_functorch_transforms_active"): "direct_ok: no vmap / grad transform",
    ("torch._C._FunctionBase", "apply"):
        "apply_without_wrapper: super(torch.autograd.Function, F).apply, the C++ apply under "
        "torch.autograd.Function.apply's Python wrapper",
}

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def direct_ok(*tensors: torch.Tensor) -> bool:
    """Whether a call on ``tensors`` may skip the dispatcher (see the module docstring)."""
    if torch.compiler.is_compiling():  # first: dynamo folds it, and traces none of the calls below
        inductor.kernel_settings()  # read while tracing: dynamo guards on the switches
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack():
        return False
    if torch._C._are_functorch_transforms_active() or torch.jit.is_tracing():
        return False
    for t in tensors:  # a loop, not all(<genexpr>): this check runs on every call
        if type(t) not in _PLAIN:
            return False
    return True


def apply_without_wrapper(function: type):
    """``function.apply`` without the Python wrapper of ``torch.autograd.Function.apply``, which
    only unwraps functorch wrappers (``direct_ok`` rules them out): calling the C++ apply
    directly saves ~2 us per call."""
    return super(torch.autograd.Function, function).apply


def position_for(device: torch.device, numel: int, generator) -> tuple:
    """(seed, offset, position) of a draw of ``numel`` normals: two ints from the generator, or,
    under CUDA graph capture, the pair written on the device at replay time (``rng.take_seed_offset``)."""
    counters = rng.counters_for(numel)
    if rng.capturing(device):
        return 0, 0, rng.take_seed_offset(device, counters, generator)
    return (*rng.take_position(device, counters, generator, capture_checked=True), None)
