"""What autograd keeps, and how many kernels a call launches."""
import pytest
import torch

import torchdist_fast  # noqa: F401
from torchdist_fast import rng
from torchdist_fast.tools import bench

OPS = torch.ops.torchdist_fast
N = 4096


def saved_bytes_beyond_inputs(fn, inputs):
    """Bytes of tensors autograd saves that are not the inputs' own storage (the runner's measure)."""
    return int(bench.saved_bytes_per_element(fn, inputs, 1))


def _params():
    return torch.randn(N, requires_grad=True), (torch.rand(N) + 0.5).requires_grad_()


def test_rsample_log_prob_saves_nothing_of_output_size(cpu_kernel):
    so = rng.pack_seed_offset(1, 2)
    ours = saved_bytes_beyond_inputs(lambda l, s: OPS.normal_rsample_log_prob(l, s, [], so), _params())
    ours_rsample = saved_bytes_beyond_inputs(lambda l, s: OPS.normal_rsample(l, s, [], so), _params())
    ours_log_prob = saved_bytes_beyond_inputs(OPS.normal_log_prob, (torch.randn(N), *_params()))

    def eager(loc, scale):
        d = torch.distributions.Normal(loc, scale, validate_args=False)
        z = d.rsample()
        return z, d.log_prob(z)

    torch_eager = saved_bytes_beyond_inputs(eager, _params())
    # ours: the [seed, offset] pair only (16 bytes, whatever N); log_prob saves only its inputs
    assert ours == ours_rsample == 16
    assert ours_log_prob == 0
    # torch.distributions eager keeps eps-sized tensors: measured 16 bytes per float32 element
    assert torch_eager >= 12 * N


class LaunchCounter:
    """Counts launches of every Triton kernel of the package."""

    def __init__(self, monkeypatch):
        from torchdist_fast.triton_kernels import normal_log_prob, normal_rsample, philox

        self.counts = {}
        for module in (philox, normal_rsample, normal_log_prob):
            for name in dir(module):
                if name.startswith("_") and name.endswith("_kernel"):
                    monkeypatch.setattr(module, name, self._wrap(name, getattr(module, name)))

    def _wrap(self, name, kernel):
        counter = self
        # the 2-D (row x column tile) variant of a kernel counts as that kernel
        key = name.replace("_2d_kernel", "_kernel")

        class Counted:
            def __getitem__(self, grid):
                counter.counts[key] = counter.counts.get(key, 0) + 1
                return kernel[grid]

        return Counted()

    def total(self):
        return sum(self.counts.values())


@pytest.mark.interpreter
@pytest.mark.parametrize("scale_shape", [(8,), (1,)])
def test_one_kernel_forward_one_backward(triton_device, monkeypatch, scale_shape):
    launches = LaunchCounter(monkeypatch)
    loc = torch.randn(4, 8, device=triton_device, requires_grad=True)
    scale = (torch.rand(scale_shape, device=triton_device) + 0.5).requires_grad_()
    so = rng.pack_seed_offset(3, 4)
    z, lp = OPS.normal_rsample_log_prob(loc, scale, [], so)
    assert launches.counts == {"_normal_rsample_fwd_kernel": 1}
    (z.sum() + lp.sum()).backward()
    assert launches.counts == {"_normal_rsample_fwd_kernel": 1, "_normal_rsample_bwd_kernel": 1}

    launches.counts.clear()
    value = torch.randn(4, 8, device=triton_device)
    OPS.normal_log_prob(value, loc, scale).sum().backward()
    assert launches.counts == {"_normal_log_prob_fwd_kernel": 1, "_normal_log_prob_bwd_kernel": 1}


def test_backward_ops_per_call(cpu_kernel):
    """At the op level: one fused op forward; backward one op, plus a sum where scale broadcasts."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    loc = torch.randn(4, 8, requires_grad=True)
    scale = (torch.rand(8) + 0.5).requires_grad_()
    so = rng.pack_seed_offset(3, 4)
    with Record() as fwd:
        z, lp = OPS.normal_rsample_log_prob(loc, scale, [], so)
    assert fwd.ops == ["torchdist_fast.normal_rsample_log_prob"]
    loss = z.sum() + lp.sum()
    with Record() as bwd:
        loss.backward()
    fused = [op for op in bwd.ops if op.startswith("torchdist_fast.")]
    assert fused == ["torchdist_fast.normal_rsample_backward"]
