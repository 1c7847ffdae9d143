"""Bad input to randn and the ops: clear errors of torch's types, never a crash or silent NaN."""
import pytest
import torch

import torchdist_fast
from torchdist_fast import rng

OPS = torch.ops.torchdist_fast
SO = rng.pack_seed_offset(1, 2)


def _loc_scale(shape=(3,)):
    return torch.randn(shape), torch.rand(shape) + 0.5


RANDN_CASES = [
    ("negative size", lambda: torchdist_fast.randn(-1), RuntimeError, "negative dimension"),
    ("negative size in tuple", lambda: torchdist_fast.randn((2, -3)), RuntimeError, "negative dimension"),
    ("float size", lambda: torchdist_fast.randn(2.5), TypeError, "tuple of ints"),
    ("string size", lambda: torchdist_fast.randn("3"), TypeError, "tuple of ints"),
    ("bool size", lambda: torchdist_fast.randn(True), TypeError, "tuple of ints"),
    ("integer dtype", lambda: torchdist_fast.randn(3, dtype=torch.int64), RuntimeError, "unsupported dtype"),
    ("complex dtype", lambda: torchdist_fast.randn(3, dtype=torch.complex64), RuntimeError, "unsupported dtype"),
    ("dtype not a dtype", lambda: torchdist_fast.randn(3, dtype="float32"), TypeError, "torch.dtype"),
    ("generator of another device", lambda: torchdist_fast.randn(3, generator=torch.Generator(), device="meta"),
     RuntimeError, "device type for generator"),
    ("generator not a Generator", lambda: torchdist_fast.randn(3, generator=7), TypeError, "Generator"),
]


@pytest.mark.parametrize("name,call,exc,match", RANDN_CASES, ids=[c[0] for c in RANDN_CASES])
def test_randn_bad_input(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_torch_randn_raises_the_same_types():
    # the types above are torch's own for the same mistakes
    with pytest.raises(RuntimeError):
        torch.randn(-1)
    with pytest.raises(TypeError):
        torch.randn(2.5)
    with pytest.raises(RuntimeError):
        torch.randn(3, dtype=torch.int64)


OP_CASES = [
    ("mismatched shapes", lambda: OPS.normal_rsample(torch.randn(3), torch.ones(4), [], SO), RuntimeError, "broadcast|shape"),
    ("mismatched log_prob shapes", lambda: OPS.normal_log_prob(torch.randn(2), torch.randn(3), torch.ones(3)), RuntimeError, "broadcast|shape"),
    ("integer loc", lambda: OPS.normal_rsample(torch.arange(3), torch.ones(3, dtype=torch.int64), [], SO), RuntimeError, "floating dtype"),
    ("mixed float dtypes", lambda: OPS.normal_rsample(torch.randn(3), torch.ones(3, dtype=torch.float64), [], SO), RuntimeError, "one dtype"),
    ("mixed devices", lambda: OPS.normal_log_prob(torch.randn(3), torch.randn(3, device="meta"), torch.ones(3)), RuntimeError, "same device"),
    ("negative sample_shape", lambda: OPS.normal_rsample(*_loc_scale(), [-2], SO), RuntimeError, "negative dimension"),
    ("seed_offset wrong shape", lambda: OPS.normal_rsample(*_loc_scale(), [], torch.tensor([1, 2, 3])), ValueError, "seed_offset"),
    ("seed_offset wrong dtype", lambda: OPS.normal_rsample(*_loc_scale(), [], torch.tensor([1.0, 2.0])), ValueError, "seed_offset"),
    ("philox_randn integer dtype", lambda: OPS.philox_randn([3], SO, torch.int32, torch.device("cpu")), RuntimeError, "unsupported dtype"),
]


@pytest.mark.parametrize("name,call,exc,match", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_op_bad_input(name, call, exc, match, cpu_kernel):
    with pytest.raises(exc, match=match):
        call()


def test_non_contiguous_and_expanded_inputs_match_contiguous(cpu_kernel):
    base = torch.randn(6, 4)
    loc = base.t()  # non-contiguous (4, 6)
    scale = (torch.rand(6) + 0.5).expand(4, 6)  # zero stride
    value = torch.randn(8, 4, 6)[:, :, :]
    got = OPS.normal_rsample_log_prob(loc, scale, [2], SO)
    expected = OPS.normal_rsample_log_prob(loc.contiguous(), scale.contiguous(), [2], SO)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(OPS.normal_log_prob(value[::2], loc, scale), OPS.normal_log_prob(value[::2].contiguous(), loc.contiguous(), scale.contiguous()))


def test_nan_and_nonpositive_scale_propagate_like_torch(cpu_kernel):
    """The ops do not validate values (the class does, like torch): they compute what torch computes."""
    loc = torch.tensor([0.0, float("nan"), 1.0, 1.0])
    scale = torch.tensor([1.0, 1.0, 0.0, -1.0])
    value = torch.tensor([0.5, 0.5, 1.0, 2.0])
    ours = OPS.normal_log_prob(value, loc, scale)
    theirs = torch.distributions.Normal(loc, scale, validate_args=False).log_prob(value)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
