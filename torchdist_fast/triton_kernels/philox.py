"""Philox4x32-10 stream in Triton: the device twin of ``reference.philox_normals``.

Stream layout: see ``torchdist_fast/reference.py`` (module docstring) and docs/random-numbers.md.
"""
import torch
import triton
import triton.language as tl

from .. import reference
from .layout import block_counters, cdiv, fast_math, launch_splits, launcher, position_args, split_to_i32

# globals used inside kernels must be tl.constexpr objects
STREAM_TAG = tl.constexpr(reference.STREAM_TAG)
INV_2_32 = tl.constexpr(2.0**-32)
INV_2_33 = tl.constexpr(2.0**-33)
NEG_INV_2_31 = tl.constexpr(-(2.0**-31))
NEG_INV_2_32 = tl.constexpr(-(2.0**-32))
ONE_MINUS_SMALL_T = tl.constexpr(1.0 - reference.BOX_MULLER_SMALL_T)
INV_2_53 = tl.constexpr(2.0**-53)
TWO_PI = tl.constexpr(6.283185307179586)
TWO_PI_INV_2_32 = tl.constexpr(6.283185307179586 * 2.0**-32)
PI_INV_2_32 = tl.constexpr(3.141592653589793 * 2.0**-32)
NEG_2_LN2 = tl.constexpr(-2.0 * 0.6931471805599453)


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        # one 32x32 -> 64 multiply per product (IMAD.WIDE.U32) gives both halves
        p0 = c0.to(tl.uint64) * 0xD2511F53
        p2 = c2.to(tl.uint64) * 0xCD9E8D57
        c0 = (p2 >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (p0 >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = p2.to(tl.uint32)
        c3 = p0.to(tl.uint32)
    return c0, c1, c2, c3


@triton.jit
def _lg2_approx(x):
    return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _sin_approx(x):
    return tl.inline_asm_elementwise("sin.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _cos_approx(x):
    return tl.inline_asm_elementwise("cos.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _box_muller32(w_r, w_t, FAST_MATH: tl.constexpr):
    """Two float32 normals from two uint32 words (the algorithm of ``reference.box_muller32``).

    r^2 = -2 ln u with u = (w_r + 0.5) 2^-32; near u = 1 (t = 1 - u = (~w_r + 0.5) 2^-32 < 2^-10,
    exact) from 2t + t^2 (the series of -2 ln(1 - t), next term (2/3) t^3: relative error
    < t^2 / 3 < 4e-7), elsewhere -2 ln 2 * log2(u). The angle is taken from
    the word read as signed: theta = 2 pi (int32(w_t) + 0.5) 2^-32 in [-pi, pi), the same angle
    modulo 2 pi as 2 pi u(w_t), and the range on which the hardware sin/cos are accurate.
    FAST_MATH (CUDA): lg2/sin/cos.approx.ftz (MUFU), under the contract in reference.py;
    otherwise (the interpreter, which cannot run inline PTX) precise log2/sin/cos.
    """
    u = w_r.to(tl.float32) * INV_2_32 + INV_2_33
    # 2t = 2 (1 - u) = -(int32(w_r) + 0.5) 2^-31, exact where it is used (u >= 1 - SMALL_T, so
    # w_r >= 2^31 and int32(w_r) = w_r - 2^32 is small); -2 ln(1 - t) = 2t + t^2 + (2/3) t^3 + ...
    t2 = w_r.to(tl.int32, bitcast=True).to(tl.float32) * NEG_INV_2_31 + NEG_INV_2_32
    if FAST_MATH:
        lg = _lg2_approx(u)
    else:
        lg = tl.log2(u)
    small = t2 * (t2 * 0.25) + t2
    r = tl.sqrt(tl.where(u >= ONE_MINUS_SMALL_T, small, lg * NEG_2_LN2))
    theta = w_t.to(tl.int32, bitcast=True).to(tl.float32) * TWO_PI_INV_2_32 + PI_INV_2_32
    if FAST_MATH:
        c = _cos_approx(theta)
        s = _sin_approx(theta)
    else:
        c = tl.cos(theta)
        s = tl.sin(theta)
    return r * c, r * s


@triton.jit
def _uniform64(a, b):
    m = (a.to(tl.uint64) << 21) + (b >> 11).to(tl.uint64)
    return (m.to(tl.float64) + 0.5) * INV_2_53


@triton.jit
def _box_muller64(u_r, u_theta):
    r = tl.sqrt(-2.0 * tl.log(u_r))
    theta = TWO_PI * u_theta
    return r * tl.cos(theta), r * tl.sin(theta)


# The stream-position arguments every random kernel takes after ``seed_offset_ptr``
# (``layout.position_args``): never specialized, so a new seed, offset or mode compiles nothing new.
POSITION_ARGS = ["seed_lo", "seed_hi", "offset_lo", "offset_hi", "position_in_memory"]


@triton.jit
def position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, in_memory):
    """The stream position as four i32 words: the kernel's own arguments, or (``in_memory`` != 0)
    the int64 pair [seed, offset] at ``seed_offset_ptr``, read on the device: what a CUDA graph
    replays with new values each time. A run-time flag, not a constexpr: the kernel an eager
    warm-up compiles is the one a capture then launches (no compile, no module load under capture)."""
    if in_memory != 0:
        seed = tl.load(seed_offset_ptr)
        offset = tl.load(seed_offset_ptr + 1)
        seed_lo = seed.to(tl.int32)
        seed_hi = (seed >> 32).to(tl.int32)
        offset_lo = offset.to(tl.int32)
        offset_hi = (offset >> 32).to(tl.int32)
    return seed_lo, seed_hi, offset_lo, offset_hi


@triton.jit
def offset64(offset_lo, offset_hi):
    return (offset_hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32) | offset_lo.to(tl.uint32, bitcast=True).to(tl.uint64)


@triton.jit
def stream_normals(base, j, seed_lo, seed_hi, IS_FP64: tl.constexpr, FAST_MATH: tl.constexpr):
    """Four normals (lanes 0..3) for each counter ``base + j`` (``base``: uint64 stream offset plus
    the first counter, per program or per row; ``j``: small int32 offsets; 64-bit, wrapping)."""
    k0 = seed_lo.to(tl.uint32, bitcast=True)
    k1 = seed_hi.to(tl.uint32, bitcast=True)
    c = base + j.to(tl.uint64)
    c0 = c.to(tl.uint32)
    c1 = (c >> 32).to(tl.uint32)
    tag = tl.full(c0.shape, STREAM_TAG, tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(c0, c1, tl.zeros_like(c0), tag, k0, k1)
    if IS_FP64:
        # float64 keeps precise math
        z0, z1 = _box_muller64(_uniform64(w0, w1), _uniform64(w2, w3))
        v0, v1, v2, v3 = _philox4x32_10(c0, c1, tl.full(c0.shape, 1, tl.uint32), tag, k0, k1)
        z2, z3 = _box_muller64(_uniform64(v0, v1), _uniform64(v2, v3))
    else:
        z0, z1 = _box_muller32(w0, w1, FAST_MATH)
        z2, z3 = _box_muller32(w2, w3, FAST_MATH)
    return z0, z1, z2, z3


@triton.jit
def stream_block(pid, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK: tl.constexpr, IS_FP64: tl.constexpr,
                  FAST_MATH: tl.constexpr, PAIRS: tl.constexpr = False):
    """Normals of output elements pid*4*BLOCK .. +4*BLOCK (``block_indices``), in stream order.

    PAIRS (16-bit outputs): each position holds two consecutive counters, so one thread owns
    8 consecutive outputs (16 bytes: a vector store with no shared-memory layout change).
    Otherwise one counter per position: 4 consecutive outputs (16 bytes of float32).
    """
    base = offset64(offset_lo, offset_hi) + (pid * BLOCK).to(tl.uint64)
    if PAIRS:
        even = 2 * tl.arange(0, BLOCK // 2)
        a0, a1, a2, a3 = stream_normals(base, even, seed_lo, seed_hi, IS_FP64, FAST_MATH)
        b0, b1, b2, b3 = stream_normals(base, even + 1, seed_lo, seed_hi, IS_FP64, FAST_MATH)
        # element 8p + 4h + lane (h: 0 even counter, 1 odd): nested interleaves, lowest index bit outermost
        eps = tl.interleave(
            tl.interleave(tl.interleave(a0, b0), tl.interleave(a2, b2)),
            tl.interleave(tl.interleave(a1, b1), tl.interleave(a3, b3)),
        )
    else:
        z0, z1, z2, z3 = stream_normals(base, tl.arange(0, BLOCK), seed_lo, seed_hi, IS_FP64, FAST_MATH)
        # element 4c + lane: interleaving keeps the store contiguous
        eps = tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))
    return eps


@triton.jit
def block_indices(pid, BLOCK: tl.constexpr):
    """Indices of the output elements of ``stream_block``. Apart from it, not returned by it: torch's
    mutation analysis of a wrap_triton kernel (which outputs a compiled graph must copy) takes a
    pointer computed from a call's result to depend on every argument of the call, so an index
    returned beside the normals would mark the stream position as written."""
    return pid * (4 * BLOCK) + tl.arange(0, 4 * BLOCK)


@triton.jit
def stream_tile(rows, pc, D, seed_lo, seed_hi, offset_lo, offset_hi, BC: tl.constexpr, IS_FP64: tl.constexpr,
                 FAST_MATH: tl.constexpr, PAIRS: tl.constexpr):
    """Normals of the tile rows x [pc*BC, pc*BC + BC) of an output of rows of D elements (D % 4 == 0),
    in stream order (element row*D + col is lane col % 4 of counter (row*D + col) // 4)."""
    base = offset64(offset_lo, offset_hi) + (rows[:, None] * (D // 4) + pc * (BC // 4)).to(tl.int64).to(tl.uint64)
    if PAIRS:
        even = 2 * tl.arange(0, BC // 8)[None, :]
        a0, a1, a2, a3 = stream_normals(base, even, seed_lo, seed_hi, IS_FP64, FAST_MATH)
        b0, b1, b2, b3 = stream_normals(base, even + 1, seed_lo, seed_hi, IS_FP64, FAST_MATH)
        eps = tl.interleave(
            tl.interleave(tl.interleave(a0, b0), tl.interleave(a2, b2)),
            tl.interleave(tl.interleave(a1, b1), tl.interleave(a3, b3)),
        )
    else:
        z0, z1, z2, z3 = stream_normals(base, tl.arange(0, BC // 4)[None, :], seed_lo, seed_hi, IS_FP64, FAST_MATH)
        eps = tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))
    return eps


@triton.jit(do_not_specialize=POSITION_ARGS)
def _philox_randn_kernel(out_ptr, numel, pid_base, seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi, position_in_memory,
                         BLOCK: tl.constexpr,
                         FAST_MATH: tl.constexpr):
    seed_lo, seed_hi, offset_lo, offset_hi = position_words(seed_offset_ptr, seed_lo, seed_hi, offset_lo, offset_hi,
                                                             position_in_memory)
    pid = tl.program_id(0).to(tl.int64) + pid_base
    IS_FP64: tl.constexpr = out_ptr.dtype.element_ty == tl.float64
    PAIRS: tl.constexpr = out_ptr.dtype.element_ty.primitive_bitwidth == 16
    eps = stream_block(pid, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK, IS_FP64, FAST_MATH, PAIRS)
    idx = block_indices(pid, BLOCK)
    tl.store(out_ptr + idx, eps.to(out_ptr.dtype.element_ty), mask=idx < numel)


def philox_randn(shape, seed: int, offset: int, dtype: torch.dtype, device, position=None) -> torch.Tensor:
    """Standard normals at (seed, offset), or at ``position`` in device memory (``layout.position_args``)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    numel = out.numel()
    if numel == 0:
        return out
    block = block_counters(dtype)
    words = position_args(seed, offset, position, out.device)
    for programs, numel_arg, pid_base in launch_splits(numel, 4 * block):
        launcher(_philox_randn_kernel, out)[(programs,)](out, numel_arg, pid_base, *words, BLOCK=block, FAST_MATH=fast_math(out))
    return out


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi"])
def _philox_words_kernel(words_ptr, n_counters, call, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK: tl.constexpr):
    # the raw uint32 words of counters offset .. offset + n_counters - 1 (stream checks)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    offset = (offset_hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32) | offset_lo.to(tl.uint32, bitcast=True).to(tl.uint64)
    c = offset + idx.to(tl.uint64)
    w0, w1, w2, w3 = _philox4x32_10(
        c.to(tl.uint32), (c >> 32).to(tl.uint32), tl.full((BLOCK,), call, tl.uint32), tl.full((BLOCK,), STREAM_TAG, tl.uint32),
        seed_lo.to(tl.uint32, bitcast=True), seed_hi.to(tl.uint32, bitcast=True),
    )
    mask = idx < n_counters
    tl.store(words_ptr + 4 * idx, w0.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * idx + 1, w1.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * idx + 2, w2.to(tl.int64), mask=mask)
    tl.store(words_ptr + 4 * idx + 3, w3.to(tl.int64), mask=mask)


def philox_words(n_counters: int, seed: int, offset: int, call: int = 0, device="cpu") -> torch.Tensor:
    """[n_counters, 4] uint32 words (in int64), the twin of ``reference.philox_words``."""
    words = torch.empty((n_counters, 4), dtype=torch.int64, device=device)
    if n_counters:
        launcher(_philox_words_kernel, words)[(cdiv(n_counters, 256),)](
            words, n_counters, call, *split_to_i32(seed), *split_to_i32(offset), BLOCK=256)
    return words


@triton.jit
def _box_muller_words_kernel(words_ptr, out_ptr, n, BLOCK: tl.constexpr, FAST_MATH: tl.constexpr):
    # the float32 Box-Muller of given word pairs (accuracy-contract checks on chosen words)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    w_r = tl.load(words_ptr + 2 * idx, mask=mask, other=0).to(tl.uint32)
    w_t = tl.load(words_ptr + 2 * idx + 1, mask=mask, other=0).to(tl.uint32)
    z0, z1 = _box_muller32(w_r, w_t, FAST_MATH)
    tl.store(out_ptr + 2 * idx, z0, mask=mask)
    tl.store(out_ptr + 2 * idx + 1, z1, mask=mask)


def box_muller_words(words: torch.Tensor) -> torch.Tensor:
    """[n, 2] float32 normals (r cos, r sin) of [n, 2] word pairs (w_r, w_t) (uint32 values in int64),
    computed by the kernels' float32 Box-Muller (fast math on CUDA, as in every sampling kernel)."""
    words = words.contiguous()
    out = torch.empty(words.shape, dtype=torch.float32, device=words.device)
    n = words.shape[0]
    if n:
        launcher(_box_muller_words_kernel, out)[(cdiv(n, 1024),)](words, out, n, BLOCK=1024, FAST_MATH=fast_math(out))
    return out


# The kernel inventory (``inventory.py``): the kernels above, and calls of the launchers that
# pick each of their variants.
KERNELS = ("_philox_randn_kernel", "_philox_words_kernel", "_box_muller_words_kernel")


def _cases():
    from .inventory import LaunchCase

    return (
        LaunchCase("randn", lambda dt: philox_randn((4096,), 1, 2, dt, "cpu")),
        LaunchCase("randn N+3 (bulk and tail)", lambda dt: philox_randn((4099,), 1, 2, dt, "cpu")),
        LaunchCase("words", lambda dt: philox_words(300, 1, 2), dtypes=("fp32",)),  # int64 words: no float dtype
        LaunchCase("box_muller_words", lambda dt: box_muller_words(torch.zeros((300, 2), dtype=torch.int64)),
                   dtypes=("fp32",)),
    )


LAUNCH_CASES = _cases()
