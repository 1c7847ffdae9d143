"""What PyTorch's test_distributions checks for Normal, run against torchdist_fast.Normal in
every CPU mode ("torch", the Philox reference, the Triton kernels under the interpreter), plus
the accuracy promises (tails of cdf/icdf/log_prob) checked against scipy.stats.norm.

Statistical tests use fixed seeds: each outcome is deterministic, and the thresholds are
several standard errors wide, so they do not flake."""
import math
from itertools import product

import numpy as np
import pytest
import scipy.stats
import torch
from torch.distributions import Independent, kl_divergence
from torch.distributions.exp_family import ExponentialFamily

from helpers import assert_close
from normal_modes import default_validation  # noqa: F401  (autouse fixture)
import torchdist_fast
from normal_modes import MODES, OPS_MODES, sampling_mode
from torchdist_fast import Normal
from torchdist_fast.routing import TorchNormal


@pytest.fixture(params=MODES)
def mode(request):
    with sampling_mode(request.param):
        yield request.param


def rand_params(shape, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=g, dtype=dtype)
    scale = torch.rand(shape, generator=g, dtype=dtype) + 0.3
    return loc.requires_grad_(requires_grad), scale.requires_grad_(requires_grad)


def norm(d):
    return scipy.stats.norm(loc=d.loc.detach().numpy(), scale=d.scale.detach().numpy())


# ------------------------------------------------------------------------------ shapes
def test_shape_scalar_params(mode):
    normal = Normal(0, 1)
    assert normal._batch_shape == torch.Size() and normal._event_shape == torch.Size()
    assert normal.sample().size() == torch.Size() and normal.rsample().size() == torch.Size()
    assert normal.sample((3, 2)).size() == (3, 2)
    assert normal.rsample_and_log_prob((3, 2))[1].size() == (3, 2)
    with pytest.raises(ValueError):
        normal.log_prob(1)  # validation on: a Python number is not a tensor
    assert normal.log_prob(torch.ones(3, 2)).size() == (3, 2)
    assert normal.log_prob(torch.ones(3, 2, 3)).size() == (3, 2, 3)


