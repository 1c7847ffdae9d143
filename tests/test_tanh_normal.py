"""TanhNormal and the tanh_normal_rsample op: the kernel against the reference (forward, both
backward inputs, every dtype, event layouts), the reference against torch's TransformedDistribution
on the same noise, opcheck, CPU default = torch's composition bit for bit, memory, numerics, errors."""
import math

import pytest
import torch
from torch.distributions import Independent, TransformedDistribution
from torch.distributions.transforms import AffineTransform, TanhTransform

import torchdist_fast
from helpers import TOLERANCES, assert_close
from normal_modes import default_validation  # noqa: F401  (autouse fixture)
from test_memory_and_launches import saved_bytes_beyond_inputs
from torchdist_fast import TanhNormal, rng
from torchdist_fast.ops.tanh_normal import noise
from torchdist_fast.reference import tanh_normal as reference_tanh_normal
from torchdist_fast.reference import tanh_normal_backward as reference_tanh_normal_backward

OPS = torch.ops.torchdist_fast
TorchNormal = torchdist_fast.routing.TorchNormal
SO = rng.pack_seed_offset(0x0123_4567_89AB_CDEF, 40)

# (loc shape, scale shape, sample_shape, event_dims, low, high)
CASES = {
    "sac": ((5, 6), (5, 6), (), 1, -1.0, 1.0),
    "bounds": ((5, 6), (6,), (2,), 1, -2.0, 3.0),
    "no-event": ((7,), (), (3,), 0, -1.0, 1.0),
    "two-event-dims": ((4, 2, 3), (4, 2, 3), (), 2, -1.0, 1.0),
    "odd-event": ((3, 17), (1, 17), (2,), 1, -1.0, 1.0),
    "many-rows": ((300, 3), (3,), (), 1, -1.0, 1.0),
    "long-event-unfused": ((2, 2100), (2, 2100), (), 1, -1.0, 1.0),
}


