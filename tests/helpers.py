"""Assertions and data shared by the tests."""
import contextlib
import functools
from pathlib import Path

import pytest
import torch

# Random123's Philox known-answer vectors: the tests' own copy (it travels with the checkout), and
# the project's shared copy beside the checkout, which the vendored one must equal where it exists
KAT_FILE = Path(__file__).resolve().parent / "data" / "philox_kat.txt"
SHARED_KAT_FILE = Path(__file__).resolve().parents[2] / "shared" / "philox_kat.txt"


def kat_rows():
    """(rounds, [ctr0..3, key0..1, expected0..3]) for every vector of tests/data/philox_kat.txt."""
    rows = []
    for line in KAT_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, rounds, *words = line.split()
        assert name == "philox4x32"
        rows.append((int(rounds), [int(w, 16) for w in words]))
    return rows

# (dtype, atol, rtol) for comparing a kernel with the reference: float math differs only in
# rounding (log/cos/sin of different libraries, fused multiply-add), half types by one ulp.
TOLERANCES = [
    (torch.float32, 1e-5, 1e-5),
    (torch.float64, 1e-12, 1e-12),
    (torch.float16, 2e-3, 2e-3),
    (torch.bfloat16, 1.6e-2, 1.6e-2),
]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, worst: int = 5) -> None:
    """Like torch.testing.assert_close, but the message lists the worst mismatches with indices."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    if a.numel() == 0:
        return
    same_nan = torch.isnan(a) & torch.isnan(e)
    err = torch.where(same_nan, torch.zeros_like(a), (a - e).abs())
    err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
    bad = err > atol + rtol * e.abs()
    if bad.any():
        excess = (err - atol - rtol * e.abs()).flatten()
        idx = excess.topk(min(worst, int(bad.sum()))).indices
        lines = [
            f"  at {tuple(int(x) for x in torch.unravel_index(i, a.shape)) if a.dim() else ()}: actual {a.flatten()[i].item()!r} "
            f"expected {e.flatten()[i].item()!r} |diff| {err.flatten()[i].item():.3g}"
            for i in idx
        ]
        raise AssertionError(
            f"{int(bad.sum())} of {a.numel()} elements differ beyond atol={atol} rtol={rtol}; worst:\n" + "\n".join(lines)
        )


class TritonLaunches:
    """Triton kernel launches seen while ``counting_triton_launches`` is active: those with a tensor
    argument on ``device``'s type, and the others."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.on_device = 0
        self.elsewhere = 0

    def record(self, args, kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(t.device.type == self.device.type for t in tensors):
            self.on_device += 1
        else:
            self.elsewhere += 1

    def check(self, what="the test"):
        """Fail unless a Triton kernel was launched on a tensor of ``device``."""
        if not self.on_device:
            pytest.fail(f"{what} takes triton_device ({self.device.type}) but launched no Triton kernel on a "
                        f"{self.device.type} tensor ({self.elsewhere} launches on other devices): move its tensors "
                        "to triton_device, or drop the fixture", pytrace=False)


@contextlib.contextmanager
def counting_triton_launches(device):
    """Count every Triton launch: ``JITFunction.run`` (compiled kernels, and the autotuner's launches)
    and the interpreter's ``InterpretedFunction.run`` (TRITON_INTERPRET=1), the two methods that
    ``kernel[grid](...)`` ends in; a warm-up compile is not a launch."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches = TritonLaunches(device)
    originals = [(cls, cls.__dict__["run"]) for cls in (JITFunction, InterpretedFunction)]

    def counted(real):
        @functools.wraps(real)
        def run(self, *args, **kwargs):
            if not kwargs.get("warmup"):
                launches.record(args, kwargs)
            return real(self, *args, **kwargs)
        return run

    for cls, real in originals:
        cls.run = counted(real)
    try:
        yield launches
    finally:
        for cls, real in originals:
            cls.run = real
