"""The stream position in memory: kernels that read [seed, offset] from a tensor (what CUDA graph
replays and torch.compile pass) draw exactly what the same position passed as ints draws, and
the rules that decide where the position lives. The capture itself: tests/test_cuda_graphs.py."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import INTERPRET
from helpers import TOLERANCES, assert_close

import torchdist_fast
from torchdist_fast import reference, rng

pytestmark = [pytest.mark.interpreter, pytest.mark.skipif(not INTERPRET, reason="runs the Triton kernels on CPU")]

POSITIONS = [(0, 0), (2**64 - 1, 2**64 - 8), (0x9E3779B97F4A7C15, 2**32 - 4), (5, 12)]


def _both(launch, seed, offset):
    """The launcher's outputs at (seed, offset) as ints and as a tensor in memory."""
    as_ints = launch(seed, offset, None)
    in_memory = launch(0, 0, rng.pack_seed_offset(seed, offset))
    as_ints = as_ints if isinstance(as_ints, tuple) else (as_ints,)
    in_memory = in_memory if isinstance(in_memory, tuple) else (in_memory,)
    return as_ints, in_memory


@pytest.mark.parametrize("seed,offset", POSITIONS)
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES[:3])
def test_randn_reads_the_position_from_memory(seed, offset, dtype, atol, rtol, poisoned_empty):
    from torchdist_fast.triton_kernels.philox import philox_randn

    (a,), (b,) = _both(lambda s, o, p: philox_randn((37,), s, o, dtype, "cpu", position=p), seed, offset)
    assert torch.equal(a, b)
    assert_close(b, reference.philox_randn((37,), seed, offset, dtype), atol, rtol)


# (loc shape, scale shape, sample shape): the 1-D kernel (with a tail launch) and the 2-D tile kernel
RSAMPLE_CASES = [((7,), (7,), (3,)), ((6, 8), (8,), (2,)), ((), (), (1029,))]


@pytest.mark.parametrize("seed,offset", POSITIONS[:3])
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", RSAMPLE_CASES)
@pytest.mark.parametrize("with_log_prob", [False, True])
def test_rsample_kernels_read_the_position_from_memory(seed, offset, loc_shape, scale_shape, sample_shape,
                                                       with_log_prob, poisoned_empty):
    from torchdist_fast.triton_kernels import normal_rsample as nr

    g = torch.Generator().manual_seed(seed % 1000)
    loc, scale = torch.randn(loc_shape, generator=g), torch.rand(scale_shape, generator=g) + 0.5
    ints, mem = _both(lambda s, o, p: nr.normal_rsample_fwd(loc, scale, sample_shape, s, o, with_log_prob, position=p),
                      seed, offset)
    assert all(torch.equal(a, b) for a, b in zip(ints, mem)) and not mem[0].isnan().any()
    grad = torch.randn(mem[0].shape, generator=g)
    ints, mem = _both(lambda s, o, p: nr.normal_rsample_bwd(grad, grad, scale, s, o, position=p), seed, offset)
    assert torch.equal(ints[0], mem[0]) and not mem[0].isnan().any()


@pytest.mark.parametrize("squash", [True, False])
def test_event_kernels_read_the_position_from_memory(squash, poisoned_empty):
    from torchdist_fast.triton_kernels import tanh_normal as tk

    loc, scale = torch.randn(5, 6), torch.rand(5, 6) + 0.5
    seed, offset = 2**63 + 3, 2**40 + 4
    ints, mem = _both(lambda s, o, p: tk.tanh_normal_fwd(loc, scale, (2, 5, 6), 1, 0.0, 1.0, s, o, True, squash,
                                                         position=p), seed, offset)
    assert all(torch.equal(a, b) for a, b in zip(ints, mem)) and not mem[0].isnan().any()
    ga, gl = torch.randn(2, 5, 6), torch.randn(2, 5)
    ints, mem = _both(lambda s, o, p: tk.tanh_normal_bwd(ga, gl, loc, scale, (2, 5, 6), 1, 1.0, s, o, [True, True], squash,
                                                         position=p), seed, offset)
    assert all(torch.equal(a, b) for a, b in zip(ints, mem))