def make(case, dtype, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc_shape, scale_shape, sample_shape, k, low, high = CASES[case]
    loc = (2 * torch.randn(loc_shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    scale = (torch.rand(scale_shape, generator=g, dtype=torch.float64) + 0.3).to(dtype).requires_grad_(requires_grad)
    return loc, scale, list(sample_shape), k, low, high


def reference_of(loc, scale, sample_shape, k, low, high, with_log_prob=True):
    full = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc.shape, scale.shape))
    eps = noise(full, *rng.unpack_seed_offset(SO), loc.dtype, "cpu")
    a, lp = reference_tanh_normal(eps, loc.detach(), scale.detach(), k, (high + low) / 2, (high - low) / 2, with_log_prob)
    return eps, a, lp


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(triton_device, poisoned_empty, case, dtype, atol, rtol):
    if case == "long-event-unfused" and dtype != torch.float32:
        pytest.skip("one dtype is enough for the unfused path")
    loc_c, scale_c, ss, k, low, high = make(case, dtype, seed=len(case))  # the reference's, on the CPU
    loc, scale = (t.to(triton_device).requires_grad_() for t in (loc_c, scale_c))
    a, lp = OPS.tanh_normal_rsample(loc, scale, ss, k, low, high, SO, True)
    assert a.device.type == lp.device.type == triton_device.type
    eps, a_ref, lp_ref = reference_of(loc_c, scale_c, ss, k, low, high)
    d = max(1, a.numel() // max(1, lp.numel()))
    assert_close(a, a_ref, atol * (high - low), rtol)
    assert_close(lp, lp_ref, atol * d * 8, rtol * 8)
    a_only, empty = OPS.tanh_normal_rsample(loc, scale, ss, k, low, high, SO, False)
    assert torch.equal(a_only, a) and empty.numel() == 0
    ga = torch.randn(a.shape, dtype=torch.float64).to(dtype)
    gl = torch.randn(lp.shape, dtype=torch.float64).to(dtype)
    for grads_in in [(ga, gl), (ga, None), (None, gl)]:
        outs = [o for o, g in zip((a, lp), grads_in) if g is not None]
        got = torch.autograd.grad(outs, (loc, scale), [g.to(triton_device) for g in grads_in if g is not None],
                                  retain_graph=True)
        ref = reference_tanh_normal_backward(eps, *grads_in, loc_c, scale_c, k, (high - low) / 2, (True, True))
        for g, r in zip(got, ref):
            assert_close(g, r, 20 * atol * d, 20 * rtol)


def test_reference_is_torchs_transformed_distribution_on_the_same_noise():
    """float64: a and log_prob equal torch's TransformedDistribution(Independent(Normal), [Tanh, Affine]),
    and the backward equals torch's autograd through u = loc + scale * eps."""
    loc, scale, ss, k, low, high = make("bounds", torch.float64, requires_grad=True, seed=3)
    full = tuple(ss) + tuple(torch.broadcast_shapes(loc.shape, scale.shape))
    eps = noise(full, 5, 8, torch.float64, "cpu")
    mid, half = (high + low) / 2, (high - low) / 2
    a, lp = reference_tanh_normal(eps, loc.detach(), scale.detach(), k, mid, half, True)
    u = loc + scale * eps
    td = TransformedDistribution(Independent(TorchNormal(loc, scale), k),
                                 [TanhTransform(cache_size=1), AffineTransform(mid, half, event_dim=k, cache_size=1)])
    a_t = td.transforms[1](td.transforms[0](u))
    lp_t = td.log_prob(a_t)
    assert_close(a, a_t.detach(), 1e-12, 1e-12)
    assert_close(lp, lp_t.detach(), 1e-10, 1e-12)
    ga, gl = torch.randn(a.shape, dtype=torch.float64), torch.randn(lp.shape, dtype=torch.float64)
    ref = torch.autograd.grad([a_t, lp_t], (loc, scale), [ga, gl])
    got = reference_tanh_normal_backward(eps, ga, gl, loc.detach(), scale.detach(), k, half, (True, True))
    for g, r in zip(got, ref):
        assert_close(g, r, 1e-10, 1e-10)


def test_opcheck(cpu_kernel):
    loc, scale, ss, k, low, high = make("bounds", torch.float32, requires_grad=True)
    torch.library.opcheck(OPS.tanh_normal_rsample, (loc, scale, ss, k, low, high, SO, True))
    torch.library.opcheck(OPS.tanh_normal_rsample, (loc, scale, ss, k, low, high, SO, False))
    a, lp = OPS.tanh_normal_rsample(loc, scale, ss, k, low, high, SO, True)
    torch.library.opcheck(OPS.tanh_normal_rsample_backward,
                          (torch.randn(a.shape), torch.randn(lp.shape), loc.detach(), scale.detach(), ss, k, low, high, SO,
                           [True, True]))


def test_gradcheck(cpu_kernel):
    loc, scale, ss, k, low, high = make("odd-event", torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, s: OPS.tanh_normal_rsample(m, s, ss, k, low, high, SO, True), (loc, scale))


@pytest.mark.parametrize("args, exc, match", [
    (dict(low=1.0, high=1.0), ValueError, "low < high"),
    (dict(low=0.0, high=math.inf), ValueError, "finite"),
    (dict(event_dims=3), ValueError, "event_dims"),
    (dict(event_dims=1.5), ValueError, "event_dims"),
])
def test_class_bad_arguments(args, exc, match):
    kwargs = dict(loc=torch.zeros(4, 2), scale=torch.ones(4, 2)) | args
    with pytest.raises(exc, match=match):
        TanhNormal(**kwargs)


def test_class_validates_like_normal():
    with pytest.raises(ValueError, match="scale"):
        TanhNormal(torch.zeros(2), -torch.ones(2), validate_args=True)


def test_empty_shapes(cpu_kernel):
    a, lp = OPS.tanh_normal_rsample(torch.zeros(0, 3), torch.ones(0, 3), [], 1, -1.0, 1.0, SO, True)
    assert a.shape == (0, 3) and lp.shape == (0,)
    a, lp = OPS.tanh_normal_rsample(torch.zeros(2, 0), torch.ones(2, 0), [], 1, -1.0, 1.0, SO, True)
    assert a.shape == (2, 0) and torch.equal(lp, torch.zeros(2))


# ---------------------------------------------------------------- the class
def torch_composition(loc, scale, low, high, k):
    mid, half = (high + low) / 2, (high - low) / 2
    transforms = [TanhTransform(cache_size=1)]
    if (low, high) != (-1.0, 1.0):
        transforms.append(AffineTransform(mid, half, event_dim=k, cache_size=1))
    return TransformedDistribution(Independent(TorchNormal(loc, scale), k) if k else TorchNormal(loc, scale), transforms)


@pytest.mark.parametrize("case", ["sac", "bounds", "no-event"])
def test_cpu_default_is_torchs_composition_bit_for_bit(case):
    loc, scale, ss, k, low, high = make(case, torch.float32, requires_grad=True, seed=9)
    ours, ref = TanhNormal(loc, scale, low, high, k), torch_composition(loc, scale, low, high, k)
    torch.manual_seed(4)
    a, lp = ours.rsample_and_log_prob(ss)
    torch.manual_seed(4)
    a_ref = ref.rsample(ss)
    lp_ref = ref.log_prob(a_ref)
    assert torch.equal(a, a_ref) and torch.equal(lp, lp_ref)
    value = a_ref.detach() * 0.5
    assert torch.equal(ours.log_prob(value), ref.log_prob(value))
    grads = torch.autograd.grad((a * a).sum() + lp.sum(), (loc, scale))
    ref_grads = torch.autograd.grad((a_ref * a_ref).sum() + lp_ref.sum(), (loc, scale))
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads))
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    assert torch.equal(ours.rsample(ss, generator=g), ref.rsample(ss))
    assert ours.batch_shape == ref.batch_shape and ours.event_shape == ref.event_shape


