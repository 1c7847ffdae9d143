"""``IndependentNormal``: ``Independent(Normal, k)`` whose log-probabilities and entropy are summed
over the event dimensions inside the kernel (``normal_log_prob_sum`` / ``normal_entropy_sum``), so
the batch-shaped result is written without the full-size per-element tensor.

Reached as ``torchdist_fast.Normal(loc, scale).to_event(k)``, as ``IndependentNormal(base, k)``
with any ``torch.distributions.Normal`` base, or, inside ``torchdist_fast.patch()``, through torch's
own ``Independent`` with a Normal base (its ``log_prob`` and ``entropy`` are routed).

Where the sums run, by the rule of ``Normal.log_prob`` (``routing.stable_log_prob_on``):
CUDA tensors (and CPU under ``cpu_kernel("triton")``) in the Triton kernel; CPU in the Philox mode
or under ``cpu_log_prob("stable")`` in the reference op; CPU by default torch's own
``Independent`` code (the base's ``log_prob``, then a sum): bit for bit.
"""
from __future__ import annotations

import torch
from torch.distributions import Independent

from . import normal_methods
from .functional import draw_seed_offset
from .ops import eager_path
from .ops import tanh_normal as tanh_normal_ops
from .reference import FLOAT_DTYPES
from .routing import TorchNormal, checked_numel, log_prob_args, sample_params, stable_log_prob_on

__all__ = ["IndependentNormal"]

# torch's own methods, captured at import: the fallbacks, and what patch() restores
TORCH_INDEPENDENT = {name: Independent.__dict__[name] for name in ("log_prob", "entropy")}


def _normal_base(d):
    base = d.base_dist
    return base if isinstance(base, TorchNormal) else None


def _log_prob_sum(d, value, validate: bool = True):
    base = _normal_base(d)
    args = None if base is None else log_prob_args(base, value)
    if args is None:
        return TORCH_INDEPENDENT["log_prob"](d, value)
    if validate and base._validate_args:
        base._validate_sample(value)  # what base.log_prob(value) checks, on the same code path
    return torch.ops.torchdist_fast.normal_log_prob_sum(*args, d.reinterpreted_batch_ndims)


def log_prob(self, value):
    """Sum of the base Normal's log_prob over the event dims, reduced inside the kernel."""
    return _log_prob_sum(self, value)


def entropy(self):
    """Sum of the base Normal's entropy over the event dims, reduced inside the kernel."""
    base = _normal_base(self)
    scale = None if base is None else base.scale
    if (
        not isinstance(scale, torch.Tensor)
        or scale.dtype not in FLOAT_DTYPES
        or scale.device.type not in ("cpu", "cuda")
        or not stable_log_prob_on(scale.device)
    ):
        return TORCH_INDEPENDENT["entropy"](self)
    return torch.ops.torchdist_fast.normal_entropy_sum(scale, self.reinterpreted_batch_ndims)


def _rsample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
    """``(z, log_prob(z))`` with ``z = rsample(sample_shape)``. On the Philox path one kernel draws
    z and writes the event-summed log_prob from the noise in registers
    (``normal_rsample_log_prob_sum``; backward regenerates the noise); elsewhere the base's
    rsample, then the event-summed log_prob (on CPU by default: torch's code)."""
    base = _normal_base(self)
    if base is None:
        z = self.rsample(sample_shape)
        return z, self.log_prob(z)
    params = sample_params(base, promote=True)
    if params is None:
        z = normal_methods.rsample(base, sample_shape, generator=generator)
        return z, _log_prob_sum(self, z, validate=False)
    sample_shape = torch.Size(sample_shape)
    numel = checked_numel(base._extended_shape(sample_shape))
    if eager_path.direct_ok(*params):
        return tanh_normal_ops.eager_event_rsample(*params, sample_shape, self.reinterpreted_batch_ndims, -1.0, 1.0,
                                                   numel, generator, with_log_prob=True, squash=False)
    seed_offset = draw_seed_offset(params[0].device, numel, generator)
    return torch.ops.torchdist_fast.normal_rsample_log_prob_sum(
        *params, list(sample_shape), self.reinterpreted_batch_ndims, seed_offset)


def _sample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
    """``(z, log_prob(z))`` with ``z = sample(sample_shape)`` (score-function gradients in log_prob)."""
    base = _normal_base(self)
    if base is None:
        z = self.sample(sample_shape)
        return z, self.log_prob(z)
    z = normal_methods.sample(base, sample_shape, generator=generator)
    return z, _log_prob_sum(self, z, validate=False)


class IndependentNormal(Independent):
    r"""``Independent(Normal(loc, scale), k)`` with event-dim sums inside the kernel.

    A subclass of :class:`torch.distributions.Independent`: shapes, ``expand``,
    ``mean``/``variance``, ``kl_divergence`` (torch's Independent registration,
    which calls the base's) and validation are torch's. ``log_prob`` and ``entropy`` write the
    batch-shaped sums directly; ``rsample`` and ``sample`` draw as ``torchdist_fast.Normal`` does
    (Philox on CUDA) whatever the base's class; ``rsample_and_log_prob`` / ``sample_and_log_prob`` (with
    ``generator=``) draw from the base and sum its log_prob over the event dims.

    Accuracy of the sums: each element's term is computed in float32 (float64 for float64) and
    the k event dims are accumulated in that precision, in a fixed order, then rounded once to
    the output dtype; a float16/bfloat16 result is therefore within one rounding of the float32
    sum (relative 2^-11 / 2^-8), where torch's rounds every term to the half type before summing.
    """

    def __init__(self, base_distribution, reinterpreted_batch_ndims, validate_args=None):
        if not isinstance(base_distribution, TorchNormal):
            raise TypeError(
                f"IndependentNormal needs a torch.distributions.Normal base, got {type(base_distribution).__name__}; "
                "use torch.distributions.Independent for other distributions"
            )
        super().__init__(base_distribution, reinterpreted_batch_ndims, validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IndependentNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
        """The base's rsample by ``torchdist_fast.Normal``'s rule (Philox on CUDA), whatever its class."""
        return normal_methods.rsample(self.base_dist, sample_shape, generator=generator)

    def sample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
        return normal_methods.sample(self.base_dist, sample_shape, generator=generator)

    log_prob = log_prob
    entropy = entropy
    rsample_and_log_prob = _rsample_and_log_prob
    sample_and_log_prob = _sample_and_log_prob
