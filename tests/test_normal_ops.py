"""Normal ops: Triton kernels (interpreter / GPU) against the reference, forward and backward."""
import math

import pytest
import torch
from helpers import TOLERANCES, assert_close

import torchdist_fast  # noqa: F401
from torchdist_fast import reference, rng

OPS = torch.ops.torchdist_fast

# (loc shape, scale shape, sample shape): same shapes, broadcasts either way, scalars, odd sizes,
# a 5-D pattern that does not coalesce into the kernel's 4 dims (the fallback path)
CASES = [
    ((7,), (7,), ()),
    ((3, 5), (5,), (2,)),
    ((), (), (1029,)),
    ((4, 1), (1, 6), (3,)),
    ((5,), (), (2, 3)),
    ((2, 1, 4, 1), (1, 3, 1, 5), (2,)),
]


def _params(loc_shape, scale_shape, dtype, requires_grad=False, non_contiguous=False, gen=None):
    loc = torch.randn(loc_shape, generator=gen, dtype=torch.float64) * 2
    scale = torch.rand(scale_shape, generator=gen, dtype=torch.float64) + 0.3
    if non_contiguous and loc.dim() >= 1:
        # same values, strided storage
        loc = torch.stack((loc, torch.full_like(loc, float("nan"))), -1)[..., 0]
        assert not loc.is_contiguous() or loc.numel() <= 1
    loc, scale = loc.to(dtype), scale.to(dtype)
    return loc.requires_grad_(requires_grad), scale.requires_grad_(requires_grad)


def _grads_of(outputs, inputs, weights):
    loss = sum((o.float() * w).sum() for o, w in zip(outputs, weights) if w is not None)
    return torch.autograd.grad(loss, inputs)


# ------------------------------------------------------------------ forward: Triton == reference
@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", CASES)
def test_rsample_log_prob_forward_matches_reference(dtype, atol, rtol, loc_shape, scale_shape, sample_shape, triton_device):
    gen = torch.Generator().manual_seed(hash((loc_shape, scale_shape, sample_shape)) % 2**31)
    loc, scale = _params(loc_shape, scale_shape, dtype, non_contiguous=True, gen=gen)
    seed, offset = 2**63 + 11, 2**32 + 5
    so = rng.pack_seed_offset(seed, offset)
    z, lp = OPS.normal_rsample_log_prob(loc.to(triton_device), scale.to(triton_device), list(sample_shape), so)
    z_ref, lp_ref = reference.normal_rsample(loc, scale, sample_shape, seed, offset, with_log_prob=True)
    assert_close(z.cpu(), z_ref, atol, rtol)
    assert_close(lp.cpu(), lp_ref, atol, rtol)
    z_only = OPS.normal_rsample(loc.to(triton_device), scale.to(triton_device), list(sample_shape), so)
    assert torch.equal(z_only.cpu(), z.cpu())
    assert torch.equal(OPS.normal_sample(loc.to(triton_device), scale.to(triton_device), list(sample_shape), so).cpu(), z.cpu())


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("shapes", [((7,), (7,), (7,)), ((3, 4), (4,), ()), ((2, 1, 3), (5, 1), (1, 3)), ((), (6,), ())])
def test_log_prob_forward_matches_reference(dtype, atol, rtol, shapes, triton_device):
    v_shape, loc_shape, scale_shape = shapes
    value = (torch.randn(v_shape, dtype=torch.float64) * 3).to(dtype)
    loc, scale = _params(loc_shape, scale_shape, dtype)
    got = OPS.normal_log_prob(value.to(triton_device), loc.to(triton_device), scale.to(triton_device))
    assert_close(got.cpu(), reference.normal_log_prob(value, loc, scale), atol, rtol)


# ------------------------------------------------------------------ backward: Triton == reference
BWD_TOLERANCES = [
    (torch.float32, 1e-4, 1e-4),
    (torch.float64, 1e-10, 1e-10),
    (torch.float16, 1e-2, 1e-2),
    (torch.bfloat16, 5e-2, 5e-2),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", BWD_TOLERANCES)
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", CASES)
@pytest.mark.parametrize("use", ["z", "log_prob", "both"])
def test_rsample_log_prob_backward_matches_reference(dtype, atol, rtol, loc_shape, scale_shape, sample_shape, use, triton_device):
    so = rng.pack_seed_offset(99, 2**35)
    out_shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc_shape, scale_shape))
    w_z = torch.randn(out_shape) if use in ("z", "both") else None
    w_lp = torch.randn(out_shape) if use in ("log_prob", "both") else None
    grads = {}
    for backend in ("reference", "triton"):
        loc, scale = _params(loc_shape, scale_shape, dtype, requires_grad=False, gen=torch.Generator().manual_seed(3))
        dev = triton_device if backend == "triton" else torch.device("cpu")
        with torchdist_fast.cpu_kernel("reference" if backend == "reference" else torchdist_fast.get_cpu_kernel()):
            loc_d = loc.to(dev).requires_grad_()
            scale_d = scale.to(dev).requires_grad_()
            out = OPS.normal_rsample_log_prob(loc_d, scale_d, list(sample_shape), so)
            g = _grads_of(out, (loc_d, scale_d), (None if w_z is None else w_z.to(dev), None if w_lp is None else w_lp.to(dev)))
        grads[backend] = [x.cpu() for x in g]
    for got, expected in zip(grads["triton"], grads["reference"]):
        assert_close(got, expected, atol * math.prod(sample_shape or (1,)), rtol)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", BWD_TOLERANCES)