def test_ops_on_kernels_take_the_pair_in_memory_and_agree_with_the_reference():
    """Under cpu_kernel("triton") a CPU pair is on the op's device: the kernels read it from memory
    (as a CUDA op does with a pair on the GPU); the reference reads it on the host. Same numbers."""
    loc, scale = torch.randn(4, 8, dtype=torch.float64), torch.rand(4, 8, dtype=torch.float64) + 0.5
    so = rng.pack_seed_offset(2**64 - 5, 2**33)
    assert rng.kernel_position(so, torch.device("cpu"), True)[2] is so
    assert rng.kernel_position(so, torch.device("cpu"), False) == (2**64 - 5, 2**33, None)
    with torchdist_fast.cpu_kernel("triton"):
        z_kernel, lp_kernel = torch.ops.torchdist_fast.normal_rsample_log_prob(loc, scale, [3], so)
    z_ref, lp_ref = torch.ops.torchdist_fast.normal_rsample_log_prob(loc, scale, [3], so)
    torch.testing.assert_close(z_kernel, z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp_kernel, lp_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [torch.zeros(2, dtype=torch.int32), torch.zeros(3, dtype=torch.int64),
                                 torch.zeros(2, 1, dtype=torch.int64)])
def test_a_malformed_pair_is_refused(bad):
    with pytest.raises(ValueError, match="seed_offset must be"):
        rng.kernel_position(bad, torch.device("cpu"), True)
    with pytest.raises(ValueError, match="seed_offset must be"):
        torch.ops.torchdist_fast.normal_rsample(torch.zeros(3), torch.ones(3), [], bad)


def test_a_pair_on_another_device_is_refused():
    meta = torch.empty(2, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match="on the CPU or on the op's device"):
        rng.kernel_position(meta, torch.device("cpu"), True)


def test_the_draw_op_puts_the_pair_where_the_kernels_read_it():
    """The fake (what torch.compile plans with) puts the pair where the real op does; and a CPU
    draw advances the generator like the host rule."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from torchdist_fast import cuda_backend

    with FakeTensorMode():
        cuda_pair = torch.ops.torchdist_fast.draw_seed_offset("cuda:0", 10)
        assert torch.ops.torchdist_fast.draw_seed_offset("cpu", 10).device.type == "cpu"
    # on the GPU only where the extension writes it there (graph-safe); else read on the host
    assert cuda_pair.device == (torch.device("cuda:0") if cuda_backend.available() else torch.device("cpu"))
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert rng.unpack_seed_offset(rng.take_seed_offset("cpu", 9, a)) == rng.take_position("cpu", 9, b)
    assert rng.take_position("cpu", 1, a) == rng.take_position("cpu", 1, b) == (3, rng.advance(9))


_SAME_KERNEL = r"""
import torch
from torchdist_fast import rng
from torchdist_fast.tools import cost_model as cm
from torchdist_fast.triton_kernels import normal_rsample as nr, philox, tanh_normal as tk
from torchdist_fast.triton_kernels.layout import force_fast_math

loc, scale = torch.randn(64, 8), torch.rand(64, 8) + 0.5
launches = {
    "randn": lambda p: philox.philox_randn((4099,), 2**64 - 1, 8, torch.float32, "cpu", position=p),
    "rsample 1-D": lambda p: nr.normal_rsample_fwd(loc[:, :7], scale[:, :7], (2,), 2**64 - 1, 8, True, position=p),
    "rsample 2-D": lambda p: nr.normal_rsample_fwd(loc, scale, (2,), 2**64 - 1, 8, True, position=p),
    "rsample bwd": lambda p: nr.normal_rsample_bwd(torch.randn(2, 64, 8), None, scale, 2**64 - 1, 8, position=p),
    "tanh": lambda p: tk.tanh_normal_fwd(loc, scale, (2, 64, 8), 1, 0.0, 1.0, 2**64 - 1, 8, True, position=p),
}
for name, launch in launches.items():
    keys = []
    for position in (None, rng.pack_seed_offset(5, 2**40)):
        with force_fast_math(True), cm.captured_launches() as calls:
            launch(position)
        keys.append([cm.launch_specialization(fn, args, kwargs)[0] for fn, args, kwargs, grid in calls])
    assert keys[0] == keys[1] and keys[0], name
print("same kernels")
"""


@pytest.mark.aot
def test_ints_and_memory_launch_the_same_compiled_kernel():
    """The warm-up-then-capture recipe: an eager call (position as ints) must compile and load
    the very kernel a capture (position in memory) launches, or the first launch inside the
    capture would compile and load a module, which CUDA forbids. Checked with Triton's own
    launch-time specialization (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real JIT kernels
    res = subprocess.run([sys.executable, "-c", _SAME_KERNEL], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "same kernels" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
