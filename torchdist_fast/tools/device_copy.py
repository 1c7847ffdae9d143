"""Device-to-device copy bandwidth, measured with a copy kernel: the denominator of every "% of copy".

``copy_kernel`` is a Triton kernel that loads and stores every element once; Nsight Compute
lists it by that name, so the ncu workload and the benchmark use one and the same reference.
(``Tensor.copy_`` between contiguous tensors of one dtype is a ``cudaMemcpyAsync``, not a
kernel: profilers do not list it. Its rate is reported beside the kernel's, for information.)

``bandwidth`` times the kernel with CUDA events over a large buffer (1 GiB by default), after
a warm-up, and keeps the best of several calls: bytes read + bytes written per second.
"""
from __future__ import annotations

import triton
import triton.language as tl

COPY_BYTES = 2**30  # per buffer: far past the L2 cache of any GPU
COPY_REPEATS = 10
BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def copy_kernel(src_ptr, dst_ptr, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask), mask=mask)


def copy(src, dst) -> None:
    """dst[:] = src with ``copy_kernel`` (contiguous tensors of one dtype and size)."""
    if src.shape != dst.shape or src.dtype != dst.dtype or not (src.is_contiguous() and dst.is_contiguous()):
        raise ValueError("copy needs two contiguous tensors of one shape and dtype")
    numel = src.numel()
    if numel:
        copy_kernel[(-(-numel // BLOCK),)](src, dst, numel, BLOCK=BLOCK, num_warps=NUM_WARPS)


def _best_seconds(fn, repeats: int, device) -> float:
    from .timing import time_calls

    fn()  # warm-up (compiles the kernel)
    return min(time_calls(fn, [()], device.type, repeats))


def bandwidth(device="cuda", nbytes: int = COPY_BYTES, repeats: int = COPY_REPEATS) -> dict:
    """{"kernel_gbps", "memcpy_gbps", "bytes", "repeats"}: read + written bytes per second, in GB/s,
    of ``copy_kernel`` (the reference) and of ``Tensor.copy_`` (a memcpy on CUDA), best of ``repeats``."""
    import torch

    device = torch.device(device)
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    kernel_s = _best_seconds(lambda: copy(src, dst), repeats, device)
    if not torch.equal(src, dst):
        raise RuntimeError("copy_kernel did not copy its input")
    memcpy_s = _best_seconds(lambda: dst.copy_(src), repeats, device)
    moved = 2 * n * 4
    return {"kernel_gbps": moved / kernel_s / 1e9, "memcpy_gbps": moved / memcpy_s / 1e9, "bytes": n * 4, "repeats": repeats}
