"""``torchdist_fast.Normal``: a drop-in ``torch.distributions.Normal`` backed by the fused ops,
and ``torchdist_fast.patch()``, which swaps it in for third-party code inside a scope.

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

import contextlib
import math
import threading

import torch
from torch.distributions import Independent, constraints
from torch.distributions.utils import broadcast_all, lazy_property
from torch.types import _Number

from . import eager, ops
from .backend import get_cpu_log_prob, get_cpu_sampling, uses_gpu_kernels
from .functional import draw_seed_offset

__all__ = ["Normal", "patch", "is_patched"]

# torch's class, captured at import (before any patch() can rebind the name)
_TorchNormal = torch.distributions.normal.Normal
_FLOAT_DTYPES = ops.FLOAT_DTYPES
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
_SQRT1_2 = math.sqrt(0.5)


def _async_checks(t: torch.Tensor) -> bool:
    """Whether value checks on ``t`` must not synchronize: CUDA tensors, and any traced code.

    Under ``torch.compile`` torch's ``_is_all_true(...)`` is a data-dependent branch (a graph
    break); ``torch._assert_async`` is traced into the graph instead.
    """
    return torch.compiler.is_compiling() or t.device.type == "cuda"


def _promote_float(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types`` for two float dtypes (in plain Python: dynamo cannot trace
    dtype-valued torch functions such as ``torch.result_type``)."""
    if a == b:
        return a
    if a.itemsize == b.itemsize:  # float16 with bfloat16
        return torch.float32
    return a if a.itemsize > b.itemsize else b


def _result_type(value: torch.Tensor, loc: torch.Tensor) -> torch.dtype:
    """``torch.result_type(value, loc)`` for a float ``loc`` and a bool/int/float ``value``.

    Zero-dim tensors take part only where their category (bool < int < float) is higher.
    """
    if not value.dtype.is_floating_point:
        return loc.dtype
    if (value.dim() == 0) == (loc.dim() == 0):
        return _promote_float(value.dtype, loc.dtype)
    return loc.dtype if value.dim() == 0 else value.dtype


_INT64_MAX = (1 << 63) - 1


def _checked_numel(shape: torch.Size) -> int:
    """numel of a sample's shape, refusing what torch refuses before any generator is advanced
    (``torch.Size.numel()`` wraps around silently on overflow)."""
    for s in shape:
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(shape)}")
    numel = math.prod(shape)
    if numel > _INT64_MAX:
        raise RuntimeError(f"Storage size calculation overflowed with sizes={list(shape)}")
    return numel


_EMPTY_SIZE = torch.Size()


def _sample_shape_numel(d, sample_shape) -> tuple:
    """(``sample_shape`` as a torch.Size, numel of ``d``'s sample of that shape), checked as
    ``_checked_numel``; without building the extended shape for the common ``d.rsample()``."""
    if type(sample_shape) in (torch.Size, tuple, list) and not sample_shape:
        return _EMPTY_SIZE, _checked_numel(d._batch_shape + d._event_shape)
    sample_shape = torch.Size(sample_shape)
    return sample_shape, _checked_numel(d._extended_shape(sample_shape))


def _log_prob_formula(value, loc, scale):
    """The reference op's formula in plain torch ops (half types in float32): on CPU this is
    what ``normal_log_prob`` computes, without the custom-op dispatch (which costs more than
    the math at small sizes); faster than torch's formula, forward and backward, from 16 to
    2**20 elements (one thread, torch 2.13)."""
    dtype = value.dtype
    if dtype in (torch.float16, torch.bfloat16):
        value, loc, scale = value.float(), loc.float(), scale.float()
    y = (value - loc) / scale
    out = -0.5 * (y * y) - scale.log() - _LOG_SQRT_2PI
    return out if out.dtype == dtype else out.to(dtype)


def _ops_device(t: torch.Tensor) -> bool:
    """Whether sampling on ``t``'s device goes through the Philox ops (read at call time)."""
    kind = t.device.type
    return kind == "cuda" or (kind == "cpu" and get_cpu_sampling() == "philox")


