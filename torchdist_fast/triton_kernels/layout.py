"""Launch helpers shared by the kernels: block sizes, 64-bit words as i32 args, broadcasting.

Broadcasting without copies: every input is described by its strides over the output shape
(0 along broadcast dimensions). Dimensions are coalesced where every operand allows it, and the
kernel maps a flat output index to an element offset through at most ``MAX_DIMS`` dimensions.
"""
import contextlib
import functools
import math
import os
import struct

import torch
import triton
from torch._subclasses.functional_tensor import FunctionalTensor
import triton.language as tl  # noqa: F401  (Triton needs it visible to the jit'd helpers)

MAX_DIMS = 4


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv`` in plain Python: in Triton >= 3.7 that is a ConstexprFunction, whose
    call from Python costs microseconds, and launchers call it on every launch."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), like ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length()


def block_counters(dtype) -> int:
    """Philox counters per program (4 elements each): 1024 elements, 512 for float64."""
    return 256 if dtype == torch.float64 else 1024


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
        out.append((cdiv(bulk, block_elems), bulk, 0))
    if bulk != numel:
        first = bulk // block_elems
        out.append((cdiv(numel, block_elems) - first, numel, first))
    return out


_FORCE_FAST_MATH = None
# Triton reads TRITON_INTERPRET when a kernel is decorated, so its value at import is the one in force
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


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
    return tensor.device.type == "cuda" and not _INTERPRETED


def launcher(kernel, out):
    """``kernel`` itself for a launch on plain tensors; ``wrap_triton`` of it while an op is being
    traced into a torch.compile graph (``out``, a tensor of the launch, is then a FunctionalTensor:
    ``ops.expose_kernels``), so the launch is recorded as a triton_kernel_wrapper node that
    Inductor calls from its generated code."""
    if not isinstance(out, FunctionalTensor):  # plain tensors, parameters, any eager subclass
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(traceable(kernel))


_TRACEABLE: dict = {}


def traceable(kernel):
    """``kernel`` as ``wrap_triton`` accepts it: a JITFunction. Under TRITON_INTERPRET=1
    ``triton.jit`` makes InterpretedFunctions, which wrap_triton passes through untraced; this
    gives it a JITFunction of the same source whose launches run the interpreted kernel (tests
    of the compiled graphs on CPU)."""
    if not _INTERPRETED:
        return kernel
    if kernel not in _TRACEABLE:
        _TRACEABLE[kernel] = _InterpretedJIT(kernel)
    return _TRACEABLE[kernel]


class _InterpretedJIT(triton.runtime.jit.JITFunction):
    def __init__(self, interpreted):
        super().__init__(interpreted.fn)
        self.interpreted = interpreted

    @property
    def cache_key(self):  # JITFunction's walks the callees, which are InterpretedFunctions here
        return f"interpreted:{self.fn.__module__}.{self.fn.__qualname__}"

    def __hash__(self):
        return hash(self.cache_key)

    def __getitem__(self, grid):
        return self.interpreted[grid]

    def run(self, *args, grid, warmup=False, **kwargs):
        return self.interpreted[grid](*args, **kwargs)


def split_to_i32(value: int) -> tuple[int, int]:
    """A 64-bit value as (lo, hi) 32-bit words, each as a signed i32 Python int.

    Passing i32-ranged ints keeps the kernel signature fixed whatever the seed or offset, so a
    new seed never compiles a new kernel (Triton types ints by their magnitude).
    """
    value &= (1 << 64) - 1
    lo, hi = value & 0xFFFFFFFF, value >> 32
    return tuple(w - (1 << 32) if w >= (1 << 31) else w for w in (lo, hi))


def grad_buffer(t, out_shape, needed: bool):
    """The per-element gradient buffer of input ``t`` over ``out_shape``, or None when not ``needed``:
    in the compute dtype when it is summed over broadcast dims afterwards (``reduce_to``), else in
    ``t``'s own dtype (no reduction: the kernel's rounding is the final one)."""
    if not needed:
        return None
    from ..reference import compute_dtype

    reduce = tuple(t.shape) != tuple(out_shape)
    return torch.empty(out_shape, dtype=compute_dtype(t.dtype) if reduce else t.dtype, device=t.device)


