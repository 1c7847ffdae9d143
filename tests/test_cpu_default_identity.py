"""On CPU, in the default mode, torchdist_fast.Normal is torch.distributions.Normal bit for bit on
the training path: samples, log_prob, entropy, the fused pairs, their gradients and the errors,
and a few hundred steps of an actor-critic trained with either class end with equal weights.

(cdf / icdf / log_cdf keep their accurate tails and are compared with tolerances in
test_normal_conformance.py; docs/normal.md states the rule per method.)"""
import pytest
import torch
import torch.nn as nn

import torchdist_fast
from normal_modes import default_validation  # noqa: F401  (autouse fixture)
from torchdist_fast import Normal
from torchdist_fast.routing import TorchNormal

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (loc, scale) builders: broadcast tensors, numbers, mixed numbers and tensors, mixed dtypes
PARAMS = {
    "tensors": lambda dt: (torch.randn(2, 3, dtype=dt), torch.rand(3, dtype=dt) + 0.5),
    "scalars": lambda dt: (0.3, 2.0),
    "number_scale": lambda dt: (torch.randn(4, dtype=dt), 0.7),
    "zero_dim": lambda dt: (torch.tensor(0.2, dtype=dt), torch.tensor(1.3, dtype=dt)),
    "mixed_dtypes": lambda dt: (torch.randn(3, dtype=dt), torch.rand(3, dtype=torch.float64) + 0.5),
}


def grad_leaves(loc, scale):
    leaves = []
    out = []
    for t in (loc, scale):
        if isinstance(t, torch.Tensor):
            t = t.detach().clone().requires_grad_()
            leaves.append(t)
        out.append(t)
    return out, leaves


def surface(cls, loc, scale, value, seed):
    """Every number a training loop reads from a Normal, plus the gradients of their sum."""
    (loc, scale), leaves = grad_leaves(loc, scale)
    value = value.detach().clone().requires_grad_()
    d = cls(loc, scale)
    out = {}
    for name, draw in [
        ("rsample", lambda: d.rsample((4,))),
        ("sample", lambda: d.sample((4,))),
        ("rsample_and_log_prob", lambda: d.rsample_and_log_prob((4,)) if cls is Normal else (lambda z: (z, d.log_prob(z)))(d.rsample((4,)))),
        ("sample_and_log_prob", lambda: d.sample_and_log_prob((4,)) if cls is Normal else (lambda z: (z, d.log_prob(z)))(d.sample((4,)))),
        ("generator", lambda: d.rsample((2,), generator=torch.Generator().manual_seed(seed)) if cls is Normal
         else d.loc + torch.empty(d._extended_shape((2,)), dtype=d.loc.dtype).normal_(generator=torch.Generator().manual_seed(seed)) * d.scale),
    ]:
        torch.manual_seed(seed)
        result = draw()
        for i, t in enumerate(result if isinstance(result, tuple) else (result,)):
            out[f"{name}[{i}]"] = t
        out[f"{name}.rng_state"] = torch.get_rng_state()
    out["log_prob"] = d.log_prob(value)
    out["entropy"] = d.entropy()
    for name in ("mean", "mode", "stddev", "variance"):
        out[name] = getattr(d, name)
    out["perplexity"] = d.perplexity()
    out["expand.log_prob"] = d.expand((5,) + tuple(d.batch_shape)).log_prob(value)
    loss = sum(t.float().sum() for t in out.values() if t.requires_grad)
    inputs = leaves + [value]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    for i, g in enumerate(grads):
        out[f"grad[{i}]"] = g if g is not None else torch.zeros(())
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", PARAMS)
def test_whole_surface_bit_identical(dtype, params):
    torch.manual_seed(100)
    loc, scale = PARAMS[params](dtype)
    batch_shape = torch.broadcast_shapes(*(torch.as_tensor(t).shape for t in (loc, scale)))
    value = torch.randn(batch_shape, dtype=torch.float64).mul(2).to(dtype)
    ours = surface(Normal, loc, scale, value, seed=7)
    ref = surface(TorchNormal, loc, scale, value, seed=7)
    assert ours.keys() == ref.keys()
    for key in ref:
        a, b = ours[key], ref[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert torch.equal(a, b), f"{key} differs from torch.distributions.Normal"


@pytest.mark.parametrize(
    "value",
    [torch.tensor([0, 1, 2]), torch.tensor(0.5, dtype=torch.float64), torch.randn(3, dtype=torch.float16),
     torch.randn(2, 3, dtype=torch.float64)],
    ids=["int64", "float64-0dim", "float16", "float64"],
)
def test_log_prob_promotion_bit_identical(value):
    loc, scale = torch.randn(3), torch.rand(3) + 0.5
    a, b = Normal(loc, scale).log_prob(value), TorchNormal(loc, scale).log_prob(value)
    assert a.dtype == b.dtype and torch.equal(a, b)


BAD = {
    "negative scale": lambda N: N(torch.zeros(2), torch.tensor([1.0, -1.0])),
    "nan loc": lambda N: N(torch.tensor([float("nan")]), torch.ones(1)),
    "nan value": lambda N: N(torch.zeros(2), torch.ones(2)).log_prob(torch.tensor([0.0, float("nan")])),
    "value shape": lambda N: N(torch.zeros(2), torch.ones(2)).log_prob(torch.zeros(3)),
    "value number": lambda N: N(torch.zeros(2), torch.ones(2)).log_prob(1.0),
    "negative sample shape": lambda N: N(torch.zeros(2), torch.ones(2)).rsample((-1,)),
    "mixed devices": lambda N: N(torch.zeros(2), torch.ones(2, device="meta")),
    "no validation, negative scale sample": lambda N: N(torch.zeros(2), -torch.ones(2), validate_args=False).sample(),
}


@pytest.mark.parametrize("case", BAD)
def test_errors_are_torchs(case):
    with pytest.raises(Exception) as ref:
        BAD[case](TorchNormal)
    with pytest.raises(Exception) as ours:
        BAD[case](Normal)
    assert type(ours.value) is type(ref.value)
    assert str(ours.value).replace("Normal", "N") == str(ref.value).replace("Normal", "N")


def test_stable_log_prob_is_behind_its_switch():
    loc, scale = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1e3])
    value = torch.tensor([1e15, 1e20])
    assert torch.equal(Normal(loc, scale).log_prob(value), TorchNormal(loc, scale).log_prob(value))
    assert TorchNormal(loc, scale).log_prob(value)[1] == -float("inf")  # (x - loc)**2 overflows float32
    with torchdist_fast.cpu_log_prob("stable"):
        assert torch.isfinite(Normal(loc, scale).log_prob(value)).all()
    with torchdist_fast.cpu_sampling("philox"):
        assert torch.isfinite(Normal(loc, scale).log_prob(value)).all()
    with pytest.raises(ValueError, match="cpu_log_prob must be one of"):
        torchdist_fast.set_cpu_log_prob("fast")


