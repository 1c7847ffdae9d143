"""The KL family: ``normal_kl`` (KL(N(p_loc, p_scale) || N(q_loc, q_scale)) elementwise; an absent
parameter is the standard normal's loc 0 / scale 1) and ``normal_kl_backward``.

Kernels: ``triton_kernels/normal_kl.py``; reference: ``reference.normal_kl``; the dispatch from
``kl_divergence``: ``torchdist_fast/kl.py``.
"""
from __future__ import annotations

import torch

from .. import reference
from .checks import check_params, needed_only
from .launch import KernelFamily

KL = KernelFamily("kl")


def _kl_params_meta(params):
    """(shape, dtype, device) of normal_kl's output; an absent parameter is the standard normal's."""
    present = [t for t in params if t is not None]
    if not present:
        raise RuntimeError("torchdist_fast.normal_kl: at least one parameter must be a tensor")
    check_params(*present)
    return reference.broadcast_shape(*(t.shape for t in present)), present[0].dtype, present[0].device


@torch.library.custom_op(
    "torchdist_fast::normal_kl", mutates_args=(),
    schema="(Tensor? p_loc, Tensor? p_scale, Tensor? q_loc, Tensor? q_scale) -> Tensor",
)
def normal_kl(p_loc, p_scale, q_loc, q_scale):
    """KL(Normal(p_loc, p_scale) || Normal(q_loc, q_scale)) elementwise; None is loc 0 / scale 1."""
    shape, dtype, device = _kl_params_meta((p_loc, p_scale, q_loc, q_scale))
    launchers = KL.launchers(device)
    if launchers is not None:
        return launchers.normal_kl_fwd(shape, dtype, device, p_loc, p_scale, q_loc, q_scale)
    return reference.normal_kl(p_loc, p_scale, q_loc, q_scale)


@normal_kl.register_fake
def _(p_loc, p_scale, q_loc, q_scale):
    shape, dtype, device = _kl_params_meta((p_loc, p_scale, q_loc, q_scale))
    return torch.empty(shape, dtype=dtype, device=device)


@torch.library.custom_op(
    "torchdist_fast::normal_kl_backward", mutates_args=(),
    schema="(Tensor grad, Tensor? p_loc, Tensor? p_scale, Tensor? q_loc, Tensor? q_scale, bool[] output_mask)"
    " -> (Tensor, Tensor, Tensor, Tensor)",
)
def normal_kl_backward(grad, p_loc, p_scale, q_loc, q_scale, output_mask):
    """Gradients for the four parameters; an unneeded or absent one is an empty tensor."""
    params = (p_loc, p_scale, q_loc, q_scale)
    launchers = KL.launchers(grad.device)
    if launchers is not None:
        grads = launchers.normal_kl_bwd(grad, *params, output_mask)
    else:
        grads = reference.normal_kl_backward(grad, *params, output_mask)
    return tuple(g if g is not None else grad.new_empty(0) for g in grads)


@normal_kl_backward.register_fake
def _(grad, p_loc, p_scale, q_loc, q_scale, output_mask):
    params = (p_loc, p_scale, q_loc, q_scale)
    return tuple(
        t.new_empty(t.shape) if need and t is not None else grad.new_empty(0) for t, need in zip(params, output_mask)
    )


def _kl_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # the parameters themselves: no new memory


def _kl_op_grads(ctx, grad):
    params = ctx.saved_tensors
    mask = [bool(n) and t is not None for n, t in zip(ctx.needs_input_grad, params)]
    return needed_only(torch.ops.torchdist_fast.normal_kl_backward(grad, *params, mask), mask)


normal_kl.register_autograd(_kl_op_grads, setup_context=_kl_setup_context)

for _op in (normal_kl, normal_kl_backward):
    KL.register(_op, launches=("normal_kl",))
