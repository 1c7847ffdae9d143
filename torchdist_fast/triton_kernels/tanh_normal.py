"""Tanh-squashed Normal (SAC's policy): noise, tanh, affine rescale and the log-density summed over
the event dims in one kernel; a backward kernel that regenerates the noise.

Per element, eps from the Philox stream (element e = lane e % 4 of counter offset + e // 4):
    u = loc + scale * eps,  y = tanh(u),  a = mid + half * y
    log_prob_e = -eps^2 / 2 - log(scale) - log(sqrt(2 pi)) - log(half) - log(1 - y^2)
    log(1 - y^2) = 2 * (log 2 - |u| - log1p(exp(-2 |u|)))     (no 1 - y^2 that cancels to 0)
and log_prob is log_prob_e summed over each row of D event elements (D = 1: no event dims).
Backward, with ga = dL/da (per element) and gl = dL/dlog_prob (per row):
    dL/du = ga * half * (1 - y^2) + gl * 2 y,   dL/dloc = dL/du,   dL/dscale = dL/du * eps - gl / scale
(1 - y^2 = 4 e / (1 + e)^2 with e = exp(-2 |u|), tanh |u| = (1 - e) / (1 + e).)

Layout: program p owns rows [p*BR, p*BR + BR) (BR a multiple of 4, so its first element starts a
counter) as a [BR, DP] tile, DP = next_power_of_2(D). It generates the counters its BR*D elements
use, in stream order (4 * NC values), and gathers them into the tile (``tl.gather``), so each
counter is computed once. Row sums are tile reductions: fixed order, no atomics.
With SQUASH=False the same kernels compute ``Independent(Normal, k)``'s fused rsample + log_prob
(op ``normal_rsample_log_prob_sum``): a = u, and log_prob_e has no log-determinant terms.
Reference: ``torchdist_fast.tanh_normal.reference_tanh_normal`` / ``reference_tanh_normal_backward``
(``squash=False`` for the plain Normal).
"""
import math

import torch
import triton
import triton.language as tl

from ..reference import reduce_to
from .layout import (broadcast_offset, broadcast_args, cdiv, fast_math, grad_buffer, launcher, next_power_of_2,
                     position_args)
from .philox import POSITION_ARGS, offset64, position_words, stream_normals

LOG_SQRT_2PI = tl.constexpr(0.5 * math.log(2 * math.pi))
LN2 = tl.constexpr(math.log(2.0))
TILE = 2048        # elements per program (BR * DP)


@triton.jit
def _tile_local(D, BR: tl.constexpr, DP: tl.constexpr):
    """Flat indices r * D + c of a [BR, DP] tile, relative to its first element."""
    return tl.arange(0, BR)[:, None] * D + tl.arange(0, DP)[None, :]


@triton.jit
def _tile_indices(pid, rows, D, BR: tl.constexpr, DP: tl.constexpr):
    """Program ``pid``'s [BR, DP] tile: its rows, mask and element indices. Computed apart from the
    noise and the loads, which take pointers and the stream position: torch's mutation analysis of
    a wrap_triton kernel takes a pointer computed from a call's result to depend on every argument
    of the call (see philox.block_indices)."""
    row = pid * BR + tl.arange(0, BR)
    mask = (row < rows)[:, None] & (tl.arange(0, DP) < D)[None, :]
    return row, mask, pid * BR * D + _tile_local(D, BR, DP)


