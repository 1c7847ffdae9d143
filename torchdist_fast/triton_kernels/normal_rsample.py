"""Normal rsample (optionally with log_prob of the sample), forward and backward.

Forward: z = loc + scale * eps with eps generated in the kernel; log_prob(z) = -eps^2/2 -
log(scale) - log(sqrt(2 pi)) comes from the same registers. Backward regenerates eps from
(seed, offset), so autograd keeps nothing of the output's size. grad_loc needs no kernel
(it is grad_z, summed over broadcast dimensions); the kernel writes grad_scale elements.
References: ``reference.normal_rsample`` / ``reference.normal_rsample_backward``.
"""
import functools
import math

import torch
import triton
import triton.language as tl

from .. import reference
from ..reference import compute_dtype, reduce_to
from .layout import (block_counters, broadcast_args, broadcast_layout_of, broadcast_offset, fast_math, flat_operand,
                     launch_splits, launcher, layout_args, needs_idx64, position_args, tile_coords, tile_grid,
                     tile_layout, tile_layout_of, tile_operand)
from .philox import POSITION_ARGS, block_indices, position_words, stream_block, stream_tile


LOG_SQRT_2PI = tl.constexpr(reference.LOG_SQRT_2PI)


@triton.jit(do_not_specialize=POSITION_ARGS)
def _normal_rsample_fwd_kernel(
    z_ptr, log_prob_ptr, loc_ptr, scale_ptr, numel, pid_base,
    s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1, scale_t2, scale_t3,
    seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, position_in_memory,
    BLOCK: tl.constexpr, WITH_LOG_PROB: tl.constexpr, LOC_SCALAR: tl.constexpr, SCALE_SCALAR: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    seed_lo, seed_hi, offset_lo, offset_hi = position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
                                                             position_in_memory)
    pid = tl.program_id(0).to(tl.int64) + pid_base
    IS_FP64: tl.constexpr = z_ptr.dtype.element_ty == tl.float64
    PAIRS: tl.constexpr = z_ptr.dtype.element_ty.primitive_bitwidth == 16
    eps = stream_block(pid, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK, IS_FP64, FAST_MATH, PAIRS)
    idx = block_indices(pid, BLOCK)
    mask = idx < numel
    loc = flat_operand(loc_ptr, idx, mask, 0.0, LOC_SCALAR, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3)
    scale = flat_operand(scale_ptr, idx, mask, 1.0, SCALE_SCALAR, s1, s2, s3, scale_t0, scale_t1, scale_t2, scale_t3)
    scale = scale.to(eps.dtype)
    z = loc.to(eps.dtype) + scale * eps
    tl.store(z_ptr + idx, z.to(z_ptr.dtype.element_ty), mask=mask)
    if WITH_LOG_PROB:
        # log(scale) once per program when scale is one element
        log_prob = -0.5 * eps * eps - (tl.log(scale) + LOG_SQRT_2PI)
        tl.store(log_prob_ptr + idx, log_prob.to(log_prob_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=POSITION_ARGS)
def _normal_rsample_bwd_kernel(
    grad_scale_ptr, grad_z_ptr, grad_log_prob_ptr, scale_ptr, numel, pid_base,
    s1, s2, s3, gz_t0, gz_t1, gz_t2, gz_t3, glp_t0, glp_t1, glp_t2, glp_t3, scale_t0, scale_t1, scale_t2, scale_t3,
    seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, position_in_memory,
    BLOCK: tl.constexpr, HAS_GRAD_Z: tl.constexpr, HAS_GRAD_LOG_PROB: tl.constexpr, SCALE_SCALAR: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    seed_lo, seed_hi, offset_lo, offset_hi = position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
                                                             position_in_memory)
    pid = tl.program_id(0).to(tl.int64) + pid_base
    IS_FP64: tl.constexpr = scale_ptr.dtype.element_ty == tl.float64
    PAIRS: tl.constexpr = scale_ptr.dtype.element_ty.primitive_bitwidth == 16
    eps = stream_block(pid, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK, IS_FP64, FAST_MATH, PAIRS)
    idx = block_indices(pid, BLOCK)
    mask = idx < numel
    grad_scale = tl.zeros_like(eps)
    if HAS_GRAD_Z:
        gz = tl.load(grad_z_ptr + broadcast_offset(idx, s1, s2, s3, gz_t0, gz_t1, gz_t2, gz_t3), mask=mask, other=0.0)
        grad_scale += gz.to(eps.dtype) * eps
    if HAS_GRAD_LOG_PROB:
        glp = tl.load(grad_log_prob_ptr + broadcast_offset(idx, s1, s2, s3, glp_t0, glp_t1, glp_t2, glp_t3), mask=mask, other=0.0)
        scale = flat_operand(scale_ptr, idx, mask, 1.0, SCALE_SCALAR, s1, s2, s3, scale_t0, scale_t1, scale_t2, scale_t3)
        # 1 / scale once per program when scale is one element
        grad_scale -= glp.to(eps.dtype) * (1.0 / scale.to(eps.dtype))
    tl.store(grad_scale_ptr + idx, grad_scale.to(grad_scale_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=POSITION_ARGS)
def _normal_rsample_fwd_2d_kernel(
    z_ptr, log_prob_ptr, loc_ptr, scale_ptr, R, D, loc_t0, loc_t1, scale_t0, scale_t1,
    seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, position_in_memory,
    BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr, WITH_LOG_PROB: tl.constexpr, LOC_KIND: tl.constexpr,
    SCALE_KIND: tl.constexpr, FAST_MATH: tl.constexpr,
):
    seed_lo, seed_hi, offset_lo, offset_hi = position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
                                                             position_in_memory)
    # the output as R rows of D elements, one BR x BC tile per program (layout.tile_layout)
    rows, cols, idx, mask, pc = tile_coords(R, D, BR, BC, IDX64)
    IS_FP64: tl.constexpr = z_ptr.dtype.element_ty == tl.float64
    PAIRS: tl.constexpr = z_ptr.dtype.element_ty.primitive_bitwidth == 16
    eps = stream_tile(rows, pc, D, seed_lo, seed_hi, offset_lo, offset_hi, BC, IS_FP64, FAST_MATH, PAIRS)
    loc = tile_operand(loc_ptr, rows, cols, R, D, loc_t0, loc_t1, LOC_KIND, 0.0).to(eps.dtype)
    scale = tile_operand(scale_ptr, rows, cols, R, D, scale_t0, scale_t1, SCALE_KIND, 1.0).to(eps.dtype)
    z = loc + scale * eps
    tl.store(z_ptr + idx, z.to(z_ptr.dtype.element_ty), mask=mask)
    if WITH_LOG_PROB:
        # log(scale) once per distinct scale element of the tile (a row, a column or one value)
        log_prob = -0.5 * eps * eps - (tl.log(scale) + LOG_SQRT_2PI)
        tl.store(log_prob_ptr + idx, log_prob.to(log_prob_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=POSITION_ARGS)
def _normal_rsample_bwd_2d_kernel(
    grad_scale_ptr, grad_z_ptr, grad_log_prob_ptr, scale_ptr, R, D,
    gz_t0, gz_t1, glp_t0, glp_t1, scale_t0, scale_t1,
    seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, position_in_memory,
    BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr, HAS_GRAD_Z: tl.constexpr, HAS_GRAD_LOG_PROB: tl.constexpr,
    GZ_KIND: tl.constexpr, GLP_KIND: tl.constexpr, SCALE_KIND: tl.constexpr, FAST_MATH: tl.constexpr,
):
    seed_lo, seed_hi, offset_lo, offset_hi = position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
                                                             position_in_memory)
    rows, cols, idx, mask, pc = tile_coords(R, D, BR, BC, IDX64)
    IS_FP64: tl.constexpr = scale_ptr.dtype.element_ty == tl.float64
    PAIRS: tl.constexpr = scale_ptr.dtype.element_ty.primitive_bitwidth == 16
    eps = stream_tile(rows, pc, D, seed_lo, seed_hi, offset_lo, offset_hi, BC, IS_FP64, FAST_MATH, PAIRS)
    grad_scale = tl.zeros_like(eps)
    if HAS_GRAD_Z:
        gz = tile_operand(grad_z_ptr, rows, cols, R, D, gz_t0, gz_t1, GZ_KIND, 0.0)
        grad_scale += gz.to(eps.dtype) * eps
    if HAS_GRAD_LOG_PROB:
        glp = tile_operand(grad_log_prob_ptr, rows, cols, R, D, glp_t0, glp_t1, GLP_KIND, 0.0)
        scale = tile_operand(scale_ptr, rows, cols, R, D, scale_t0, scale_t1, SCALE_KIND, 1.0)
        grad_scale -= glp.to(eps.dtype) * (1.0 / scale.to(eps.dtype))
    tl.store(grad_scale_ptr + idx, grad_scale.to(grad_scale_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=1024)
def _fwd_plan(sample_shape: tuple, loc_meta: tuple, scale_meta: tuple, dtype, with_log_prob: bool, fast: bool):
    """How ``normal_rsample_fwd`` launches for these shapes and strides, computed once per pattern
    (a training loop repeats a few; the lookup is the whole per-call cost):
    (out_shape, tiled, [(grid, shape args)], constexprs); tiled is None when the operands must first
    be copied (a broadcast that does not coalesce into ``MAX_DIMS`` dims)."""
    out_shape = sample_shape + reference.broadcast_shape(loc_meta[0], scale_meta[0])
    metas = (loc_meta, scale_meta)
    numel = math.prod(out_shape)
    block = block_counters(dtype)
    # 16-bit z alone: taller tiles amortize the per-column work (96 registers; with log_prob they would need ~150)
    wide = dtype.itemsize == 2 and not with_log_prob
    tile = tile_layout_of(out_shape, metas, (8 if wide else 4) * block, True) if numel else None
    if tile is not None:
        R, D, ops, br, bc = tile
        (lk, lt0, lt1), (sk, st0, st1) = ops
        constexprs = dict(BR=br, BC=bc, IDX64=needs_idx64(R, D, br, ops), WITH_LOG_PROB=with_log_prob, LOC_KIND=lk,
                          SCALE_KIND=sk, FAST_MATH=fast)
        return out_shape, True, [(tile_grid(R, D, br, bc), (R, D, lt0, lt1, st0, st1))], constexprs
    layout = broadcast_layout_of(out_shape, metas) if numel else None
    if layout is None:
        return out_shape, None, [], {}
    flat = layout_args(layout)
    constexprs = dict(BLOCK=block, WITH_LOG_PROB=with_log_prob, LOC_SCALAR=math.prod(loc_meta[0]) == 1,
                      SCALE_SCALAR=math.prod(scale_meta[0]) == 1, FAST_MATH=fast)
    launches = [((programs,), (numel_arg, pid_base, *flat)) for programs, numel_arg, pid_base in launch_splits(numel, 4 * block)]
    return out_shape, False, launches, constexprs


def normal_rsample_fwd(loc, scale, sample_shape, seed: int, offset: int, with_log_prob: bool, position=None):
    """(z or (z, log_prob)); ``position``: the stream position in device memory instead of
    ``seed``/``offset`` (``layout.position_args``)."""
    fast = fast_math(loc)
    out_shape, tiled, launches, constexprs = _fwd_plan(
        tuple(sample_shape), (loc.shape, loc.stride()), (scale.shape, scale.stride()), loc.dtype, with_log_prob, fast)
    if out_shape == loc.shape:  # the common case; empty_like is the cheapest allocation from Python
        z = torch.empty_like(loc, memory_format=torch.contiguous_format)
    else:
        z = torch.empty(out_shape, dtype=loc.dtype, device=loc.device)
    # without log_prob its pointer is never written; an input then, not z again (an output passed
    # twice would alias two kernel outputs in a compiled graph: ops.expose_kernels)
    log_prob = torch.empty_like(z) if with_log_prob else loc
    if tiled is None and z.numel():  # rare: irreducible broadcast across > MAX_DIMS dims; expanded copies
        (loc, scale), _ = broadcast_args(out_shape, loc, scale)
        _, tiled, launches, constexprs = _fwd_plan((), (loc.shape, loc.stride()), (scale.shape, scale.stride()),
                                                   loc.dtype, with_log_prob, fast)
    if launches:
        kernel = launcher(_normal_rsample_fwd_2d_kernel if tiled else _normal_rsample_fwd_kernel, z)
        words = position_args(seed, offset, position, z.device)
        for grid, args in launches:
            kernel[grid](z, log_prob, loc, scale, *args, *words, **constexprs)
    return (z, log_prob) if with_log_prob else z


def normal_rsample_bwd(grad_z, grad_log_prob, scale, seed: int, offset: int, position=None):
    """grad_scale reduced to scale.shape; either grad may be None (grad_loc needs no kernel)."""
    ref = grad_z if grad_z is not None else grad_log_prob
    out_shape = tuple(ref.shape)
    # element grads are summed over broadcast dims: keep them in the compute dtype until then
    needs_reduction = tuple(scale.shape) != out_shape
    grad_scale = torch.empty(out_shape, dtype=compute_dtype(scale.dtype) if needs_reduction else scale.dtype, device=scale.device)
    numel = grad_scale.numel()
    if numel:
        gz = grad_z if grad_z is not None else scale
        glp = grad_log_prob if grad_log_prob is not None else scale
        block = block_counters(scale.dtype)
        words = position_args(seed, offset, position, grad_scale.device)
        tile = tile_layout(out_shape, gz, glp, scale, elements=4 * block, need_d4=True)
        if tile is not None:
            R, D, ops, br, bc = tile
            (gk, g0, g1), (pk, p0, p1), (sk, st0, st1) = ops
            launcher(_normal_rsample_bwd_2d_kernel, grad_scale)[tile_grid(R, D, br, bc)](
                grad_scale, gz, glp, scale, R, D, g0, g1, p0, p1, st0, st1,
                *words, BR=br, BC=bc, IDX64=needs_idx64(R, D, br, ops),
                HAS_GRAD_Z=grad_z is not None, HAS_GRAD_LOG_PROB=grad_log_prob is not None,
                GZ_KIND=gk, GLP_KIND=pk, SCALE_KIND=sk, FAST_MATH=fast_math(grad_scale),
            )
            return reduce_to(grad_scale, scale.shape).to(scale.dtype)
        (gz, glp, scale_b), layout = broadcast_args(out_shape, gz, glp, scale)
        for programs, numel_arg, pid_base in launch_splits(numel, 4 * block):
            launcher(_normal_rsample_bwd_kernel, grad_scale)[(programs,)](
                grad_scale, gz, glp, scale_b, numel_arg, pid_base, *layout, *words,
                BLOCK=block, HAS_GRAD_Z=grad_z is not None, HAS_GRAD_LOG_PROB=grad_log_prob is not None,
                SCALE_SCALAR=scale.numel() == 1, FAST_MATH=fast_math(grad_scale),
            )
    return reduce_to(grad_scale, scale.shape).to(scale.dtype)


# The kernel inventory (``inventory.py``): the kernels above, and calls of the launchers that
# pick each of their variants (1-D: scalar / full parameters; 2-D tiles: the row and column
# broadcast patterns).
KERNELS = ("_normal_rsample_fwd_kernel", "_normal_rsample_bwd_kernel", "_normal_rsample_fwd_2d_kernel",
           "_normal_rsample_bwd_2d_kernel")
# (label, loc shape, scale shape, sample shape)
PATTERNS = (
    ("scalar", (), (), (4096,)),
    ("contiguous", (4096,), (4096,), ()),
    ("row", (768,), (768,), (4,)),
    ("column", (4, 1), (4, 256), ()),
)


def _cases():
    from .inventory import LaunchCase

    def fwd(loc_shape, scale_shape, sample_shape, with_log_prob):
        return lambda dt: normal_rsample_fwd(torch.empty(loc_shape, dtype=dt), torch.empty(scale_shape, dtype=dt),
                                             sample_shape, 1, 2, with_log_prob)

    def bwd(loc_shape, scale_shape, sample_shape, grads):
        def run(dt):
            shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc_shape, scale_shape))
            gz, glp = (torch.empty(shape, dtype=dt) if g else None for g in grads)
            return normal_rsample_bwd(gz, glp, torch.empty(scale_shape, dtype=dt), 1, 2)
        return run

    out = []
    for label, loc, scale, sample in PATTERNS:
        for lp in (False, True):
            out.append(LaunchCase(f"fwd{'+log_prob' if lp else ''} {label}", fwd(loc, scale, sample, lp)))
        for grads in ((True, False), (True, True)):
            out.append(LaunchCase(f"bwd {'z' if grads[0] else ''}{'+log_prob' if grads[1] else ''} {label}",
                                  bwd(loc, scale, sample, grads)))
    return tuple(out)


LAUNCH_CASES = _cases()
