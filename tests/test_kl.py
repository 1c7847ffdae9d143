"""The fused KL between Normals: the op (reference and Triton kernel, forward and backward, every
operand kind), opcheck, kl_divergence dispatch (CPU default = torch's bit for bit), numerics,
memory, launches, patch() and torch.compile."""
import math

import pytest
import torch
from torch.distributions import kl_divergence

import torchdist_fast
from helpers import TOLERANCES, assert_close
from test_memory_and_launches import saved_bytes_beyond_inputs
from torchdist_fast import Normal
from torchdist_fast.reference import normal_kl as reference_normal_kl
from torchdist_fast.reference import normal_kl_backward as reference_normal_kl_backward

OPS = torch.ops.torchdist_fast
TorchNormal = torchdist_fast.routing.TorchNormal

# q's parameters: absent (the standard normal), a zero-dim scalar, a row broadcast, full size;
# p's: full size or a row (then q full) so that every operand kind meets every other
CASES = {
    "p_full-q_standard": ((4, 6), (4, 6), None, None),
    "p_full-q_scalar": ((4, 6), (4, 6), (), ()),
    "p_full-q_row": ((4, 6), (4, 6), (6,), (6,)),
    "p_full-q_full": ((4, 6), (4, 6), (4, 6), (4, 6)),
    "p_row-q_full": ((6,), (4, 1), (4, 6), (4, 6)),
    "p_scalar_loc-q_mixed": ((), (5, 3), None, (3,)),
}


def make(case, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(CASES[case]):
        if shape is None:
            out.append(None)
            continue
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if i % 2:  # a scale
            x = x.abs() + 0.3
        out.append(x.to(dtype).requires_grad_(requires_grad))
    return out


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_forward_and_backward(triton_device, poisoned_empty, case, dtype, atol, rtol):
    params = make(case, dtype, seed=hash(case) % 1000)  # the reference's inputs, on the CPU
    on_device = [p.to(triton_device).requires_grad_() if p is not None else None for p in params]
    present = [p for p in on_device if p is not None]
    out = OPS.normal_kl(*on_device)
    assert out.device.type == triton_device.type
    ref = reference_normal_kl(*params)
    assert_close(out, ref, atol, rtol)
    grad = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(out, present, grad.to(triton_device))
    ref_grads = [g for g in reference_normal_kl_backward(grad, *params, [True] * 4) if g is not None]
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 4 * atol, 4 * rtol)


@pytest.mark.parametrize("mask", [[True, False, False, False], [False, True, False, True], [False, False, True, False]])
def test_backward_writes_only_what_is_asked(triton_device, poisoned_empty, mask):
    params = make("p_full-q_row", torch.float32, seed=3)
    grad = torch.randn(4, 6)
    got = OPS.normal_kl_backward(grad.to(triton_device), *[p.to(triton_device) for p in params], mask)
    ref = reference_normal_kl_backward(grad, *params, mask)
    for g, r, need, p in zip(got, ref, mask, params):
        assert g.device.type == triton_device.type
        if need:
            assert g.shape == p.shape
            assert_close(g, r, 1e-5, 1e-5)
        else:
            assert g.numel() == 0


def test_reference_is_torchs_formula_in_float64():
    pl, ps, ql, qs = make("p_full-q_row", torch.float64, seed=5)
    expected = torch.distributions.kl._kl_normal_normal(TorchNormal(pl, ps), TorchNormal(ql, qs))
    assert_close(reference_normal_kl(pl, ps, ql, qs), expected, 1e-13, 1e-13)
    expected_std = torch.distributions.kl._kl_normal_normal(TorchNormal(pl, ps), TorchNormal(0.0, 1.0))
    assert_close(reference_normal_kl(pl, ps, None, None), expected_std, 1e-13, 1e-13)


def test_gradcheck(cpu_kernel):
    params = make("p_row-q_full", torch.float64, seed=7, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *p: OPS.normal_kl(*p), params)
    std = make("p_full-q_standard", torch.float64, seed=8, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: OPS.normal_kl(a, b, None, None), std[:2])


def test_opcheck(cpu_kernel):
    for case in ("p_full-q_standard", "p_full-q_row", "p_scalar_loc-q_mixed"):
        params = make(case, torch.float32, seed=1, requires_grad=True)
        torch.library.opcheck(OPS.normal_kl, tuple(params))
        grad = torch.randn(OPS.normal_kl(*params).shape)
        torch.library.opcheck(OPS.normal_kl_backward, (grad, *[p.detach() if p is not None else None for p in params], [True] * 4))


