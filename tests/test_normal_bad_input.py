"""Bad input battery: each case runs against torch.distributions.Normal and torchdist_fast.Normal
(in every CPU mode). Where torch raises, ours raises the same exception type (the case names it,
and the test checks torch raises it too); where torch accepts the input, ours gives torch's
result: deterministic outputs to float rounding, random ones bit for bit in the default mode and
with the same shape, dtype, gradient flag and non-finite pattern in the Philox modes."""
import math

import numpy as np
import pytest
import torch

from normal_modes import default_validation  # noqa: F401  (autouse fixture)
from normal_modes import MODES, sampling_mode, tolerance
from torchdist_fast import Normal
from torchdist_fast.routing import TorchNormal

NAN, INF = math.nan, math.inf


def _p(*shape, seed=0):
    """Fresh (loc, scale) with scale > 0."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.rand(shape, generator=g) + 0.5


def _x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _d(N, *shape, validate_args=True):
    return N(*_p(*shape), validate_args=validate_args)


class Random:
    """Marks an output drawn at random."""

    def __init__(self, value):
        self.value = value


def _outputs(d, value=None, cdf=True, rsample=None, sample=None):
    """The outputs of ``d`` a case compares: log_prob (and cdf) of ``value``, samples."""
    out = {}
    if value is not None:
        out["log_prob"] = d.log_prob(value)
        if cdf:
            out["cdf"] = d.cdf(value)
    if rsample is not None:
        out["rsample"] = Random(d.rsample(rsample))
    if sample is not None:
        out["sample"] = Random(d.sample(sample))
    return out


def _half(*shape):
    return _x(*shape).half()


# name -> (function of the class returning a dict of outputs, expected exception type or None)
CASES = {
    # ---- wrong types for the parameters
    "loc_str": (lambda N: N("0", 1.0), ValueError),
    "scale_none": (lambda N: N(0.0, None), ValueError),
    "loc_list": (lambda N: N([0.0, 1.0], 1.0), ValueError),
    "loc_numpy": (lambda N: N(np.zeros(3), 1.0), ValueError),
    "scale_complex": (lambda N: N(torch.zeros(2), torch.ones(2, dtype=torch.complex64), validate_args=True),
                      NotImplementedError),
    # ---- invalid parameter values (validation on)
    "scale_zero": (lambda N: N(0.0, 0.0, validate_args=True), ValueError),
    "scale_negative": (lambda N: N(0.0, -1.0, validate_args=True), ValueError),
    "scale_nan": (lambda N: N(0.0, NAN, validate_args=True), ValueError),
    "loc_nan": (lambda N: N(NAN, 1.0, validate_args=True), ValueError),
    "scale_tensor_one_zero": (lambda N: N(_x(4), torch.tensor([1.0, 2.0, 0.0, 3.0]), validate_args=True), ValueError),
    "scale_negative_requires_grad": (
        lambda N: N(_x(3).requires_grad_(), -torch.rand(3).add(0.1).requires_grad_(), validate_args=True), ValueError),
    "scale_negative_inf": (lambda N: N(_x(2), torch.tensor([1.0, -INF]), validate_args=True), ValueError),
    "validate_args_truthy_string": (lambda N: N(0.0, -1.0, validate_args="yes"), ValueError),
    # ---- parameter values torch accepts: the same results
    "loc_inf_accepted": (lambda N: _outputs(N(torch.tensor([INF, -INF]), 1.0), _x(2), sample=(3,)), None),
    "scale_inf_accepted": (lambda N: _outputs(N(0.0, torch.tensor([INF, 1.0])), _x(2), rsample=(3,)), None),
    "scale_zero_unvalidated": (
        lambda N: _outputs(N(_x(3, seed=5), 0.0, validate_args=False), _x(3), rsample=(2,)), None),
    "scale_negative_unvalidated_rsample": (lambda N: _outputs(N(_x(3), -1.0, validate_args=False), rsample=(2,)), None),
    "scale_negative_unvalidated_sample": (lambda N: N(_x(3), -1.0, validate_args=False).sample((2,)), RuntimeError),
    "scale_nan_unvalidated_sample": (lambda N: N(_x(3), NAN, validate_args=False).sample(), RuntimeError),
    "empty_params": (
        lambda N: _outputs(N(torch.zeros(0), torch.ones(0)), torch.zeros(2, 0), rsample=(3,), sample=()), None),
    "empty_sample_shape": (lambda N: _outputs(_d(N, 3), rsample=(0,), sample=(2, 0)), None),
    "zero_dim_loc_with_vector_scale": (
        lambda N: _outputs(N(torch.tensor(0.5), torch.rand(3) + 0.5), _x(3), rsample=(2,)), None),
    "mixed_float_dtypes": (
        lambda N: _outputs(N(_x(3).double(), torch.rand(3) + 0.5), _x(3), rsample=(2,), sample=(2,)), None),
    "half_params": (lambda N: _outputs(N(_half(3), (torch.rand(3) + 0.5).half()), _half(3), rsample=(4,)), None),
    # ---- integer / bool tensors
    "int_params_rsample": (lambda N: N(torch.tensor([0, 1]), torch.tensor([1, 2])).rsample(), NotImplementedError),
    "int_params_sample": (lambda N: N(torch.tensor([0, 1]), torch.tensor([1, 2])).sample((3,)), NotImplementedError),
    "int_params_log_prob": (lambda N: _outputs(N(torch.tensor([0, 1]), torch.tensor([1, 2])), _x(2)), None),
    "bool_params_rsample": (lambda N: N(torch.tensor([True]), torch.tensor([True])).rsample(), NotImplementedError),
    "int_value": (lambda N: _outputs(_d(N, 3), torch.tensor([0, 1, -2])), None),
    "bool_value": (lambda N: _d(N, 3).log_prob(torch.tensor([True, False, True])), RuntimeError),
    "complex_value": (
        lambda N: _outputs(_d(N, 2, validate_args=False), torch.randn(2, dtype=torch.complex64), cdf=False), None),
    # ---- the value given to log_prob / cdf / icdf
    "value_wrong_shape": (lambda N: _d(N, 3).log_prob(_x(4)), ValueError),
    "value_wrong_shape_unvalidated": (lambda N: _d(N, 3, validate_args=False).log_prob(_x(4)), RuntimeError),
    "value_nan": (lambda N: _d(N, 3).log_prob(torch.tensor([0.0, NAN, 1.0])), ValueError),
    "value_nan_unvalidated": (lambda N: _outputs(_d(N, 3, validate_args=False), torch.tensor([0.0, NAN, 1.0])), None),
    "value_inf": (lambda N: _outputs(_d(N, 3), torch.tensor([INF, -INF, 1.0])), None),
    "value_python_float": (lambda N: _d(N, 3).log_prob(0.5), ValueError),
    "value_python_float_unvalidated": (lambda N: _outputs(_d(N, 3, validate_args=False), 0.5), None),
    "value_str_unvalidated": (lambda N: _d(N, 3, validate_args=False).log_prob("a"), TypeError),
    "value_other_device": (lambda N: _d(N, 3).log_prob(torch.zeros(3, device="meta")), RuntimeError),
    "value_other_device_unvalidated": (
        lambda N: _d(N, 3, validate_args=False).log_prob(torch.zeros(3, device="meta")), RuntimeError),
    "value_float64_for_float32": (lambda N: _outputs(_d(N, 2, 3), _x(4, 2, 3).double()), None),
    "value_float64_zero_dim_for_float32": (lambda N: _outputs(_d(N, 2, 3), torch.tensor(0.5, dtype=torch.float64)), None),
    "cdf_value_nan": (lambda N: _d(N, 3).cdf(torch.tensor([NAN, 0.0, 1.0])), ValueError),
    "cdf_value_wrong_shape": (lambda N: _d(N, 3).cdf(_x(2, 2)), ValueError),
    "icdf_out_of_range": (lambda N: {"icdf": _d(N, 4).icdf(torch.tensor([-0.5, 1.5, 0.0, 1.0]))}, None),
    "icdf_python_float": (lambda N: _d(N, 3).icdf(0.3), TypeError),
    # ---- devices and broadcasting of the parameters
    "mixed_devices": (lambda N: N(torch.zeros(3), torch.ones(3, device="meta"), validate_args=True), RuntimeError),
    "mixed_devices_unvalidated_rsample": (
        lambda N: N(torch.zeros(3), torch.ones(3, device="meta"), validate_args=False).rsample(), RuntimeError),
    "params_not_broadcastable": (lambda N: N(torch.zeros(2, 3), torch.ones(4)), RuntimeError),
    "expand_to_bad_shape": (lambda N: _d(N, 3).expand((4,)), RuntimeError),
    # ---- sample shapes
    "sample_shape_int": (lambda N: _d(N, 3).sample(5), TypeError),
    "sample_shape_float": (lambda N: _d(N, 3).rsample((2.5,)), TypeError),
    "sample_shape_none": (lambda N: _d(N, 3).rsample(None), TypeError),
    "sample_shape_negative": (lambda N: _d(N, 3).rsample((-1,)), RuntimeError),
    "sample_shape_negative_sample": (lambda N: _d(N, 3).sample((2, -3)), RuntimeError),
    "sample_shape_too_big_for_memory": (lambda N: _d(N, 3).rsample((2**40,)), RuntimeError),
    "sample_shape_too_big_for_memory_sample": (lambda N: _d(N, 3).sample((2**38, 4)), RuntimeError),
    "sample_shape_numel_overflow": (lambda N: _d(N, 3).rsample((2**40, 2**40)), RuntimeError),
}

# Additions of ours (torch.distributions.Normal has no such argument or method): the expected
# exception type is torch's for the same mistake in torch.Tensor.normal_ / torch.Size.
OURS_ONLY = {
    "generator_wrong_type": (lambda: _d(Normal, 3).rsample((2,), generator="seed"), TypeError),
    "generator_wrong_type_sample": (lambda: _d(Normal, 3).sample((2,), generator=1234), TypeError),
    "generator_positional": (lambda: _d(Normal, 3).rsample((2,), torch.Generator()), TypeError),
    "rsample_and_log_prob_float_shape": (lambda: _d(Normal, 3).rsample_and_log_prob((2.5,)), TypeError),
    "rsample_and_log_prob_negative_shape": (lambda: _d(Normal, 3).rsample_and_log_prob((-2,)), RuntimeError),
    "sample_and_log_prob_too_big": (lambda: _d(Normal, 3).sample_and_log_prob((2**40,)), RuntimeError),
    "patch_not_a_module": (lambda: __import__("torchdist_fast").patch(3.5).__enter__(), TypeError),
}


def _run(fn):
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001  (the exception is the result under test)
        return None, exc


def _compare(ours, ref, mode):
    if isinstance(ref, Random):
        assert isinstance(ours, Random)
        o, r = ours.value, ref.value
        if mode == "torch":
            torch.testing.assert_close(o, r, rtol=0, atol=0, equal_nan=True)
        else:
            assert (o.shape, o.dtype, o.device, o.requires_grad) == (r.shape, r.dtype, r.device, r.requires_grad)
            # other noise: where a sample is +-inf follows from the parameters, its sign from the noise
            assert torch.equal(torch.isnan(o), torch.isnan(r)) and torch.equal(torch.isinf(o), torch.isinf(r))
        return
    if isinstance(ref, dict):
        assert isinstance(ours, dict) and ours.keys() == ref.keys()
        for key in ref:
            _compare(ours[key], ref[key], mode)
        return
    assert isinstance(ours, torch.Tensor) and isinstance(ref, torch.Tensor)
    assert (ours.shape, ours.dtype, ours.requires_grad) == (ref.shape, ref.dtype, ref.requires_grad)
    atol, rtol = tolerance(torch.float32 if ref.dtype in (torch.float64, torch.complex64) else ref.dtype)
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol, equal_nan=True)


# the Triton interpreter runs kernels in numpy, which warns where float math gives inf/nan
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_bad_input_matches_torch(case, mode):
    fn, expected = CASES[case]
    torch.manual_seed(1234)
    ref, ref_exc = _run(lambda: fn(TorchNormal))
    if expected is None:
        assert ref_exc is None, f"the case assumes torch accepts it, but torch raised {ref_exc!r}"
    else:
        assert type(ref_exc) is expected, f"the case assumes torch raises {expected.__name__}, got {ref_exc!r}"
    with sampling_mode(mode):
        torch.manual_seed(1234)
        ours, exc = _run(lambda: fn(Normal))
    if expected is None:
        assert exc is None, f"torch accepts this input, ours raised {exc!r}"
        _compare(ours, ref, mode)
    else:
        assert type(exc) is expected, f"expected {expected.__name__} as torch, got {exc!r}"
        assert str(exc), "the error needs a message"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", OURS_ONLY)
def test_bad_input_of_our_additions(case, mode):
    fn, expected = OURS_ONLY[case]
    with sampling_mode(mode):
        with pytest.raises(expected) as info:
            fn()
    assert type(info.value) is expected and str(info.value)


def test_battery_size():
    assert len(CASES) + len(OURS_ONLY) >= 30
