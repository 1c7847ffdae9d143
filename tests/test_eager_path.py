"""The eager fast path (eager.py) against the ops it bypasses: the same numbers, gradients and
generator advance, and taken only where bypassing the dispatcher is invisible."""
import pytest
import torch
from helpers import assert_close

import torchdist_fast
from torchdist_fast.ops import eager_path as eager

METHODS = ["rsample", "sample", "rsample_and_log_prob"]
SHAPES = [((3, 8), (3, 8), ()), ((5,), (), (2, 3)), ((4, 1), (1, 6), (3,))]


def _draw(method, loc, scale, sample_shape, direct, monkeypatch, gen):
    monkeypatch.setattr(eager, "direct_ok", (lambda *t: True) if direct else (lambda *t: False))
    d = torchdist_fast.Normal(loc, scale, validate_args=False)
    out = getattr(d, method)(sample_shape, generator=gen)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fast_path_is_the_op_bit_for_bit(method, loc_shape, scale_shape, sample_shape, dtype, cpu_kernel, monkeypatch):
    g = torch.Generator().manual_seed(hash((method, loc_shape, str(dtype))) % 2**31)
    loc = (torch.randn(loc_shape, generator=g) * 2).to(dtype).requires_grad_()
    scale = (torch.rand(scale_shape, generator=g) + 0.3).to(dtype).requires_grad_()
    results = []
    with torchdist_fast.cpu_sampling("philox"):
        for direct in (True, False):
            gen = torch.Generator().manual_seed(7)
            outs = _draw(method, loc, scale, sample_shape, direct, monkeypatch, gen)
            weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(outs)]
            grads = (torch.autograd.grad(sum((o.float() * w).sum() for o, w in zip(outs, weights)), (loc, scale))
                     if outs[0].requires_grad else ())
            # the stream moved on by the same amount: the next draw agrees too
            after = _draw("sample", loc.detach(), scale.detach(), (), direct, monkeypatch, gen)
            results.append((outs, grads, after))
    (fast, fast_grads, fast_after), (op, op_grads, op_after) = results
    assert len(fast) == len(op) and all(torch.equal(a, b) for a, b in zip(fast, op))
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, op_grads))
    assert torch.equal(fast_after[0], op_after[0])
    assert (method == "sample") == (not fast[0].requires_grad)


def test_fast_path_matches_the_reference_stream():
    """Not just self-consistent: the samples are loc + scale * the Philox normals at the position."""
    from torchdist_fast import reference, rng

    loc, scale = torch.randn(6, 4, dtype=torch.float64), torch.rand(6, 4, dtype=torch.float64) + 0.5
    gen = torch.Generator().manual_seed(123)
    probe = torch.Generator().manual_seed(123)
    seed, offset = rng.take_position("cpu", 6, probe)
    with torchdist_fast.cpu_sampling("philox"):
        z = torchdist_fast.Normal(loc, scale).rsample(generator=gen)
    assert_close(z, loc + scale * reference.philox_randn((6, 4), seed, offset, torch.float64), 1e-15, 1e-15)