def _stable_log_prob_on(device: torch.device) -> bool:
    """Whether ``log_prob`` on ``device`` takes the fused op's formula instead of torch's.

    CUDA (and CPU under ``cpu_kernel("triton")``): the fused kernel. CPU: only under
    ``cpu_sampling("philox")`` (the device-consistent mode) or ``cpu_log_prob("stable")``; the
    default is torch's own formula, bit for bit.
    """
    if uses_gpu_kernels(device):
        return True
    return device.type == "cpu" and (get_cpu_sampling() == "philox" or get_cpu_log_prob() == "stable")


# torch's own methods, captured at import: the fallbacks of the routed functions below, and what
# patch() restores
_TORCH_METHODS = {name: _TorchNormal.__dict__[name] for name in ("rsample", "sample", "log_prob")}


def _torch_log_prob(d, value):
    """torch's ``Normal.log_prob`` formula, line for line, without its validation."""
    var = d.scale**2
    log_scale = math.log(d.scale) if isinstance(d.scale, _Number) else d.scale.log()
    return -((value - d.loc) ** 2) / (2 * var) - log_scale - _LOG_SQRT_2PI


# ---------------------------------------------------------------------------------- routing
# Module functions rather than methods: they are ``torchdist_fast.Normal``'s methods and, inside
# ``patch()``, also those of torch's class (so of every subclass that does not override them).
# They use no ``super()`` and nothing but torch's own attributes of ``d``.
def _sample_params(d, promote: bool):
    """(loc, scale) of one float dtype for the Philox ops, or None to use torch's code.

    ``promote``: the dtype of ``rsample`` (promote(loc, scale)); else that of ``sample``
    (``torch.normal``: loc's dtype).
    """
    loc, scale = d.loc, d.scale
    if not (isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor)) or not _ops_device(loc):
        return None
    if loc.device != scale.device:
        return None
    loc_dtype, scale_dtype = loc.dtype, scale.dtype
    if loc_dtype is scale_dtype and loc_dtype in _FLOAT_DTYPES:  # the common case
        return loc, scale
    if loc_dtype not in _FLOAT_DTYPES or scale_dtype not in _FLOAT_DTYPES:
        return None
    dtype = _promote_float(loc_dtype, scale_dtype) if promote else loc_dtype
    if loc_dtype == dtype and scale_dtype == dtype:
        return loc, scale
    return loc.to(dtype), scale.to(dtype)


def _log_prob_args(d, value):
    """(value, loc, scale) of one float dtype for the stable formula, or None for torch's."""
    loc, scale = d.loc, d.scale
    if not (isinstance(value, torch.Tensor) and isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor)):
        return None
    if loc.dtype != scale.dtype or loc.dtype not in _FLOAT_DTYPES:
        return None
    if value.dtype.is_complex or value.dtype == torch.bool:  # torch: complex result / RuntimeError
        return None
    device = loc.device
    if value.device != device or scale.device != device or not _stable_log_prob_on(device):
        return None
    # torch's formula promotes (value, loc, scale); with loc and scale of one dtype and shape
    # that is result_type(value, loc)
    dtype = _result_type(value, loc)
    if dtype not in _FLOAT_DTYPES:
        return None
    if value.dtype != dtype:
        value = value.to(dtype)
    if loc.dtype != dtype:
        loc, scale = loc.to(dtype), scale.to(dtype)
    return value, loc, scale


def _log_prob_unchecked(d, value):
    args = _log_prob_args(d, value)
    if args is None:
        return _torch_log_prob(d, value)
    if uses_gpu_kernels(args[0].device):  # CUDA (and CPU under cpu_kernel("triton")): the fused kernel
        if eager.direct_ok(*args):
            return eager.log_prob(*args)
        return torch.ops.torchdist_fast.normal_log_prob(*args)
    return _log_prob_formula(*args)


def _log_prob(self, value):
    """Log density of ``value``.

    CPU by default: torch's formula, bit for bit. CUDA, ``cpu_sampling("philox")`` and
    ``cpu_log_prob("stable")``: the fused op's formula (see the class docstring).
    """
    if self._validate_args:
        self._validate_sample(value)
    return _log_prob_unchecked(self, value)


