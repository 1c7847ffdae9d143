"""(seed, offset) from torch.Generator: advancing, reproducibility, generator= honoured."""
import pytest
import torch

import torchdist_fast
from torchdist_fast import reference, rng
from torchdist_fast.functional import draw_seed_offset
from torchdist_fast.rng import counters_for


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


def _ranges(draws):
    """(key, first counter, end counter) per draw of (numel, seed_offset)."""
    out = []
    for numel, so in draws:
        key, offset = rng.unpack_seed_offset(so)
        out.append((key, offset, offset + counters_for(numel)))
    return out


def _assert_no_counter_reused(ranges):
    by_key = {}
    for key, start, end in ranges:
        by_key.setdefault(key, []).append((start, end))
    for spans in by_key.values():
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 <= b0, f"counter ranges overlap: {spans}"


def test_cpu_draws_never_reuse_a_counter():
    g = torch.Generator().manual_seed(0)
    sizes = [1, 5, 1000, 4, 4097] * 200
    draws = [(n, draw_seed_offset(torch.device("cpu"), n, g)) for n in sizes]
    # interleaved use of the generator by torch itself starts new streams, never overlapping ones
    torch.randn(3, generator=g)
    draws += [(n, draw_seed_offset(torch.device("cpu"), n, g)) for n in sizes[:50]]
    _assert_no_counter_reused(_ranges(draws))


def test_cpu_positions_follow_the_cuda_rule_after_manual_seed():
    """After manual_seed(s), CPU positions are the ones a CUDA generator seeded with s gives."""
    sizes = [1, 1023, 4, 5, 10**6, 7]
    torch.manual_seed(2**40 + 9)
    cpu = [rng.unpack_seed_offset(draw_seed_offset(torch.device("cpu"), n)) for n in sizes]
    cuda_like = FakePhiloxGenerator(seed=2**40 + 9)
    expected = [rng.take_position_from(cuda_like, counters_for(n)) for n in sizes]
    assert cpu == expected


def test_manual_seed_gives_the_stream_at_offset_zero():
    torch.manual_seed(31)
    a = torchdist_fast.randn(10)
    b = torchdist_fast.randn(6)
    assert torch.equal(a, reference.philox_randn((10,), 31, 0))
    assert torch.equal(b, reference.philox_randn((6,), 31, 4))  # 10 normals: 3 counters, rounded up to 4


def test_reproducible_with_torch_sampling_interleaved():
    def run():
        torch.manual_seed(3)
        out = [torchdist_fast.randn(5)]
        torch.rand(2)  # torch's own use of the generator in between
        out += [torchdist_fast.randn(5), torchdist_fast.randn(5)]
        return out

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], first[2])


def test_restored_state_redraws_the_same_noise():
    torch.manual_seed(8)
    torchdist_fast.randn(4)
    state = torch.get_rng_state()
    a = torchdist_fast.randn(9)
    torch.set_rng_state(state)
    assert torch.equal(torchdist_fast.randn(9), a)


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
        seed, offset = rng.take_position_from(gen, counters_for(numel))
        assert seed == 2**63 + 1
        used.append((offset, offset + counters_for(numel)))
    for (a0, a1), (b0, b1) in zip(used, used[1:]):
        assert a1 <= b0, f"counter ranges overlap: {used}"
    # the advance depends only on numel (never on BLOCK): ceil(numel / 4) rounded up to 4
    assert gen.offset == used[-1][0] + rng.advance(counters_for(sizes[-1]))


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
def test_cuda_graph_capture_refuses_or_replays_fresh_noise():
    """Never the same noise replayed: without the CUDA backend extension the capture is refused;
    with it built (the position is then read on the device) every replay draws fresh noise, the
    eager draw's at the same generator position (tests/test_cuda_graphs.py has the rest)."""
    from torchdist_fast import cuda_backend

    graph = torch.cuda.CUDAGraph()
    if not cuda_backend.available():
        with pytest.raises(RuntimeError, match="CUDA graph capture"):
            with torch.cuda.graph(graph):
                torchdist_fast.randn(16, device="cuda")
        return
    stream = torch.cuda.Stream()  # warm up (compile) outside the capture, as torch's docs ask
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torchdist_fast.randn(16, device="cuda")
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        static = torchdist_fast.randn(16, device="cuda")
    torch.cuda.manual_seed(77)
    graph.replay()
    first = static.clone()
    graph.replay()
    assert not torch.equal(first, static)
    torch.cuda.manual_seed(77)
    assert torch.equal(torchdist_fast.randn(16, device="cuda"), first)


@pytest.mark.gpu
def test_manual_seed_gives_the_same_numbers_on_cpu_and_cuda():
    torch.manual_seed(123)
    cpu = [torchdist_fast.randn(1001), torchdist_fast.randn(17)]
    torch.manual_seed(123)
    gpu = [torchdist_fast.randn(1001, device="cuda"), torchdist_fast.randn(17, device="cuda")]
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-5)
