"""``torchdist_fast.Normal``: a drop-in ``torch.distributions.Normal`` backed by the fused ops (its
sampling and log_prob methods are the module functions of ``normal_methods.py``, which ``patch()``
also lends torch's class).

What runs where (decided at call time, per call):

=====================  ==========================================  =================================
                       CUDA tensors                                CPU tensors
=====================  ==========================================  =================================
sample / rsample       Philox Triton ops                           ``cpu_sampling() == "torch"``
                                                                   (default): torch's own code,
                                                                   bit-identical to
                                                                   ``torch.distributions.Normal``;
                                                                   ``"philox"``: the Philox ops
                                                                   (same stream as the GPU)
rsample_and_log_prob   one fused op (``normal_rsample_log_prob``)  "torch": torch's rsample, then
                                                                   torch's log_prob formula;
                                                                   "philox": the fused op
sample_and_log_prob    ``normal_sample`` + ``normal_log_prob``      sample, then ``log_prob``
log_prob               fused op (``normal_log_prob``)              "torch": torch's formula (bit
                                                                   for bit); "philox" or
                                                                   ``cpu_log_prob("stable")``: the
                                                                   fused op's formula
entropy, mean, ...     torch's code                                torch's code
cdf / icdf             ``torch.erfc`` / ``torch.special.ndtri``    the same
validation             ``torch._assert_async`` (no host sync)      torch's checks and messages
=====================  ==========================================  =================================

Under ``torchdist_fast.cpu_kernel("triton")`` CPU tensors take the CUDA column's ops (the Triton
kernels through the interpreter): that is how the GPU path is tested without a GPU.

Other devices (meta, mps, ...), integer/complex parameters, and parameters on two devices fall
back to torch's own code, so they behave (and fail) exactly as ``torch.distributions.Normal``.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all, lazy_property
from torch.types import _Number

from . import normal_methods
from .independent import IndependentNormal
from .routing import TorchNormal

__all__ = ["Normal"]

_SQRT1_2 = math.sqrt(0.5)


def _async_checks(t: torch.Tensor) -> bool:
    """Whether value checks on ``t`` must not synchronize: CUDA tensors, and any traced code.

    Under ``torch.compile`` torch's ``_is_all_true(...)`` is a data-dependent branch (a graph
    break); ``torch._assert_async`` is traced into the graph instead.
    """
    return torch.compiler.is_compiling() or t.device.type == "cuda"


class Normal(TorchNormal):
    r"""Normal (Gaussian) distribution with mean ``loc`` and standard deviation ``scale``.

    A subclass of :class:`torch.distributions.Normal` with the same constructor, so
    ``isinstance``, every ``kl_divergence`` registration, ``Independent``,
    ``TransformedDistribution``, ``expand`` (subclasses too), pickling, ``repr``, the shapes,
    ``arg_constraints``, ``support``, ``mean``/``mode``/``stddev``/``variance``, ``entropy``,
    ``perplexity`` and the exponential-family members behave exactly as in torch.

    Sampling:
      * CUDA tensors draw with the fused Philox Triton ops (``seed, offset`` from the CUDA
        generator, or from ``generator=``).
      * CPU tensors, by default (``torchdist_fast.get_cpu_sampling() == "torch"``), draw exactly
        as ``torch.distributions.Normal``: same generator, bit-identical samples. With
        ``torchdist_fast.cpu_sampling("philox")`` (context manager) or
        ``torchdist_fast.set_cpu_sampling("philox")`` (or ``TORCHDIST_FAST_CPU_SAMPLING=philox``)
        they draw from the Philox reference, the stream the GPU kernels produce for the same
        (seed, offset). The setting is read at every call.
      * ``sample``/``rsample``/``sample_and_log_prob``/``rsample_and_log_prob`` take an optional
        keyword ``generator=`` (a ``torch.Generator`` of the parameters' device).

    ``log_prob``: on CPU by default torch's own formula, bit for bit (values, gradients,
    errors), so a swapped-in ``Normal`` moves no CPU training run. The fused op's formula
    ``y = (x - loc) / scale; -y*y/2 - log(scale) - log(sqrt(2 pi))`` (half types in float32)
    runs on CUDA (in the fused kernel), in the CPU "philox" mode, and under
    ``torchdist_fast.cpu_log_prob("stable")``: it agrees with torch's to float rounding (a few
    ulp) and, never forming ``scale**2`` or ``(x - loc)**2``, stays finite and accurate for tiny
    scales (1e-20 in float32) and far values where torch's under/overflows.
    ``rsample_and_log_prob`` on the Philox path computes ``log_prob`` from the noise:
    ``-eps**2/2 - log(scale) - ...``; on CPU by default it is torch's ``rsample`` and torch's
    formula (the numbers of ``log_prob(rsample())``).

    ``cdf`` is ``erfc(-(x - loc) / (scale sqrt 2)) / 2``: relative error below 1e-13 (float64)
    and 2e-6 (float32) in the lower tail, where torch's ``0.5 * (1 + erf(...))`` rounds to 0
    beyond about -5.9 sigma in float32 and -8.3 sigma in float64 (``torch.special.ndtr`` is no
    better there on CPU, torch 2.13: ``ndtr(-10.)`` is 0 in float64), down to the end of the
    float range (float64: -37.5 sigma). ``cdf``
    of -40 sigma is 3.7e-350, below the smallest float64, so it is 0 in any float64 code;
    ``log_cdf`` (``torch.special.log_ndtr``) gives -804.6. ``icdf`` is
    ``loc + scale * ndtri(p)``, accurate for ``p`` near 0 and 1 where torch's
    ``erfinv(2 p - 1)`` loses the digits of ``p``.

    Validation (``validate_args``, default ``torch.distributions.Distribution._validate_args``):
      * The conditions are torch's: ``loc`` not NaN, ``scale > 0`` (at construction); the value
        given to ``log_prob``/``cdf`` a tensor, broadcastable with ``batch_shape``, not NaN.
      * CPU tensors, eager: torch's code, so the same ``ValueError`` and message, raised at once.
      * Shape and type checks of the value are metadata: a ``ValueError`` at once on every device.
      * CUDA tensors: the value checks are ``torch._assert_async`` (no host-device
        synchronization): a failure is a device-side assert reported by a later CUDA call (a
        ``RuntimeError``, and the CUDA context is unusable afterwards, as with any device-side
        assert). The message names the parameter, its shape and the constraint, without values.
      * Inside ``torch.compile`` (any device) the value checks are also ``torch._assert_async``,
        traced into the graph (no graph break): a failure raises ``RuntimeError`` when the
        compiled code runs. torch.compile itself switches the process-wide default off the
        first time it runs (``Distribution.set_default_validate_args(False)`` in
        ``torch._dynamo``), for torch's class and ours alike: pass ``validate_args=True`` to
        validate in compiled code.
      * ``sample`` with validation off keeps ``torch.normal``'s own check (``scale >= 0``, not
        NaN; ``RuntimeError``), as an asynchronous assert on the Philox path.
    """

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        if isinstance(loc, _Number) and isinstance(scale, _Number):
            batch_shape = torch.Size()
        else:
            batch_shape = self.loc.size()
        # Distribution.__init__ without its checks (they call torch._is_all_true, a host-device
        # sync on CUDA and a graph break under torch.compile); ours follow.
        self._batch_shape = batch_shape
        self._event_shape = torch.Size()
        if validate_args is not None:
            self._validate_args = validate_args
        if self._validate_args:
            self._validate_params()

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Normal, _instance)
        return super().expand(batch_shape, _instance=new)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _tensor_repr(value) -> str:
        """"Tensor of shape (...)" for the asynchronous checks' messages (no values: printing one
        would synchronize); the shape left out under compile, where it may be symbolic."""
        if torch.compiler.is_compiling():
            return type(value).__name__
        return f"{type(value).__name__} of shape {tuple(value.shape)}"

    def _shape_repr(self) -> str:
        """``repr(self)`` with shapes only: printing a value would synchronize."""
        if torch.compiler.is_compiling():  # sizes may be symbolic (dynamic shapes): dynamo cannot format them
            return type(self).__name__
        names = [k for k in self.arg_constraints if k in self.__dict__]
        return f"{type(self).__name__}(" + ", ".join(f"{k}: {self.__dict__[k].size()}" for k in names) + ")"

    def _validate_params(self) -> None:
        """Distribution.__init__'s checks: torch's code on CPU, asynchronous where it must be."""
        for param, constraint in self.arg_constraints.items():
            # constraints.is_dependent, inlined: dynamo refuses to trace that function
            if isinstance(constraint, constraints._Dependent):
                continue
            if param not in self.__dict__ and isinstance(getattr(type(self), param), lazy_property):
                continue
            value = getattr(self, param)
            valid = constraint.check(value)
            if _async_checks(value):
                # under compile a constraint's bounds may be symbolic too: its class name then
                constraint_repr = type(constraint).__name__ if torch.compiler.is_compiling() else repr(constraint)
                torch._assert_async(
                    valid.all(),
                    f"Expected parameter {param} ({self._tensor_repr(value)}) of distribution {self._shape_repr()} "
                    f"to satisfy the constraint {constraint_repr}, "
                    "but found invalid values (checked with torch._assert_async: values not printed)",
                )
            elif not torch._is_all_true(valid):
                raise ValueError(
                    f"Expected parameter {param} "
                    f"({type(value).__name__} of shape {tuple(value.shape)}) "
                    f"of distribution {repr(self)} "
                    f"to satisfy the constraint {repr(constraint)}, "
                    f"but found invalid values:\n{value}"
                )

    def _validate_sample(self, value) -> None:
        if not isinstance(value, torch.Tensor) or not _async_checks(value):
            return super()._validate_sample(value)  # torch's code, messages and exceptions
        # torch's shape checks (metadata only), then the support check without a sync
        event_dim_start = len(value.size()) - len(self._event_shape)
        if value.size()[event_dim_start:] != self._event_shape:
            raise ValueError(
                f"The right-most size of value must match event_shape: {value.size()} vs {self._event_shape}."
            )
        actual_shape = value.size()
        expected_shape = self._batch_shape + self._event_shape
        for i, j in zip(reversed(actual_shape), reversed(expected_shape)):
            if i != 1 and j != 1 and i != j:
                raise ValueError(
                    f"Value is not broadcastable with batch_shape+event_shape: {actual_shape} vs {expected_shape}."
                )
        support = self.support
        torch._assert_async(
            support.check(value).all(),
            f"Expected value argument ({self._tensor_repr(value)}) "
            f"to be within the support ({support!r}) of the distribution {self._shape_repr()}, "
            "but found invalid values (checked with torch._assert_async: values not printed)",
        )

    def to_event(self, reinterpreted_batch_ndims: int = 1):
        """``Independent(self, k)`` as ``torchdist_fast.IndependentNormal``: ``log_prob`` and
        ``entropy`` summed over the k rightmost batch dims inside the kernel."""
        return IndependentNormal(self, reinterpreted_batch_ndims)

    # ------------------------------------------------------------------ sampling and log_prob
    # the module functions of normal_methods.py, shared with torch's class under patch()
    rsample = normal_methods.rsample
    sample = normal_methods.sample
    rsample_and_log_prob = normal_methods.rsample_and_log_prob
    sample_and_log_prob = normal_methods.sample_and_log_prob
    log_prob = normal_methods.log_prob

    # ------------------------------------------------------------------ cdf, icdf (accurate tails on every device)
    def cdf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        # erfc, not torch.special.ndtr: the latter loses the lower tail on CPU (ndtr(-10.) == 0)
        return 0.5 * torch.erfc((value - self.loc) / self.scale * -_SQRT1_2)

    def log_cdf(self, value):
        """log(cdf(value)), finite far into the lower tail (``torch.special.log_ndtr``)."""
        if self._validate_args:
            self._validate_sample(value)
        y = (value - self.loc) / self.scale
        if y.dtype in (torch.float16, torch.bfloat16):  # log_ndtr has no half kernels
            return torch.special.log_ndtr(y.float()).to(y.dtype)
        return torch.special.log_ndtr(y)

    def icdf(self, value):
        if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
            z = torch.special.ndtri(value.float()).to(value.dtype)  # ndtri has no half kernels
        else:
            z = torch.special.ndtri(value)
        return self.loc + self.scale * z


def __getattr__(name: str):
    """``torchdist_fast.distribution.patch`` / ``is_patched``: the path the README documented before
    ``patch()`` moved to ``patching.py`` (the top of the package, which imports this module)."""
    if name in ("patch", "is_patched"):
        from . import patching

        return getattr(patching, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