def _rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterized sample: the Philox op on CUDA (and CPU Philox mode), else torch's code."""
    params = _sample_params(self, promote=True)
    if params is None:
        if generator is None:
            return _TORCH_METHODS["rsample"](self, sample_shape)
        # torch's rsample with the generator given to the noise
        shape = self._extended_shape(sample_shape)
        eps = torch.empty(shape, dtype=self.loc.dtype, device=self.loc.device).normal_(generator=generator)
        return self.loc + eps * self.scale
    sample_shape, numel = _sample_shape_numel(self, sample_shape)
    if eager.direct_ok(*params):
        return eager.rsample(*params, sample_shape, numel, generator, with_log_prob=False)
    seed_offset = draw_seed_offset(params[0].device, numel, generator)
    return torch.ops.torchdist_fast.normal_rsample(*params, list(sample_shape), seed_offset)


def _sample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample without gradient: the Philox op on CUDA (and CPU Philox mode), else torch's code."""
    params = _sample_params(self, promote=False)
    if params is None:
        if generator is None:
            return _TORCH_METHODS["sample"](self, sample_shape)
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.normal(self.loc.expand(shape), self.scale.expand(shape), generator=generator)
    sample_shape, numel = _sample_shape_numel(self, sample_shape)
    if not self._validate_args:
        # torch.normal refuses a negative or NaN std even without validation (on CUDA with
        # a host sync); here asynchronously, on batch_shape elements only
        torch._assert_async((params[1] >= 0).all(), "normal expects all elements of std >= 0.0")
    if eager.direct_ok(*params):
        return eager.rsample(*params, sample_shape, numel, generator, with_log_prob=False, grad=False)
    seed_offset = draw_seed_offset(params[0].device, numel, generator)
    with torch.no_grad():
        return torch.ops.torchdist_fast.normal_sample(*params, list(sample_shape), seed_offset)


def _rsample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
    """``(z, log_prob(z))`` with ``z = rsample(sample_shape)``, gradients as ``log_prob(rsample())``.

    On the Philox path one fused kernel writes both (log_prob from the noise in registers:
    ``-eps**2/2 - log(scale) - log(sqrt(2 pi))``) and its backward regenerates the noise. On
    CPU by default it is torch's ``rsample`` then torch's ``log_prob`` formula: the same numbers
    and gradients as ``d.log_prob(d.rsample())`` with ``torch.distributions.Normal``.
    """
    params = _sample_params(self, promote=True)
    if params is None:
        z = _rsample(self, sample_shape, generator=generator)
        return z, _log_prob_unchecked(self, z)
    sample_shape, numel = _sample_shape_numel(self, sample_shape)
    if eager.direct_ok(*params):
        return eager.rsample(*params, sample_shape, numel, generator, with_log_prob=True)
    seed_offset = draw_seed_offset(params[0].device, numel, generator)
    return torch.ops.torchdist_fast.normal_rsample_log_prob(*params, list(sample_shape), seed_offset)


def _sample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
    """``(z, log_prob(z))`` with ``z = sample(sample_shape)`` (no gradient through ``z``).

    ``log_prob`` carries the score-function gradients (w.r.t. loc and scale with ``z``
    fixed), as ``d.log_prob(d.sample())`` does: what REINFORCE/PPO need.
    """
    z = _sample(self, sample_shape, generator=generator)
    return z, _log_prob_unchecked(self, z)


class Normal(_TorchNormal):
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
        from .independent import IndependentNormal

        return IndependentNormal(self, reinterpreted_batch_ndims)

    # ------------------------------------------------------------------ sampling and log_prob
    # the module functions above, shared with torch's class under patch()
    rsample = _rsample
    sample = _sample
    rsample_and_log_prob = _rsample_and_log_prob
    sample_and_log_prob = _sample_and_log_prob
    log_prob = _log_prob

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


# ---------------------------------------------------------------------------------- patch
# What patch() routes on torch's class: the sampling methods and log_prob (and the fused pairs,
# which torch's class lacks), and kl_divergence's (Normal, Normal) registration. Construction,
# validation, expand, entropy, cdf/icdf and pickling stay torch's own.
_ROUTED = {
    "rsample": _rsample,
    "sample": _sample,
    "log_prob": _log_prob,
    "rsample_and_log_prob": _rsample_and_log_prob,
    "sample_and_log_prob": _sample_and_log_prob,
}
_MISSING = object()


_TORCH_KL = torch.distributions.kl._KL_REGISTRY[(_TorchNormal, _TorchNormal)]


