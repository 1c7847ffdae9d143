"""``torchdist_fast.patch()``: routes torch's own ``Normal`` (and ``Independent`` of a Normal, and
``kl_divergence`` of two Normals) through torchdist_fast inside a scope, for third-party code.
The top of the package: it lends torch's classes the functions of ``normal_methods``,
``independent`` and ``kl``.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch.distributions import Independent

from . import independent, kl, normal_methods
from .routing import TorchNormal

__all__ = ["patch", "is_patched"]

# What patch() routes on torch's class: the sampling methods and log_prob (and the fused pairs,
# which torch's class lacks), and kl_divergence's (Normal, Normal) registration. Construction,
# validation, expand, entropy, cdf/icdf and pickling stay torch's own.
_ROUTED = {
    "rsample": normal_methods.rsample,
    "sample": normal_methods.sample,
    "log_prob": normal_methods.log_prob,
    "rsample_and_log_prob": normal_methods.rsample_and_log_prob,
    "sample_and_log_prob": normal_methods.sample_and_log_prob,
}
_MISSING = object()


_TORCH_KL = torch.distributions.kl._KL_REGISTRY[(TorchNormal, TorchNormal)]


# What patch() routes on torch's Independent: log_prob and entropy (event sums in the kernel when
# the base is a Normal; the functions fall back to torch's code for any other base).
_INDEPENDENT_ROUTED = {"log_prob": independent.log_prob, "entropy": independent.entropy}


def _swap_kl(fn) -> None:
    """torch's KL registration for (Normal, Normal), and the dispatch memo that caches it."""
    torch.distributions.kl._KL_REGISTRY[(TorchNormal, TorchNormal)] = fn
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
                cls._saved = {name: TorchNormal.__dict__.get(name, _MISSING) for name in _ROUTED}
                for name, fn in _ROUTED.items():
                    setattr(TorchNormal, name, fn)
                _swap_kl(kl.kl_normal_normal)
                cls._saved_independent = {name: Independent.__dict__[name] for name in _INDEPENDENT_ROUTED}
                for name, fn in _INDEPENDENT_ROUTED.items():
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
                        delattr(TorchNormal, name)
                    else:
                        setattr(TorchNormal, name, old)
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
