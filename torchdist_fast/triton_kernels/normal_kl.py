"""KL(p || q) between Normals, forward and backward, with the four parameters broadcast in the kernel.

With r = p_scale / q_scale and t = (p_loc - q_loc) / q_scale:
    kl = (r^2 + t^2 - 1) / 2 - (log p_scale - log q_scale)
(the log of each scale, never of a ratio that can under/overflow). Backward, per element:
    d/dp_loc = t / q_scale = -d/dq_loc,  d/dp_scale = (r^2 - 1) / p_scale,
    d/dq_scale = (1 - r^2 - t^2) / q_scale.
Each parameter is an operand of one of three kinds (constexpr ``*_KIND``): ``ABSENT`` (the
standard normal's 0 or 1, never loaded: the prior ``Normal(0., 1.)``), ``SCALAR`` (one element,
loaded once per program with its reciprocal and log) or ``TENSOR`` (broadcast through the layout).
Reference: ``torchdist_fast.kl.reference_normal_kl`` / ``reference_normal_kl_backward``.
"""
import torch
import triton
import triton.language as tl

from ..reference import reduce_to
from .layout import broadcast_offset, broadcast_args, grad_buffer, launch_splits, launcher

ABSENT, SCALAR, TENSOR = 0, 1, 2
BLOCK = 1024


@triton.jit
def _kl_operand(ptr, idx, mask, other: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr, s1, s2, s3, t0, t1, t2, t3):
    """The operand at output indices ``idx`` (float32 or float64 as stored, upcast by the caller)."""
    if KIND == 0:
        x = tl.full([BLOCK], other, tl.float32)
    elif KIND == 1:
        x = tl.load(ptr)
    else:
        x = tl.load(ptr + broadcast_offset(idx, s1, s2, s3, t0, t1, t2, t3), mask=mask, other=other)
    return x