_DUMMY_POSITION: dict = {}
_MASK64 = (1 << 64) - 1
# (seed, offset) as uint64 -> four signed i32 words lo, hi, lo, hi (split_to_i32 of each, in one call)
_PACK_POSITION = struct.Struct("<QQ").pack
_UNPACK_WORDS = struct.Struct("<iiii").unpack


def position_args(seed: int, offset: int, position, device):
    """The stream-position kernel args ``(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
    position_in_memory)``.

    ``position``: None, or the int64 pair [seed, offset] on the kernel's device, which the kernel
    then reads (``seed`` and ``offset`` are ignored). Otherwise the pointer is an int64 pair of
    zeros kept per device (created outside any capture: only this path makes it), so both modes
    launch the same compiled kernel.
    """
    if position is not None:
        return position, 0, 0, 0, 0, 1
    dummy = _DUMMY_POSITION.get(device)
    if dummy is None:
        dummy = _DUMMY_POSITION[device] = torch.zeros(2, dtype=torch.int64, device=device)
    return (dummy, *_UNPACK_WORDS(_PACK_POSITION(seed & _MASK64, offset & _MASK64)), 0)


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


def _metas(tensors) -> tuple:
    """What a layout depends on: each tensor's shape and strides (the cache key of the layouts)."""
    return tuple((tuple(t.shape), t.stride()) for t in tensors)


def _expanded_stride(out_shape, shape, stride) -> tuple:
    """``t.expand(out_shape).stride()`` from ``t``'s shape and strides (0 along broadcast dims), on
    every dim of size > 1 (the only ones a layout keeps: ``coalesce`` drops size-1 dims)."""
    lead = len(out_shape) - len(shape)
    return (0,) * lead + tuple(0 if n == 1 and o != 1 else st for n, o, st in zip(shape, out_shape[lead:], stride))


# Layouts are pure functions of shapes and strides, and the same few recur call after call (a
# training loop): cached, they cost a dict lookup instead of ~20 us of Python per launch.
@functools.lru_cache(maxsize=4096)
def broadcast_layout_of(out_shape: tuple, metas: tuple):
    strides_list = [_expanded_stride(out_shape, shape, stride) for shape, stride in metas]
    merged = coalesce(out_shape, strides_list)
    if len(merged) > MAX_DIMS:
        return None
    merged = merged + [(1, [0] * len(metas))] * (MAX_DIMS - len(merged))
    sizes = tuple(m[0] for m in merged)
    strides = tuple(tuple(m[1][k] for m in merged) for k in range(len(metas)))
    return sizes, strides


def broadcast_layout(out_shape, *tensors):
    """(sizes, strides per tensor), outermost dim first, padded to MAX_DIMS with inner size-1 dims.

    Padding on the inner side puts the common one-dimensional case in dim 0, whose size the
    kernel never needs: s1 = s2 = s3 = 1, which Triton specializes, so no div/mod survives and
    contiguous operands (stride 1, also specialized) get vector loads.

    Returns None when more than MAX_DIMS dimensions remain after coalescing.
    """
    return broadcast_layout_of(tuple(out_shape), _metas(tensors))


def broadcast_args(out_shape, *tensors):
    """Tensors (made contiguous if the layout needs too many dims) plus flat kernel args.

    Kernel args: sizes s1, s2, s3 (s0 is implied), then 4 strides per tensor.
    """
    layout = broadcast_layout(out_shape, *tensors)
    if layout is None:
        # rare: irreducible broadcast pattern across > MAX_DIMS dims; expand to output size
        tensors = tuple(t.expand(out_shape).contiguous() for t in tensors)
        layout = broadcast_layout(out_shape, *tensors)
    return tensors, layout_args(layout)


def layout_args(layout) -> list:
    """A ``broadcast_layout`` as the kernels' flat args: sizes s1, s2, s3, then 4 strides per tensor."""
    sizes, strides = layout
    flat = list(sizes[1:])
    for st in strides:
        flat.extend(st)
    return flat


@triton.jit
def broadcast_offset(idx, s1, s2, s3, t0, t1, t2, t3):
    """Element offset of flat output index ``idx`` in an operand with strides t0..t3."""
    i3 = idx % s3
    rest = idx // s3
    i2 = rest % s2
    rest = rest // s2
    i1 = rest % s1
    i0 = rest // s1
    return i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3


