"""Normal log_prob and entropy summed over the rightmost event dimensions inside the kernel.

What ``Independent(Normal(loc, scale), k).log_prob(value)`` / ``.entropy()`` compute, without the
full-size per-element tensor: the broadcast shape is viewed as (rows, cols) with cols the product
of the k event dimensions; each program owns BLOCK_R rows, walks their cols in BLOCK_C chunks
and accumulates a [BLOCK_R, BLOCK_C] tile in float32 (float64 for float64), then sums the tile's
columns. The order of additions depends only on (rows, cols), never on timing: deterministic, no
atomics. Backward needs no kernel of its own (``ops.py``: the log_prob backward kernel with the
gradient broadcast along the event dimensions; entropy: grad / scale).
References: ``reference.normal_log_prob`` summed in the compute dtype (``ops._log_prob_sum_reference``).
"""
import torch
import triton
import triton.language as tl

from .. import reference
from .layout import broadcast_offset, broadcast_args, cdiv, launcher, next_power_of_2

LOG_SQRT_2PI = tl.constexpr(reference.LOG_SQRT_2PI)
TILE = 2048  # elements per program and chunk: BLOCK_R * BLOCK_C


@triton.jit
def _normal_event_sum_fwd_kernel(
    out_ptr, value_ptr, loc_ptr, scale_ptr, rows, cols,
    s1, s2, s3, v_t0, v_t1, v_t2, v_t3, loc_t0, loc_t1, loc_t2, loc_t3, scale_t0, scale_t1, scale_t2, scale_t3,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ENTROPY: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = r < rows
    CDT: tl.constexpr = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=CDT)
    # a while loop, not `for c0 in range(0, cols, BLOCK_C)`: the interpreter of Triton <= 3.6 cannot
    # take a runtime int (a 1-element array there) as a Python range bound ("only 0-dimensional
    # arrays can be converted to Python scalars"); compiled, both are the same loop
    c0 = 0
    while c0 < cols:
        c = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (c < cols)[None, :]
        idx = r[:, None] * cols + c[None, :]
        scale = tl.load(scale_ptr + broadcast_offset(idx, s1, s2, s3, scale_t0, scale_t1, scale_t2, scale_t3),
                        mask=mask, other=1.0).to(CDT)
        if ENTROPY:
            term = 0.5 + LOG_SQRT_2PI + tl.log(scale)
        else:
            v = tl.load(value_ptr + broadcast_offset(idx, s1, s2, s3, v_t0, v_t1, v_t2, v_t3), mask=mask, other=0.0).to(CDT)
            loc = tl.load(loc_ptr + broadcast_offset(idx, s1, s2, s3, loc_t0, loc_t1, loc_t2, loc_t3),
                          mask=mask, other=0.0).to(CDT)
            y = (v - loc) / scale
            term = -0.5 * y * y - (tl.log(scale) + LOG_SQRT_2PI)
        acc += tl.where(mask, term, 0.0)
        c0 += BLOCK_C
    total = tl.sum(acc, axis=1)
    tl.store(out_ptr + r, total.to(out_ptr.dtype.element_ty), mask=row_mask)


def _blocks(rows: int, cols: int) -> tuple[int, int]:
    block_c = min(next_power_of_2(max(cols, 1)), 256)
    block_r = min(next_power_of_2(max(rows, 1)), TILE // block_c)
    return block_r, block_c


def _launch(full_shape, event_dims, out_dtype, device, value, loc, scale, entropy):
    batch_shape = tuple(full_shape[: len(full_shape) - event_dims])
    out = torch.empty(batch_shape, dtype=out_dtype, device=device)
    rows = out.numel()
    cols = 1
    for s in full_shape[len(full_shape) - event_dims:]:
        cols *= s
    if rows == 0:
        return out
    if cols == 0:  # a sum over nothing
        return out.zero_()
    (value, loc, scale), layout = broadcast_args(tuple(full_shape), value, loc, scale)
    block_r, block_c = _blocks(rows, cols)
    launcher(_normal_event_sum_fwd_kernel, out)[(cdiv(rows, block_r),)](
        out, value, loc, scale, rows, cols, *layout, BLOCK_R=block_r, BLOCK_C=block_c, ENTROPY=entropy,
    )
    return out


def normal_log_prob_sum_fwd(value, loc, scale, event_dims: int):
    full_shape = reference.broadcast_shape(value.shape, loc.shape, scale.shape)
    return _launch(full_shape, event_dims, value.dtype, value.device, value, loc, scale, entropy=False)


def normal_entropy_sum_fwd(scale, event_dims: int):
    # value and loc are never loaded in the entropy variant: scale stands in for them
    return _launch(tuple(scale.shape), event_dims, scale.dtype, scale.device, scale, scale, scale, entropy=True)


# The kernel inventory (``inventory.py``): the kernel above, and calls of the launchers that
# pick each of its variants (log_prob and entropy; a short event, a long one).
KERNELS = ("_normal_event_sum_fwd_kernel",)
EVENT_SHAPES = (("short event", (512, 8)), ("event of 256", (16, 256)))


def _cases():
    from .inventory import LaunchCase

    out = []
    for label, shape in EVENT_SHAPES:
        out.append(LaunchCase(f"log_prob {label}", lambda dt, shape=shape: normal_log_prob_sum_fwd(
            torch.empty(shape, dtype=dt), torch.empty(shape, dtype=dt), torch.empty(shape, dtype=dt), 1)))
        out.append(LaunchCase(f"entropy {label}", lambda dt, shape=shape: normal_entropy_sum_fwd(
            torch.empty(shape, dtype=dt), 1)))
    return tuple(out)


LAUNCH_CASES = _cases()
