"""``kl_divergence`` between Normals: the fused op ``torchdist_fast::normal_kl``, its reference, and
the registrations that make ``torch.distributions.kl_divergence`` dispatch to it.

Registered for ``(torchdist_fast.Normal, torchdist_fast.Normal)`` and both mixed pairs with
torch's ``Normal``; inside ``torchdist_fast.patch()`` also for torch's own pair. Where it runs, by
the rule of ``log_prob`` (``distribution._stable_log_prob_on``):

* CUDA tensors (and CPU under ``cpu_kernel("triton")``): one fused kernel forward, one backward,
  and nothing of the output's size saved for backward (the op saves its inputs).
* CPU tensors by default: torch's own ``_kl_normal_normal``, bit for bit.
* CPU under ``cpu_sampling("philox")`` or ``cpu_log_prob("stable")``: the reference below.

The formula never takes the log of a squared ratio (torch's ``var_ratio.log()`` underflows to
-inf when ``p_scale / q_scale`` < 1e-23 in float32): with r = p_scale / q_scale and
t = (p_loc - q_loc) / q_scale, ``kl = (r^2 + t^2 - 1) / 2 - (log p_scale - log q_scale)``.

The standard-normal prior is specialized: a loc or scale that is a CPU zero-dim tensor equal to
0 or 1 (what ``Normal(0., 1.)`` holds) is passed as absent and never loaded; any other zero-dim
or one-element parameter is loaded once per program. Full-size or row tensors of zeros and ones
are read like any tensor (recognizing their values would need a host-device synchronization).
"""
from __future__ import annotations

import torch
from torch.distributions.kl import _kl_normal_normal as _torch_kl_normal_normal
from torch.distributions.kl import register_kl

from . import ops  # noqa: F401  (registers torch.ops.torchdist_fast.normal_kl)
from .distribution import Normal, _TorchNormal, _promote_float, _stable_log_prob_on
from .reference import compute_dtype, reduce_to

__all__ = ["kl_normal_normal", "reference_normal_kl", "reference_normal_kl_backward"]


# ---------------------------------------------------------------------------------- reference
def _materialize(params, dtype, device):
    """The four parameters in the compute dtype; None becomes the standard normal's 0 or 1."""
    cdt = compute_dtype(dtype)
    defaults = (0.0, 1.0, 0.0, 1.0)
    return [
        torch.tensor(d, dtype=cdt, device=device) if t is None else t.to(cdt) for t, d in zip(params, defaults)
    ]


def reference_normal_kl(p_loc, p_scale, q_loc, q_scale):
    """KL(N(p_loc, p_scale) || N(q_loc, q_scale)) elementwise (None: loc 0, scale 1); half types in float32."""
    present = [t for t in (p_loc, p_scale, q_loc, q_scale) if t is not None]
    dtype, device = present[0].dtype, present[0].device
    pl, ps, ql, qs = _materialize((p_loc, p_scale, q_loc, q_scale), dtype, device)
    shape = torch.broadcast_shapes(*(t.shape for t in present))
    inv_qs = 1.0 / qs
    r = ps * inv_qs
    t = (pl - ql) * inv_qs
    kl = 0.5 * (r * r + t * t - 1.0) - (ps.log() - qs.log())
    return kl.expand(shape).to(dtype).contiguous()


def reference_normal_kl_backward(grad, p_loc, p_scale, q_loc, q_scale, output_mask):
    """Gradients for (p_loc, p_scale, q_loc, q_scale), reduced to their shapes; None where not needed."""
    params = (p_loc, p_scale, q_loc, q_scale)
    pl, ps, ql, qs = _materialize(params, grad.dtype, grad.device)
    g = grad.to(compute_dtype(grad.dtype))
    inv_qs = 1.0 / qs
    r = ps * inv_qs
    t = (pl - ql) * inv_qs
    g_loc = g * t * inv_qs
    elementwise = (g_loc, g * (r * r - 1.0) / ps, -g_loc, g * (1.0 - r * r - t * t) * inv_qs)
    out = []
    for e, p, need in zip(elementwise, params, output_mask):
        if not need or p is None:
            out.append(None)
        else:
            out.append(reduce_to(e.expand(grad.shape), p.shape).to(p.dtype).contiguous())
    return tuple(out)


# ---------------------------------------------------------------------------------- dispatch
def _standard_or_tensor(t: torch.Tensor, standard: float):
    """None for a CPU zero-dim tensor equal to ``standard`` (read on the host: no device sync)."""
    if t.dim() == 0 and t.device.type == "cpu" and not torch.compiler.is_compiling() and t.item() == standard:
        return None
    return t


def _fused_operands(p, q):
    """(p_loc, p_scale, q_loc, q_scale) for the op (None: the standard normal's), or None to use torch's."""
    params = [p.loc, p.scale, q.loc, q.scale]
    if not all(isinstance(t, torch.Tensor) and t.dtype.is_floating_point for t in params):
        return None
    sized = [t for t in params if t.dim() > 0] or params
    device = sized[0].device
    if any(t.device != device for t in sized) or device.type not in ("cpu", "cuda") or not _stable_log_prob_on(device):
        return None
    dtype = sized[0].dtype
    for t in sized[1:]:
        dtype = _promote_float(dtype, t.dtype)
    if dtype not in ops.FLOAT_DTYPES:
        return None
    out = []
    for t, standard in zip(params, (0.0, 1.0, 0.0, 1.0)):
        t = _standard_or_tensor(t, standard)
        if t is not None and t.device != device and t.dim() == 0 and not torch.compiler.is_compiling():
            # a CPU scalar beside CUDA tensors: torch passes it by value; a copy would synchronize
            t = torch.full((), t.item(), dtype=dtype, device=device)
        out.append(None if t is None else t.to(device=device, dtype=dtype))
    if all(t is None for t in out):  # KL(N(0, 1) || N(0, 1)): keep one operand for shape/dtype
        out[0] = params[0].to(device=device, dtype=dtype)
    return out


def kl_normal_normal(p, q):
    """KL(p || q) for two Normals: the fused op where it runs, else torch's own code."""
    operands = _fused_operands(p, q)
    if operands is None:
        return _torch_kl_normal_normal(p, q)
    return torch.ops.torchdist_fast.normal_kl(*operands)


for _pair in ((Normal, Normal), (Normal, _TorchNormal), (_TorchNormal, Normal)):
    register_kl(*_pair)(kl_normal_normal)
