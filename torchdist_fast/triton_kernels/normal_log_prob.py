"""Normal log_prob, forward and backward, with value/loc/scale broadcast in the kernel.

log_prob = -((value - loc) / scale)^2 / 2 - log(scale) - log(sqrt(2 pi)).
Backward, with y = (value - loc) / scale: d/dloc = g y / scale = -d/dvalue,
d/dscale = g (y^2 - 1) / scale. One kernel writes the element grads that are needed.
References: ``reference.normal_log_prob`` / ``reference.normal_log_prob_backward``.
"""
import torch
import triton
import triton.language as tl

from .. import reference
from ..reference import reduce_to
from .layout import (broadcast_offset, flat_operand, tile_coords, tile_operand, block_counters, broadcast_args, grad_buffer,
                     launch_splits, launcher, needs_idx64, tile_grid, tile_layout)

LOG_SQRT_2PI = tl.constexpr(reference.LOG_SQRT_2PI)


@triton.jit
def _normal_log_prob_fwd_kernel(
    out_ptr, value_ptr, loc_ptr, scale_ptr, numel, pid_base,
    s1, s2, s3, v_t0, v_t1, v_t2, v_t3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1, scale_t2, scale_t3,
    BLOCK: tl.constexpr, LOC_SCALAR: tl.constexpr, SCALE_SCALAR: tl.constexpr,
):
    idx = (tl.program_id(0).to(tl.int64) + pid_base) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < numel
    CDT: tl.constexpr = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
    v = tl.load(value_ptr + broadcast_offset(idx, s1, s2, s3, v_t0, v_t1, v_t2, v_t3), mask=mask, other=0.0).to(CDT)
    loc = flat_operand(loc_ptr, idx, mask, 0.0, LOC_SCALAR, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3).to(CDT)
    scale = flat_operand(scale_ptr, idx, mask, 1.0, SCALE_SCALAR, s1, s2, s3, scale_t0, scale_t1, scale_t2, scale_t3).to(CDT)
    if SCALE_SCALAR:
        # 1/scale and log(scale) once per program
        y = (v - loc) * (1.0 / scale)
    else:
        y = (v - loc) / scale
    log_prob = -0.5 * y * y - (tl.log(scale) + LOG_SQRT_2PI)
    tl.store(out_ptr + idx, log_prob.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normal_log_prob_bwd_kernel(
    grad_value_ptr, grad_loc_ptr, grad_scale_ptr, grad_ptr, value_ptr, loc_ptr, scale_ptr, numel, pid_base,
    s1, s2, s3, g_t0, g_t1, g_t2, g_t3, v_t0, v_t1, v_t2, v_t3,
    loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1, scale_t2, scale_t3,
    BLOCK: tl.constexpr, NEED_VALUE: tl.constexpr, NEED_LOC: tl.constexpr, NEED_SCALE: tl.constexpr,
    LOC_SCALAR: tl.constexpr, SCALE_SCALAR: tl.constexpr,
):
    idx = (tl.program_id(0).to(tl.int64) + pid_base) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < numel
    CDT: tl.constexpr = tl.float64 if value_ptr.dtype.element_ty == tl.float64 else tl.float32
    g = tl.load(grad_ptr + broadcast_offset(idx, s1, s2, s3, g_t0, g_t1, g_t2, g_t3), mask=mask, other=0.0).to(CDT)
    v = tl.load(value_ptr + broadcast_offset(idx, s1, s2, s3, v_t0, v_t1, v_t2, v_t3), mask=mask, other=0.0).to(CDT)
    loc = flat_operand(loc_ptr, idx, mask, 0.0, LOC_SCALAR, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3).to(CDT)
    scale = flat_operand(scale_ptr, idx, mask, 1.0, SCALE_SCALAR, s1, s2, s3, scale_t0, scale_t1, scale_t2, scale_t3).to(CDT)
    if SCALE_SCALAR:
        inv_scale = 1.0 / scale  # once per program
        y = (v - loc) * inv_scale
        g_loc = g * y * inv_scale
    else:
        y = (v - loc) / scale
        g_loc = g * y / scale
    if NEED_VALUE:
        tl.store(grad_value_ptr + idx, (-g_loc).to(grad_value_ptr.dtype.element_ty), mask=mask)
    if NEED_LOC:
        tl.store(grad_loc_ptr + idx, g_loc.to(grad_loc_ptr.dtype.element_ty), mask=mask)
    if NEED_SCALE:
        if SCALE_SCALAR:
            g_scale = g * (y * y - 1.0) * inv_scale
        else:
            g_scale = g * (y * y - 1.0) / scale
        tl.store(grad_scale_ptr + idx, g_scale.to(grad_scale_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normal_log_prob_fwd_2d_kernel(
    out_ptr, value_ptr, loc_ptr, scale_ptr, R, D, v_t0, v_t1, loc_t0, loc_t1, scale_t0, scale_t1,
    BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr, V_KIND: tl.constexpr, LOC_KIND: tl.constexpr, SCALE_KIND: tl.constexpr,
):
    # the output as R rows of D elements, one BR x BC tile per program (layout.tile_layout)
    rows, cols, idx, mask, pc = tile_coords(R, D, BR, BC, IDX64)
    CDT: tl.constexpr = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
    v = tile_operand(value_ptr, rows, cols, R, D, v_t0, v_t1, V_KIND, 0.0).to(CDT)
    loc = tile_operand(loc_ptr, rows, cols, R, D, loc_t0, loc_t1, LOC_KIND, 0.0).to(CDT)
    scale = tile_operand(scale_ptr, rows, cols, R, D, scale_t0, scale_t1, SCALE_KIND, 1.0).to(CDT)
    # 1/scale and log(scale) once per distinct scale element of the tile
    inv_scale = 1.0 / scale
    y = (v - loc) * inv_scale
    log_prob = -0.5 * y * y - (tl.log(scale) + LOG_SQRT_2PI)
    tl.store(out_ptr + idx, log_prob.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normal_log_prob_bwd_2d_kernel(
    grad_value_ptr, grad_loc_ptr, grad_scale_ptr, grad_ptr, value_ptr, loc_ptr, scale_ptr, R, D,
    g_t0, g_t1, v_t0, v_t1, loc_t0, loc_t1, scale_t0, scale_t1,
    BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr, NEED_VALUE: tl.constexpr, NEED_LOC: tl.constexpr, NEED_SCALE: tl.constexpr,
    G_KIND: tl.constexpr, V_KIND: tl.constexpr, LOC_KIND: tl.constexpr, SCALE_KIND: tl.constexpr,
):
    rows, cols, idx, mask, pc = tile_coords(R, D, BR, BC, IDX64)
    CDT: tl.constexpr = tl.float64 if value_ptr.dtype.element_ty == tl.float64 else tl.float32
    g = tile_operand(grad_ptr, rows, cols, R, D, g_t0, g_t1, G_KIND, 0.0).to(CDT)
    v = tile_operand(value_ptr, rows, cols, R, D, v_t0, v_t1, V_KIND, 0.0).to(CDT)
    loc = tile_operand(loc_ptr, rows, cols, R, D, loc_t0, loc_t1, LOC_KIND, 0.0).to(CDT)
    scale = tile_operand(scale_ptr, rows, cols, R, D, scale_t0, scale_t1, SCALE_KIND, 1.0).to(CDT)
    inv_scale = 1.0 / scale
    y = (v - loc) * inv_scale
    g_loc = g * y * inv_scale
    # every output is an element buffer of the full tile (broadcast operands are reduced afterwards)
    zero = tl.zeros((BR, BC), dtype=CDT)
    if NEED_VALUE:
        tl.store(grad_value_ptr + idx, (zero - g_loc).to(grad_value_ptr.dtype.element_ty), mask=mask)
    if NEED_LOC:
        tl.store(grad_loc_ptr + idx, (zero + g_loc).to(grad_loc_ptr.dtype.element_ty), mask=mask)
    if NEED_SCALE:
        g_scale = zero + g * (y * y - 1.0) * inv_scale
        tl.store(grad_scale_ptr + idx, g_scale.to(grad_scale_ptr.dtype.element_ty), mask=mask)


def _elements_block(dtype) -> int:
    return 4 * block_counters(dtype)


def normal_log_prob_fwd(value, loc, scale):
    out_shape = reference.broadcast_shape(value.shape, loc.shape, scale.shape)
    out = torch.empty(out_shape, dtype=value.dtype, device=value.device)
    numel = out.numel()
    if numel:
        block = _elements_block(value.dtype)
        tile = tile_layout(out_shape, value, loc, scale, elements=block, need_d4=False)
        if tile is not None:
            R, D, ops, br, bc = tile
            (vk, v0, v1), (lk, l0, l1), (sk, s0, s1) = ops
            launcher(_normal_log_prob_fwd_2d_kernel, out)[tile_grid(R, D, br, bc)](
                out, value, loc, scale, R, D, v0, v1, l0, l1, s0, s1, BR=br, BC=bc, IDX64=needs_idx64(R, D, br, ops),
                V_KIND=vk, LOC_KIND=lk, SCALE_KIND=sk)
            return out
        loc_scalar, scale_scalar = loc.numel() == 1, scale.numel() == 1
        (value, loc, scale), layout = broadcast_args(out_shape, value, loc, scale)
        for programs, numel_arg, pid_base in launch_splits(numel, block):
            launcher(_normal_log_prob_fwd_kernel, out)[(programs,)](
                out, value, loc, scale, numel_arg, pid_base, *layout, BLOCK=block, LOC_SCALAR=loc_scalar,
                SCALE_SCALAR=scale_scalar)
    return out


def normal_log_prob_bwd(grad, value, loc, scale, output_mask):
    """(grad_value, grad_loc, grad_scale) reduced to the inputs' shapes; None where not needed."""
    out_shape = tuple(grad.shape)
    inputs = (value, loc, scale)

    bufs = [grad_buffer(t, out_shape, need) for t, need in zip(inputs, output_mask)]
    numel = grad.numel()
    if numel and any(output_mask):
        # the pointer passed for an output not asked for (never written): an input, as an output passed
        # twice would alias two kernel outputs in a compiled graph (ops.expose_kernels)
        dummy = grad
        block = _elements_block(value.dtype)
        tile = tile_layout(out_shape, grad, value, loc, scale, elements=block, need_d4=False)
        if tile is not None:
            R, D, ops, br, bc = tile
            (gk, g0, g1), (vk, v0, v1), (lk, l0, l1), (sk, s0, s1) = ops
            launcher(_normal_log_prob_bwd_2d_kernel, grad)[tile_grid(R, D, br, bc)](
                *(b if b is not None else dummy for b in bufs), grad, value, loc, scale, R, D,
                g0, g1, v0, v1, l0, l1, s0, s1, BR=br, BC=bc, IDX64=needs_idx64(R, D, br, ops),
                NEED_VALUE=output_mask[0], NEED_LOC=output_mask[1], NEED_SCALE=output_mask[2],
                G_KIND=gk, V_KIND=vk, LOC_KIND=lk, SCALE_KIND=sk,
            )
            return tuple(None if b is None else reduce_to(b, t.shape).to(t.dtype) for b, t in zip(bufs, inputs))
        (g, v, m, s), layout = broadcast_args(out_shape, grad, value, loc, scale)
        for programs, numel_arg, pid_base in launch_splits(numel, block):
            launcher(_normal_log_prob_bwd_kernel, g)[(programs,)](
                *(b if b is not None else dummy for b in bufs), g, v, m, s, numel_arg, pid_base, *layout,
                BLOCK=block, NEED_VALUE=output_mask[0], NEED_LOC=output_mask[1], NEED_SCALE=output_mask[2],
                LOC_SCALAR=loc.numel() == 1, SCALE_SCALAR=scale.numel() == 1,
            )
    return tuple(None if b is None else reduce_to(b, t.shape).to(t.dtype) for b, t in zip(bufs, inputs))


# The kernel inventory (``inventory.py``): the kernels above, and calls of the launchers that
# pick each of their variants (value full; loc/scale in the broadcast patterns of normal_rsample).
KERNELS = ("_normal_log_prob_fwd_kernel", "_normal_log_prob_bwd_kernel", "_normal_log_prob_fwd_2d_kernel",
           "_normal_log_prob_bwd_2d_kernel")


def _cases():
    from .inventory import LaunchCase
    from .normal_rsample import PATTERNS

    def shapes(loc_shape, scale_shape, sample_shape):
        return tuple(sample_shape) + tuple(torch.broadcast_shapes(loc_shape, scale_shape)), loc_shape, scale_shape

    def fwd(*pattern):
        shape, loc, scale = shapes(*pattern)
        return lambda dt: normal_log_prob_fwd(torch.empty(shape, dtype=dt), torch.empty(loc, dtype=dt),
                                              torch.empty(scale, dtype=dt))

    def bwd(*pattern, mask):
        shape, loc, scale = shapes(*pattern)
        return lambda dt: normal_log_prob_bwd(torch.empty(shape, dtype=dt), torch.empty(shape, dtype=dt),
                                              torch.empty(loc, dtype=dt), torch.empty(scale, dtype=dt), mask)

    out = []
    for label, *pattern in PATTERNS:
        out.append(LaunchCase(f"fwd {label}", fwd(*pattern)))
        for mask in ((True, True, True),):
            out.append(LaunchCase(f"bwd {'value+' if mask[0] else ''}loc+scale {label}", bwd(*pattern, mask=mask)))
    return tuple(out)


LAUNCH_CASES = _cases()
