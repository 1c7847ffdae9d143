"""``TanhNormal``: the tanh-squashed Normal policy of SAC, with ``rsample_and_log_prob`` in one
kernel (``torchdist_fast::tanh_normal_rsample``) and a backward that regenerates the noise.

The distribution of ``a = mid + half * tanh(u)``, ``u ~ Normal(loc, scale)``, with
``mid = (high + low) / 2`` and ``half = (high - low) / 2``; the log-density is summed over the
``event_dims`` rightmost dims (the action dims):

    log p(a) = sum over events of [ log N(u; loc, scale) - log(half) - log(1 - tanh(u)^2) ],
    log(1 - tanh(u)^2) = 2 * (log 2 - |u| - log1p(exp(-2 |u|)))

(torch's ``TanhTransform.log_abs_det_jacobian`` formula; it never forms ``1 - tanh(u)^2``, which
rounds to 0 for |u| > 9 in float32).

Where it runs (the rule of ``torchdist_fast.Normal``): CUDA tensors (and CPU under
``cpu_sampling("philox")``) use the Philox ops; CPU tensors by default are torch's own
``TransformedDistribution(Independent(Normal(loc, scale), k), [TanhTransform(), AffineTransform()])``,
bit for bit. The ops: ``ops/tanh_normal.py``; the reference: ``reference.tanh_normal``.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Independent, TransformedDistribution, constraints
from torch.distributions.transforms import AffineTransform, TanhTransform

from . import normal_methods, reference
from .distribution import Normal
from .functional import draw_seed_offset
from .ops import eager_path
from .ops import tanh_normal as tanh_normal_ops
from .reference import FLOAT_DTYPES
from .routing import checked_numel, philox_sampling_on, stable_log_prob_on

__all__ = ["TanhNormal"]


# ---------------------------------------------------------------------------------- the class
class TanhNormal(TransformedDistribution):
    r"""``low + (high - low) * (tanh(u) + 1) / 2`` with ``u ~ Normal(loc, scale)``; the rightmost
    ``event_dims`` dims are one event (the action).

    A :class:`torch.distributions.TransformedDistribution` of
    ``Independent(torchdist_fast.Normal(loc, scale), event_dims)`` (the base is the Normal itself
    when ``event_dims == 0``) by ``TanhTransform`` and, unless the bounds are (-1, 1),
    ``AffineTransform(mid, half)``, each with ``cache_size=1`` as torch's SAC recipes build it.

    * ``rsample_and_log_prob(sample_shape=(), *, generator=None)``: on the Philox path one kernel
      writes the action and its log-density summed over the event dims (nothing of the
      action's size saved for backward); by default on CPU, torch's ``rsample`` then
      ``log_prob`` through the transforms' cache, bit for bit.
    * ``rsample`` / ``sample`` (``generator=`` too): the same kernel without the log-density.
    * ``log_prob(action)`` of a given action inverts the squashing: ``y = (a - mid) / half``
      clamped to ``[-1 + eps, 1 - eps]`` (``eps = torch.finfo(dtype).eps``: float32 keeps
      ``|u| <= 8.3``), ``u = atanh(y)``. Near the bounds this loses what the clamp removes;
      ``rsample_and_log_prob`` computes the density from ``u`` and loses nothing. On CPU by
      default it is torch's ``TransformedDistribution.log_prob`` (no clamp: an action at a bound
      gives ``inf``, as in torch).
    * ``mode``: ``mid + half * tanh(loc)``, the deterministic action of SAC implementations (the
      image of the Normal's mode, not the mode of the squashed density).
    """

    arg_constraints: dict = {}  # the base Normal validates loc and scale (without a host sync on CUDA)
    has_rsample = True

    def __init__(self, loc, scale, low: float = -1.0, high: float = 1.0, event_dims: int = 1, validate_args=None):
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"TanhNormal: low and high must be finite with low < high, got low={low}, high={high}")
        normal = Normal(loc, scale, validate_args=validate_args)
        if isinstance(event_dims, bool) or not isinstance(event_dims, int) or not 0 <= event_dims <= len(normal.batch_shape):
            raise ValueError(
                f"TanhNormal: event_dims must be an int in [0, {len(normal.batch_shape)}] for parameters of shape "
                f"{tuple(normal.batch_shape)}, got {event_dims!r}"
            )
        self.low, self.high, self.event_dims = low, high, event_dims
        self._normal = normal
        self._fused_cache = None  # (a, log_prob) of the last rsample on the Philox path
        base = Independent(normal, event_dims) if event_dims else normal
        transforms = [TanhTransform(cache_size=1)]
        if (low, high) != (-1.0, 1.0):
            transforms.append(AffineTransform((high + low) / 2, (high - low) / 2, event_dim=event_dims, cache_size=1))
        super().__init__(base, transforms, validate_args=validate_args)

    @property
    def loc(self):
        return self._normal.loc

    @property
    def scale(self):
        return self._normal.scale

    @property
    def support(self):
        return constraints.independent(constraints.interval(self.low, self.high), self.event_dims)

    @property
    def mode(self):
        return (self.high + self.low) / 2 + (self.high - self.low) / 2 * torch.tanh(self.loc)

    @property
    def deterministic_sample(self):
        """``mode`` under the name torchrl's actors read for deterministic exploration."""
        return self.mode

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return TanhNormal(self.loc.expand(shape), self.scale.expand(shape), self.low, self.high, self.event_dims,
                          validate_args=False if self._validate_args is False else None)

    def __repr__(self):
        return (f"TanhNormal(loc: {tuple(self.loc.shape)}, scale: {tuple(self.scale.shape)}, low: {self.low}, "
                f"high: {self.high}, event_dims: {self.event_dims})")

    # ------------------------------------------------------------------ routing
    def _fused_params(self):
        """(loc, scale) of one float dtype for the fused op, or None for torch's code."""
        loc, scale = self.loc, self.scale
        if not philox_sampling_on(loc) or loc.device != scale.device or loc.dtype != scale.dtype or loc.dtype not in FLOAT_DTYPES:
            return None
        return loc, scale

    def _fused(self, sample_shape, generator, with_log_prob):
        loc, scale = self._fused_params()
        sample_shape = torch.Size(sample_shape)
        numel = checked_numel(sample_shape + self.batch_shape + self.event_shape)
        if eager_path.direct_ok(loc, scale):
            return tanh_normal_ops.eager_event_rsample(loc, scale, sample_shape, self.event_dims, self.low, self.high,
                                                       numel, generator, with_log_prob, squash=True)
        seed_offset = draw_seed_offset(loc.device, numel, generator)
        return torch.ops.torchdist_fast.tanh_normal_rsample(
            loc, scale, list(sample_shape), self.event_dims, self.low, self.high, seed_offset, with_log_prob)

    def _torch_rsample(self, sample_shape, generator):
        """torch's TransformedDistribution.rsample (populating the transforms' caches), with the
        base's noise drawn by torchdist_fast.Normal's rule (so ``generator=`` works)."""
        x = normal_methods.rsample(self._normal, sample_shape, generator=generator)
        for transform in self.transforms:
            x = transform(x)
        return x

    # ------------------------------------------------------------------ sampling and densities
    def rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        """On the Philox path the fused kernel also writes log_prob (1/D of the action's size) and
        keeps it, as torch's transform cache keeps u: a following ``log_prob(a)`` of this very
        tensor returns it (gradients as ``log_prob(rsample())``), so ``rsample`` then ``log_prob``
        (torchrl's actors and losses) costs one kernel and loses nothing near the bounds."""
        if self._fused_params() is None:
            return self._torch_rsample(sample_shape, generator)
        a, lp = self._fused(sample_shape, generator, with_log_prob=True)
        self._fused_cache = (a, lp)
        return a

    def sample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        if self._fused_params() is None:
            with torch.no_grad():
                return self._torch_rsample(sample_shape, generator)
        with torch.no_grad():
            return self._fused(sample_shape, generator, with_log_prob=False)[0]

    def rsample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
        """``(a, log_prob(a))`` with ``a = rsample(sample_shape)``; on the Philox path one kernel."""
        if self._fused_params() is None:
            a = self._torch_rsample(sample_shape, generator)
            return a, super().log_prob(a)  # the transforms' caches hold u: torch's exact numbers
        return self._fused(sample_shape, generator, with_log_prob=True)

    def sample_and_log_prob(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None):
        """``(a, log_prob(a))`` with ``a = sample(sample_shape)``: score-function gradients in log_prob."""
        a = self.sample(sample_shape, generator=generator)
        return a, self.log_prob(a)

    def log_prob(self, value):
        cache = self._fused_cache
        if cache is not None and value is cache[0]:
            return cache[1]
        loc = self.loc
        if not (isinstance(value, torch.Tensor) and value.device == loc.device and stable_log_prob_on(loc.device)
                and value.dtype in FLOAT_DTYPES):
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        return reference.tanh_normal_log_prob(value, self.loc, self.scale, self.low, self.high, self.event_dims)