@pytest.mark.parametrize("bad, exc, match", [
    ((None, None, None, None), RuntimeError, "at least one parameter"),
    ((torch.zeros(2), torch.ones(2, dtype=torch.float64), None, None), RuntimeError, "one dtype"),
    ((torch.zeros(2), torch.ones(3), None, None), RuntimeError, "shape|size"),
    ((torch.zeros(2, dtype=torch.int64), None, None, None), RuntimeError, "floating dtype"),
    ((torch.zeros(2), torch.ones(2, device="meta"), None, None), RuntimeError, "same device"),
])
def test_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        OPS.normal_kl(*bad)


def test_empty(cpu_kernel):
    out = OPS.normal_kl(torch.zeros(0, 3), torch.ones(0, 3), None, torch.ones(3))
    assert out.shape == (0, 3)


# ---------------------------------------------------------------- kl_divergence dispatch
PAIRS = {"ours-ours": (Normal, Normal), "ours-torch": (Normal, TorchNormal), "torch-ours": (TorchNormal, Normal)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("prior", ["numbers", "row", "full"])
def test_cpu_default_is_torchs_kl_bit_for_bit(dtype, pair, prior):
    pl, ps, _, _ = make("p_full-q_full", dtype, seed=2, requires_grad=True)
    q_params = {"numbers": (0.0, 1.0), "row": (torch.zeros(6, dtype=dtype), torch.ones(6, dtype=dtype)),
                "full": tuple(make("p_full-q_full", dtype, seed=4)[2:])}[prior]
    P, Q = PAIRS[pair]
    kl = kl_divergence(P(pl, ps), Q(*q_params))
    ref = kl_divergence(TorchNormal(pl, ps), TorchNormal(*q_params))
    assert kl.dtype == ref.dtype and torch.equal(kl, ref)
    grads = torch.autograd.grad(kl.float().sum(), (pl, ps))
    ref_grads = torch.autograd.grad(ref.float().sum(), (pl, ps))
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


STABLE_MODES = ["cpu_log_prob_stable", "philox"] + (["triton"] if "triton" in __import__("normal_modes").MODES else [])


def stable_mode(mode):
    from normal_modes import sampling_mode

    return torchdist_fast.cpu_log_prob("stable") if mode == "cpu_log_prob_stable" else sampling_mode(mode)


@pytest.mark.parametrize("mode", STABLE_MODES)
@pytest.mark.parametrize("pair", PAIRS)
def test_fused_path_matches_torch_and_dispatches_both_orders(mode, pair):
    pl, ps, ql, qs = make("p_full-q_row", torch.float32, seed=6, requires_grad=True)
    P, Q = PAIRS[pair]
    with stable_mode(mode):
        for p, q, tp, tq in [(P(pl, ps), Q(ql, qs), TorchNormal(pl, ps), TorchNormal(ql, qs)),
                             (Q(ql, qs), P(pl, ps), TorchNormal(ql, qs), TorchNormal(pl, ps)),
                             (P(pl, ps), Q(0.0, 1.0), TorchNormal(pl, ps), TorchNormal(0.0, 1.0))]:
            kl = kl_divergence(p, q)
            ref = kl_divergence(tp, tq)
            assert_close(kl, ref, 1e-5, 1e-5)
            grads = torch.autograd.grad(kl.sum(), (pl, ps, ql, qs), allow_unused=True)
            ref_grads = torch.autograd.grad(ref.sum(), (pl, ps, ql, qs), allow_unused=True)
            for g, r in zip(grads, ref_grads):
                assert (g is None) == (r is None)
                if g is not None:
                    assert_close(g, r, 1e-4, 1e-4)


@pytest.mark.parametrize("mode", STABLE_MODES)
def test_fused_kl_stays_finite_where_torchs_underflows(mode):
    # torch: var_ratio = (1e-30 / 1)**2 underflows to 0 in float32, and log(0) = -inf gives KL = inf
    p_scale = torch.tensor([1e-30, 1e-3, 1.0])
    with stable_mode(mode):
        kl = kl_divergence(Normal(torch.zeros(3), p_scale), Normal(0.0, 1.0))
    assert torch.isinf(kl_divergence(TorchNormal(torch.zeros(3), p_scale), TorchNormal(0.0, 1.0))[0])
    expected = torch.tensor([0.5 * (s * s - 1) - math.log(s) for s in (1e-30, 1e-3, 1.0)], dtype=torch.float64)
    assert_close(kl.double(), expected, 1e-6, 1e-6)


def test_standard_prior_is_passed_as_absent(monkeypatch):
    seen = []
    real = OPS.normal_kl

    class Spy:
        def __call__(self, *args):
            seen.append(args)
            return real(*args)

    monkeypatch.setattr(torch.ops.torchdist_fast, "normal_kl", Spy())
    pl, ps, _, _ = make("p_full-q_full", torch.float32)
    with torchdist_fast.cpu_log_prob("stable"):
        kl_divergence(Normal(pl, ps), TorchNormal(0.0, 1.0))
        kl_divergence(Normal(pl, ps), Normal(0.0, 2.0))
    assert seen[0][2] is None and seen[0][3] is None
    assert seen[1][2] is None and seen[1][3].shape == () and seen[1][3].item() == 2.0


def test_fused_kl_saves_nothing_beyond_its_inputs(cpu_kernel):
    n = 4096

    def fused(pl, ps):
        return OPS.normal_kl(pl, ps, None, None)

    def eager(pl, ps):
        return torch.distributions.kl._kl_normal_normal(TorchNormal(pl, ps), TorchNormal(0.0, 1.0))

    params = (torch.randn(n, requires_grad=True), (torch.rand(n) + 0.5).requires_grad_())
    assert saved_bytes_beyond_inputs(fused, params) == 0
    assert saved_bytes_beyond_inputs(eager, params) >= 8 * n  # torch keeps var_ratio and t1


@pytest.mark.interpreter
def test_one_launch_forward_one_backward(triton_device, monkeypatch):
    from torchdist_fast.triton_kernels import normal_kl

    counts = {}
    for name in ("_normal_kl_fwd_kernel", "_normal_kl_bwd_kernel"):
        kernel = getattr(normal_kl, name)

        class Counted:
            def __getitem__(self, grid, name=name, kernel=kernel):
                counts[name] = counts.get(name, 0) + 1
                return kernel[grid]

        monkeypatch.setattr(normal_kl, name, Counted())
    pl = torch.randn(64, 32, device=triton_device, requires_grad=True)
    ps = (torch.rand(64, 32, device=triton_device) + 0.5).requires_grad_()
    OPS.normal_kl(pl, ps, None, None).sum().backward()
    assert counts == {"_normal_kl_fwd_kernel": 1, "_normal_kl_bwd_kernel": 1}


def test_patch_routes_torchs_pair_and_restores():
    pl, ps, ql, qs = make("p_full-q_row", torch.float32, seed=9)
    registry = torch.distributions.kl._KL_REGISTRY
    before = registry[(TorchNormal, TorchNormal)]
    with torchdist_fast.cpu_log_prob("stable"):
        outside = kl_divergence(TorchNormal(pl, ps), TorchNormal(ql, qs))
        with torchdist_fast.patch():
            inside = kl_divergence(TorchNormal(pl, ps), TorchNormal(ql, qs))
            assert registry[(TorchNormal, TorchNormal)] is torchdist_fast.kl.kl_normal_normal
        ours = kl_divergence(Normal(pl, ps), Normal(ql, qs))
    assert registry[(TorchNormal, TorchNormal)] is before
    assert torch.equal(inside, ours) and not torch.equal(inside, outside)
    assert torch.equal(kl_divergence(TorchNormal(pl, ps), TorchNormal(ql, qs)), outside)


def test_compile_fullgraph(monkeypatch):
    import torch._dynamo

    pl, ps = torch.randn(8, 4, requires_grad=True), (torch.rand(8, 4) + 0.5).requires_grad_()

    def step(pl, ps):
        return kl_divergence(Normal(pl, ps, validate_args=False), Normal(0.0, 1.0, validate_args=False)).sum()

    torch._dynamo.reset()
    with torchdist_fast.cpu_log_prob("stable"), torch._dynamo.config.patch(error_on_recompile=True):
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        for _ in range(2):
            loss = compiled(pl, ps)
            g = torch.autograd.grad(loss, (pl, ps))
        eager = step(pl, ps)
        g_eager = torch.autograd.grad(eager, (pl, ps))
    assert_close(loss, eager, 1e-6, 1e-6)
    for a, b in zip(g, g_eager):
        assert_close(a, b, 1e-6, 1e-6)


@pytest.mark.gpu
def test_cuda_kl_matches_torch_without_host_sync():
    pl = torch.randn(64, 8, device="cuda", requires_grad=True)
    ps = (torch.rand(64, 8, device="cuda") + 0.5).requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kl = kl_divergence(Normal(pl, ps, validate_args=False), Normal(0.0, 1.0, validate_args=False))
        kl2 = kl_divergence(Normal(pl, ps, validate_args=False), Normal(0.5, 2.0, validate_args=False))
        grads = torch.autograd.grad((kl + kl2).sum(), (pl, ps))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    ref = kl_divergence(TorchNormal(pl, ps), TorchNormal(0.0, 1.0)) + kl_divergence(TorchNormal(pl, ps), TorchNormal(0.5, 2.0))
    ref_grads = torch.autograd.grad(ref.sum(), (pl, ps))
    assert_close(kl + kl2, ref, 1e-5, 1e-5)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 1e-5, 1e-5)
