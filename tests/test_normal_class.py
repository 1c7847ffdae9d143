"""torchdist_fast.Normal as a class: routing per device and mode, agreement with
torch.distributions.Normal, the additions (rsample_and_log_prob, sample_and_log_prob,
generator=), sync-free validation and torch.compile (patch() is in test_patch.py)."""
import pickle

import pytest
import torch
import torch._dynamo
from torch.distributions import (
    Beta,
    ContinuousBernoulli,
    Distribution,
    Exponential,
    Gamma,
    Gumbel,
    Independent,
    Laplace,
    LogNormal,
    Pareto,
    TransformedDistribution,
    Uniform,
    kl_divergence,
)
from torch.distributions.transforms import ExpTransform

import torchdist_fast
import torchdist_fast.distribution as tdf_dist
from helpers import TOLERANCES, assert_close
from normal_modes import default_validation  # noqa: F401  (autouse fixture)
from normal_modes import MODES, OPS_MODES, sampling_mode, tolerance
from torchdist_fast import Normal

TorchNormal = torchdist_fast.routing.TorchNormal
DTYPES = [t[0] for t in TOLERANCES]
TOL = {dtype: (atol, rtol) for dtype, atol, rtol in TOLERANCES}


def params(shape=(3,), dtype=torch.float32, seed=1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    scale = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return loc.requires_grad_(requires_grad), scale.requires_grad_(requires_grad)


# ------------------------------------------------------------------------------ identity
def test_subclass_and_isinstance():
    d = Normal(0.0, 1.0)
    assert isinstance(d, torch.distributions.Normal) and isinstance(d, Distribution)
    assert issubclass(Normal, torch.distributions.Normal)
    assert d.has_rsample and not d.has_enumerate_support
    assert Normal.arg_constraints is TorchNormal.arg_constraints and d.support is TorchNormal.support
    assert torchdist_fast.Normal is Normal and "Normal" in torchdist_fast.__all__ and "patch" in torchdist_fast.__all__


# ---------------------------------------------------------------- CPU default: torch's numbers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["sample", "rsample", "rsample_and_log_prob", "sample_and_log_prob"])
@pytest.mark.parametrize(
    "shapes, sample_shape",
    [(((), ()), ()), (((3,), (3,)), (4,)), (((2, 1), (3,)), (2, 2)), (None, (5,))],
)
def test_cpu_default_bit_identical_to_torch(dtype, method, shapes, sample_shape):
    if shapes is None:
        loc, scale = 0.3, 2.0  # Python numbers
    else:
        loc, scale = params(shapes[0], dtype, seed=3)[0], params(shapes[1], dtype, seed=4)[1]
    ours, ref = Normal(loc, scale), TorchNormal(loc, scale)
    torch.manual_seed(11)
    out = getattr(ours, method)(sample_shape)
    state = torch.get_rng_state()
    z = out[0] if isinstance(out, tuple) else out
    torch.manual_seed(11)
    z_ref = getattr(ref, method.replace("_and_log_prob", ""))(sample_shape)
    assert torch.equal(torch.get_rng_state(), state), "the global generator advanced differently"
    assert z.dtype == z_ref.dtype and z.shape == z_ref.shape
    assert torch.equal(z, z_ref)
    if isinstance(out, tuple):
        atol, rtol = tolerance(z.dtype)
        torch.testing.assert_close(out[1], ref.log_prob(z_ref), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_default_rsample_gradients_identical_to_torch(dtype):
    loc, scale = params((2, 3), dtype, requires_grad=True)
    w = torch.randn(4, 2, 3, dtype=dtype)
    grads = []
    for cls in (Normal, TorchNormal):
        torch.manual_seed(5)
        z = cls(loc, scale).rsample((4,))
        grads.append(torch.autograd.grad((z * w).sum(), (loc, scale)))
    for g, g_ref in zip(*grads):
        assert torch.equal(g, g_ref)


@pytest.mark.parametrize("method", ["sample", "rsample"])
def test_cpu_default_generator_kwarg(method):
    loc, scale = params((3,))
    d = Normal(loc, scale)
    state = torch.get_rng_state()
    z = getattr(d, method)((4,), generator=torch.Generator().manual_seed(21))
    assert torch.equal(torch.get_rng_state(), state), "generator= must leave the global generator alone"
    torch.manual_seed(21)
    assert torch.equal(z, getattr(TorchNormal(loc, scale), method)((4,)))
    # the default generator passed explicitly gives the same numbers as no generator
    torch.manual_seed(2)
    a = getattr(d, method)((4,), generator=torch.default_generator)
    torch.manual_seed(2)
    assert torch.equal(a, getattr(d, method)((4,)))


def test_generator_is_keyword_only():
    with pytest.raises(TypeError):
        Normal(0.0, 1.0).rsample((2,), torch.Generator())


# ---------------------------------------------------------------- the Philox modes
@pytest.mark.parametrize("mode", OPS_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_philox_rsample_is_loc_plus_scale_times_randn(mode, dtype):
    loc, scale = params((2, 3), dtype)
    with sampling_mode(mode):
        torch.manual_seed(7)
        z = Normal(loc, scale).rsample((5,))
        torch.manual_seed(7)
        eps = torchdist_fast.randn((5, 2, 3), dtype=dtype)
    expected = (loc.double() + scale.double() * eps.double()).to(dtype)
    assert_close(z, expected, *TOL[dtype])
    assert not torch.equal(eps, torch.zeros_like(eps))


@pytest.mark.skipif(len(OPS_MODES) < 2, reason="needs the Triton interpreter")
@pytest.mark.parametrize("dtype", DTYPES)
def test_philox_reference_and_triton_agree(dtype):
    """CPU-Philox mode and Triton-interpreter mode: the same numbers for the same seed."""
    loc, scale = params((2, 3), dtype, requires_grad=True)
    value = torch.randn(4, 2, 3, dtype=torch.float64).to(dtype)
    results = []
    for mode in OPS_MODES:
        with sampling_mode(mode):
            d = Normal(loc, scale)
            torch.manual_seed(31)
            z1 = d.rsample((4,))
            z2 = d.sample((4,))
            z3, lp3 = d.rsample_and_log_prob((4,))
            z4, lp4 = d.sample_and_log_prob((4,))
            lp = d.log_prob(value)
            loss = (z1 + z3 + lp3 + lp4 + lp).float().sum()
            grads = torch.autograd.grad(loss, (loc, scale))
            results.append((z1, z2, z3, lp3, z4, lp4, lp) + grads)
    atol, rtol = TOL[dtype]
    for i, (a, b) in enumerate(zip(*results)):
        scale_tol = 8 if i >= 7 else 1  # gradients are sums of 4 elements
        assert_close(a, b, atol * scale_tol, rtol * scale_tol)


@pytest.mark.parametrize("mode", OPS_MODES)
def test_philox_generator_kwarg_and_stream_advance(mode):
    d = Normal(*params((3,)))
    with sampling_mode(mode):
        state = torch.get_rng_state()
        a = d.rsample((4,), generator=torch.Generator().manual_seed(9))
        b = d.rsample((4,), generator=torch.Generator().manual_seed(9))
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(a, b)
        gen = torch.Generator().manual_seed(9)
        c = d.rsample((4,), generator=gen)
        e = d.rsample((4,), generator=gen)
        assert torch.equal(a, c) and not torch.equal(c, e), "a generator must advance between draws"
        x, y = d.sample((4,)), d.sample((4,))
        assert not torch.equal(x, y)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "loc_dtype, scale_dtype",
    [(torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float16, torch.bfloat16)],
)
def test_mixed_dtype_params_follow_torch(mode, loc_dtype, scale_dtype):
    loc, scale = params((3,))
    loc, scale = loc.to(loc_dtype), scale.to(scale_dtype)
    ref = TorchNormal(loc, scale)
    with sampling_mode(mode):
        d = Normal(loc, scale)
        assert d.rsample((2,)).dtype == ref.rsample((2,)).dtype
        assert d.sample((2,)).dtype == ref.sample((2,)).dtype
        z, lp = d.rsample_and_log_prob((2,))
        assert z.dtype == ref.rsample((2,)).dtype
        value = torch.randn(3, dtype=torch.float64)
        assert d.log_prob(value).dtype == ref.log_prob(value).dtype


# ---------------------------------------------------------------- log_prob and the fused pairs
@pytest.mark.parametrize("cpu_kernel_name", ["reference", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value_shape", [(3,), (4, 3), (2, 1)])
def test_log_prob_matches_torch(cpu_kernel_name, dtype, value_shape):
    if cpu_kernel_name == "triton" and "triton" not in MODES:
        pytest.skip("needs the Triton interpreter")
    loc, scale = params((3,), dtype, requires_grad=True)
    value = (torch.randn(value_shape, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    with torchdist_fast.cpu_kernel(cpu_kernel_name):
        lp = Normal(loc, scale).log_prob(value)
        grads = torch.autograd.grad(lp.float().sum(), (value, loc, scale))
    ref = TorchNormal(loc, scale).log_prob(value)
    ref_grads = torch.autograd.grad(ref.float().sum(), (value, loc, scale))
    atol, rtol = tolerance(dtype)
    assert_close(lp, ref, atol, rtol)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 4 * atol, 4 * rtol)


@pytest.mark.parametrize(
    "value",
    [torch.tensor(0.5, dtype=torch.float64), torch.tensor([0, 1, 2]), torch.randn(2, 3, dtype=torch.float64),
     torch.randn(3, dtype=torch.float16)],
    ids=["float64-0dim", "int64", "float64", "float16"],
)
def test_log_prob_dtype_promotion_follows_torch(value):
    loc, scale = params((3,))
    lp, ref = Normal(loc, scale).log_prob(value), TorchNormal(loc, scale).log_prob(value)
    assert lp.dtype == ref.dtype and lp.shape == ref.shape
    # torch squares the float32 scale in float32 before promoting: float32 agreement at best
    atol, rtol = tolerance(torch.float32)
    assert_close(lp, ref, atol, rtol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rsample_and_log_prob(mode, dtype):
    loc, scale = params((2, 3), dtype, requires_grad=True)
    w1, w2 = torch.randn(3, 2, 3, dtype=dtype), torch.randn(3, 2, 3, dtype=dtype)
    with sampling_mode(mode):
        d = Normal(loc, scale)
        torch.manual_seed(17)
        z, lp = d.rsample_and_log_prob((3,))
        torch.manual_seed(17)
        z_alone = d.rsample((3,))
        grads = torch.autograd.grad((z * w1).sum() + (lp * w2).sum(), (loc, scale))
    atol, rtol = TOL[dtype]
    assert z.shape == lp.shape == (3, 2, 3)
    assert_close(z, z_alone.detach(), atol, rtol)
    # torch's two-step computation on the same noise: log_prob(loc + scale * eps)
    eps = ((z - loc) / scale).detach()
    ref = TorchNormal(loc, scale)
    z_ref = loc + scale * eps
    lp_ref = ref.log_prob(z_ref)
    ref_grads = torch.autograd.grad((z_ref * w1).sum() + (lp_ref * w2).sum(), (loc, scale))
    assert_close(lp, lp_ref.detach(), 10 * atol, 10 * rtol)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 100 * atol, 100 * rtol)


@pytest.mark.parametrize("mode", MODES)
def test_sample_and_log_prob_has_score_function_gradients(mode):
    loc, scale = params((2, 3), torch.float64, requires_grad=True)
    with sampling_mode(mode):
        d = Normal(loc, scale)
        torch.manual_seed(3)
        z, lp = d.sample_and_log_prob((4,))
        torch.manual_seed(3)
        z_alone = d.sample((4,))
        grads = torch.autograd.grad(lp.sum(), (loc, scale))
    assert not z.requires_grad and torch.equal(z, z_alone)
    ref = TorchNormal(loc, scale).log_prob(z)
    ref_grads = torch.autograd.grad(ref.sum(), (loc, scale))
    assert_close(lp.detach(), ref.detach(), 1e-12, 1e-12)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 1e-10, 1e-10)
    assert grads[0].abs().sum() > 0  # d lp / d loc = (z - loc) / scale^2: not zero as through rsample


# ---------------------------------------------------------------- torch.distributions machinery
def test_expand_returns_our_class_and_subclasses():
    loc, scale = params((3,))
    d = Normal(loc, scale, validate_args=True)
    e = d.expand((2, 3))
    assert type(e) is Normal and e.batch_shape == (2, 3) and e._validate_args is True
    assert torch.equal(e.loc, loc.expand(2, 3))

    class Sub(Normal):
        pass

    assert type(Sub(loc, scale).expand((4, 3))) is Sub

    class CustomInit(Normal):
        def __init__(self, loc, scale, extra=None, validate_args=None):
            super().__init__(loc, scale, validate_args=validate_args)

    class TorchCustomInit(TorchNormal):
        def __init__(self, loc, scale, extra=None, validate_args=None):
            super().__init__(loc, scale, validate_args=validate_args)

    with pytest.raises(NotImplementedError) as ours:
        CustomInit(loc, scale).expand((2, 3))
    with pytest.raises(NotImplementedError) as theirs:
        TorchCustomInit(loc, scale).expand((2, 3))
    assert str(ours.value).replace("CustomInit", "X") == str(theirs.value).replace("TorchCustomInit", "X")

    class CustomExpand(CustomInit):
        def expand(self, batch_shape, _instance=None):
            new = self._get_checked_instance(CustomExpand, _instance)
            return super().expand(batch_shape, _instance=new)

    assert type(CustomExpand(loc, scale).expand((2, 3))) is CustomExpand


def test_pickle_deepcopy_repr():
    import copy

    loc, scale = params((2, 3))
    for d, ref in [(Normal(loc, scale), TorchNormal(loc, scale)), (Normal(0.5, 2.0), TorchNormal(0.5, 2.0))]:
        assert repr(d) == repr(ref)
        for e in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
            assert type(e) is Normal and e.batch_shape == d.batch_shape
            assert torch.equal(e.loc, d.loc) and torch.equal(e.scale, d.scale)
            assert repr(e) == repr(d)
    d = Normal(loc, scale, validate_args=False)
    assert pickle.loads(pickle.dumps(d))._validate_args is False


def test_properties_match_torch():
    loc, scale = params((2, 3), torch.float64)
    d, ref = Normal(loc, scale), TorchNormal(loc, scale)
    for name in ["mean", "mode", "stddev", "variance", "batch_shape", "event_shape"]:
        assert torch.equal(torch.as_tensor(getattr(d, name)), torch.as_tensor(getattr(ref, name))), name
    assert torch.equal(d.entropy(), ref.entropy()) and torch.equal(d.perplexity(), ref.perplexity())
    for a, b in zip(d._natural_params, ref._natural_params):
        assert torch.equal(a, b)
    assert torch.equal(d._log_normalizer(*d._natural_params), ref._log_normalizer(*ref._natural_params))
    with pytest.raises(NotImplementedError):
        d.enumerate_support()


def _kl_partners():
    g = torch.Generator().manual_seed(4)
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64) + 0.5  # noqa: E731
    return [
        TorchNormal(torch.randn(3, generator=g, dtype=torch.float64), u(3)),
        Normal(torch.randn(3, generator=g, dtype=torch.float64), u(3)),
        Beta(u(3), u(3)),
        ContinuousBernoulli(probs=u(3) - 0.45),
        Exponential(u(3)),
        Gamma(u(3), u(3)),
        Gumbel(torch.randn(3, generator=g, dtype=torch.float64), u(3)),
        Laplace(torch.randn(3, generator=g, dtype=torch.float64), u(3)),
        Pareto(u(3), u(3)),
        Uniform(-u(3), u(3)),
    ]


@pytest.mark.parametrize("partner", range(10), ids=lambda i: ["Normal", "ours", "Beta", "ContinuousBernoulli",
                                                                  "Exponential", "Gamma", "Gumbel", "Laplace",
                                                                  "Pareto", "Uniform"][i])
@pytest.mark.parametrize("direction", ["ours_first", "ours_second"])
def test_kl_divergence_registrations(partner, direction):
    loc, scale = params((3,), torch.float64)
    q = _kl_partners()[partner]
    ours, ref = Normal(loc, scale), TorchNormal(loc, scale)
    if direction == "ours_first":
        kl, kl_ref = kl_divergence(ours, q), kl_divergence(ref, q)
    else:
        kl, kl_ref = kl_divergence(q, ours), kl_divergence(q, ref)
    torch.testing.assert_close(kl, kl_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("mode", MODES)
def test_transformed_and_independent(mode):
    loc, scale = params((2, 3), torch.float64)
    value = torch.rand(4, 2, 3, dtype=torch.float64) + 0.1
    with sampling_mode(mode):
        t = TransformedDistribution(Normal(loc, scale), [ExpTransform()])
        assert_close(t.log_prob(value), LogNormal(loc, scale).log_prob(value), 1e-12, 1e-12)
        torch.manual_seed(1)
        x = t.rsample((4,))
        torch.manual_seed(1)
        assert torch.equal(x, Normal(loc, scale).rsample((4,)).exp())
        ind = Independent(Normal(loc, scale), 1)
        assert ind.batch_shape == (2,) and ind.event_shape == (3,)
        v = torch.randn(4, 2, 3, dtype=torch.float64)
        assert_close(ind.log_prob(v), TorchNormal(loc, scale).log_prob(v).sum(-1), 1e-12, 1e-12)
        torch.manual_seed(2)
        y = ind.rsample((4,))
        torch.manual_seed(2)
        assert torch.equal(y, Normal(loc, scale).rsample((4,)))
        e = t.expand((5, 2, 3))
        assert type(e.base_dist) is Normal and e.batch_shape == (5, 2, 3)


# ---------------------------------------------------------------- validation
def test_validate_args_default_follows_distribution_setting():
    old = Distribution._validate_args
    try:
        Distribution.set_default_validate_args(False)
        d, ref = Normal(0.0, -1.0), TorchNormal(0.0, -1.0)  # no checks, as torch
        assert "_validate_args" not in d.__dict__ and "_validate_args" not in ref.__dict__
        value = torch.tensor([float("nan")])
        assert torch.isnan(d.log_prob(value)).all() and torch.isnan(ref.log_prob(value)).all()
        Distribution.set_default_validate_args(True)  # read at call time, as torch
        for dist in (d, ref):
            with pytest.raises(ValueError):
                dist.log_prob(value)
        with pytest.raises(ValueError):
            Normal(0.0, -1.0)
    finally:
        Distribution.set_default_validate_args(old)


_MESSAGE_CASES = {
    "scale_negative": lambda N: N(torch.tensor([1.0, 2.0]), torch.tensor([1.0, -1.0]), validate_args=True),
    "scale_zero_scalar": lambda N: N(0.0, 0.0, validate_args=True),
    "loc_nan": lambda N: N(torch.tensor([float("nan"), 1.0]), 1.0, validate_args=True),
    "log_prob_nan": lambda N: N(torch.zeros(2), torch.ones(2), validate_args=True).log_prob(torch.tensor([0.0, float("nan")])),
    "log_prob_shape": lambda N: N(torch.zeros(2), torch.ones(2), validate_args=True).log_prob(torch.zeros(3)),
    "log_prob_number": lambda N: N(torch.zeros(2), torch.ones(2), validate_args=True).log_prob(1.0),
    "cdf_nan": lambda N: N(torch.zeros(2), torch.ones(2), validate_args=True).cdf(torch.tensor([float("nan"), 0.0])),
    "cdf_shape": lambda N: N(torch.zeros(2), torch.ones(2), validate_args=True).cdf(torch.zeros(2, 3)),
}


@pytest.mark.parametrize("case", _MESSAGE_CASES)
def test_cpu_validation_errors_are_torchs(case):
    with pytest.raises(ValueError) as ours:
        _MESSAGE_CASES[case](Normal)
    with pytest.raises(ValueError) as theirs:
        _MESSAGE_CASES[case](TorchNormal)
    assert str(ours.value) == str(theirs.value)


@pytest.fixture
def async_checks(monkeypatch):
    """Take the CUDA code path of validation on CPU tensors, and fail on anything that syncs there."""

    def sync(*args, **kwargs):
        raise AssertionError("validation synchronized (torch._is_all_true)")

    def tensor_repr(*args, **kwargs):
        raise AssertionError("validation printed a tensor (a sync on CUDA)")

    monkeypatch.setattr(tdf_dist, "_async_checks", lambda t: True)
    monkeypatch.setattr(torch, "_is_all_true", sync)
    monkeypatch.setattr(torch.Tensor, "__repr__", tensor_repr)


def test_async_validation_path_never_syncs(async_checks):
    loc, scale = params((2, 3))
    d = Normal(loc, scale, validate_args=True)
    value = torch.randn(4, 2, 3)
    assert d.log_prob(value).shape == (4, 2, 3) and d.cdf(value).shape == (4, 2, 3)
    with pytest.raises(RuntimeError, match=r"Expected parameter scale \(Tensor of shape \(2, 3\)\)"):
        Normal(loc, -scale, validate_args=True)
    with pytest.raises(RuntimeError, match="Expected parameter loc"):
        Normal(torch.full((3,), float("nan")), 1.0, validate_args=True)
    value[0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="Expected value argument"):
        d.log_prob(value)
    with pytest.raises(RuntimeError, match="Expected value argument"):
        d.cdf(value)
    # metadata checks stay synchronous ValueErrors, with torch's messages
    with pytest.raises(ValueError, match="Value is not broadcastable"):
        d.log_prob(torch.zeros(4))
    with pytest.raises(ValueError, match="must be a Tensor"):
        d.log_prob(0.5)


def test_sample_without_validation_checks_std_like_torch_normal():
    for mode in MODES:
        with sampling_mode(mode):
            for scale in (-1.0, float("nan")):
                with pytest.raises(RuntimeError, match="normal expects all elements of std >= 0.0"):
                    Normal(torch.zeros(3), torch.full((3,), scale), validate_args=False).sample((2,))


# ---------------------------------------------------------------- torch.compile
def _step(loc, log_scale):
    d = Normal(loc, log_scale.exp(), validate_args=True)
    z, lp = d.rsample_and_log_prob((8,))
    value = z.detach()
    return (z * z).mean() + lp.mean() + d.log_prob(value).mean() + d.cdf(value).mean()


# one inductor run keeps the file fast; aot_eager traces the same graph (dynamo + AOTAutograd)
@pytest.mark.parametrize("mode, backend", [("torch", "aot_eager"), ("philox", "aot_eager"), ("philox", "inductor")])
def test_compile_fullgraph_no_recompile(mode, backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    loc = torch.randn(3, requires_grad=True)
    with sampling_mode(mode), torch._dynamo.config.patch(error_on_recompile=True):
        step = torch.compile(_step, fullgraph=True, backend=backend)
        for i in range(3):
            log_scale = torch.randn(3, requires_grad=True)
            torch.manual_seed(i)
            loss = step(loc, log_scale)
            loss.backward()
            assert torch.isfinite(log_scale.grad).all() and log_scale.grad.abs().sum() > 0
            if mode == "philox":  # the Philox draw is an op: compiled and eager draw the same numbers
                torch.manual_seed(i)
                eager = _step(loc, log_scale)
                grad = torch.autograd.grad(eager, log_scale)[0]
                assert_close(loss.detach(), eager.detach(), 1e-5, 1e-5)
                assert_close(log_scale.grad, grad, 1e-5, 1e-5)
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"), reason="needs trace_autograd_ops")
@pytest.mark.parametrize("mode", ["torch", "philox"])
def test_compile_step_with_backward_inside(mode):
    def train_step(loc, log_scale):
        loss = _step(loc, log_scale)
        loss.backward()
        return loss.detach()

    torch._dynamo.reset()
    with sampling_mode(mode), torch._dynamo.config.patch(error_on_recompile=True, trace_autograd_ops=True):
        step = torch.compile(train_step, fullgraph=True, backend="aot_eager")
        loc = torch.randn(3, requires_grad=True)
        for _ in range(3):
            log_scale = torch.randn(3, requires_grad=True)
            loc.grad = None
            step(loc, log_scale)
            assert log_scale.grad is not None and torch.isfinite(log_scale.grad).all()
            assert loc.grad is not None


def test_compile_validation_failure_raises_at_run_time():
    torch._dynamo.reset()
    step = torch.compile(_step, fullgraph=True, backend="aot_eager")
    loc = torch.randn(3)
    assert torch.isfinite(step(loc, torch.zeros(3)))
    with pytest.raises(RuntimeError, match="Expected parameter scale"):
        step(loc, torch.tensor([0.0, float("-inf"), 0.0]))  # exp(-inf) = 0: not positive
    with pytest.raises(RuntimeError, match="Expected parameter loc"):
        step(torch.tensor([0.0, float("nan"), 0.0]), torch.zeros(3))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.gpu
def test_cuda_step_never_synchronizes():
    loc = torch.randn(64, device="cuda", requires_grad=True)
    log_scale = torch.randn(64, device="cuda", requires_grad=True)
    value = torch.randn(4, 64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        d = Normal(loc, log_scale.exp(), validate_args=True)
        z, lp = d.rsample_and_log_prob((8,))
        x = d.sample((8,))
        loss = (z * z).mean() + lp.mean() + d.log_prob(value).mean() + d.cdf(value).mean() + x.mean()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(log_scale.grad).all()


@pytest.mark.gpu
def test_cuda_matches_cpu_philox_for_the_same_seed_offset(monkeypatch):
    seed_offset = torch.tensor([123456789, 8], dtype=torch.int64)
    monkeypatch.setattr(torchdist_fast.normal_methods, "draw_seed_offset", lambda device, numel, generator=None: seed_offset)
    loc, scale = params((5, 7))
    z_gpu, lp_gpu = Normal(loc.cuda(), scale.cuda()).rsample_and_log_prob((3,))
    with sampling_mode("philox"):
        z_cpu, lp_cpu = Normal(loc, scale).rsample_and_log_prob((3,))
    assert_close(z_gpu.cpu(), z_cpu, *TOL[torch.float32])
    assert_close(lp_gpu.cpu(), lp_cpu, *TOL[torch.float32])