@pytest.mark.parametrize("mode", ["philox"] + (["triton"] if "triton" in __import__("normal_modes").MODES else []))
def test_philox_path(mode):
    from normal_modes import sampling_mode

    loc, scale, ss, k, low, high = make("bounds", torch.float32, requires_grad=True, seed=11)
    with sampling_mode(mode):
        d = TanhNormal(loc, scale, low, high, k)
        torch.manual_seed(7)
        a, lp = d.rsample_and_log_prob(ss)
        torch.manual_seed(7)
        assert torch.equal(d.rsample(ss), a.detach())
        torch.manual_seed(7)
        s, lp_s = d.sample_and_log_prob(ss)
        assert torch.equal(s, a.detach()) and not s.requires_grad and lp_s.requires_grad
        assert_close(d.log_prob(a.detach()), lp.detach(), 2e-4, 1e-4)  # atanh of the action: rounding
        # rsample then log_prob of the same tensor: the kernel's log_prob, with its gradients
        torch.manual_seed(7)
        a2 = d.rsample(ss)
        lp2 = d.log_prob(a2)
        assert torch.equal(a2, a) and torch.equal(lp2, lp) and lp2.grad_fn is not None
        assert d.deterministic_sample.shape == (5, 6)
        assert ((a > low) & (a < high)).all()
        assert a.shape == tuple(ss) + (5, 6) and lp.shape == tuple(ss) + (5,)
        assert d.mode.shape == (5, 6) and type(d.expand((3, 5))) is TanhNormal


def test_saturated_actions_keep_a_finite_log_prob():
    # |u| = 20: 1 - tanh(u)^2 rounds to 0 in float32, the log-det formula does not
    loc, scale = torch.full((2, 3), 20.0), torch.full((2, 3), 1e-3)
    with torchdist_fast.cpu_sampling("philox"):
        a, lp = OPS.tanh_normal_rsample(loc, scale, [], 1, -1.0, 1.0, SO, True)
        eps = noise((2, 3), *rng.unpack_seed_offset(SO), torch.float32, "cpu").double()  # the same float32 noise
        _, lp64 = reference_tanh_normal(eps, loc.double(), scale.double(), 1, 0.0, 1.0, True)
        assert torch.isfinite(lp).all() and torch.equal(a, torch.ones(2, 3))
        assert_close(lp.double(), lp64, 1e-4, 1e-5)
        assert lp64.min() > 100  # about -3 * (log 1e-3 - 2 * 20): a density far above 1 near the bound
        # a given action at the bound: clamped, finite
        assert torch.isfinite(TanhNormal(loc, scale).log_prob(torch.ones(2, 3))).all()


