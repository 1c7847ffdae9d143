"""Assertions and data shared by the tests."""
from pathlib import Path

import pytest
import torch

KAT_FILE = Path(__file__).resolve().parents[2] / "shared" / "philox_kat.txt"


def kat_rows():
    """(rounds, [ctr0..3, key0..1, expected0..3]) for every line of ../shared/philox_kat.txt."""
    if not KAT_FILE.exists():
        pytest.skip(f"{KAT_FILE} not found (../shared beside the checkout)")
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
