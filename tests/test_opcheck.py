"""torch.library.opcheck on every op (schema, fake kernel, autograd registration, AOT dispatch)."""
import os

import pytest
import torch

import torchdist_fast  # noqa: F401
from torchdist_fast import rng

OPS = torch.ops.torchdist_fast


def _cases():
    so = rng.pack_seed_offset(2**63 + 3, 2**32 + 1)
    loc = torch.randn(3, 4, requires_grad=True)
    scale = (torch.rand(4) + 0.5).requires_grad_()
    value = torch.randn(2, 3, 4, requires_grad=True)
    return [
        (OPS.philox_randn, ([5, 3], so, torch.float32, torch.device("cpu"))),
        (OPS.philox_randn, ([7], so, torch.float64, torch.device("cpu"))),
        (OPS.normal_rsample, (loc, scale, [2], so)),
        (OPS.normal_sample, (loc.detach(), scale.detach(), [2], so)),
        (OPS.normal_rsample_log_prob, (loc, scale, [2], so)),
        (OPS.normal_log_prob, (value, loc, scale)),
        (OPS.normal_rsample_backward, (torch.randn(2, 3, 4), torch.randn(2, 3, 4), scale.detach(), so)),
        (OPS.normal_rsample_backward, (torch.randn(2, 3, 4), None, scale.detach(), so)),
        (OPS.normal_log_prob_backward, (torch.randn(2, 3, 4), value.detach(), loc.detach(), scale.detach(), [True, False, True])),
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_opcheck(case, cpu_kernel):
    op, args = _cases()[case]
    torch.library.opcheck(op, args)


def test_opcheck_draw_seed_offset():
    # the one op with state: it advances the generator, so opcheck's repeated-call comparison
    # does not apply; schema, fake kernel and the nondeterministic_seeded tag are checked
    torch.library.opcheck(OPS.draw_seed_offset, ("cpu", 8), test_utils=("test_schema", "test_faketensor"))
    assert torch.Tag.nondeterministic_seeded in OPS.draw_seed_offset.default.tags


def _family_cases():
    """The KL, event-sum and TanhNormal ops (their own opchecks are in test_kl.py, test_independent.py
    and test_tanh_normal.py)."""
    so = rng.pack_seed_offset(2**63 + 3, 2**32 + 1)
    loc = torch.randn(3, 4, requires_grad=True)
    scale = (torch.rand(3, 4) + 0.5).requires_grad_()
    row = (torch.rand(4) + 0.5).requires_grad_()
    return [
        (OPS.normal_kl, (loc, scale, None, None)),
        (OPS.normal_kl, (loc, scale, 0.5 * loc.detach(), row)),
        (OPS.normal_log_prob_sum, (torch.randn(2, 3, 4, requires_grad=True), loc, row, 1)),
        (OPS.normal_entropy_sum, (scale, 1)),
        (OPS.tanh_normal_rsample, (loc, scale, [2], 1, -1.0, 2.0, so, True)),
        (OPS.normal_rsample_log_prob_sum, (loc, row, [2], 1, so)),
    ]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU kernels run under TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", range(len(_cases()) + len(_family_cases())))
def test_opcheck_with_the_kernels_in_compiled_graphs(case, monkeypatch):
    """opcheck, and its AOT-dispatch check with static shapes, with each op replaced by its kernel
    launches (ops.inductor.expose_kernels: what CUDA ops get under torch.compile)."""
    from torch.testing._internal.optests import aot_autograd_check

    from torchdist_fast.ops import inductor

    replaced = []
    traceable = inductor.kernels_traceable
    monkeypatch.setattr(inductor, "kernels_traceable", lambda *a: replaced.append(traceable(*a)) or replaced[-1])
    op, args = (_cases() + _family_cases())[case]
    with torchdist_fast.cpu_kernel("triton"), inductor.kernels_in_cpu_graphs():
        torch.library.opcheck(op, args)
        grads = any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        aot_autograd_check(op, args, {}, dynamic=False, check_gradients=grads)
    assert any(replaced), "the op was never replaced by its kernels"
