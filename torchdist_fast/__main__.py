"""``python -m torchdist_fast``: draw normals on every available device and check the stream.

For each device: the stream check (Triton words == reference words, bit for bit, and the
normals to float rounding), then statistics of a draw of ``--numel`` normals and the time it
took beside ``torch.randn``. On a machine without a GPU the Triton kernels run through
Triton's interpreter on CPU tensors (slow; a smaller size is used there).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _devices(requested):
    import torch

    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if requested is None:
        return available
    for d in requested:
        if d not in ("cpu", "cuda"):
            raise SystemExit(f"error: unknown device {d!r} (choose from cpu, cuda)")
        if d not in available:
            raise SystemExit(f"error: device {d!r} is not available on this machine")
    return requested


def _stream_check(device, seed=0x5EED_1234_ABCD, offset=2**32 - 3) -> str:
    import torch

    from torchdist_fast import reference, rng

    n = 1000
    so = rng.pack_seed_offset(seed, offset)
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "stream: reference only (set TRITON_INTERPRET=1 to check the Triton kernel on CPU)"
    import torchdist_fast
    from torchdist_fast.triton_kernels.philox import philox_words

    words_ok = torch.equal(philox_words(n // 4, seed, offset, 0, device).cpu(), reference.philox_words(n // 4, seed, offset))
    ctx = torchdist_fast.cpu_kernel("triton") if device == "cpu" else _null()
    with ctx:
        z = torch.ops.torchdist_fast.philox_randn([n], so, torch.float32, torch.device(device)).cpu()
    err = (z - reference.philox_randn((n,), seed, offset)).abs().max().item()
    ok = words_ok and err < 1e-5
    return f"stream: Triton words == reference words: {words_ok}; max |normal diff| {err:.2e} -> {'OK' if ok else 'MISMATCH'}"


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _time(fn, device, repeat=5):
    import torch

    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchdist_fast", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", help="cpu and/or cuda (default: every available one)")
    parser.add_argument("--numel", type=int, default=None, help="normals per draw (default 2^22, 2^26 on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.numel is not None and args.numel <= 0:
        raise SystemExit("error: --numel must be positive")

    import numpy as np
    import torch
    from scipy import stats

    import torchdist_fast

    print(f"torchdist_fast {torchdist_fast.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    for device in _devices(args.devices):
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        numel = args.numel or (1 << 26 if device == "cuda" else 1 << 22)
        print(f"\n== {device} ({name}), {numel} float32 normals")
        print("  " + _stream_check(device))
        torch.manual_seed(args.seed)
        ours = _time(lambda: torchdist_fast.randn(numel, device=device), device)
        theirs = _time(lambda: torch.randn(numel, device=device), device)
        torch.manual_seed(args.seed)
        z = torchdist_fast.randn(numel, device=device).double().cpu().numpy()
        print(f"  mean {z.mean():+.5f}  var {z.var():.5f}  skew {stats.skew(z):+.5f}  "
              f"excess kurtosis {stats.kurtosis(z):+.5f}  max|z| {np.abs(z).max():.3f}  "
              f"KS p-value {stats.kstest(z[: 1 << 20], 'norm').pvalue:.3f}")
        kernel = "Triton" if device == "cuda" else f"{torchdist_fast.get_cpu_kernel()} kernel"
        print(f"  torchdist_fast.randn ({kernel}) {ours * 1e3:.2f} ms, torch.randn {theirs * 1e3:.2f} ms "
              f"(ratio {theirs / ours:.2f}x; timing is the benchmark's job, this is a smoke check)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