def _fused_kl():
    from .kl import kl_normal_normal  # imported here: kl.py imports this module

    return kl_normal_normal


def _independent_routes():
    """What patch() routes on torch's Independent: log_prob and entropy (event sums in the kernel
    when the base is a Normal; the functions fall back to torch's code for any other base)."""
    from . import independent  # imported here: independent.py imports this module

    return {"log_prob": independent._log_prob, "entropy": independent._entropy}


def _swap_kl(fn) -> None:
    """torch's KL registration for (Normal, Normal), and the dispatch memo that caches it."""
    torch.distributions.kl._KL_REGISTRY[(_TorchNormal, _TorchNormal)] = fn
    torch.distributions.kl._KL_MEMOIZE.clear()


class _Patch(contextlib.ContextDecorator):
    """Routes torch's ``Normal`` methods to torchdist_fast while any scope is open (re-entrant,
    nestable, thread-safe; restored when the outermost scope exits, also on an exception)."""

    _lock = threading.Lock()
    _depth = 0
    _saved: dict = {}
    _saved_independent: dict = {}

    def __enter__(self):
        cls = type(self)
        with cls._lock:
            if cls._depth == 0:
                cls._saved = {name: _TorchNormal.__dict__.get(name, _MISSING) for name in _ROUTED}
                for name, fn in _ROUTED.items():
                    setattr(_TorchNormal, name, fn)
                _swap_kl(_fused_kl())
                cls._saved_independent = {name: Independent.__dict__[name] for name in _independent_routes()}
                for name, fn in _independent_routes().items():
                    setattr(Independent, name, fn)
            cls._depth += 1
        return self

    def __exit__(self, *exc):
        cls = type(self)
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0:
                for name, old in cls._saved.items():
                    if old is _MISSING:
                        delattr(_TorchNormal, name)
                    else:
                        setattr(_TorchNormal, name, old)
                cls._saved = {}
                _swap_kl(_TORCH_KL)
                for name, fn in cls._saved_independent.items():
                    setattr(Independent, name, fn)
                cls._saved_independent = {}
        return False


def is_patched() -> bool:
    """Whether a ``patch()`` scope is open (torch's Normal routed to torchdist_fast)."""
    return _Patch._depth > 0


def patch(*modules) -> _Patch:
    """Route every ``torch.distributions.Normal`` through torchdist_fast's ops inside a scope.

    A context manager and a decorator::

        with torchdist_fast.patch():
            agent = third_party.make_agent()   # builds torch.distributions.Normal(...) inside

        @torchdist_fast.patch()
        def train(): ...

    Inside the scope ``rsample``, ``sample`` and ``log_prob`` of torch's ``Normal`` class are
    torchdist_fast's (the same functions as ``torchdist_fast.Normal``'s), and the class gains
    ``rsample_and_log_prob`` / ``sample_and_log_prob`` and ``generator=``. That covers every
    instance: made before or inside the scope, by code that imported ``Normal`` in any way, of a
    subclass (pyro's ``Normal``) unless it overrides the method, and the base distributions of
    ``LogNormal``, ``HalfNormal``, ``LogisticNormal``, ``Independent``; ``kl_divergence`` of two
    Normals dispatches to the fused KL (``torchdist_fast.kl``), and ``Independent.log_prob`` /
    ``entropy`` with a Normal base sum over the event dims inside the kernel. No name is rebound:
    ``torch.distributions.Normal`` stays torch's class, so ``expand``, pickling,
    ``kl_divergence``, ``isinstance`` and subclassing behave exactly as outside the scope.
    What changes is where the numbers come from, by the same rule as ``torchdist_fast.Normal``:
    CUDA tensors use the fused kernels; CPU tensors keep torch's numbers in the default mode.
    Construction and validation stay torch's (on CUDA torch's constructor synchronizes with the
    host; build ``torchdist_fast.Normal`` directly to avoid that). Everything is restored when
    the outermost scope exits, also on an exception; scopes nest. The routing is process-wide
    (every thread sees it while a scope is open).
    """
    if modules:
        raise TypeError(
            "torchdist_fast.patch() takes no arguments: it routes torch's Normal class itself, so code "
            "that imported Normal in any module is covered without naming the module"
        )
    return _Patch()
