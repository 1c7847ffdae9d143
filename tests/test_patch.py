"""torchdist_fast.patch(): torch's Normal routed to the fused ops inside a scope, with nothing else
changed (expand, pickling, kl_divergence, Independent, torch's own Normal-based distributions,
subclasses made before the scope) and nothing left behind after it."""
import contextlib
import pickle
import threading

import pytest
import torch
from torch.distributions import (
    HalfNormal,
    Independent,
    LogisticNormal,
    LogNormal,
    kl_divergence,
)

import torchdist_fast
import torchdist_fast.distribution as tdf_dist
from torchdist_fast import normal_methods
from normal_modes import default_validation  # noqa: F401  (autouse fixture)
from normal_modes import OPS_MODES, sampling_mode

TorchNormal = torchdist_fast.routing.TorchNormal
ROUTED = ("rsample", "sample", "log_prob", "rsample_and_log_prob", "sample_and_log_prob")


class PreExistingNormal(TorchNormal):
    """A third-party subclass created before any scope (as pyro.distributions.Normal is)."""


class OverridingNormal(TorchNormal):
    """A subclass with its own rsample: patch() must not replace it."""

    def rsample(self, sample_shape=torch.Size()):
        return torch.full(self._extended_shape(sample_shape), 7.0)


def class_snapshot():
    return {name: TorchNormal.__dict__.get(name) for name in ROUTED}


def params(shape=(3,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.rand(shape, generator=g) + 0.5


def normal_based(loc, scale):
    """Each of torch's own distributions built on Normal, and how to draw from it."""
    return {
        "Normal": TorchNormal(loc, scale),
        "PreExistingNormal": PreExistingNormal(loc, scale),
        "LogNormal": LogNormal(loc, scale),
        "HalfNormal": HalfNormal(scale),
        "LogisticNormal": LogisticNormal(loc, scale),
        "Independent": Independent(TorchNormal(loc, scale), 1),
    }


def test_nothing_is_rebound_and_nothing_leaks():
    before = class_snapshot()
    assert before["rsample_and_log_prob"] is None
    with torchdist_fast.patch():
        assert torch.distributions.Normal is TorchNormal and torch.distributions.normal.Normal is TorchNormal
        assert torchdist_fast.distribution.is_patched()
        for name in ROUTED:
            assert TorchNormal.__dict__[name] is tdf_dist.Normal.__dict__[name]
    assert class_snapshot() == before and not tdf_dist.is_patched()
    assert not hasattr(TorchNormal(0.0, 1.0), "rsample_and_log_prob")


@pytest.mark.parametrize("where", ["inside", "after"])
def test_expand_and_normal_based_distributions_work(where):
    loc, scale = params()
    made_before = TorchNormal(torch.zeros(3), 1.0)
    scope = torchdist_fast.patch()
    scope.__enter__()
    if where == "after":
        scope.__exit__(None, None, None)
    try:
        assert type(TorchNormal(torch.zeros(3), 1.0).expand((2, 3))) is TorchNormal
        assert made_before.expand((2, 3)).batch_shape == (2, 3)
        assert type(PreExistingNormal(loc, scale).expand((4, 3))) is PreExistingNormal
        assert type(torchdist_fast.Normal(loc, scale).expand((4, 3))) is torchdist_fast.Normal
        for name, d in normal_based(loc, scale).items():
            e = d.expand((2,) + tuple(d.batch_shape))
            assert type(e) is type(d), name
            x = e.sample((4,))
            assert x.shape == (4, 2) + tuple(d.batch_shape) + tuple(d.event_shape), name
            assert torch.isfinite(e.log_prob(x)).all(), name
        assert LogisticNormal(0.2, 0.6).sample().shape == (2,)
    finally:
        if where == "inside":
            scope.__exit__(None, None, None)


def test_pickle_kl_isinstance_unchanged_inside():
    loc, scale = params()
    with torchdist_fast.patch():
        for d in (TorchNormal(loc, scale), PreExistingNormal(loc, scale), torchdist_fast.Normal(loc, scale)):
            back = pickle.loads(pickle.dumps(d))
            assert type(back) is type(d) and torch.equal(back.loc, d.loc)
        d = TorchNormal(loc, scale)
        assert not isinstance(d, torchdist_fast.Normal) and isinstance(torchdist_fast.Normal(0.0, 1.0), TorchNormal)
        inside = kl_divergence(d, TorchNormal(1.0, 2.0))
    assert torch.equal(inside, kl_divergence(TorchNormal(loc, scale), TorchNormal(1.0, 2.0)))


def test_cpu_default_numbers_unchanged_by_the_scope():
    """On CPU, in the default mode, a patched Normal gives torch's numbers bit for bit."""
    loc, scale = params((2, 3))
    loc.requires_grad_()
    scale.requires_grad_()
    value = torch.randn(4, 2, 3)
    results = []
    for patched in (False, True):
        scope = torchdist_fast.patch() if patched else contextlib.nullcontext()
        with scope:
            torch.manual_seed(3)
            outs = {}
            for name, d in normal_based(loc, scale).items():
                outs[name + ".rsample"] = d.rsample((4,)) if d.has_rsample else d.sample((4,))
                outs[name + ".log_prob"] = d.log_prob(outs[name + ".rsample"].detach())
            d = TorchNormal(loc, scale)
            outs["sample"] = d.sample((4,))
            outs["log_prob"] = d.log_prob(value)
            loss = sum(v.sum() for v in outs.values() if v.requires_grad)
            outs["grads"] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, (loc, scale))])
            results.append(outs)
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


