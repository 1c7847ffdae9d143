"""Philox4x32-10 stream in Triton: the device twin of ``reference.philox_normals``.

Stream layout: see ``torchdist_fast/reference.py`` (module docstring) and README "Random numbers".
"""
import torch
import triton
import triton.language as tl

from .. import reference
from .layout import block_counters, grid_for, split_to_i32

# globals used inside kernels must be tl.constexpr objects
STREAM_TAG = tl.constexpr(reference.STREAM_TAG)
INV_2_32 = tl.constexpr(2.0**-32)
INV_2_53 = tl.constexpr(2.0**-53)
TWO_PI = tl.constexpr(6.283185307179586)


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(0xCD9E8D57, _c2) ^ c1 ^ k0
        c2 = tl.umulhi(0xD2511F53, _c0) ^ c3 ^ k1
        c1 = _c2 * 0xCD9E8D57
        c3 = _c0 * 0xD2511F53
    return c0, c1, c2, c3


@triton.jit
def _uniform32(w):
    # +0.5 keeps u away from 0, so log(u) is finite and no clamp cuts the tails
    return (w.to(tl.float32) + 0.5) * INV_2_32


@triton.jit
def _uniform64(a, b):
    m = (a.to(tl.uint64) << 21) + (b >> 11).to(tl.uint64)
    return (m.to(tl.float64) + 0.5) * INV_2_53


@triton.jit
def _box_muller(u_r, u_theta):
    r = tl.sqrt(-2.0 * tl.log(u_r))
    theta = TWO_PI * u_theta
    return r * tl.cos(theta), r * tl.sin(theta)


@triton.jit
def _stream_normals(counter_idx, seed_lo, seed_hi, offset_lo, offset_hi, IS_FP64: tl.constexpr):
    """Four normals (lanes 0..3) for each counter ``offset + counter_idx`` (64-bit, wrapping)."""
    k0 = seed_lo.to(tl.uint32, bitcast=True)
    k1 = seed_hi.to(tl.uint32, bitcast=True)
    offset = (offset_hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32) | offset_lo.to(tl.uint32, bitcast=True).to(tl.uint64)
    c = offset + counter_idx.to(tl.uint64)
    c0 = c.to(tl.uint32)
    c1 = (c >> 32).to(tl.uint32)
    tag = tl.full(c0.shape, STREAM_TAG, tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(c0, c1, tl.zeros_like(c0), tag, k0, k1)
    if IS_FP64:
        z0, z1 = _box_muller(_uniform64(w0, w1), _uniform64(w2, w3))
        v0, v1, v2, v3 = _philox4x32_10(c0, c1, tl.full(c0.shape, 1, tl.uint32), tag, k0, k1)
        z2, z3 = _box_muller(_uniform64(v0, v1), _uniform64(v2, v3))
    else:
        z0, z1 = _box_muller(_uniform32(w0), _uniform32(w1))
        z2, z3 = _box_muller(_uniform32(w2), _uniform32(w3))
    return z0, z1, z2, z3


@triton.jit
def _stream_block(pid, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK: tl.constexpr, IS_FP64: tl.constexpr):
    """Normals of output elements pid*4*BLOCK .. +4*BLOCK, in stream order, and their indices."""
    counter_idx = pid * BLOCK + tl.arange(0, BLOCK)
    z0, z1, z2, z3 = _stream_normals(counter_idx, seed_lo, seed_hi, offset_lo, offset_hi, IS_FP64)
    # element 4c + lane: interleaving keeps the store contiguous
    eps = tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))
    idx = pid * (4 * BLOCK) + tl.arange(0, 4 * BLOCK)
    return eps, idx


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi"])
def _philox_randn_kernel(out_ptr, numel, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    IS_FP64: tl.constexpr = out_ptr.dtype.element_ty == tl.float64
    eps, idx = _stream_block(pid, seed_lo, seed_hi, offset_lo, offset_hi, BLOCK, IS_FP64)
    tl.store(out_ptr + idx, eps.to(out_ptr.dtype.element_ty), mask=idx < numel)


def philox_randn(shape, seed: int, offset: int, dtype: torch.dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    numel = out.numel()
    if numel == 0:
        return out
    block = block_counters(dtype)
    _philox_randn_kernel[grid_for(numel, block)](out, numel, *split_to_i32(seed), *split_to_i32(offset), BLOCK=block)
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
        _philox_words_kernel[(triton.cdiv(n_counters, 256),)](words, n_counters, call, *split_to_i32(seed), *split_to_i32(offset), BLOCK=256)
    return words
