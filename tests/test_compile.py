"""Under torch.compile(fullgraph=True) and torch.utils.checkpoint: no breaks, no recompiles, fresh noise."""
import pytest
import torch
import torch._dynamo
from torch.utils.checkpoint import checkpoint

import torchdist_fast  # noqa: F401
from torchdist_fast.functional import draw_seed_offset

OPS = torch.ops.torchdist_fast


def rsample_log_prob(loc, scale, sample_shape=()):
    shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc.shape, scale.shape))
    numel = 1
    for s in shape:
        numel *= s
    return OPS.normal_rsample_log_prob(loc, scale, list(sample_shape), draw_seed_offset(loc.device, numel))


def forward_loss(loc, scale):
    z, lp = rsample_log_prob(loc, scale, (3,))
    return (z * z).mean() + lp.mean(), z, lp


def train_step(loss_fn, loc, scale):
    # the usual split: the forward (and with it the backward graph) compiled, .backward() outside
    loss, z, lp = loss_fn(loc, scale)
    loss.backward()
    return z.detach(), lp.detach()


def two_draws(loc, scale):
    return rsample_log_prob(loc, scale)[0], rsample_log_prob(loc, scale)[0]


def _params():
    loc = torch.randn(4, 5, requires_grad=True)
    scale = (torch.rand(5) + 0.5).requires_grad_()
    return loc, scale


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compiled_training_step_matches_eager_without_recompiling(backend, no_recompiles, cpu_kernel):
    compiled_loss = torch.compile(forward_loss, fullgraph=True, backend=backend)
    loc, scale = _params()
    results = []
    for it in range(3):
        torch.manual_seed(100 + it)
        z_e, lp_e = train_step(forward_loss, loc, scale)
        g_eager = (loc.grad.clone(), scale.grad.clone())
        loc.grad = scale.grad = None
        torch.manual_seed(100 + it)
        z_c, lp_c = train_step(compiled_loss, loc, scale)
        torch.testing.assert_close(z_c, z_e)
        torch.testing.assert_close(lp_c, lp_e)
        torch.testing.assert_close((loc.grad, scale.grad), g_eager)
        loc.grad = scale.grad = None
        results.append(z_c)
    # a new step draws new noise (the generator advanced; nothing was baked into the graph)
    assert not torch.equal(results[0], results[1])


def test_generator_advances_as_in_eager(no_recompiles):
    step = torch.compile(two_draws, fullgraph=True)
    loc, scale = _params()
    torch.manual_seed(0)
    two_draws(loc, scale)
    after_eager = torch.get_rng_state()
    torch.manual_seed(0)
    step(loc, scale)
    assert torch.equal(torch.get_rng_state(), after_eager)


def test_two_draws_in_one_graph_differ(no_recompiles):
    step = torch.compile(two_draws, fullgraph=True)
    loc, scale = _params()
    a, b = step(loc, scale)
    assert not torch.equal(a, b)
    c, d = step(loc, scale)
    assert not torch.equal(a, c) and not torch.equal(b, d)


def test_checkpoint_recomputes_the_same_noise(cpu_kernel):
    loc, scale = _params()

    def block(loc, scale):
        z, lp = rsample_log_prob(loc, scale, (2,))
        return (z * z).sum() + lp.sum()

    torch.manual_seed(7)
    block(loc, scale).backward()
    expected = (loc.grad.clone(), scale.grad.clone())
    loc.grad = scale.grad = None
    torch.manual_seed(7)
    checkpoint(block, loc, scale, use_reentrant=False).backward()
    torch.testing.assert_close((loc.grad, scale.grad), expected)


@pytest.mark.parametrize("preserve_rng_state", [True, False])
@pytest.mark.parametrize("through", ["ops", "Normal"])
def test_checkpoint_context_saves_the_draws(through, preserve_rng_state, cpu_kernel):
    """checkpoint(..., context_fn=torchdist_fast.checkpoint_context): the draw is saved, not repeated
    (the generator moves once), and the gradients are those without checkpointing, even with no
    generator state restored for the recompute (what CUDA graph capture needs)."""
    import torchdist_fast

    loc, scale = _params()

    def block(loc, scale):
        if through == "ops":
            z, lp = rsample_log_prob(loc, scale, (2,))
        else:
            z, lp = torchdist_fast.Normal(loc, scale).rsample_and_log_prob((2,))
        return (z * z).sum() + lp.sum()

    with torchdist_fast.cpu_sampling("philox"):
        torch.manual_seed(7)
        block(loc, scale).backward()
        expected = (loc.grad.clone(), scale.grad.clone(), torch.get_rng_state())
        loc.grad = scale.grad = None
        torch.manual_seed(7)
        checkpoint(block, loc, scale, use_reentrant=False, context_fn=torchdist_fast.checkpoint_context,
                   preserve_rng_state=preserve_rng_state).backward()
    torch.testing.assert_close((loc.grad, scale.grad), expected[:2])
    assert torch.equal(torch.get_rng_state(), expected[2])
