"""``python -m torchdist_fast.tools.host_overhead``: host time per call of the sampling path, kernels aside.

At RL batch sizes (256 x 8 here) a sampling call is bound by the host: Python, dispatch and
launch preparation, not the GPU. This benchmark times torchdist_fast's whole per-call Python
path with every Triton kernel launch replaced by a no-op (so it runs, and means the same, on a
machine without a GPU), beside torch eager's ``Normal.rsample`` and ``rsample`` + ``log_prob``
doing their real work on the same device (and SAC's squashed Gaussian: torch's
``TransformedDistribution(Independent(Normal), [TanhTransform])`` rsample + log_prob against
``TanhNormal.rsample_and_log_prob``; and ``log_prob`` of a given value). Parameters require grad (a policy's outputs), so the
autograd bookkeeping is in every column.

Columns of ours, by where the stream position comes from:
  * ``cpu generator``: CPU tensors in the Philox mode; the position of the CPU (mt19937)
    generator is kept by ``rng.CpuStreams`` (a digest of the generator state per draw);
  * ``offset generator``: the position read as from a CUDA generator (``initial_seed``,
    ``get_offset``, ``set_offset``), from a Python stand-in object: what a GPU call pays;
  * ``cuda generator`` (``--device cuda``): CUDA tensors and the real CUDA generator.
On CPU the launchers run their CUDA code path (``cpu_kernel("triton")``, TRITON_INTERPRET=1,
which this command sets before Triton is imported). What the no-op leaves out is Triton's own
launcher (argument binding and the driver call), the same for any Triton kernel.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

TARGETS = {"rsample": 1.0, "rsample_and_log_prob": 0.7}  # ours / torch eager, at most (issue 13); others: none


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return _no_op


def _no_op(*args, **kwargs):
    return None


@contextlib.contextmanager
def no_kernel_launches():
    """Every kernel of the inventory (``triton_kernels/inventory.py``) replaced by ``_NoLaunch``."""
    from ..triton_kernels import inventory

    saved = [(inventory.module(m), k, getattr(inventory.module(m), k)) for m, k in inventory.kernels()]
    for mod, name, _ in saved:
        setattr(mod, name, _NoLaunch())
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


class OffsetGenerator:
    """Read as torchdist_fast reads a CUDA generator: a seed and an offset (multiple of 4)."""

    def __init__(self, seed: int, device):
        import torch

        self.seed, self.offset, self.device = seed, 0, torch.device(device)

    def initial_seed(self) -> int:
        return self.seed

    def get_offset(self) -> int:
        return self.offset

    def set_offset(self, offset: int) -> None:
        self.offset = offset


@contextlib.contextmanager
def offset_generator_as_default():
    """``rng.default_generator`` returns an ``OffsetGenerator`` (device type "cuda", as the rule
    for CUDA generators keys on it) instead of the CPU generator."""
    from .. import rng

    gen = OffsetGenerator(1234, "cuda")
    saved = rng.default_generator
    rng.default_generator = lambda device: gen
    try:
        yield gen
    finally:
        rng.default_generator = saved


def time_per_call(fn, calls: int, repeats: int) -> list[float]:
    """Seconds per call over ``calls`` back-to-back calls, ``repeats`` times (after a warm-up)."""
    for _ in range(max(50, calls // 10)):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls)
    return out


def _cases(loc, scale):
    import torch
    from torch.distributions import Independent, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    import torchdist_fast as tdf

    value = torch.randn(loc.shape, device=loc.device)

    def torch_rsample_lp():
        d = torch.distributions.Normal(loc, scale, validate_args=False)
        z = d.rsample()
        return z, d.log_prob(z)

    def torch_tanh_normal():  # SAC's squashed Gaussian, as torch writes it
        d = TransformedDistribution(Independent(torch.distributions.Normal(loc, scale, validate_args=False), 1),
                                    [TanhTransform(cache_size=1)], validate_args=False)
        a = d.rsample()
        return a, d.log_prob(a)

    return {
        "rsample": (lambda: torch.distributions.Normal(loc, scale, validate_args=False).rsample(),
                    lambda: tdf.Normal(loc, scale, validate_args=False).rsample()),
        "rsample_and_log_prob": (torch_rsample_lp,
                                 lambda: tdf.Normal(loc, scale, validate_args=False).rsample_and_log_prob()),
        "log_prob": (lambda: torch.distributions.Normal(loc, scale, validate_args=False).log_prob(value),
                     lambda: tdf.Normal(loc, scale, validate_args=False).log_prob(value)),
        "tanh_normal rsample_and_log_prob": (
            torch_tanh_normal, lambda: tdf.TanhNormal(loc, scale, validate_args=False).rsample_and_log_prob()),
    }


def measure(device: str = "cpu", shape=(256, 8), calls: int = 2000, repeats: int = 7) -> dict:
    """Rows {op: {column: seconds per call, best of ``repeats`` interleaved rounds}} plus the environment."""
    import torch

    from ..settings import cpu_kernel, cpu_sampling

    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the CPU run needs TRITON_INTERPRET=1 before Triton is imported "
                           "(`python -m torchdist_fast.tools.host_overhead` sets it)")
    loc = torch.randn(shape, device=device).requires_grad_()
    scale = (torch.rand(shape, device=device) + 0.5).requires_grad_()
    settings = contextlib.ExitStack()
    if device == "cpu":
        settings.enter_context(cpu_sampling("philox"))
        settings.enter_context(cpu_kernel("triton"))
    rows = {}
    with settings, no_kernel_launches():
        for op, (torch_fn, ours_fn) in _cases(loc, scale).items():
            columns = {"torch eager": (torch_fn, contextlib.nullcontext)}
            if device == "cpu":
                columns["ours, cpu generator"] = (ours_fn, contextlib.nullcontext)
                columns["ours, offset generator"] = (ours_fn, offset_generator_as_default)
            else:
                columns["ours, cuda generator"] = (ours_fn, contextlib.nullcontext)
            # rounds interleave the columns, so a burst of load on a shared machine hits all of
            # them; the best round of each is reported (the host path's cost without interference)
            times = {name: [] for name in columns}
            for _ in range(repeats):
                for name, (fn, context) in columns.items():
                    with context():
                        times[name] += time_per_call(fn, calls, 1)
            rows[op] = {name: min(t) for name, t in times.items()}
    import triton

    return {
        "device": device, "shape": list(shape), "calls": calls, "repeats": repeats, "rows": rows,
        "environment": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "date": time.strftime("%Y-%m-%d")},
    }


def table(result: dict) -> str:
    lines = [f"host time per call, {result['device']}, batch {'x'.join(map(str, result['shape']))} "
             "(our kernel launches are no-ops; torch eager does its real work)",
             "| op | column | time | ours / torch eager | target |", "|---|---|---|---|---|"]
    for op, row in result["rows"].items():
        base = row["torch eager"]
        for col, t in row.items():
            ratio = "" if col == "torch eager" else f"{t / base:.2f}"
            target = "" if col == "torch eager" or op not in TARGETS else f"<= {TARGETS[op]:.2f}"
            lines.append(f"| {op} | {col} | {t * 1e6:.1f} us | {ratio} | {target} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchdist_fast.tools.host_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing (default 2000)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds, the best reported (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a host path is serial)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--calls, --repeats and --threads must be at least 1")
    if args.device == "cpu" and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"  # the launchers' CUDA code path on CPU tensors
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    try:
        result = measure(args.device, calls=args.calls, repeats=args.repeats)
    except RuntimeError as e:
        print(f"host_overhead: {e}", file=sys.stderr)
        return 2
    from .bench import print_and_save

    return print_and_save(table(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