class _FunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _DispatchMode(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    pass


def test_fast_path_only_where_bypassing_is_invisible():
    t = torch.randn(3)
    assert eager.direct_ok(t, torch.nn.Parameter(torch.randn(3)))
    with _FunctionMode():
        assert not eager.direct_ok(t)
    with _DispatchMode():
        assert not eager.direct_ok(t)
    assert not eager.direct_ok(t, t.as_subclass(_Subclass))
    seen = []
    torch.func.vmap(lambda x: seen.append(eager.direct_ok(x)) or x)(torch.randn(2, 3))
    torch.jit.trace(lambda x: seen.append(eager.direct_ok(x)) or x * 2, (t,), check_trace=False)
    assert seen == [False, False]


def test_dispatch_modes_see_the_ops():
    """Under a dispatch mode (what FakeTensor, FlopCounter and export use) the sampling ops are
    visible as ops: the fast path stands aside."""
    seen = []

    class Recorder(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    loc, scale = torch.randn(4, requires_grad=True), torch.rand(4) + 0.5
    with torchdist_fast.cpu_sampling("philox"), Recorder():
        torchdist_fast.Normal(loc, scale).rsample_and_log_prob()
    assert any("torchdist_fast.draw_seed_offset" in s for s in seen)
    assert any("torchdist_fast.normal_rsample_log_prob" in s for s in seen)


def test_fast_path_under_no_grad_and_with_a_bad_generator():
    loc, scale = torch.randn(4, requires_grad=True), torch.rand(4) + 0.5
    with torchdist_fast.cpu_sampling("philox"):
        with torch.no_grad():
            assert not torchdist_fast.Normal(loc, scale).rsample().requires_grad
        with pytest.raises(TypeError, match="generator must be a torch.Generator"):
            torchdist_fast.Normal(loc, scale).rsample(generator="seed")


EVENT_CASES = [
    ("tanh rsample_and_log_prob", lambda l, s: torchdist_fast.TanhNormal(l, s, -2.0, 3.0), "rsample_and_log_prob"),
    ("tanh rsample", lambda l, s: torchdist_fast.TanhNormal(l, s), "rsample"),
    ("tanh sample", lambda l, s: torchdist_fast.TanhNormal(l, s), "sample"),
    ("independent rsample_and_log_prob", lambda l, s: torchdist_fast.Normal(l, s).to_event(1), "rsample_and_log_prob"),
]


@pytest.mark.parametrize("name,make,method", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_event_fast_path_is_the_op_bit_for_bit(name, make, method, dtype, cpu_kernel, monkeypatch):
    g = torch.Generator().manual_seed(11)
    loc = torch.randn(5, 6, generator=g).to(dtype).requires_grad_()
    scale = (torch.rand(5, 6, generator=g) + 0.3).to(dtype).requires_grad_()
    results = []
    with torchdist_fast.cpu_sampling("philox"):
        for direct in (True, False):
            monkeypatch.setattr(eager, "direct_ok", (lambda *t: True) if direct else (lambda *t: False))
            out = getattr(make(loc, scale), method)((2,), generator=torch.Generator().manual_seed(5))
            outs = out if isinstance(out, tuple) else (out,)
            grads = (torch.autograd.grad(sum((o * (i + 1.5)).sum() for i, o in enumerate(outs)), (loc, scale))
                     if outs[0].requires_grad else ())
            results.append((outs, grads))
    (fast, fast_grads), (op, op_grads) = results
    assert all(torch.equal(a, b) for a, b in zip(fast, op)) and len(fast) == len(op)
    assert len(fast_grads) == len(op_grads) and all(torch.equal(a, b) for a, b in zip(fast_grads, op_grads))
    assert (method == "sample") == (not fast[0].requires_grad)


@pytest.mark.parametrize("direct", [True, False])
def test_second_derivatives_through_the_kernels_raise_on_both_paths(direct, cpu_kernel, monkeypatch):
    """The kernels' backward is not differentiable again: the op path raises (no autograd formula
    for the backward op), and so does the fast path (once_differentiable), instead of silently
    dropping the d(grad_scale)/d(scale) term."""
    loc, scale = torch.randn(4, requires_grad=True), (torch.rand(4) + 0.5).requires_grad_()
    monkeypatch.setattr(eager, "direct_ok", (lambda *t: True) if direct else (lambda *t: False))
    with torchdist_fast.cpu_sampling("philox"):
        z = torchdist_fast.Normal(loc, scale).rsample()
        (g,) = torch.autograd.grad((z * z).sum(), scale, create_graph=True)
        with pytest.raises(RuntimeError):
            torch.autograd.grad(g.sum(), scale)


@pytest.mark.parametrize("shapes", [((3, 8), (3, 8), (3, 8)), ((2, 5, 4), (4,), ()), ((6,), (2, 6), (1, 6))])
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False), (True, False, False)])
def test_log_prob_fast_path_is_the_op_bit_for_bit(shapes, needs, triton_device, monkeypatch):
    g = torch.Generator().manual_seed(4)
    value, loc, scale = (torch.randn(s, generator=g) for s in shapes)
    scale = scale.abs() + 0.3
    value, loc, scale = (t.to(triton_device).requires_grad_(n) for t, n in zip((value, loc, scale), needs))
    results = []
    for direct in (True, False):
        monkeypatch.setattr(eager, "direct_ok", (lambda *t: True) if direct else (lambda *t: False))
        lp = torchdist_fast.Normal(loc, scale, validate_args=False).log_prob(value)
        wanted = [t for t, n in zip((value, loc, scale), needs) if n]
        weights = torch.linspace(-1, 2, lp.numel(), device=lp.device).reshape(lp.shape)
        grads = torch.autograd.grad((lp * weights).sum(), wanted)
        results.append((lp, grads))
    (lp_fast, g_fast), (lp_op, g_op) = results
    assert torch.equal(lp_fast, lp_op) and len(g_fast) == len(g_op)
    assert all(torch.equal(a, b) for a, b in zip(g_fast, g_op))