def test_shape_tensor_params(mode):
    normal = Normal(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert normal._batch_shape == (2,) and normal._event_shape == ()
    assert normal.sample().size() == (2,)
    assert normal.sample((3, 2)).size() == (3, 2, 2)
    assert normal.rsample((3, 2)).size() == (3, 2, 2)
    assert normal.log_prob(torch.ones(3, 2)).size() == (3, 2)
    with pytest.raises(ValueError):
        normal.log_prob(torch.ones(2, 1, 3))  # not broadcastable with batch_shape (2,)


def test_normal_shapes_and_rsample_gradients(mode):
    """torch's test_normal: sample sizes, the delta case, and d rsample / d (loc, scale)."""
    loc, scale = rand_params((5, 5), torch.float32, requires_grad=True)
    loc_1d, scale_1d = rand_params((1,), torch.float32, requires_grad=True)
    assert Normal(loc, scale).sample().size() == (5, 5)
    assert Normal(loc, scale).sample((7,)).size() == (7, 5, 5)
    assert Normal(loc_1d, scale_1d).sample((1,)).size() == (1, 1)
    assert Normal(loc_1d, scale_1d).sample().size() == (1,)
    assert Normal(0.2, 0.6).sample((1,)).size() == (1,)
    assert Normal(-0.7, 50.0).sample((1,)).size() == (1,)
    # a tiny scale samples its location
    delta = Normal(torch.tensor([1.0, 0.0]), torch.tensor([1e-5, 1e-5])).sample((1,))
    torch.testing.assert_close(delta, torch.tensor([[1.0, 0.0]]), atol=1e-4, rtol=0)
    # same generator state, same sample
    state = torch.get_rng_state()
    a = Normal(loc, scale).sample()
    torch.set_rng_state(state)
    assert torch.equal(a, Normal(loc, scale).sample())
    # reparameterization: dz/dloc = 1, dz/dscale = eps
    torch.manual_seed(1)
    z = Normal(loc, scale).rsample()
    z.backward(torch.ones_like(z))
    assert torch.equal(loc.grad, torch.ones_like(loc))
    eps = ((z - loc) / scale).detach()
    assert_close(scale.grad, eps, 1e-5, 1e-4)
    assert z.size() == (5, 5)


# ------------------------------------------------------------------------------ samples vs scipy
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_statistics_against_scipy(mode, dtype):
    """torch's test_normal_sample grid (loc in {-1, 0, 1}, scale in {0.1, 1, 10}) in one batch."""
    grid = list(product([-1.0, 0.0, 1.0], [0.1, 1.0, 10.0]))
    loc = torch.tensor([g[0] for g in grid], dtype=dtype)
    scale = torch.tensor([g[1] for g in grid], dtype=dtype)
    n = 2000
    for method in ("sample", "rsample"):
        torch.manual_seed(2024)
        x = getattr(Normal(loc, scale), method)((n,)).double().numpy()
        for j, (m, s) in enumerate(grid):
            col = x[:, j]
            # Kolmogorov-Smirnov against scipy's cdf; deterministic for the fixed seed
            assert scipy.stats.kstest(col, scipy.stats.norm(loc=m, scale=s).cdf).pvalue > 1e-4, (method, m, s)
            assert abs(col.mean() - m) < 5 * s / math.sqrt(n)
            assert abs(col.std() / s - 1) < 5 * math.sqrt(0.5 / n)


def test_rsample_and_log_prob_distribution(mode):
    loc, scale = rand_params((4,), torch.float32, seed=3)
    torch.manual_seed(8)
    z, lp = Normal(loc, scale).rsample_and_log_prob((3000,))
    for j in range(4):
        cdf = scipy.stats.norm(loc=loc[j].item(), scale=scale[j].item()).cdf
        assert scipy.stats.kstest(z[:, j].double().numpy(), cdf).pvalue > 1e-4
    expected = scipy.stats.norm(loc=loc.numpy(), scale=scale.numpy()).logpdf(z.double().numpy())
    assert_close(lp, torch.from_numpy(expected).float(), 2e-5, 2e-5)


def test_mean_variance_entropy_by_sampling(mode):
    loc, scale = rand_params((3,), seed=5)
    d = Normal(loc, scale)
    torch.manual_seed(0)
    n = 20000
    x = d.sample((n,))
    se = scale / math.sqrt(n)
    assert ((x.mean(0) - d.mean).abs() < 5 * se).all()
    assert ((x.var(0) / d.variance - 1).abs() < 5 * math.sqrt(2 / n)).all()
    neg_lp = -d.log_prob(x)
    assert ((neg_lp.mean(0) - d.entropy()).abs() < 5 * neg_lp.std(0) / math.sqrt(n)).all()


# ------------------------------------------------------------------------------ densities vs scipy
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_cdf_icdf_entropy_against_scipy(dtype):
    loc, scale = rand_params((4, 3), seed=2)
    d = Normal(loc.to(dtype), scale.to(dtype))
    ref = norm(d)
    x = torch.randn(5, 4, 3, dtype=torch.float64).to(dtype) * 3
    p = torch.rand(5, 4, 3, dtype=torch.float64).to(dtype) * 0.98 + 0.01
    tol = (1e-12, 1e-12) if dtype == torch.float64 else (2e-6, 2e-6)
    xd, pd = x.double().numpy(), p.double().numpy()
    assert_close(d.log_prob(x), torch.from_numpy(ref.logpdf(xd)).to(dtype), *tol)
    assert_close(d.cdf(x), torch.from_numpy(ref.cdf(xd)).to(dtype), *tol)
    assert_close(d.log_cdf(x), torch.from_numpy(ref.logcdf(xd)).to(dtype), *tol)
    assert_close(d.icdf(p), torch.from_numpy(ref.ppf(pd)).to(dtype), tol[0] * 10, tol[1] * 10)
    assert_close(d.entropy(), torch.from_numpy(ref.entropy()).to(dtype), *tol)
    assert_close(d.mean, torch.from_numpy(ref.mean()).to(dtype), *tol)
    assert_close(d.stddev, torch.from_numpy(ref.std()).to(dtype), *tol)
    assert_close(d.variance, torch.from_numpy(ref.var()).to(dtype), *tol)
    assert torch.equal(d.mode, d.loc)


def test_cdf_lower_tail_is_erfc_accurate():
    sigmas = torch.tensor([-5.0, -10.0, -20.0, -30.0, -37.0], dtype=torch.float64)
    d = Normal(torch.tensor(0.25, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    x = 0.25 + 2.0 * sigmas
    expected = torch.from_numpy(scipy.stats.norm.cdf(sigmas.numpy()))
    cdf = d.cdf(x)
    assert (cdf > 0).all()
    assert_close(cdf, expected, 0, 1e-12)
    assert (TorchNormal(d.loc, d.scale).cdf(x)[1:] == 0).all()  # what erf-based torch gives
    # float32: torch's 0.5 * (1 + erf) is 0 from about -5.9 sigma on
    d32 = Normal(torch.tensor(0.0), torch.tensor(1.0))
    x32 = torch.tensor([-6.0, -10.0, -12.0])
    assert_close(d32.cdf(x32), torch.from_numpy(scipy.stats.norm.cdf(x32.double().numpy())).float(), 0, 1e-5)
    # -40 sigma is 3.7e-350: below the smallest float64 (4.9e-324), so cdf rounds to 0 in any
    # float64 code (scipy too); log_cdf keeps it
    d40 = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    x40 = torch.tensor([-40.0, -100.0], dtype=torch.float64)
    assert d40.cdf(x40)[0] == scipy.stats.norm.cdf(-40.0) == 0.0
    assert_close(d40.log_cdf(x40), torch.from_numpy(scipy.stats.norm.logcdf(x40.numpy())), 0, 1e-13)
    # upper tail: 1 - tiny, then 1
    upper = torch.tensor([3.0, 8.0, 40.0], dtype=torch.float64)
    assert_close(d40.cdf(upper), torch.from_numpy(scipy.stats.norm.cdf(upper.numpy())), 0, 1e-15)


def test_icdf_accurate_near_0_and_1():
    p = torch.tensor([1e-300, 1e-100, 1e-20, 1e-10, 1e-5, 0.5, 1 - 1e-5, 1 - 1e-10, 1 - 2**-52], dtype=torch.float64)
    d = Normal(torch.tensor(-1.5, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    expected = torch.from_numpy(scipy.stats.norm(loc=-1.5, scale=0.5).ppf(p.numpy()))
    assert_close(d.icdf(p), expected, 1e-13, 1e-13)
    # torch's erfinv(2 p - 1) loses p near 0: infinite or far off where ndtri is exact
    torch_icdf = TorchNormal(d.loc, d.scale).icdf(p[:3])
    assert not torch.isclose(torch_icdf, expected[:3], rtol=1e-3).any()
    # float32 and the edges
    p32 = torch.tensor([1e-30, 1e-7, 0.3, 1 - 2**-24], dtype=torch.float32)
    d32 = Normal(torch.tensor(0.0), torch.tensor(1.0))
    assert_close(d32.icdf(p32), torch.from_numpy(scipy.stats.norm.ppf(p32.double().numpy())).float(), 1e-6, 1e-6)
    edges = d32.icdf(torch.tensor([0.0, 1.0, -0.1, 1.1]))
    assert edges[0] == -math.inf and edges[1] == math.inf and torch.isnan(edges[2:]).all()


@pytest.fixture(params=["cpu_log_prob_stable"] + OPS_MODES)
def stable_log_prob(request):
    """The modes with the stable log_prob formula (CPU default: torch's formula, bit for bit)."""
    if request.param == "cpu_log_prob_stable":
        with torchdist_fast.cpu_log_prob("stable"):
            yield
    else:
        with sampling_mode(request.param):
            yield


@pytest.mark.parametrize("scale", [1e-5, 1e-20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_tiny_scale_and_far_values(stable_log_prob, scale, dtype):
    loc = torch.tensor([0.3, -2.0, 1e3], dtype=dtype)
    d = Normal(loc, torch.tensor(scale, dtype=dtype).expand(3))
    k = torch.tensor([0.0, 1.0, -3.0, 40.0, -1e3, 1e6], dtype=torch.float64)
    value = (loc.double()[:, None] + scale * k).to(dtype).T.contiguous()  # (6, 3)
    lp = d.log_prob(value)
    expected = scipy.stats.norm(loc=loc.double().numpy(), scale=d.scale.double().numpy()).logpdf(value.double().numpy())
    expected = torch.from_numpy(expected)
    rtol = 1e-13 if dtype == torch.float64 else 2e-6
    assert torch.isfinite(lp).all()
    assert_close(lp.double(), expected, 0, rtol)


def test_log_prob_far_values_without_overflow(stable_log_prob):
    # torch's formula squares (x - loc) first: 1e20**2 overflows float32 although the result
    # (-5e34 here) is a float32; y = (x - loc) / scale keeps it finite
    d = Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1e3]))
    value = torch.tensor([1e15, 1e20])
    lp = d.log_prob(value)
    expected = scipy.stats.norm(loc=[0.0, 1.0], scale=[1.0, 1e3]).logpdf([1e15, np.float32(1e20)])
    assert torch.isfinite(lp).all()
    assert_close(lp.double(), torch.from_numpy(expected), 0, 1e-6)
    assert TorchNormal(d.loc, d.scale).log_prob(value)[1] == -math.inf
    assert Normal(0.0, 1.0).log_prob(torch.tensor(1e20)) == -math.inf  # -5e39: beyond float32


# ------------------------------------------------------------------------------ identities
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_icdf_cdf_round_trip(dtype):
    loc, scale = rand_params((3,), dtype=dtype, seed=7)
    d = Normal(loc, scale)
    # x up to loc + scale: above, cdf(x) rounds towards 1 and no inverse can recover x; below,
    # the erfc-based cdf keeps every digit far into the tail
    low = -30.0 if dtype == torch.float64 else -9.0
    x = (loc + scale * (low + (1 - low) * torch.rand(6, 3, dtype=dtype))).to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(d.icdf(d.cdf(x)), x, tol, tol)
    p = torch.rand(6, 3, dtype=dtype) * 0.98 + 0.01
    assert_close(d.cdf(d.icdf(p)), p, tol, tol)


def test_cdf_derivative_is_pdf():
    loc, scale = rand_params((4,), seed=9)
    d = Normal(loc, scale)
    x = (loc + scale * torch.randn(5, 4, dtype=torch.float64) * 2).requires_grad_()
    (grad,) = torch.autograd.grad(d.cdf(x).sum(), x)
    assert_close(grad, d.log_prob(x).exp().detach(), 1e-12, 1e-12)
    p = (torch.rand(5, 4, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    (grad_icdf,) = torch.autograd.grad(d.icdf(p).sum(), p)
    assert_close(grad_icdf, 1 / d.log_prob(d.icdf(p)).exp().detach(), 1e-9, 1e-9)


def test_gradcheck_log_prob(cpu_kernel):
    loc, scale = rand_params((3,), seed=11, requires_grad=True)
    value = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, m, s: Normal(m, s).log_prob(v), (value, loc, scale))
    assert torch.autograd.gradcheck(lambda m: Normal(m, 1.0).log_prob(value.detach()), (loc,))
    assert torch.autograd.gradcheck(lambda s: Normal(0.0, s).log_prob(value.detach()), (scale,))
    assert torch.autograd.gradcheck(lambda v, m, s: Normal(m, s).cdf(v), (value, loc, scale))
    assert torch.autograd.gradcheck(lambda m, s: Normal(m, s).entropy(), (loc, scale))


def test_gradcheck_samplers(mode):
    loc, scale = rand_params((3,), seed=12, requires_grad=True)

    def rsample(m, s):
        return Normal(m, s).rsample((2,), generator=torch.Generator().manual_seed(4))

    def rsample_and_log_prob(m, s):
        return Normal(m, s).rsample_and_log_prob((2,), generator=torch.Generator().manual_seed(4))

    # (sample_and_log_prob is left out: its gradient is the score function with the sample held
    # fixed, not the total derivative that finite differences see; test_normal_class checks it)
    for fn in (rsample, rsample_and_log_prob):
        assert torch.autograd.gradcheck(fn, (loc, scale)), fn.__name__


def test_exponential_family_identities():
    loc, scale = rand_params((4,), seed=13)
    d = Normal(loc, scale)
    assert_close(ExponentialFamily.entropy(d), d.entropy(), 1e-12, 1e-12)
    assert_close(d.perplexity(), d.entropy().exp(), 1e-12, 1e-12)


# ------------------------------------------------------------------------------ expand / Independent
@pytest.mark.parametrize("sample_shape", [(2,), (2, 2), (2, 1, 3)])
def test_expand(mode, sample_shape):
    loc, scale = rand_params((3,), torch.float32, seed=14)
    d = Normal(loc, scale)
    expanded_shape = torch.Size(sample_shape) + d.batch_shape
    e = d.expand(expanded_shape)
    assert type(e) is Normal and e.batch_shape == expanded_shape and e.event_shape == d.event_shape
    sample = e.sample()
    assert sample.shape == expanded_shape
    assert e.rsample((4,)).shape == (4,) + expanded_shape
    assert_close(e.log_prob(sample), d.log_prob(sample), 1e-6, 1e-6)
    assert_close(e.cdf(sample), d.cdf(sample), 1e-6, 1e-6)
    assert torch.equal(e.entropy(), d.entropy().expand(expanded_shape))
    with pytest.raises(RuntimeError):
        d.expand((4,))  # not a broadcast of (3,)


def test_independent(mode):
    loc, scale = rand_params((4, 3), torch.float32, seed=15)
    base = Normal(loc, scale)
    ind = Independent(base, 1)
    assert ind.batch_shape == (4,) and ind.event_shape == (3,)
    x = ind.sample((2,))
    assert x.shape == (2, 4, 3) and ind.rsample().shape == (4, 3)
    assert_close(ind.log_prob(x), base.log_prob(x).sum(-1), 1e-5, 1e-5)
    assert_close(ind.entropy(), base.entropy().sum(-1), 1e-6, 1e-6)
    assert ind.expand((5, 4)).batch_shape == (5, 4)


# ------------------------------------------------------------------------------ KL
def test_kl_closed_form_against_monte_carlo(mode):
    p = Normal(*rand_params((3,), seed=16))
    q = Normal(*rand_params((3,), seed=17))
    kl = kl_divergence(p, q)
    n = 10000
    torch.manual_seed(3)
    x = p.sample((n,))
    diff = p.log_prob(x) - q.log_prob(x)
    se = diff.std(0) / math.sqrt(n)
    assert ((diff.mean(0) - kl).abs() < 5 * se + 1e-3).all(), (diff.mean(0), kl)
    # the default CPU mode is torch's KL bit for bit; the Philox modes use the fused KL's formula
    exact = mode == "torch"
    tol = 0 if exact else 1e-12
    assert_close(kl, kl_divergence(TorchNormal(p.loc, p.scale), TorchNormal(q.loc, q.scale)), tol, tol)
    assert (kl_divergence(p, p).abs() <= tol).all()


# ------------------------------------------------------------------------------ constraints and validation
@pytest.mark.parametrize(
    "loc, scale",
    [(0.0, 0.0), (0.0, -1.0), (0.0, math.nan), (math.nan, 1.0),
     (torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])), (torch.zeros(3), torch.tensor([1.0, -1.0, 2.0])),
     (torch.tensor([0.0, math.nan]), torch.ones(2)), (torch.zeros(2), torch.tensor([math.nan, 1.0]))],
    ids=["scale0", "scale-1", "scale-nan", "loc-nan", "scale-tensor-0", "scale-tensor-neg",
         "loc-tensor-nan", "scale-tensor-nan"],
)
def test_invalid_parameters_raise_value_error(loc, scale):
    with pytest.raises(ValueError, match="Expected parameter"):
        Normal(loc, scale, validate_args=True)
    Normal(loc, scale, validate_args=False)  # no checks when validation is off


def test_params_and_support_constraints(mode):
    loc, scale = rand_params((3,), torch.float32, seed=18)
    d = Normal(loc, scale)
    for name, constraint in d.arg_constraints.items():
        assert constraint.check(getattr(d, name)).all(), name
    x = d.sample((100,))
    assert d.support.check(x).all()
    # inf is in the support of torch's Normal (constraints.real only rejects NaN)
    assert d.log_prob(torch.tensor([math.inf, -math.inf, 0.0])).shape == (3,)


def test_valid_and_invalid_parameter_broadcasting(mode):
    for loc, scale, shape in [
        (torch.zeros(2, 1), torch.ones(3), (2, 3)),
        (torch.zeros(1, 3), torch.ones(2, 1), (2, 3)),
        (0.0, torch.ones(4), (4,)),
        (torch.zeros(4), 1.0, (4,)),
        (torch.tensor(0.0), torch.ones(2, 2), (2, 2)),
    ]:
        d = Normal(loc, scale)
        assert d.batch_shape == shape and d.sample().shape == shape and d.rsample((2,)).shape == (2,) + shape
    for loc, scale in [(torch.zeros(2), torch.ones(3)), (torch.zeros(2, 3), torch.ones(3, 2))]:
        with pytest.raises(RuntimeError):
            Normal(loc, scale)
