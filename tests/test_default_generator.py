"""``rng.default_generator``: the device's default generator, also when the draw is the
program's first use of the device (torch.cuda.default_generators is empty until CUDA's lazy init)."""
import subprocess
import sys

import pytest
import torch

from torchdist_fast import rng


class LazyDevice:
    """A device module like torch.cuda before its lazy init: no default generators until init()."""

    def __init__(self, count):
        self.count = count
        self.default_generators = ()
        self.inits = 0

    def init(self):
        self.inits += 1
        self.default_generators = tuple(torch.Generator().manual_seed(i) for i in range(self.count))

    def current_device(self):
        self.init()  # as torch.cuda.current_device() does
        return 0


@pytest.fixture
def lazy_cuda(monkeypatch):
    device = LazyDevice(2)
    monkeypatch.setattr(torch, "cuda", device)
    return device


@pytest.mark.parametrize("index", [0, 1])
def test_explicit_index_before_init(lazy_cuda, index):
    gen = rng.default_generator(torch.device("cuda", index))
    assert lazy_cuda.inits == 1 and gen is lazy_cuda.default_generators[index]


def test_no_index(lazy_cuda):
    assert rng.default_generator(torch.device("cuda")) is lazy_cuda.default_generators[0]


def test_index_past_the_devices(lazy_cuda):
    with pytest.raises(RuntimeError, match="no default generator for cuda:2: 2 cuda device"):
        rng.default_generator(torch.device("cuda", 2))


@pytest.mark.gpu
def test_first_cuda_call_is_a_draw():
    """torchdist_fast.randn on an explicit cuda:0 as the program's first CUDA call."""
    code = ("import torch, torchdist_fast\nassert not torch.cuda.is_initialized()\n"
            "x = torchdist_fast.randn(8, device='cuda:0')\nassert x.device == torch.device('cuda', 0), x.device\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
