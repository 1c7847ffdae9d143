"""Event-dim sums: the normal_log_prob_sum / normal_entropy_sum ops (reference and Triton kernel,
forward and backward, opcheck) and IndependentNormal (Normal.to_event), which is torch's
Independent(Normal) bit for bit on CPU by default; patch() routes torch's Independent."""
import pytest
import torch
from torch.distributions import Independent

import torchdist_fast
from helpers import TOLERANCES, assert_close
from normal_modes import MODES, default_validation  # noqa: F401  (autouse fixture)
from test_memory_and_launches import saved_bytes_beyond_inputs
from torchdist_fast import IndependentNormal, Normal

OPS = torch.ops.torchdist_fast
TorchNormal = torchdist_fast.routing.TorchNormal

# (value shape, loc shape, scale shape, event_dims): broadcasts, k = 0, 1, 2, all dims, event
# sizes that are not powers of two and longer than one chunk (300 > 256), many rows
CASES = {
    "row-k1": ((5, 4, 3), (4, 3), (3,), 1),
    "row-k2": ((5, 4, 3), (4, 3), (3,), 2),
    "k0": ((5, 4, 3), (4, 3), (4, 3), 0),
    "all-dims": ((4, 7), (4, 7), (), 2),
    "long-event": ((3, 300), (300,), (3, 1), 1),
    "many-rows": ((1000, 6), (6,), (1000, 6), 1),
    "value-broadcast": ((7,), (2, 3, 7), (2, 3, 7), 1),
}


def make(case, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    v, m, s, k = CASES[case]
    value = (2 * torch.randn(v, generator=g, dtype=torch.float64)).to(dtype)
    loc = torch.randn(m, generator=g, dtype=torch.float64).to(dtype)
    scale = (torch.rand(s, generator=g, dtype=torch.float64) + 0.3).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (value, loc, scale)], k