@triton.jit
def flat_operand(ptr, idx, mask, other, SCALAR: tl.constexpr, s1, s2, s3, t0, t1, t2, t3):
    """One operand at the output indices ``idx``: a single load when it is one element."""
    if SCALAR:
        x = tl.load(ptr)
    else:
        x = tl.load(ptr + broadcast_offset(idx, s1, s2, s3, t0, t1, t2, t3), mask=mask, other=other)
    return x


# Operand kinds of the 2-D (row x column) kernels: how an operand varies over an output tile.
SCALAR, ROW, COL, FULL = 0, 1, 2, 3


def tile_layout(out_shape, *tensors, elements: int, need_d4: bool):
    """The 2-D view of a broadcast, or None when the 1-D kernels should run.

    When the coalesced output has exactly two dimensions (R rows of D elements) the kernels
    run on tiles of BR rows x BC columns: a row pattern (operand varies along columns only,
    stride (0, t1)), a column pattern (along rows only), a scalar or a full operand is then
    addressed from the tile coordinates, with no division per element, and loaded once per
    distinct element in the tile. Random kernels need D % 4 == 0 (a Philox counter's four
    outputs then never straddle two rows).

    Returns (R, D, [(kind, t0, t1) per tensor], BR, BC); the grid is ``tile_grid``.
    """
    return tile_layout_of(tuple(out_shape), _metas(tensors), elements, need_d4)


@functools.lru_cache(maxsize=4096)
def tile_layout_of(out_shape: tuple, metas: tuple, elements: int, need_d4: bool):
    layout = broadcast_layout_of(out_shape, metas)
    if layout is None:
        return None
    sizes, strides = layout
    if sizes[2] != 1 or sizes[3] != 1 or sizes[0] == 1 or sizes[1] == 1:
        return None
    R, D = sizes[0], sizes[1]
    if need_d4 and D % 4:
        return None
    ops = []
    for (shape, _), st in zip(metas, strides):
        t0, t1 = st[0], st[1]
        if math.prod(shape) == 1 or (t0 == 0 and t1 == 0):
            kind = SCALAR
        elif t0 == 0:
            kind = ROW
        elif t1 == 0:
            kind = COL
        else:
            kind = FULL
        ops.append((kind, t0, t1))
    bc = min(256, max(16, next_power_of_2(D)))
    if cdiv(D, bc) > 65535:  # the grid's second dimension
        return None
    return R, D, tuple(ops), max(1, elements // bc), bc


def tile_grid(R, D, br, bc):
    return (cdiv(R, br), cdiv(D, bc))


def needs_idx64(R, D, br, ops) -> bool:
    """64-bit index arithmetic when a (padded) flat output index or an operand offset can reach 2**31."""
    rows = cdiv(R, br) * br
    return rows * D >= 2**31 or any(rows * abs(t0) + D * abs(t1) >= 2**31 for _k, t0, t1 in ops)


@triton.jit
def tile_operand(ptr, rows, cols, R, D, t0, t1, KIND: tl.constexpr, other):
    """An operand over the tile rows x cols: scalar, [1, BC], [BR, 1] or [BR, BC]."""
    if KIND == 0:
        x = tl.load(ptr)
    elif KIND == 1:
        x = tl.load(ptr + cols * t1, mask=cols < D, other=other)[None, :]
    elif KIND == 2:
        x = tl.load(ptr + rows * t0, mask=rows < R, other=other)[:, None]
    else:
        x = tl.load(ptr + rows[:, None] * t0 + cols[None, :] * t1, mask=(rows < R)[:, None] & (cols < D)[None, :],
                    other=other)
    return x


@triton.jit
def tile_coords(R, D, BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr):
    """Rows, columns, flat output indices and mask of this program's tile: grid (row tiles, column tiles).

    Index arithmetic is 32-bit unless the output has 2**31 elements or more (IDX64)."""
    pr = tl.program_id(0)
    pc = tl.program_id(1)
    if IDX64:
        rows = pr.to(tl.int64) * BR + tl.arange(0, BR)
    else:
        rows = pr * BR + tl.arange(0, BR)
    cols = pc * BC + tl.arange(0, BC)
    idx = rows[:, None] * D + cols[None, :]
    mask = (rows < R)[:, None] & (cols < D)[None, :]
    return rows, cols, idx, mask, pc
