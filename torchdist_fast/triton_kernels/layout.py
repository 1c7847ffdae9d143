"""Launch helpers shared by the kernels: block sizes, 64-bit words as i32 args, broadcasting.

Broadcasting without copies: every input is described by its strides over the output shape
(0 along broadcast dimensions). Dimensions are coalesced where every operand allows it, and the
kernel maps a flat output index to an element offset through at most ``MAX_DIMS`` dimensions.
"""
import contextlib
import os

import triton
import triton.language as tl  # noqa: F401  (Triton needs it visible to the jit'd helpers)

MAX_DIMS = 4


def block_counters(dtype) -> int:
    """Philox counters per program (4 elements each): 1024 elements, 512 for float64."""
    import torch

    return 256 if dtype == torch.float64 else 1024


def grid_for(numel: int, block: int):
    return (triton.cdiv(numel, 4 * block),)


def launch_splits(numel: int, block_elems: int):
    """[(programs, numel argument, first program)] covering ``numel`` elements, vector access kept.

    Triton vectorizes a masked access only when it can prove ``numel % 16 == 0``. Any other
    size becomes a bulk launch over the largest multiple of 16 (vector loads and stores, the
    mask is all-true but for the last program) and a one-program tail launch over the last
    block (scalar, masked at ``numel``; it rewrites the same values for the part of its block the
    bulk launch already wrote). Sizes that are multiples of 16, and sizes below 16, are one launch.
    """
    bulk = numel - numel % 16
    out = []
    if bulk:
        out.append((triton.cdiv(bulk, block_elems), bulk, 0))
    if bulk != numel:
        first = bulk // block_elems
        out.append((triton.cdiv(numel, block_elems) - first, numel, first))
    return out


_FORCE_FAST_MATH = None


@contextlib.contextmanager
def force_fast_math(value):
    """Override the FAST_MATH choice (the cost model compiles what CUDA runs from CPU tensors)."""
    global _FORCE_FAST_MATH
    old, _FORCE_FAST_MATH = _FORCE_FAST_MATH, value
    try:
        yield
    finally:
        _FORCE_FAST_MATH = old


def fast_math(tensor) -> bool:
    """Hardware-approximation transcendentals (MUFU) on CUDA; precise ones under the interpreter.

    The interpreter cannot run inline PTX, and on CPU tensors it runs the same algorithm with
    precise log2/sin/cos (see ``reference.box_muller32`` and the accuracy contract).
    """
    if _FORCE_FAST_MATH is not None:
        return _FORCE_FAST_MATH
    return tensor.device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"


def split_to_i32(value: int) -> tuple[int, int]:
    """A 64-bit value as (lo, hi) 32-bit words, each as a signed i32 Python int.

    Passing i32-ranged ints keeps the kernel signature fixed whatever the seed or offset, so a
    new seed never compiles a new kernel (Triton types ints by their magnitude).
    """
    value &= (1 << 64) - 1
    lo, hi = value & 0xFFFFFFFF, value >> 32
    return tuple(w - (1 << 32) if w >= (1 << 31) else w for w in (lo, hi))


def coalesce(shape, strides_list):
    """Merge adjacent dimensions that every operand traverses contiguously; drop size-1 dims."""
    dims = [(s, [st[i] for st in strides_list]) for i, s in enumerate(shape) if s != 1]
    merged = []
    for size, strides in dims:
        if merged:
            psize, pstrides = merged[-1]
            if all(ps == s * size for ps, s in zip(pstrides, strides)):
                merged[-1] = (psize * size, strides)
                continue
        merged.append((size, strides))
    return merged


def broadcast_layout(out_shape, *tensors):
    """(sizes, strides per tensor), outermost dim first, padded to MAX_DIMS with inner size-1 dims.

    Padding on the inner side puts the common one-dimensional case in dim 0, whose size the
    kernel never needs: s1 = s2 = s3 = 1, which Triton specializes, so no div/mod survives and
    contiguous operands (stride 1, also specialized) get vector loads.

    Returns None when more than MAX_DIMS dimensions remain after coalescing.
    """
    strides_list = [t.expand(out_shape).stride() for t in tensors]
    merged = coalesce(out_shape, strides_list)
    if len(merged) > MAX_DIMS:
        return None
    merged = merged + [(1, [0] * len(tensors))] * (MAX_DIMS - len(merged))
    sizes = [m[0] for m in merged]
    strides = [[m[1][k] for m in merged] for k in range(len(tensors))]
    return sizes, strides


def broadcast_args(out_shape, *tensors):
    """Tensors (made contiguous if the layout needs too many dims) plus flat kernel args.

    Kernel args: sizes s1, s2, s3 (s0 is implied), then 4 strides per tensor.
    """
    layout = broadcast_layout(out_shape, *tensors)
    if layout is None:
        # rare: irreducible broadcast pattern across > MAX_DIMS dims; expand to output size
        tensors = tuple(t.expand(out_shape).contiguous() for t in tensors)
        layout = broadcast_layout(out_shape, *tensors)
    sizes, strides = layout
    flat = list(sizes[1:])
    for st in strides:
        flat.extend(st)
    return tensors, flat


@triton.jit
def _broadcast_offset(idx, s1, s2, s3, t0, t1, t2, t3):
    """Element offset of flat output index ``idx`` in an operand with strides t0..t3."""
    i3 = idx % s3
    rest = idx // s3
    i2 = rest % s2
    rest = rest // s2
    i1 = rest % s1
    i0 = rest // s1
    return i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3