def torch_log_prob_sum(value, loc, scale, k):
    """torch's Independent(Normal) in float64: the ground truth for every dtype."""
    lp = TorchNormal(loc.double(), scale.double()).log_prob(value.double())
    return lp.sum(tuple(range(-k, 0))) if k else lp


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
@pytest.mark.parametrize("case", CASES)
def test_log_prob_sum_kernel_and_reference(triton_device, poisoned_empty, case, dtype, atol, rtol):
    (value, loc, scale), k = make(case, dtype, seed=len(case), requires_grad=True)  # the reference's, on the CPU
    on_device = [t.detach().to(triton_device).requires_grad_() for t in (value, loc, scale)]
    got = OPS.normal_log_prob_sum(*on_device, k)
    assert got.device.type == triton_device.type
    with torchdist_fast.cpu_kernel("reference"):
        ref = OPS.normal_log_prob_sum(value, loc, scale, k)
    truth = torch_log_prob_sum(value, loc, scale, k)
    terms = max(1, value.numel() // max(1, truth.numel()))
    assert_close(got, ref, atol * terms, rtol)
    # one rounding of the compute-dtype sum: half types within their ulp of the float64 truth
    assert_close(got.double(), truth.detach(), atol * terms + 1e-6, max(rtol, 1e-6))
    grad = torch.randn(got.shape, dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(got, on_device, grad.to(triton_device))
    truth_grads = torch.autograd.grad(truth, (value, loc, scale), grad.double())
    for g, t in zip(grads, truth_grads):
        assert_close(g.double(), t.double(), 8 * atol * terms, 8 * rtol)


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
@pytest.mark.parametrize("k", [0, 1, 2])
def test_entropy_sum_kernel_and_reference(triton_device, poisoned_empty, dtype, atol, rtol, k):
    scale = (torch.rand(6, 300, dtype=torch.float64) + 0.3).to(dtype).requires_grad_()
    on_device = scale.detach().to(triton_device).requires_grad_()
    got = OPS.normal_entropy_sum(on_device, k)
    assert got.device.type == triton_device.type
    truth = TorchNormal(torch.zeros(()), scale.double()).entropy()
    truth = truth.sum(tuple(range(-k, 0))) if k else truth
    assert_close(got.double(), truth.detach(), atol * 300 * k + atol, rtol)
    grad = torch.randn(got.shape, dtype=torch.float64).to(dtype)
    (g,) = torch.autograd.grad(got, on_device, grad.to(triton_device))
    (t,) = torch.autograd.grad(truth, scale, grad.double())
    assert_close(g.double(), t.double(), 4 * atol, 4 * rtol)


def test_sums_are_deterministic(triton_device):
    (value, loc, scale), _ = make("long-event", torch.float32, seed=3)
    value, loc, scale = (t.to(triton_device) for t in (value, loc, scale))
    runs = [OPS.normal_log_prob_sum(value, loc, scale, 1) for _ in range(3)]
    assert runs[0].device.type == triton_device.type
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_opcheck(cpu_kernel):
    (value, loc, scale), k = make("row-k1", torch.float32, seed=2, requires_grad=True)
    torch.library.opcheck(OPS.normal_log_prob_sum, (value, loc, scale, k))
    torch.library.opcheck(OPS.normal_entropy_sum, (scale.detach().expand(4, 3).contiguous().requires_grad_(), 1))


@pytest.mark.parametrize("k, exc", [(-1, RuntimeError), (4, RuntimeError), (1.0, RuntimeError)])
def test_bad_event_dims(k, exc):
    (value, loc, scale), _ = make("row-k1", torch.float32)
    with pytest.raises(exc):
        OPS.normal_log_prob_sum(value, loc, scale, k)


def test_empty_and_zero_size_events(cpu_kernel):
    assert OPS.normal_log_prob_sum(torch.zeros(0, 3), torch.zeros(3), torch.ones(3), 1).shape == (0,)
    out = OPS.normal_log_prob_sum(torch.zeros(2, 0), torch.zeros(0), torch.ones(0), 1)
    assert out.shape == (2,) and torch.equal(out, torch.zeros(2))


def test_saves_only_inputs_and_launches_one_kernel(triton_device, monkeypatch):
    from torchdist_fast.triton_kernels import normal_event_sum

    (value, loc, scale), k = make("many-rows", torch.float32, seed=4)
    value, loc, scale = (t.to(triton_device).requires_grad_() for t in (value, loc, scale))
    assert saved_bytes_beyond_inputs(lambda v, m, s: OPS.normal_log_prob_sum(v, m, s, k), (value, loc, scale)) == 0
    launches = []
    kernel = normal_event_sum._normal_event_sum_fwd_kernel

    class Counted:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(normal_event_sum, "_normal_event_sum_fwd_kernel", Counted())
    OPS.normal_log_prob_sum(value, loc, scale, k)
    assert len(launches) == 1


# ---------------------------------------------------------------- IndependentNormal
def params(shape=(4, 3), seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=g).requires_grad_(requires_grad)
    scale = (torch.rand(shape, generator=g) + 0.5).requires_grad_(requires_grad)
    return loc, scale


@pytest.mark.parametrize("k", [1, 2])
def test_cpu_default_is_torchs_independent_bit_for_bit(k):
    loc, scale = params(requires_grad=True)
    value = torch.randn(5, 4, 3)
    outs = []
    for build in (lambda: Normal(loc, scale).to_event(k), lambda: Independent(TorchNormal(loc, scale), k)):
        d = build()
        torch.manual_seed(1)
        z = d.rsample((5,))
        lp = d.log_prob(z)
        if isinstance(d, IndependentNormal):
            torch.manual_seed(1)
            z2, lp2 = d.rsample_and_log_prob((5,))
            assert torch.equal(z2, z) and torch.equal(lp2, lp)
        torch.manual_seed(2)
        s = d.sample((3,))
        res = [z, lp, s, d.log_prob(value), d.entropy(), d.expand((2,) + tuple(d.batch_shape)).log_prob(value[:2, None])]
        res += list(torch.autograd.grad(sum(r.sum() for r in res if r.requires_grad), (loc, scale)))
        outs.append(res)
    for a, b in zip(*outs):
        assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("mode", ["cpu_log_prob_stable"] + [m for m in MODES if m != "torch"])
def test_fused_paths_match_torch(mode):
    from normal_modes import sampling_mode

    loc, scale = params((4, 3), seed=5, requires_grad=True)
    value = torch.randn(5, 4, 3)
    ctx = torchdist_fast.cpu_log_prob("stable") if mode == "cpu_log_prob_stable" else sampling_mode(mode)
    with ctx:
        d = Normal(loc, scale).to_event(2)
        lp, ent = d.log_prob(value), d.entropy()
        z, lp_z = d.rsample_and_log_prob((2,))
        zs, lp_s = d.sample_and_log_prob((2,))
        grads = torch.autograd.grad(lp.sum() + ent + lp_z.sum() + lp_s.sum(), (loc, scale))
    ref = Independent(TorchNormal(loc, scale), 2)
    assert lp.shape == (5,) and ent.shape == () and z.shape == (2, 4, 3) and lp_z.shape == (2,)
    assert_close(lp, ref.log_prob(value), 1e-4, 1e-5)
    assert_close(ent, ref.entropy(), 1e-5, 1e-5)
    assert_close(lp_z, ref.log_prob(z), 1e-4, 1e-5)
    assert not zs.requires_grad and lp_s.requires_grad
    # torch's two-step computation on the same noise, gradients through z included
    eps = ((z - loc) / scale).detach()
    z_ref = loc + scale * eps
    ref_total = ref.log_prob(value).sum() + ref.entropy() + ref.log_prob(z_ref).sum() + ref.log_prob(zs).sum()
    ref_grads = torch.autograd.grad(ref_total, (loc, scale))
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 1e-4, 1e-4)


def test_independent_normal_refuses_other_bases():
    with pytest.raises(TypeError, match="Normal base"):
        IndependentNormal(torch.distributions.Laplace(0.0, 1.0), 0)


def test_patch_routes_torchs_independent():
    loc, scale = params(seed=7)
    value = torch.randn(5, 4, 3)
    laplace = Independent(torch.distributions.Laplace(loc, scale), 1)
    with torchdist_fast.cpu_log_prob("stable"):
        outside = Independent(TorchNormal(loc, scale), 1).log_prob(value)
        ours = Normal(loc, scale).to_event(1).log_prob(value)
        with torchdist_fast.patch():
            inside = Independent(TorchNormal(loc, scale), 1).log_prob(value)
            laplace_inside = laplace.log_prob(value)
    assert torch.equal(inside, ours) and not torch.equal(inside, outside)
    assert torch.equal(laplace_inside, laplace.log_prob(value))
    assert Independent.__dict__["log_prob"] is torchdist_fast.independent.TORCH_INDEPENDENT["log_prob"]


# ---------------------------------------------------------------- one kernel for rsample + summed log_prob
SO = torchdist_fast.rng.pack_seed_offset(0xDEAD_BEEF_1234, 12)
RSAMPLE_CASES = {"row": ((5, 6), (6,), [3], 1), "two-dims": ((4, 2, 3), (4, 2, 3), [], 2), "odd": ((2, 17), (2, 17), [2], 1),
                 "k0": ((7,), (), [2], 0)}


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
@pytest.mark.parametrize("case", RSAMPLE_CASES)
def test_rsample_log_prob_sum_is_rsample_then_the_sum(triton_device, case, dtype, atol, rtol):
    loc_shape, scale_shape, ss, k = RSAMPLE_CASES[case]
    g = torch.Generator().manual_seed(len(case))
    loc = torch.randn(loc_shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    scale = (torch.rand(scale_shape, generator=g, dtype=torch.float64) + 0.3).to(dtype).requires_grad_()
    loc_d, scale_d = (t.detach().to(triton_device).requires_grad_() for t in (loc, scale))
    z, lp = OPS.normal_rsample_log_prob_sum(loc_d, scale_d, ss, k, SO)
    assert z.device.type == lp.device.type == triton_device.type
    with torchdist_fast.cpu_kernel("reference"):  # the same noise, log_prob per element, by the CPU reference
        z_ref, lp_full = OPS.normal_rsample_log_prob(loc, scale, ss, SO)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    lp_ref = lp_full.to(cdt).sum(tuple(range(-k, 0))).to(dtype) if k else lp_full
    d = max(1, z.numel() // max(1, lp.numel()))
    assert_close(z, z_ref, atol, rtol)
    assert_close(lp, lp_ref, atol * d * 4, rtol * 4)
    gz, gl = torch.randn(z.shape, dtype=dtype), torch.randn(lp.shape, dtype=dtype)
    grads = torch.autograd.grad((z, lp), (loc_d, scale_d), (gz.to(triton_device), gl.to(triton_device)))
    gl_full = gl.reshape(tuple(gl.shape) + (1,) * k).expand(lp_full.shape)
    with torchdist_fast.cpu_kernel("reference"):  # the backward, too
        ref_grads = torch.autograd.grad((z_ref, lp_full), (loc, scale), (gz, gl_full.contiguous()))
    for a, b in zip(grads, ref_grads):
        assert_close(a, b, 20 * atol * d, 20 * rtol)


def test_rsample_log_prob_sum_opcheck_and_memory(cpu_kernel):
    loc, scale = torch.randn(5, 6, requires_grad=True), (torch.rand(6) + 0.5).requires_grad_()
    torch.library.opcheck(OPS.normal_rsample_log_prob_sum, (loc, scale, [3], 1, SO))
    z, lp = OPS.normal_rsample_log_prob_sum(loc, scale, [3], 1, SO)
    torch.library.opcheck(OPS.normal_rsample_log_prob_sum_backward,
                          (torch.randn(z.shape), torch.randn(lp.shape), loc.detach(), scale.detach(), [3], 1, SO, [True, True]))
    saved = saved_bytes_beyond_inputs(lambda m, s: OPS.normal_rsample_log_prob_sum(m, s, [3], 1, SO), (loc, scale))
    assert saved == 16  # the stream position


@pytest.mark.parametrize("eager_path", [True, False])
def test_independent_rsample_and_log_prob_uses_one_fused_call(eager_path, monkeypatch):
    """One call of the fused implementation (normal_rsample_log_prob_sum's), through the eager
    fast path or through the op."""
    from torchdist_fast.ops import eager_path as eager
    from torchdist_fast.ops import tanh_normal as ops

    calls = []
    real = ops.event_rsample_impl

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(ops, "event_rsample_impl", spy)
    monkeypatch.setattr(eager, "direct_ok", lambda *t: eager_path)
    loc, scale = params(seed=3)
    with torchdist_fast.cpu_sampling("philox"):
        z, lp = Normal(loc, scale).to_event(1).rsample_and_log_prob((2,))
    assert len(calls) == 1 and z.shape == (2, 4, 3) and lp.shape == (2, 4)
