"""The 2-D (rows x columns) kernels: row, column, scalar and full operands without per-element
division, against the reference, forward and backward, on partial tiles and every dtype."""
import pytest
import torch
from helpers import TOLERANCES, assert_close

from torchdist_fast import reference, rng
from torchdist_fast.triton_kernels import layout

OPS = torch.ops.torchdist_fast
SEED, OFFSET = 0xC0FFEE, 2**32 - 5   # counters cross a 32-bit word

# (loc shape, scale shape, sample shape): each coalesces to R rows x D columns
TILE_CASES = [
    ((), (), (37, 20)),              # both scalar: coalesces to 1-D (the 1-D kernel, scalars loaded once)
    ((20,), (20,), (37,)),           # row pattern (D % 4 == 0, partial tiles)
    ((300,), (1,), (5,)),            # row loc, scalar scale, D > 256: two column programs
    ((9, 1), (9, 12), ()),           # column loc, full scale
    ((9, 1), (1, 12), ()),           # column loc, row scale (the "general" 2-D pattern)
    ((1, 8), (6, 1), (2,)),          # row x column with a sample dim: 3 dims, 1-D fallback
]


def _params(loc_shape, scale_shape, dtype, gen):
    loc = (torch.randn(loc_shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
    scale = (torch.rand(scale_shape, generator=gen, dtype=torch.float64) + 0.3).to(dtype)
    return loc, scale


@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", TILE_CASES)
def test_tile_layout_kinds(loc_shape, scale_shape, sample_shape):
    loc, scale = torch.zeros(loc_shape), torch.ones(scale_shape)
    out_shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc.shape, scale.shape))
    tile = layout.tile_layout(out_shape, loc, scale, elements=4096, need_d4=True)
    if loc_shape in ((1, 8), ()):
        assert tile is None
        return
    R, D, ops, br, bc = tile
    assert R * D == torch.Size(out_shape).numel() and D % 4 == 0 and br * bc == 4096 and 16 <= bc <= 256
    kinds = [k for k, _, _ in ops]
    expected = {((20,), (20,)): [layout.ROW, layout.ROW],
                ((300,), (1,)): [layout.ROW, layout.SCALAR], ((9, 1), (9, 12)): [layout.COL, layout.FULL],
                ((9, 1), (1, 12)): [layout.COL, layout.ROW]}[(loc_shape, scale_shape)]
    assert kinds == expected


