"""``torchdist_fast.Normal``'s sampling and ``log_prob`` methods, as module functions: they are
``torchdist_fast.Normal``'s methods and, inside ``patch()``, also those of torch's class (so of every
subclass that does not override them); ``IndependentNormal`` and ``TanhNormal`` draw their base
Normal's noise with them. They use no ``super()`` and nothing but torch's own attributes of ``d``.
Where each runs: the table in ``distribution.py``; the predicates: ``routing.py``.
"""
from __future__ import annotations

import math

import torch
from torch.types import _Number

from . import reference
from .functional import draw_seed_offset
from .ops import eager_path
from .ops.normal import eager_log_prob, eager_rsample
from .reference import LOG_SQRT_2PI
from .routing import TorchNormal, log_prob_args, sample_params, sample_shape_numel
from .settings import uses_gpu_kernels

# torch's own methods, captured at import: the fallbacks of the routed functions below, and what
# patch() restores
TORCH_METHODS = {name: TorchNormal.__dict__[name] for name in ("rsample", "sample", "log_prob")}


def torch_log_prob(d, value):
    """torch's ``Normal.log_prob`` formula, line for line, without its validation."""
    var = d.scale**2
    log_scale = math.log(d.scale) if isinstance(d.scale, _Number) else d.scale.log()
    return -((value - d.loc) ** 2) / (2 * var) - log_scale - LOG_SQRT_2PI


def log_prob_unchecked(d, value):
    args = log_prob_args(d, value)
    if args is None:
        return torch_log_prob(d, value)
    if uses_gpu_kernels(args[0].device):  # CUDA (and CPU under cpu_kernel("triton")): the fused kernel
        if eager_path.direct_ok(*args):
            return eager_log_prob(*args)
        return torch.ops.torchdist_fast.normal_log_prob(*args)
    return reference.normal_log_prob(*args)  # the reference op's formula, without the op's dispatch


def log_prob(self, value):
    """Log density of ``value``.

    CPU by default: torch's formula, bit for bit. CUDA, ``cpu_sampling("philox")`` and
    ``cpu_log_prob("stable")``: the fused op's formula (see the class docstring).
    """
    if self._validate_args:
        self._validate_sample(value)
    return log_prob_unchecked(self, value)


def rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterized sample: the Philox op on CUDA (and CPU Philox mode), else torch's code."""
    params = sample_params(self, promote=True)
    if params is None:
        if generator is None:
            return TORCH_METHODS["rsample"](self, sample_shape)
        # torch's rsample with the generator given to the noise
        shape = self._extended_shape(sample_shape)
        eps = torch.empty(shape, dtype=self.loc.dtype, device=self.loc.device).normal_(generator=generator)
        return self.loc + eps * self.scale
    sample_shape, numel = sample_shape_numel(self, sample_shape)
    if eager_path.direct_ok(*params):
        return eager_rsample(*params, sample_shape, numel, generator, with_log_prob=False)
    seed_offset = draw_seed_offset(params[0].device, numel, generator)
    return torch.ops.torchdist_fast.normal_rsample(*params, list(sample_shape), seed_offset)


def sample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample without gradient: the Philox op on CUDA (and CPU Philox mode), else torch's code."""
    params = sample_params(self, promote=False)
    if params is None:
        if generator is None:
            return TORCH_METHODS["sample"](self, sample_shape)
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.normal(self.loc.expand(shape), self.scale.expand(shape), generator=generator)
    sample_shape, numel = sample_shape_numel(self, sample_shape)
    if not self._validate_args:
        # torch.normal refuses a negative or NaN std even without validation (on CUDA with
        # a host sync); here asynchronously, on batch_shape elements only
        torch._assert_async((params[1] >= 0).all(), "normal expects all elements of std >= 0.0")
    if eager_path.direct_ok(*params):
        return eager_rsample(*params, sample_shape, numel, generator, with_log_prob=False, grad=False)
    seed_offset = draw_seed_offset(params[0].device, numel, generator)
    with torch.no_grad():
        return torch.ops.torchdist_fast.normal_sample(*params, list(sample_shape), seed_offset)


def rsample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
    """``(z, log_prob(z))`` with ``z = rsample(sample_shape)``, gradients as ``log_prob(rsample())``.

    On the Philox path one fused kernel writes both (log_prob from the noise in registers:
    ``-eps**2/2 - log(scale) - log(sqrt(2 pi))``) and its backward regenerates the noise. On
    CPU by default it is torch's ``rsample`` then torch's ``log_prob`` formula: the same numbers
    and gradients as ``d.log_prob(d.rsample())`` with ``torch.distributions.Normal``.
    """
    params = sample_params(self, promote=True)
    if params is None:
        z = rsample(self, sample_shape, generator=generator)
        return z, log_prob_unchecked(self, z)
    sample_shape, numel = sample_shape_numel(self, sample_shape)
    if eager_path.direct_ok(*params):
        return eager_rsample(*params, sample_shape, numel, generator, with_log_prob=True)
    seed_offset = draw_seed_offset(params[0].device, numel, generator)
    return torch.ops.torchdist_fast.normal_rsample_log_prob(*params, list(sample_shape), seed_offset)


def sample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
    """``(z, log_prob(z))`` with ``z = sample(sample_shape)`` (no gradient through ``z``).

    ``log_prob`` carries the score-function gradients (w.r.t. loc and scale with ``z``
    fixed), as ``d.log_prob(d.sample())`` does: what REINFORCE/PPO need.
    """
    z = sample(self, sample_shape, generator=generator)
    return z, log_prob_unchecked(self, z)