def test_actor_step_saves_no_more_than_normal_rsample_and_log_prob(cpu_kernel):
    loc = torch.randn(256, 8, requires_grad=True)
    scale = (torch.rand(256, 8) + 0.5).requires_grad_()

    def tanh_step(m, s):
        return OPS.tanh_normal_rsample(m, s, [], 1, -1.0, 1.0, SO, True)

    def normal_step(m, s):
        return OPS.normal_rsample_log_prob(m, s, [], SO)

    assert saved_bytes_beyond_inputs(tanh_step, (loc, scale)) <= saved_bytes_beyond_inputs(normal_step, (loc, scale)) == 16


@pytest.mark.gpu
def test_cuda_matches_cpu_philox_within_the_contract():
    from torchdist_fast import reference

    loc, scale, ss, k, low, high = make("bounds", torch.float32, seed=13)
    a_gpu, lp_gpu = OPS.tanh_normal_rsample(loc.cuda(), scale.cuda(), ss, k, low, high, SO, True)
    a_cpu, lp_cpu = OPS.tanh_normal_rsample(loc, scale, ss, k, low, high, SO, True)
    err = reference.FAST_ABS_ERR * scale.max().item()
    assert_close(a_gpu.cpu(), a_cpu, err * (high - low), 1e-5)
    assert_close(lp_gpu.cpu(), lp_cpu, 6 * (err * 30 + 1e-5), 1e-4)


def cleanrl_get_action(mean, std, action_scale, action_bias):
    """CleanRL's SAC actor (sac_continuous_action.py), as written there, with torch's Normal."""
    normal = torch.distributions.Normal(mean, std)
    x_t = normal.rsample()
    y_t = torch.tanh(x_t)
    action = y_t * action_scale + action_bias
    log_prob = normal.log_prob(x_t)
    log_prob -= torch.log(action_scale * (1 - y_t.pow(2)) + 1e-6)
    return action, log_prob.sum(1, keepdim=True)


def test_cleanrl_actor_one_line_change():
    """The replacement line of docs/family.md gives CleanRL's action and log_prob on the same noise (up to
    CleanRL's 1e-6 inside the log, which matters only near the bounds)."""
    mean = torch.randn(64, 6, dtype=torch.float64, requires_grad=True)
    std = (0.3 * torch.rand(64, 6, dtype=torch.float64) + 0.2).requires_grad_()
    with torchdist_fast.cpu_sampling("philox"):
        torch.manual_seed(0)
        action, log_prob = cleanrl_get_action(mean, std, 2.0, 0.0)  # CleanRL's code, torch's Normal
        torch.manual_seed(0)
        ours, ours_lp = TanhNormal(mean, std, low=-2.0, high=2.0).rsample_and_log_prob()
    torch.manual_seed(0)
    ref_noise_action, _ = cleanrl_get_action(mean, std, 2.0, 0.0)
    assert not torch.equal(ref_noise_action, ours)  # torch draws another stream: compare on ours
    u = torch.atanh((ours / 2.0).detach())
    normal = TorchNormal(mean, std)
    cleanrl_lp = (normal.log_prob(u) - torch.log(2.0 * (1 - torch.tanh(u).pow(2)) + 1e-6)).sum(1, keepdim=True)
    assert_close(ours_lp.unsqueeze(-1).detach(), cleanrl_lp.detach(), 1e-3, 1e-4)
    assert action.shape == ours.shape and log_prob.shape == ours_lp.unsqueeze(-1).shape
