"""torch.library.opcheck on every op (schema, fake kernel, autograd registration, AOT dispatch)."""
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
