"""Broadcast layout of the kernels: dimension coalescing, and 64-bit offsets past 2**31."""
import pytest
import torch

from conftest import INTERPRET

if INTERPRET:
    import triton
    import triton.language as tl

    from torchdist_fast.triton_kernels.layout import broadcast_offset

    @triton.jit
    def _offset_probe(out_ptr, base, s1, s2, s3, t0, t1, t2, t3, BLOCK: tl.constexpr):
        idx = base + tl.arange(0, BLOCK).to(tl.int64)
        tl.store(out_ptr + tl.arange(0, BLOCK), broadcast_offset(idx, s1, s2, s3, t0, t1, t2, t3))


def test_coalesce_merges_contiguous_dims_and_drops_size_one():
    from torchdist_fast.triton_kernels.layout import coalesce

    # a contiguous (2, 3, 4) tensor and a scale broadcast along the last dim's complement
    assert coalesce((2, 3, 4), [(12, 4, 1)]) == [(24, [1])]
    assert coalesce((2, 1, 4), [(4, 4, 1), (0, 0, 1)]) == [(2, [4, 0]), (4, [1, 1])]
    assert coalesce((5, 6), [(0, 1), (6, 1)]) == [(5, [0, 6]), (6, [1, 1])]


def test_broadcast_layout_pads_inner_dims_and_falls_back_past_four():
    from torchdist_fast.triton_kernels.layout import MAX_DIMS, broadcast_args, broadcast_layout

    loc = torch.randn(3, 1)
    sizes, strides = broadcast_layout((2, 3, 5), loc)
    assert sizes[1:] == (3, 5, 1) and len(sizes) == MAX_DIMS  # (2, 3, 5): loc strides (0, 1, 0)
    assert strides == ((0, 1, 0, 0),)
    # alternating broadcast over 6 dims does not coalesce into 4: expanded copies instead
    a = torch.randn(2, 1, 2, 1, 2, 1)
    b = torch.randn(1, 2, 1, 2, 1, 2)
    assert broadcast_layout((2,) * 6, a, b) is None
    (a2, b2), flat = broadcast_args((2,) * 6, a, b)
    assert a2.is_contiguous() and a2.shape == (2,) * 6 and torch.equal(a2, a.expand(2, 2, 2, 2, 2, 2))


@pytest.mark.parametrize("seed", range(40))
def test_cached_layout_is_the_one_torchs_expand_gives(seed):
    """The layouts are cached on (shape, strides); the broadcast strides are computed without
    expand: they must be expand's, for transposed, sliced, size-1 and zero-size operands too."""
    from torchdist_fast.triton_kernels.layout import _expanded_stride, broadcast_layout, coalesce

    g = torch.Generator().manual_seed(seed)
    out = tuple(int(n) for n in torch.randint(0, 4, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g))
    tensors = []
    for _ in range(3):
        keep = torch.rand(len(out), generator=g) < 0.6
        shape = tuple(n if k else 1 for n, k in zip(out, keep))[int(torch.randint(0, len(out) + 1, (1,), generator=g)):]
        t = torch.randn(tuple(2 * n + 1 for n in shape)[::-1], generator=g).permute(tuple(reversed(range(len(shape)))))
        tensors.append(t[tuple(slice(None, n * 2, 2) for n in shape)])  # strided, transposed view
    for t in tensors:  # on the dims of size > 1: size-1 dims are dropped by coalesce
        ours, torchs = _expanded_stride(out, tuple(t.shape), t.stride()), t.expand(out).stride()
        assert [a for a, n in zip(ours, out) if n != 1] == [b for b, n in zip(torchs, out) if n != 1]
    merged = coalesce(out, [t.expand(out).stride() for t in tensors])
    layout = broadcast_layout(out, *tensors)
    assert (layout is None) == (len(merged) > 4)
    if layout is not None:
        assert tuple(layout[0][: len(merged)]) == tuple(m[0] for m in merged)
        assert layout[1] == tuple(tuple(m[1][k] for m in merged) + (0,) * (4 - len(merged)) for k in range(3))


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERPRET, reason="runs the jit helper through the interpreter")
def test_broadcast_offset_is_64_bit():
    base = 3 * 2**33 + 5  # flat output indices far past 2**31
    sizes, strides = (7, 5, 1000), (4 * 2**20, 2**20, 1000, 1)
    out = torch.empty(16, dtype=torch.int64)
    _offset_probe[(1,)](out, base, *sizes, *strides, BLOCK=16)
    expected = []
    for j in range(base, base + 16):
        i3, rest = j % 1000, j // 1000
        i2, rest = rest % 5, rest // 5
        i1, i0 = rest % 7, rest // 7
        expected.append(i0 * strides[0] + i1 * strides[1] + i2 * strides[2] + i3 * strides[3])
    assert out.tolist() == expected


@pytest.mark.parametrize("numel", [1, 15, 16, 17, 1023, 1024, 1025, 4096 + 3, 2**20 + 7, 2**24 + 3])
@pytest.mark.parametrize("block", [512, 1024])
def test_launch_splits_cover_every_element_with_vector_bulk(numel, block):
    from torchdist_fast.triton_kernels.layout import launch_splits

    splits = launch_splits(numel, block)
    covered = torch.zeros(numel, dtype=torch.bool)
    for programs, numel_arg, first in splits:
        start = first * block
        assert start < numel_arg <= numel
        covered[start:min(numel_arg, (first + programs) * block)] = True
    assert bool(covered.all())
    bulk = [s for s in splits if s[1] % 16 == 0]
    tail = [s for s in splits if s[1] % 16 != 0]
    # everything but the last < 16 elements is in a launch Triton can vectorize (numel % 16 == 0)
    assert sum(min(s[1], (s[2] + s[0]) * block) - s[2] * block for s in bulk) >= numel - numel % 16
    assert len(tail) == (numel % 16 != 0) and all(s[0] == 1 for s in tail)
    assert len(splits) <= 2


def test_fast_math_only_on_cuda():
    from torchdist_fast.triton_kernels import layout

    assert layout.fast_math(torch.empty(1)) is False
    with layout.force_fast_math(True):
        assert layout.fast_math(torch.empty(1)) is True
    assert layout.fast_math(torch.empty(1)) is False