# ---------------------------------------------------------------- a training loop
class ActorCritic(nn.Module):
    def __init__(self, obs=6, act=2, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs, hidden), nn.Tanh())
        self.mu = nn.Linear(hidden, act)
        self.log_std = nn.Parameter(torch.full((act,), -0.5))
        self.q = nn.Sequential(nn.Linear(obs + act, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def train_actor_critic(normal_cls, steps, fused: bool):
    """SAC-flavoured updates on a toy task, in plain torch: the actor rsamples a tanh-squashed
    action, the critic regresses a reward, the score-function term uses sample + log_prob."""
    torch.manual_seed(0)
    net = ActorCritic()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    target = torch.randn(6, 2)
    for _ in range(steps):
        obs = torch.randn(64, 6)
        dist = normal_cls(net.mu(net.body(obs)), net.log_std.exp())
        if fused:
            u, log_prob = dist.rsample_and_log_prob()
        else:
            u = dist.rsample()
            log_prob = dist.log_prob(u)
        action = torch.tanh(u)
        log_prob = (log_prob - torch.log1p(-action.pow(2) + 1e-6)).sum(-1)
        reward = -((action - obs @ target).pow(2)).sum(-1)
        q = net.q(torch.cat([obs, action.detach()], -1)).squeeze(-1)
        critic_loss = (q - reward).pow(2).mean()
        actor_loss = (0.1 * log_prob - net.q(torch.cat([obs, action], -1)).squeeze(-1)).mean()
        if fused:
            a, score_lp = dist.sample_and_log_prob()
        else:
            a = dist.sample()
            score_lp = dist.log_prob(a)
        advantage = (-((torch.tanh(a) - obs @ target).pow(2)).sum(-1)).detach()
        pg_loss = -(score_lp.sum(-1) * (advantage - advantage.mean())).mean() * 1e-2
        loss = critic_loss + actor_loss + pg_loss - 1e-3 * dist.entropy().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.fixture
def one_thread():
    """Tiny matmuls: one intra-op thread is 20x faster than two on a busy 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_training_loop_unchanged_by_the_swap(one_thread):
    steps = 300
    reference = train_actor_critic(TorchNormal, steps, fused=False)
    assert torch.isfinite(reference).all()
    assert torch.equal(train_actor_critic(Normal, steps, fused=False), reference)
    assert torch.equal(train_actor_critic(Normal, steps, fused=True), reference)
    with torchdist_fast.patch():
        assert torch.equal(train_actor_critic(TorchNormal, steps, fused=False), reference)
    # the check can fail: a one-ulp difference in log_prob moves the weights within the run
    with torchdist_fast.cpu_log_prob("stable"):
        assert not torch.equal(train_actor_critic(Normal, 20, fused=False), train_actor_critic(TorchNormal, 20, fused=False))
