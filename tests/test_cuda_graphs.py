"""Sampling under CUDA graph capture (GPU only): captured, replayed with fresh noise, the same
numbers as eager for the same generator position, backward and checkpoint inside the graph.

Capture takes the stream position on the device (the CUDA backend's ``draw_position`` op):
without the built extension the capture is refused with a RuntimeError that says how to build it.
"""
import pytest
import torch

import torchdist_fast
from torchdist_fast import cuda_backend

pytestmark = pytest.mark.gpu

needs_extension = pytest.mark.skipif(
    not cuda_backend.available(), reason=f"needs the CUDA backend extension: {cuda_backend.unavailable_reason()}")


def _params(requires_grad=True):
    g = torch.Generator(device="cuda").manual_seed(5)
    loc = torch.randn(256, 8, device="cuda", generator=g).requires_grad_(requires_grad)
    scale = (torch.rand(256, 8, device="cuda", generator=g) + 0.5).requires_grad_(requires_grad)
    return loc, scale


def _capture(fn):
    """(graph, static outputs) of ``fn`` captured after a warm-up on a side stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def test_capture_without_the_extension_says_how_to_build_it():
    if cuda_backend.available():
        pytest.skip("the extension is built")
    loc, scale = _params(False)
    with pytest.raises(RuntimeError, match="CUDA backend extension"):
        _capture(lambda: torchdist_fast.Normal(loc, scale).rsample())


DISTRIBUTIONS = {"Normal": torchdist_fast.Normal, "TanhNormal": torchdist_fast.TanhNormal,
                 "IndependentNormal": lambda loc, scale: torchdist_fast.Normal(loc, scale).to_event(1)}


@needs_extension
@pytest.mark.parametrize("dist, method", [("Normal", "rsample"), ("Normal", "sample"), ("Normal", "rsample_and_log_prob"),
                                          ("TanhNormal", "rsample_and_log_prob"),
                                          ("IndependentNormal", "rsample_and_log_prob")])
def test_replays_draw_fresh_noise_equal_to_eager_at_the_same_position(dist, method):
    loc, scale = _params(False)

    def draw():
        out = getattr(DISTRIBUTIONS[dist](loc, scale), method)()
        return out if isinstance(out, tuple) else (out,)

    graph, static = _capture(draw)
    gen = torch.cuda.default_generators[torch.cuda.current_device()]
    torch.cuda.manual_seed(1234)
    graph.replay()
    first = [t.clone() for t in static]
    after_replay = gen.get_offset()
    graph.replay()
    second = [t.clone() for t in static]
    assert not torch.equal(first[0], second[0])
    torch.cuda.manual_seed(1234)
    eager = draw()
    assert gen.get_offset() == after_replay  # the generator moved as it does for the eager draw
    for a, b in zip(first, eager):
        assert torch.equal(a, b)


@needs_extension
def test_backward_in_the_graph_regenerates_the_forward_noise():
    loc, scale = _params()

    def step():
        z, lp = torchdist_fast.Normal(loc, scale).rsample_and_log_prob()
        loss = (z.tanh() * 1.5).sum() + lp.sum()
        return torch.autograd.grad(loss, (loc, scale)) + (z,)

    graph, static = _capture(step)
    torch.cuda.manual_seed(99)
    graph.replay()
    got = [t.clone() for t in static]
    torch.cuda.manual_seed(99)
    want = step()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@needs_extension
def test_two_generators_in_one_graph():
    loc, scale = _params(False)
    g1 = torch.Generator(device="cuda").manual_seed(1)
    g2 = torch.Generator(device="cuda").manual_seed(2)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(g1)
    graph.register_generator_state(g2)
    d = torchdist_fast.Normal(loc, scale)
    d.rsample(generator=g1), d.rsample(generator=g2)  # warm-up
    with torch.cuda.graph(graph):
        a, b = d.rsample(generator=g1), d.rsample(generator=g2)
    g1.manual_seed(10), g2.manual_seed(20)
    graph.replay()
    got = a.clone(), b.clone()
    graph.replay()
    assert not torch.equal(got[0], a) and not torch.equal(got[1], b)
    g1.manual_seed(10), g2.manual_seed(20)
    assert torch.equal(got[0], d.rsample(generator=g1)) and torch.equal(got[1], d.rsample(generator=g2))


class _Actor(torch.nn.Module):
    """A small policy head: Normal(mu, exp(log_std)), rsample, tanh and log_prob (optionally
    under non-reentrant activation checkpointing)."""

    def __init__(self, normal, checkpointed):  # False, True, or "saved draws" (checkpoint_context)
        super().__init__()
        self.normal, self.checkpointed = normal, checkpointed
        self.net = torch.nn.Linear(8, 16)

    def _body(self, x):
        mu, log_std = self.net(x).chunk(2, -1)
        d = self.normal(mu, log_std.exp())
        z = d.rsample()
        return z.tanh().sum(-1) + d.log_prob(z).sum(-1)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        if self.checkpointed == "saved draws":  # no generator state to restore: capture allows it
            return checkpoint(self._body, x, use_reentrant=False, preserve_rng_state=False,
                              context_fn=torchdist_fast.checkpoint_context)
        if self.checkpointed:
            return checkpoint(self._body, x, use_reentrant=False)
        return self._body(x)


def _graphed_step(normal, checkpointed):
    """[(output, weight grad) of one replay of ``make_graphed_callables`` over the actor, the same
    computed eagerly by an identical copy], both from the generator state of manual_seed(3)."""
    import copy

    torch.manual_seed(0)
    actor = _Actor(normal, checkpointed).cuda()
    eager_actor = copy.deepcopy(actor)
    x = torch.randn(256, 8, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(actor, (x,))
    results = []
    for module in (graphed, eager_actor):
        module.net.weight.grad = None
        torch.cuda.manual_seed(3)
        out = module(x)
        out.sum().backward()
        results.append((out.detach().clone(), module.net.weight.grad.clone()))
    return results


@needs_extension
def test_make_graphed_callables_forward_and_backward():
    (out, grad), (out_eager, grad_eager) = _graphed_step(torchdist_fast.Normal, checkpointed=False)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_eager, rtol=1e-4, atol=1e-4)


@needs_extension
def test_checkpoint_in_a_captured_region_behaves_as_torchs_own_rng():
    """Activation checkpointing restores the generator state to recompute; under capture that is
    torch's business. Whatever torch.distributions.Normal does there (works, or raises), ours
    does too, and where it works the replay equals the eager step."""
    outcomes = []
    for normal in (torch.distributions.Normal, torchdist_fast.Normal):
        try:
            outcomes.append(_graphed_step(normal, checkpointed=True))
        except RuntimeError as e:
            outcomes.append(type(e))
    torch_outcome, ours = outcomes
    if isinstance(torch_outcome, type):
        assert ours is torch_outcome
    else:
        (out, grad), (out_eager, grad_eager) = ours
        torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, grad_eager, rtol=1e-4, atol=1e-4)


@needs_extension
def test_checkpoint_with_saved_draws_in_a_captured_region():
    """checkpoint_context saves the draws, so the recompute needs no generator state
    (preserve_rng_state=False): checkpointing works under capture, and a replay equals the eager step."""
    (out, grad), (out_eager, grad_eager) = _graphed_step(torchdist_fast.Normal, checkpointed="saved draws")
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_eager, rtol=1e-4, atol=1e-4)


@needs_extension
def test_reduce_overhead_replays_fresh_noise():
    loc, scale = _params(False)
    fn = torch.compile(lambda l, s: torchdist_fast.Normal(l, s).rsample(), mode="reduce-overhead", fullgraph=True)
    outs = [fn(loc, scale).clone() for _ in range(4)]
    assert all(not torch.equal(a, b) for a, b in zip(outs, outs[1:]))
    torch.cuda.manual_seed(8)
    a = fn(loc, scale).clone()
    torch.cuda.manual_seed(8)
    assert torch.equal(a, torchdist_fast.Normal(loc, scale).rsample())
