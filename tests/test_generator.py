"""(seed, offset) from torch.Generator: advancing, reproducibility, generator= honoured."""
import pytest
import torch

import torchdist_fast
from torchdist_fast import reference, rng
from torchdist_fast.functional import counters_for, draw_seed_offset


def test_manual_seed_reproduces():
    torch.manual_seed(1234)
    a = torchdist_fast.randn(3, 5)
    b = torchdist_fast.randn(3, 5)
    torch.manual_seed(1234)
    assert torch.equal(torchdist_fast.randn(3, 5), a)
    assert torch.equal(torchdist_fast.randn(3, 5), b)
    assert not torch.equal(a, b)


def test_different_seed_different_numbers():
    torch.manual_seed(1)
    a = torchdist_fast.randn(64)
    torch.manual_seed(2)
    assert not torch.allclose(a, torchdist_fast.randn(64))


def test_generator_argument_honoured():
    g = torch.Generator().manual_seed(99)
    a = torchdist_fast.randn(16, generator=g)
    g.manual_seed(99)
    torch.manual_seed(0)
    assert torch.equal(torchdist_fast.randn(16, generator=g), a)
    # the default generator was not consumed by draws on g
    state = torch.get_rng_state()
    torchdist_fast.randn(16, generator=g)
    assert torch.equal(torch.get_rng_state(), state)
    # and a draw on the default generator differs from g's
    assert not torch.equal(torchdist_fast.randn(16), a)


def test_randn_is_the_stream_of_the_drawn_position():
    g = torch.Generator().manual_seed(5)
    so = draw_seed_offset(torch.device("cpu"), 10, g)
    g.manual_seed(5)
    seed, offset = rng.unpack_seed_offset(so)
    assert torch.equal(torchdist_fast.randn(10, generator=g), reference.philox_randn((10,), seed, offset))


def test_cpu_draws_never_share_a_key():
    g = torch.Generator().manual_seed(0)
    keys = {rng.unpack_seed_offset(draw_seed_offset(torch.device("cpu"), 8, g)) for _ in range(2000)}
    assert len(keys) == 2000


class FakePhiloxGenerator:
    """Stand-in for a CUDA generator: seed plus an offset that must stay a multiple of 4."""

    def __init__(self, seed, offset=0):
        self.seed, self.offset, self.device = seed, offset, torch.device("cuda")

    def initial_seed(self):
        return self.seed

    def get_offset(self):
        return self.offset

    def set_offset(self, offset):
        assert offset % 4 == 0, "CUDA generators require offsets that are multiples of 4"
        self.offset = offset


@pytest.mark.parametrize("sizes", [[1, 1, 1], [4, 5, 1023, 4096, 3], [10**9, 7]])
def test_offset_generator_never_reuses_a_counter(sizes):
    gen = FakePhiloxGenerator(seed=2**63 + 1, offset=8)
    used = []
    for numel in sizes:
        seed, offset = rng.unpack_seed_offset(rng.take_seed_offset_from(gen, counters_for(numel)))
        assert seed == 2**63 + 1
        used.append((offset, offset + counters_for(numel)))
    for (a0, a1), (b0, b1) in zip(used, used[1:]):
        assert a1 <= b0, f"counter ranges overlap: {used}"
    # the advance depends only on numel (never on BLOCK): ceil(numel / 4) rounded up to 4
    assert gen.offset == used[-1][0] + -(-counters_for(sizes[-1]) // 4) * 4


def test_counters_independent_of_block():
    assert [counters_for(n) for n in (0, 1, 4, 5, 1024, 1025)] == [0, 1, 1, 2, 256, 257]


def test_seed_offset_roundtrip_full_64_bits():
    for seed, offset in [(0, 0), (2**64 - 1, 2**63), (2**63, 2**64 - 4)]:
        assert rng.unpack_seed_offset(rng.pack_seed_offset(seed, offset)) == (seed, offset)


@pytest.mark.gpu
def test_cuda_generator_advances_by_counters():
    g = torch.Generator(device="cuda").manual_seed(7)
    before = g.get_offset()
    torchdist_fast.randn(1001, generator=g, device="cuda")
    assert g.get_offset() == before + -(-counters_for(1001) // 4) * 4


@pytest.mark.gpu
def test_cuda_and_cpu_reference_same_numbers():
    so = rng.pack_seed_offset(42, 12)
    gpu = torch.ops.torchdist_fast.philox_randn([999], so, torch.float32, torch.device("cuda"))
    cpu = torch.ops.torchdist_fast.philox_randn([999], so, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_capture_refuses_instead_of_replaying_noise():
    loc = torch.zeros(16, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph capture"):
        with torch.cuda.graph(graph):
            torchdist_fast.randn(16, device="cuda")