@triton.jit
def _normal_kl_fwd_kernel(
    out_ptr, pl_ptr, ps_ptr, ql_ptr, qs_ptr, numel, pid_base,
    s1, s2, s3, pl_t0, pl_t1, pl_t2, pl_t3, ps_t0, ps_t1, ps_t2, ps_t3,
    ql_t0, ql_t1, ql_t2, ql_t3, qs_t0, qs_t1, qs_t2, qs_t3,
    BLOCK: tl.constexpr, PL_KIND: tl.constexpr, PS_KIND: tl.constexpr, QL_KIND: tl.constexpr, QS_KIND: tl.constexpr,
):
    idx = (tl.program_id(0).to(tl.int64) + pid_base) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < numel
    CDT: tl.constexpr = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
    pl = _kl_operand(pl_ptr, idx, mask, 0.0, PL_KIND, BLOCK, s1, s2, s3, pl_t0, pl_t1, pl_t2, pl_t3).to(CDT)
    ps = _kl_operand(ps_ptr, idx, mask, 1.0, PS_KIND, BLOCK, s1, s2, s3, ps_t0, ps_t1, ps_t2, ps_t3).to(CDT)
    ql = _kl_operand(ql_ptr, idx, mask, 0.0, QL_KIND, BLOCK, s1, s2, s3, ql_t0, ql_t1, ql_t2, ql_t3).to(CDT)
    qs = _kl_operand(qs_ptr, idx, mask, 1.0, QS_KIND, BLOCK, s1, s2, s3, qs_t0, qs_t1, qs_t2, qs_t3).to(CDT)
    # a scalar (or absent) q_scale: one reciprocal and one log per program, not per element
    inv_qs = 1.0 / qs
    r = ps * inv_qs
    t = (pl - ql) * inv_qs
    kl = 0.5 * (r * r + t * t - 1.0) - (tl.log(ps) - tl.log(qs))
    tl.store(out_ptr + idx, kl.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normal_kl_bwd_kernel(
    g_pl_ptr, g_ps_ptr, g_ql_ptr, g_qs_ptr, grad_ptr, pl_ptr, ps_ptr, ql_ptr, qs_ptr, numel, pid_base,
    s1, s2, s3, g_t0, g_t1, g_t2, g_t3, pl_t0, pl_t1, pl_t2, pl_t3, ps_t0, ps_t1, ps_t2, ps_t3,
    ql_t0, ql_t1, ql_t2, ql_t3, qs_t0, qs_t1, qs_t2, qs_t3,
    BLOCK: tl.constexpr, PL_KIND: tl.constexpr, PS_KIND: tl.constexpr, QL_KIND: tl.constexpr, QS_KIND: tl.constexpr,
    NEED_PL: tl.constexpr, NEED_PS: tl.constexpr, NEED_QL: tl.constexpr, NEED_QS: tl.constexpr,
):
    idx = (tl.program_id(0).to(tl.int64) + pid_base) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < numel
    CDT: tl.constexpr = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    g = tl.load(grad_ptr + broadcast_offset(idx, s1, s2, s3, g_t0, g_t1, g_t2, g_t3), mask=mask, other=0.0).to(CDT)
    pl = _kl_operand(pl_ptr, idx, mask, 0.0, PL_KIND, BLOCK, s1, s2, s3, pl_t0, pl_t1, pl_t2, pl_t3).to(CDT)
    ps = _kl_operand(ps_ptr, idx, mask, 1.0, PS_KIND, BLOCK, s1, s2, s3, ps_t0, ps_t1, ps_t2, ps_t3).to(CDT)
    ql = _kl_operand(ql_ptr, idx, mask, 0.0, QL_KIND, BLOCK, s1, s2, s3, ql_t0, ql_t1, ql_t2, ql_t3).to(CDT)
    qs = _kl_operand(qs_ptr, idx, mask, 1.0, QS_KIND, BLOCK, s1, s2, s3, qs_t0, qs_t1, qs_t2, qs_t3).to(CDT)
    inv_qs = 1.0 / qs
    r = ps * inv_qs
    t = (pl - ql) * inv_qs
    g_loc = g * t * inv_qs
    if NEED_PL:
        tl.store(g_pl_ptr + idx, g_loc.to(g_pl_ptr.dtype.element_ty), mask=mask)
    if NEED_QL:
        tl.store(g_ql_ptr + idx, (-g_loc).to(g_ql_ptr.dtype.element_ty), mask=mask)
    if NEED_PS:
        tl.store(g_ps_ptr + idx, (g * (r * r - 1.0) / ps).to(g_ps_ptr.dtype.element_ty), mask=mask)
    if NEED_QS:
        tl.store(g_qs_ptr + idx, (g * (1.0 - r * r - t * t) * inv_qs).to(g_qs_ptr.dtype.element_ty), mask=mask)


def _kind(t) -> int:
    if t is None:
        return ABSENT
    return SCALAR if t.numel() == 1 else TENSOR


def _present(params, like):
    """The parameters with ``like`` standing in for absent ones (never read: kind ABSENT)."""
    return [t if t is not None else like for t in params]


def normal_kl_fwd(out_shape, dtype, device, p_loc, p_scale, q_loc, q_scale):
    """KL elementwise over ``out_shape``; an absent (None) loc is 0 and an absent scale is 1."""
    params = (p_loc, p_scale, q_loc, q_scale)
    out = torch.empty(out_shape, dtype=dtype, device=device)
    numel = out.numel()
    if numel:
        kinds = [_kind(t) for t in params]
        # absent parameters need a pointer that is never read: an input, not out (an output passed twice
        # would alias two kernel outputs in a compiled graph: ops.expose_kernels)
        like = next((t for t in params if t is not None), None)
        tensors, layout = broadcast_args(out_shape, *_present(params, like if like is not None else out.new_zeros(())))
        for programs, numel_arg, pid_base in launch_splits(numel, BLOCK):
            launcher(_normal_kl_fwd_kernel, out)[(programs,)](
                out, *tensors, numel_arg, pid_base, *layout, BLOCK=BLOCK,
                PL_KIND=kinds[0], PS_KIND=kinds[1], QL_KIND=kinds[2], QS_KIND=kinds[3],
            )
    return out


def normal_kl_bwd(grad, p_loc, p_scale, q_loc, q_scale, output_mask):
    """Gradients for the four parameters, reduced to their shapes; None where not needed or absent."""
    params = (p_loc, p_scale, q_loc, q_scale)
    out_shape = tuple(grad.shape)
    need = [bool(m) and t is not None for m, t in zip(output_mask, params)]

    bufs = [grad_buffer(t, out_shape, n) for t, n in zip(params, need)]
    numel = grad.numel()
    if numel and any(need):
        dummy = grad  # for the outputs not asked for: an input, never an output twice (normal_log_prob_bwd)
        kinds = [_kind(t) for t in params]
        (g, *tensors), layout = broadcast_args(out_shape, grad, *_present(params, grad))
        for programs, numel_arg, pid_base in launch_splits(numel, BLOCK):
            launcher(_normal_kl_bwd_kernel, g)[(programs,)](
                *(b if b is not None else dummy for b in bufs), g, *tensors, numel_arg, pid_base, *layout,
                BLOCK=BLOCK, PL_KIND=kinds[0], PS_KIND=kinds[1], QL_KIND=kinds[2], QS_KIND=kinds[3],
                NEED_PL=need[0], NEED_PS=need[1], NEED_QL=need[2], NEED_QS=need[3],
            )
    return tuple(None if b is None else reduce_to(b, t.shape).to(t.dtype) for b, t in zip(bufs, params))


# The kernel inventory (``inventory.py``): the kernels above, and calls of the launchers that
# pick each of their variants (operand kinds: every parameter a tensor; the prior Normal(0, 1) as q).
KERNELS = ("_normal_kl_fwd_kernel", "_normal_kl_bwd_kernel")


def _cases():
    from .inventory import LaunchCase

    def params(dt, kinds):
        return [None if k == ABSENT else torch.empty(() if k == SCALAR else (4096,), dtype=dt) for k in kinds]

    out = []
    for label, kinds in (("tensors", (TENSOR,) * 4), ("prior q", (TENSOR, TENSOR, ABSENT, ABSENT))):
        out.append(LaunchCase(f"fwd {label}", lambda dt, kinds=kinds: normal_kl_fwd((4096,), dt, "cpu", *params(dt, kinds))))
        out.append(LaunchCase(f"bwd {label}", lambda dt, kinds=kinds: normal_kl_bwd(torch.empty((4096,), dtype=dt),
                                                                                    *params(dt, kinds), (True,) * 4)))
    return tuple(out)


LAUNCH_CASES = _cases()