@pytest.mark.parametrize("shapes", [((7,), (7,), (7,)), ((3, 4), (4,), ()), ((2, 1, 3), (5, 1), (1, 3))])
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False), (False, False, True)])
def test_log_prob_backward_matches_reference(dtype, atol, rtol, shapes, needs, triton_device):
    v_shape, loc_shape, scale_shape = shapes
    value = torch.randn(v_shape, dtype=torch.float64).to(dtype)
    loc, scale = _params(loc_shape, scale_shape, dtype)
    weight = torch.randn(torch.broadcast_shapes(v_shape, loc_shape, scale_shape))
    grads = {}
    for dev in ("cpu-reference", triton_device):
        kernel = "reference" if dev == "cpu-reference" else torchdist_fast.get_cpu_kernel()
        d = torch.device("cpu") if dev == "cpu-reference" else dev
        with torchdist_fast.cpu_kernel(kernel):
            inputs = [t.to(d).requires_grad_(n) for t, n in zip((value, loc, scale), needs)]
            out = OPS.normal_log_prob(*inputs)
            wanted = [t for t in inputs if t.requires_grad]
            grads[str(dev)] = [g.cpu() for g in torch.autograd.grad((out.float() * weight.to(d)).sum(), wanted)]
    for got, expected in zip(grads[str(triton_device)], grads["cpu-reference"]):
        assert_close(got, expected, atol * 8, rtol)


# ------------------------------------------------------------------ reference semantics
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape", CASES)
def test_gradcheck_reference_ops(loc_shape, scale_shape, sample_shape):
    loc, scale = _params(loc_shape, scale_shape, torch.float64, requires_grad=True)
    so = rng.pack_seed_offset(5, 17)
    assert torch.autograd.gradcheck(lambda l, s: OPS.normal_rsample(l, s, list(sample_shape), so), (loc, scale))
    assert torch.autograd.gradcheck(lambda l, s: OPS.normal_rsample_log_prob(l, s, list(sample_shape), so), (loc, scale))
    value = torch.randn(tuple(sample_shape) + tuple(torch.broadcast_shapes(loc_shape, scale_shape)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(OPS.normal_log_prob, (value, loc, scale))


@pytest.mark.interpreter
def test_gradcheck_triton_ops(triton_device):
    loc, scale = _params((3, 4), (4,), torch.float64)
    loc, scale = loc.to(triton_device).requires_grad_(), scale.to(triton_device).requires_grad_()
    so = rng.pack_seed_offset(8, 1)
    assert torch.autograd.gradcheck(lambda l, s: OPS.normal_rsample_log_prob(l, s, [2], so), (loc, scale))
    value = torch.randn(2, 3, 4, dtype=torch.float64, device=triton_device, requires_grad=True)
    assert torch.autograd.gradcheck(OPS.normal_log_prob, (value, loc, scale))


def test_forward_equals_torch_distributions_formulas(cpu_kernel):
    loc, scale = _params((6, 5), (5,), torch.float32)
    so = rng.pack_seed_offset(77, 3)
    z, lp = OPS.normal_rsample_log_prob(loc, scale, [4], so)
    eps = OPS.philox_randn([4, 6, 5], so, torch.float32, torch.device("cpu"))
    assert_close(z, loc + scale * eps, 1e-6, 1e-6)
    d = torch.distributions.Normal(loc, scale)
    assert_close(lp, d.log_prob(z), 1e-5, 1e-5)
    value = torch.randn(4, 6, 5) * 4
    assert_close(OPS.normal_log_prob(value, loc, scale), d.log_prob(value), 1e-5, 1e-5)


def test_gradients_equal_torch_distributions(cpu_kernel):
    loc, scale = _params((6, 5), (5,), torch.float64, requires_grad=True)
    so = rng.pack_seed_offset(1, 2)
    z, lp = OPS.normal_rsample_log_prob(loc, scale, [3], so)
    ours = torch.autograd.grad((z * z).sum() + lp.sum(), (loc, scale))
    eps = OPS.philox_randn([3, 6, 5], so, torch.float64, torch.device("cpu"))
    d = torch.distributions.Normal(loc, scale)
    z_t = loc + scale * eps
    theirs = torch.autograd.grad((z_t * z_t).sum() + d.log_prob(z_t).sum(), (loc, scale))
    for a, b in zip(ours, theirs):
        assert_close(a, b, 1e-10, 1e-10)


def test_empty_inputs_return_empty(cpu_kernel):
    so = rng.pack_seed_offset(1, 0)
    loc, scale = torch.randn(0, 3, requires_grad=True), (torch.rand(3) + 1).requires_grad_()
    z, lp = OPS.normal_rsample_log_prob(loc, scale, [2], so)
    assert z.shape == lp.shape == (2, 0, 3)
    (z.sum() + lp.sum()).backward()
    assert loc.grad.shape == (0, 3) and torch.equal(scale.grad, torch.zeros(3))
    assert OPS.normal_rsample(torch.randn(4), torch.ones(4), [0], so).shape == (0, 4)
    assert OPS.normal_log_prob(torch.randn(0), torch.randn(0), torch.ones(0)).shape == (0,)