@triton.jit
def _tile_noise(pid, D, seed_lo, seed_hi, offset_lo, offset_hi, BR: tl.constexpr, DP: tl.constexpr,
                NC: tl.constexpr, IS_FP64: tl.constexpr, FAST_MATH: tl.constexpr):
    """eps of the [BR, DP] tile of program ``pid``."""
    base = offset64(offset_lo, offset_hi) + (pid * ((BR // 4) * D)).to(tl.uint64)
    z0, z1, z2, z3 = stream_normals(base, tl.arange(0, NC), seed_lo, seed_hi, IS_FP64, FAST_MATH)
    flat = tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))  # element 4c + lane, stream order
    # padding columns (c >= D) read a clamped index and are masked out by the caller
    gathered = tl.gather(flat, tl.reshape(tl.minimum(_tile_local(D, BR, DP), 4 * NC - 1), [BR * DP]), 0)
    return tl.reshape(gathered, [BR, DP])


@triton.jit
def _tanh_parts(u):
    """(tanh u, 1 - tanh(u)^2, log(1 - tanh(u)^2)) without cancellation for large |u|."""
    t = tl.abs(u)
    e = tl.exp(-2.0 * t)
    th = (1.0 - e) / (1.0 + e)
    y = tl.where(u < 0, -th, th)
    one_minus_y2 = 4.0 * e / ((1.0 + e) * (1.0 + e))
    log_one_minus_y2 = 2.0 * (LN2 - t - tl.log(1.0 + e))
    return y, one_minus_y2, log_one_minus_y2


@triton.jit
def _tile_params(e, mask, loc_ptr, scale_ptr, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1, scale_t2,
                 scale_t3, CDT: tl.constexpr):
    """loc and scale at the tile's elements ``e`` (from ``_tile_indices``), in the compute dtype."""
    loc = tl.load(loc_ptr + broadcast_offset(e, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3), mask=mask, other=0.0).to(CDT)
    scale = tl.load(scale_ptr + broadcast_offset(e, s1, s2, s3, scale_t0, scale_t1, scale_t2, scale_t3),
                    mask=mask, other=1.0).to(CDT)
    return loc, scale


@triton.jit(do_not_specialize=POSITION_ARGS)
def _tanh_normal_fwd_kernel(
    a_ptr, lp_ptr, loc_ptr, scale_ptr, rows, D,
    s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1, scale_t2, scale_t3,
    seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, position_in_memory,
    MID: tl.constexpr, HALF: tl.constexpr, BR: tl.constexpr, DP: tl.constexpr, NC: tl.constexpr,
    WITH_LOG_PROB: tl.constexpr, FAST_MATH: tl.constexpr, SQUASH: tl.constexpr,
):
    seed_lo, seed_hi, offset_lo, offset_hi = position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
                                                             position_in_memory)
    pid = tl.program_id(0).to(tl.int64)
    IS_FP64: tl.constexpr = a_ptr.dtype.element_ty == tl.float64
    CDT: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    # forward and backward share: the tile's noise, its rows, mask and elements, loc and scale there
    eps = _tile_noise(pid, D, seed_lo, seed_hi, offset_lo, offset_hi, BR, DP, NC, IS_FP64, FAST_MATH).to(CDT)
    row, mask, e = _tile_indices(pid, rows, D, BR, DP)
    loc, scale = _tile_params(e, mask, loc_ptr, scale_ptr, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1,
                              scale_t2, scale_t3, CDT)
    u = loc + scale * eps
    if SQUASH:
        y, _one_minus_y2, log_one_minus_y2 = _tanh_parts(u)
        tl.store(a_ptr + e, (MID + HALF * y).to(a_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(a_ptr + e, u.to(a_ptr.dtype.element_ty), mask=mask)
    if WITH_LOG_PROB:
        term = -0.5 * eps * eps - tl.log(scale) - LOG_SQRT_2PI
        if SQUASH:
            term -= log_one_minus_y2
        total = tl.sum(tl.where(mask, term, 0.0), axis=1)
        if SQUASH:
            total -= D * tl.log(tl.full([BR], HALF, CDT))
        tl.store(lp_ptr + row, total.to(lp_ptr.dtype.element_ty), mask=row < rows)


@triton.jit(do_not_specialize=POSITION_ARGS)
def _tanh_normal_bwd_kernel(
    g_loc_ptr, g_scale_ptr, ga_ptr, gl_ptr, loc_ptr, scale_ptr, rows, D,
    s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1, scale_t2, scale_t3,
    seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, position_in_memory,
    HALF: tl.constexpr, BR: tl.constexpr, DP: tl.constexpr, NC: tl.constexpr,
    HAS_GA: tl.constexpr, HAS_GL: tl.constexpr, NEED_LOC: tl.constexpr, NEED_SCALE: tl.constexpr,
    FAST_MATH: tl.constexpr, SQUASH: tl.constexpr,
):
    seed_lo, seed_hi, offset_lo, offset_hi = position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
                                                             position_in_memory)
    pid = tl.program_id(0).to(tl.int64)
    IS_FP64: tl.constexpr = loc_ptr.dtype.element_ty == tl.float64
    CDT: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    # forward and backward share: the tile's noise, its rows, mask and elements, loc and scale there
    eps = _tile_noise(pid, D, seed_lo, seed_hi, offset_lo, offset_hi, BR, DP, NC, IS_FP64, FAST_MATH).to(CDT)
    row, mask, e = _tile_indices(pid, rows, D, BR, DP)
    loc, scale = _tile_params(e, mask, loc_ptr, scale_ptr, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1,
                              scale_t2, scale_t3, CDT)
    gu = tl.zeros([BR, DP], dtype=CDT)
    g_scale = tl.zeros([BR, DP], dtype=CDT)
    if SQUASH:
        y, one_minus_y2, _log = _tanh_parts(loc + scale * eps)
    if HAS_GA:
        ga = tl.load(ga_ptr + e, mask=mask, other=0.0).to(CDT)
        if SQUASH:
            gu += ga * HALF * one_minus_y2
        else:
            gu += ga
    if HAS_GL:
        gl = tl.load(gl_ptr + row, mask=row < rows, other=0.0).to(CDT)[:, None]
        if SQUASH:
            gu += gl * 2.0 * y  # d log_prob / du through the log-determinant (0 without squashing)
        g_scale -= gl / scale
    if NEED_LOC:
        tl.store(g_loc_ptr + e, gu.to(g_loc_ptr.dtype.element_ty), mask=mask)
    if NEED_SCALE:
        tl.store(g_scale_ptr + e, (g_scale + gu * eps).to(g_scale_ptr.dtype.element_ty), mask=mask)


def blocks(D: int) -> tuple[int, int, int]:
    """(BR, DP, NC): rows per program (a multiple of 4), padded row length, counters per program."""
    dp = next_power_of_2(max(D, 1))
    br = max(4, TILE // dp)
    nc = next_power_of_2(max(1, (br * D + 3) // 4))
    return br, dp, nc


def _layout(full_shape, loc, scale):
    (loc, scale), layout = broadcast_args(tuple(full_shape), loc, scale)
    return loc, scale, layout


def event_size(full_shape, event_dims: int) -> int:
    return math.prod(tuple(full_shape)[len(full_shape) - event_dims:]) if event_dims else 1


def tanh_normal_fwd(loc, scale, full_shape, event_dims, mid, half, seed, offset, with_log_prob, squash=True,
                    position=None):
    """(a, log_prob) over ``full_shape``; log_prob summed over the ``event_dims`` rightmost dims
    (None when not asked). ``position``: as in ``layout.position_args``."""
    full_shape = tuple(full_shape)
    a = torch.empty(full_shape, dtype=loc.dtype, device=loc.device)
    lp = (torch.empty(full_shape[: len(full_shape) - event_dims], dtype=loc.dtype, device=loc.device)
          if with_log_prob else None)
    D = event_size(full_shape, event_dims)
    if a.numel() == 0:
        return a, (lp.zero_() if lp is not None else None)  # a sum over no event element is 0
    rows = a.numel() // D
    loc, scale, layout = _layout(full_shape, loc, scale)
    br, dp, nc = blocks(D)
    words = position_args(seed, offset, position, a.device)
    launcher(_tanh_normal_fwd_kernel, a)[(cdiv(rows, br),)](
        a, lp if lp is not None else loc, loc, scale, rows, D, *layout, *words,
        MID=float(mid), HALF=float(half), BR=br, DP=dp, NC=nc, WITH_LOG_PROB=with_log_prob, FAST_MATH=fast_math(a),
        SQUASH=squash,
    )
    return a, lp


def tanh_normal_bwd(grad_a, grad_lp, loc, scale, full_shape, event_dims, half, seed, offset, output_mask, squash=True,
                    position=None):
    """(grad_loc, grad_scale) reduced to the parameters' shapes; None where not needed."""
    full_shape = tuple(full_shape)
    numel = math.prod(full_shape)
    D = event_size(full_shape, event_dims)
    bufs = [grad_buffer(t, full_shape, need) for t, need in zip((loc, scale), output_mask)]
    if numel and any(output_mask):
        rows = numel // D
        dummy = loc  # for absent grads and outputs not asked for: an input, never an output twice (normal_log_prob_bwd)
        loc_b, scale_b, layout = _layout(full_shape, loc, scale)
        ga = grad_a.contiguous() if grad_a is not None else None
        gl = grad_lp.contiguous() if grad_lp is not None else None
        br, dp, nc = blocks(D)
        words = position_args(seed, offset, position, dummy.device)
        launcher(_tanh_normal_bwd_kernel, loc)[(cdiv(rows, br),)](
            *(b if b is not None else dummy for b in bufs), ga if ga is not None else dummy, gl if gl is not None else dummy,
            loc_b, scale_b, rows, D, *layout, *words,
            HALF=float(half), BR=br, DP=dp, NC=nc, HAS_GA=ga is not None, HAS_GL=gl is not None,
            NEED_LOC=bool(output_mask[0]), NEED_SCALE=bool(output_mask[1]), FAST_MATH=fast_math(dummy), SQUASH=squash,
           
        )
    return tuple(None if b is None else reduce_to(b, t.shape).to(t.dtype) for b, t in zip(bufs, (loc, scale)))


# The kernel inventory (``inventory.py``): the kernels above, and calls of the launchers that
# pick each of their variants.
KERNELS = ("_tanh_normal_fwd_kernel", "_tanh_normal_bwd_kernel")


def _cases():
    from .inventory import LaunchCase

    def t(shape, dt):
        return torch.empty(shape, dtype=dt)

    out = []
    # (label, shape, event dims, squash): SAC's tanh policy with and without event dims, and the plain
    # Normal's fused rsample + event-summed log_prob (Independent)
    for label, shape, event_dims, squash in (("tanh, no event dims", (4096,), 0, True),
                                             ("tanh, action of 8", (512, 8), 1, True),
                                             ("plain, event of 8", (512, 8), 1, False)):
        batch = shape[: len(shape) - event_dims]
        out.append(LaunchCase(f"fwd+log_prob {label}", lambda dt, shape=shape, e=event_dims, sq=squash: tanh_normal_fwd(
            t(shape, dt), t(shape, dt), shape, e, 0.0, 1.0, 1, 2, True, squash=sq)))
        out.append(LaunchCase(f"bwd {label}", lambda dt, shape=shape, batch=batch, e=event_dims, sq=squash: tanh_normal_bwd(
            t(shape, dt), t(batch, dt), t(shape, dt), t(shape, dt), shape, e, 1.0, 1, 2, (True, True), squash=sq)))
    return tuple(out)


LAUNCH_CASES = _cases()