def test_tile_layout_needs_whole_counters_per_row():
    loc = torch.zeros(6)
    assert layout.tile_layout((5, 6), loc, loc, elements=4096, need_d4=True) is None
    assert layout.tile_layout((5, 6), loc, loc, elements=4096, need_d4=False) is not None


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty and torch.empty_like return NaN-filled memory: an element a kernel does not write shows."""
    for name in ("empty", "empty_like"):
        real = getattr(torch, name)

        def poisoned(*args, _real=real, **kwargs):
            t = _real(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t

        monkeypatch.setattr(torch, name, poisoned)


@pytest.fixture
def count_2d(monkeypatch):
    from torchdist_fast.triton_kernels import normal_log_prob, normal_rsample

    counts = {}
    for module in (normal_rsample, normal_log_prob):
        for name in dir(module):
            if name.endswith("_kernel"):
                kernel = getattr(module, name)

                class Counted:
                    def __getitem__(self, grid, name=name, kernel=kernel):
                        counts[name] = counts.get(name, 0) + 1
                        return kernel[grid]
                monkeypatch.setattr(module, name, Counted())
    return counts


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", TILE_CASES)
def test_rsample_tiles_match_reference(dtype, atol, rtol, loc_shape, scale_shape, sample_shape, triton_device, count_2d, poisoned_empty):
    gen = torch.Generator().manual_seed(hash((loc_shape, scale_shape, str(dtype))) % 2**31)
    loc, scale = _params(loc_shape, scale_shape, dtype, gen)
    so = rng.pack_seed_offset(SEED, OFFSET)
    z, lp = OPS.normal_rsample_log_prob(loc.to(triton_device), scale.to(triton_device), list(sample_shape), so)
    ez, elp = reference.normal_rsample(loc, scale, sample_shape, SEED, OFFSET, with_log_prob=True)
    assert_close(z.cpu(), ez, atol, rtol)
    assert_close(lp.cpu(), elp, atol, rtol)
    two_d = loc_shape not in ((1, 8), ())
    assert (count_2d.get("_normal_rsample_fwd_2d_kernel", 0) == 1) == two_d, count_2d


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_log_prob", [False, True])
def test_rsample_output_shaped_as_loc(dtype, atol, rtol, transposed, with_log_prob, triton_device, poisoned_empty):
    """The common call (no sample dims, loc and scale of one shape) allocates its output with
    empty_like: contiguous even for a transposed loc, every element written."""
    gen = torch.Generator().manual_seed(11)
    loc, scale = _params((12, 9), (12, 9), dtype, gen)
    if transposed:
        loc, scale = loc.t(), scale.t()
    so = rng.pack_seed_offset(SEED, OFFSET)
    op = OPS.normal_rsample_log_prob if with_log_prob else OPS.normal_rsample
    out = op(loc.to(triton_device), scale.to(triton_device), [], so)
    expected = reference.normal_rsample(loc, scale, (), SEED, OFFSET, with_log_prob=with_log_prob)
    for got, want in zip(out if with_log_prob else (out,), expected if with_log_prob else (expected,)):
        assert got.is_contiguous() and got.shape == loc.shape
        assert_close(got.cpu(), want, atol, rtol)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-5), (torch.float64, 1e-11, 1e-11), (torch.bfloat16, 0.05, 0.05)])
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", TILE_CASES)
def test_rsample_tiles_backward_match_reference(dtype, atol, rtol, loc_shape, scale_shape, sample_shape, triton_device,
                                                 poisoned_empty):
    gen = torch.Generator().manual_seed(7)
    loc, scale = _params(loc_shape, scale_shape, dtype, gen)
    out_shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc.shape, scale.shape))
    gz = torch.randn(out_shape, generator=gen, dtype=torch.float64).to(dtype)
    glp = torch.randn(out_shape, generator=gen, dtype=torch.float64).to(dtype)
    from torchdist_fast.triton_kernels import normal_rsample

    for a, b in ((gz, glp), (gz, None), (None, glp)):
        got = normal_rsample.normal_rsample_bwd(None if a is None else a.to(triton_device),
                                                None if b is None else b.to(triton_device),
                                                scale.to(triton_device), SEED, OFFSET)
        expected = reference.normal_rsample_backward(a, b, scale, SEED, OFFSET)
        assert_close(got.cpu(), expected, atol * max(1, out_shape[0]), rtol)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 2e-5), (torch.float64, 1e-11, 1e-11), (torch.float16, 4e-3, 4e-3)])
@pytest.mark.parametrize("value_shape,loc_shape,scale_shape", [
    ((37, 20), (20,), (20,)),        # row
    ((9, 12), (9, 1), ()),           # column, scalar
    ((9, 1), (1, 12), (9, 12)),      # column value, row loc, full scale
    ((5, 6), (6,), (5, 6)),          # D % 4 != 0 is fine without a random stream
    ((3, 300), (), (300,)),          # two column programs
])
def test_log_prob_tiles_match_reference(dtype, atol, rtol, value_shape, loc_shape, scale_shape, triton_device, count_2d,
                                      poisoned_empty):
    gen = torch.Generator().manual_seed(11)
    value = torch.randn(value_shape, generator=gen, dtype=torch.float64).to(dtype)
    loc, scale = _params(loc_shape, scale_shape, dtype, gen)
    out = OPS.normal_log_prob(value.to(triton_device), loc.to(triton_device), scale.to(triton_device))
    assert_close(out.cpu(), reference.normal_log_prob(value, loc, scale), atol, rtol)
    assert count_2d.get("_normal_log_prob_fwd_2d_kernel", 0) == 1, count_2d
    from torchdist_fast.triton_kernels import normal_log_prob

    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    for needs in ((True, True, True), (False, False, True), (True, False, False)):
        got = normal_log_prob.normal_log_prob_bwd(grad.to(triton_device), value.to(triton_device), loc.to(triton_device),
                                                  scale.to(triton_device), needs)
        expected = reference.normal_log_prob_backward(grad, value, loc, scale, needs)
        for g, e in zip(got, expected):
            assert (g is None) == (e is None)
            if g is not None:
                assert_close(g.cpu(), e, atol * max(value_shape), rtol * 4)


def test_needs_idx64():
    assert not layout.needs_idx64(1000, 768, 16, [(layout.ROW, 0, 1)])
    assert layout.needs_idx64(2**22, 2**10, 16, [(layout.ROW, 0, 1)])            # the output reaches 2**31
    assert layout.needs_idx64(8, 8, 16, [(layout.FULL, 2**28, 1)])               # an operand offset does


@pytest.mark.interpreter
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", TILE_CASES[1:5])
def test_tiles_with_64_bit_indices(loc_shape, scale_shape, sample_shape, triton_device, monkeypatch, poisoned_empty):
    """The IDX64 variant (outputs or operands past 2**31 elements) on small shapes."""
    from torchdist_fast.triton_kernels import normal_log_prob, normal_rsample

    monkeypatch.setattr(normal_rsample, "needs_idx64", lambda *a: True)
    monkeypatch.setattr(normal_log_prob, "needs_idx64", lambda *a: True)
    gen = torch.Generator().manual_seed(3)
    loc, scale = _params(loc_shape, scale_shape, torch.float32, gen)
    so = rng.pack_seed_offset(SEED, OFFSET)
    z, lp = OPS.normal_rsample_log_prob(loc.to(triton_device), scale.to(triton_device), list(sample_shape), so)
    ez, elp = reference.normal_rsample(loc, scale, sample_shape, SEED, OFFSET, with_log_prob=True)
    assert_close(z.cpu(), ez, 1e-5, 1e-5)
    assert_close(lp.cpu(), elp, 1e-5, 1e-5)
    value = torch.randn(z.shape, generator=gen)
    out = OPS.normal_log_prob(value.to(triton_device), loc.to(triton_device), scale.to(triton_device))
    assert_close(out.cpu(), reference.normal_log_prob(value, loc, scale), 1e-5, 1e-5)
