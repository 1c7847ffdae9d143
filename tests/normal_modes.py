"""How torchdist_fast.Normal draws on CPU in the Normal class tests.

"torch": the default, torch's own sampling (bit-identical to torch.distributions.Normal).
"philox": the Philox ops with the pure-torch reference kernels.
"triton": the Philox ops with the Triton kernels under TRITON_INTERPRET=1 (the GPU code path).
"""
import contextlib
import os

import pytest
import torch
from torch.distributions import Distribution

import torchdist_fast

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MODES = ["torch", "philox"] + (["triton"] if INTERPRET else [])
OPS_MODES = [m for m in MODES if m != "torch"]


@contextlib.contextmanager
def sampling_mode(mode: str):
    sampling = "torch" if mode == "torch" else "philox"
    kernel = "triton" if mode == "triton" else "reference"
    with torchdist_fast.cpu_sampling(sampling), torchdist_fast.cpu_kernel(kernel):
        yield


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for comparing with torch's formulas: float rounding of a few operations."""
    return {
        torch.float32: (1e-5, 1e-5),
        torch.float64: (1e-12, 1e-12),
        torch.float16: (4e-3, 4e-3),
        torch.bfloat16: (3.2e-2, 3.2e-2),
    }[dtype]


@pytest.fixture(autouse=True)
def default_validation():
    """Validation on by default, as in a fresh process (``python`` without ``-O``).

    torch.compile turns the default off for the whole process the first time it runs
    (``torch._dynamo.eval_frame.TorchPatcher``), so a compile test would change the tests after
    it. Import this fixture into a test module to make it autouse there.
    """
    old = Distribution._validate_args
    Distribution.set_default_validate_args(True)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(old)