@pytest.mark.parametrize("mode", OPS_MODES)
def test_every_normal_takes_the_fused_ops_inside(mode):
    """In the Philox modes the routed methods draw the Philox stream: torch's own code cannot
    produce those numbers, so equality with torchdist_fast.Normal shows the routing."""
    loc, scale = params((3,))
    made_before = PreExistingNormal(loc, scale)
    with sampling_mode(mode):
        torch.manual_seed(9)
        expected = torchdist_fast.Normal(loc, scale).rsample((5,))
        torch.manual_seed(9)
        expected_pair = torchdist_fast.Normal(loc, scale).rsample_and_log_prob((5,))
        torch.manual_seed(9)
        outside = TorchNormal(loc, scale).rsample((5,))
        assert not torch.equal(outside, expected)
        with torchdist_fast.patch():
            for d in (TorchNormal(loc, scale), made_before):
                torch.manual_seed(9)
                assert torch.equal(d.rsample((5,)), expected)
                torch.manual_seed(9)
                z, lp = d.rsample_and_log_prob((5,))
                assert torch.equal(z, expected_pair[0]) and torch.equal(lp, expected_pair[1])
            torch.manual_seed(9)
            assert torch.equal(LogNormal(loc, scale).rsample((5,)), expected.exp())
            torch.manual_seed(9)
            assert torch.equal(Independent(TorchNormal(loc, scale), 1).rsample((5,)), expected)
            g = torch.Generator().manual_seed(9)
            assert torch.equal(TorchNormal(loc, scale).rsample((5,), generator=g), expected)
            # a subclass's own override is left alone
            assert torch.equal(OverridingNormal(loc, scale).rsample((2,)), torch.full((2, 3), 7.0))


def test_restores_on_exception_nests_decorates_and_threads():
    before = class_snapshot()
    with pytest.raises(KeyError):
        with torchdist_fast.patch():
            raise KeyError("boom")
    assert class_snapshot() == before
    with torchdist_fast.patch():
        with torchdist_fast.patch():
            assert TorchNormal.rsample is normal_methods.rsample
        assert TorchNormal.rsample is normal_methods.rsample  # the inner exit keeps the outer scope
    assert class_snapshot() == before

    @torchdist_fast.patch()
    def draw():
        return TorchNormal(0.0, 1.0).rsample_and_log_prob((2,))

    assert draw()[0].shape == (2,) and draw()[1].shape == (2,)
    assert class_snapshot() == before

    errors = []

    def worker():
        try:
            for _ in range(50):
                with torchdist_fast.patch():
                    TorchNormal(0.0, 1.0).rsample_and_log_prob()
        except Exception as e:  # noqa: BLE001 (collected, asserted below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and class_snapshot() == before


def test_module_arguments_are_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="takes no arguments"):
        torchdist_fast.patch("some.module")
