"""``kl_divergence`` between Normals: the dispatch to the fused op ``torchdist_fast::normal_kl``
(``ops/kl.py``; its reference: ``reference.normal_kl``), and the registrations that make
``torch.distributions.kl_divergence`` dispatch to it.

Registered for ``(torchdist_fast.Normal, torchdist_fast.Normal)`` and both mixed pairs with
torch's ``Normal``; inside ``torchdist_fast.patch()`` also for torch's own pair. Where it runs, by
the rule of ``log_prob`` (``routing.stable_log_prob_on``):

* CUDA tensors (and CPU under ``cpu_kernel("triton")``): one fused kernel forward, one backward,
  and nothing of the output's size saved for backward (the op saves its inputs).
* CPU tensors by default: torch's own ``_kl_normal_normal``, bit for bit.
* CPU under ``cpu_sampling("philox")`` or ``cpu_log_prob("stable")``: the op's reference.

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
from .distribution import Normal
from .reference import FLOAT_DTYPES
from .routing import TorchNormal, promote_float, stable_log_prob_on

__all__ = ["kl_normal_normal"]


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
    if any(t.device != device for t in sized) or device.type not in ("cpu", "cuda") or not stable_log_prob_on(device):
        return None
    dtype = sized[0].dtype
    for t in sized[1:]:
        dtype = promote_float(dtype, t.dtype)
    if dtype not in FLOAT_DTYPES:
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


for _pair in ((Normal, Normal), (Normal, TorchNormal), (TorchNormal, Normal)):
    register_kl(*_pair)(kl_normal_normal)
