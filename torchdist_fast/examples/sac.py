"""Soft actor-critic (SAC) on a batch of 2-D point masses, with a tanh-squashed Gaussian policy:
torch's ``TransformedDistribution(Independent(Normal), [TanhTransform, AffineTransform])`` or
``torchdist_fast.TanhNormal`` (``--impl``; default: both in turn, same seed).

    python -m torchdist_fast.examples.sac
    python -m torchdist_fast.examples.sac --cpu-sampling philox     # CPU: the Philox stream

The task is REINFORCE's (``examples/reinforce.py``): reach a random target in the plane and stay
there, force clipped to [-2, 2] per axis, ``--envs`` environments stepped together, episodes of
``--horizon`` steps. SAC as usual: a replay buffer of tensors, twin Q critics with Polyak-averaged
targets, a fixed entropy weight ``--alpha``, one update of critics and actor (batch
``--batch-size``) per environment step. The actor's action and log-density come from
``rsample`` then ``log_prob`` (torch: through the transforms' cache) or from one
``TanhNormal.rsample_and_log_prob`` call (torchdist_fast: one kernel on CUDA).

Printed: the return of the mean action on fixed evaluation episodes before and after training,
updates per second (first 10 excluded) and the bytes autograd saves for one actor update (beyond
the batch and the parameters). Written to ``--out``: ``sac_return.png`` and ``sac.json``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.distributions import Independent, TransformedDistribution
from torch.distributions.transforms import AffineTransform, TanhTransform

import torchdist_fast
from torchdist_fast.examples import _common as C
from torchdist_fast.examples.reinforce import MAX_FORCE, PointMass


@dataclass
class SACConfig:
    envs: int = 64
    horizon: int = 40
    steps: int = 600
    batch_size: int = 256
    hidden: int = 64
    lr: float = 3e-3
    gamma: float = 0.95
    tau: float = 0.02
    alpha: float = 0.02
    eval_envs: int = 256
    seed: int = 0


def squashed_gaussian(impl: str, mean: torch.Tensor, std: torch.Tensor):
    """The policy distribution: the only thing ``--impl`` changes."""
    if impl == "torchdist_fast":
        return torchdist_fast.TanhNormal(mean, std, low=-MAX_FORCE, high=MAX_FORCE)
    if impl == "torch":
        base = Independent(torch.distributions.Normal(mean, std), 1)
        return TransformedDistribution(base, [TanhTransform(cache_size=1),
                                              AffineTransform(0.0, MAX_FORCE, event_dim=1, cache_size=1)])
    raise ValueError(f"impl must be one of {C.IMPLS}, got {impl!r}")


def action_and_log_prob(dist):
    """(action, log-density summed over the action dims) with gradients through the action."""
    if hasattr(dist, "rsample_and_log_prob"):
        return dist.rsample_and_log_prob()
    action = dist.rsample()
    return action, dist.log_prob(action)


class Actor(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, 2)
        self.log_std = nn.Linear(hidden, 2)

    def forward(self, obs):
        h = self.body(obs)
        return self.mean(h), self.log_std(h).clamp(-5.0, 2.0).exp()


class Critic(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.q = nn.ModuleList(
            nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            for _ in range(2))

    def forward(self, obs, action):
        x = torch.cat([obs, action], -1)
        return tuple(q(x).squeeze(-1) for q in self.q)


@torch.no_grad()
def evaluate(actor: Actor, cfg: SACConfig, device: torch.device) -> float:
    """Return of the deterministic action ``2 tanh(mean)`` on fixed episodes (the same for both impls)."""
    env = PointMass(cfg.eval_envs, device, torch.Generator().manual_seed(cfg.seed + 1))
    obs, total = env.reset(), 0.0
    for _ in range(cfg.horizon):
        mean, _std = actor(obs)
        obs, reward = env.step(MAX_FORCE * torch.tanh(mean))
        total += reward.mean().item()
    return total


def train(cfg: SACConfig, impl: str, device: torch.device, *, cpu_sampling: str | None = None,
          progress: bool = True, verbose: bool = True) -> dict:
    with C.sampling_mode(cpu_sampling):
        torch.manual_seed(cfg.seed)
        actor, critic = Actor(cfg.hidden).to(device), Critic(cfg.hidden).to(device)
        target = copy.deepcopy(critic).requires_grad_(False)
        actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr)
        env = PointMass(cfg.envs, device, torch.Generator().manual_seed(cfg.seed))
        capacity = cfg.envs * cfg.steps
        buf = {k: torch.zeros(capacity, d, device=device) for k, d in (("obs", 4), ("act", 2), ("next", 4))}
        buf["rew"] = torch.zeros(capacity, device=device)
        size = 0
        eval_before = evaluate(actor, cfg, device)
        obs = env.reset()
        returns, episode_return = [], torch.zeros(cfg.envs, device=device)
        bar = C.Progress(cfg.steps, f"sac [{impl}]", progress)
        timed_s, timed, saved_bytes = 0.0, 0, None
        for step in range(cfg.steps):
            with torch.no_grad():
                action = squashed_gaussian(impl, *actor(obs)).sample()
            next_obs, reward = env.step(action)
            sl = slice(size, size + cfg.envs)
            buf["obs"][sl], buf["act"][sl], buf["next"][sl], buf["rew"][sl] = obs, action, next_obs, reward
            size += cfg.envs
            episode_return += reward
            obs = next_obs
            if (step + 1) % cfg.horizon == 0:
                returns.append(episode_return.mean().item())
                episode_return.zero_()
                obs = env.reset()
            C.synchronize(device)
            t0 = time.perf_counter()
            idx = torch.randint(0, size, (cfg.batch_size,), device=device)
            o, a, r, o2 = buf["obs"][idx], buf["act"][idx], buf["rew"][idx], buf["next"][idx]
            with torch.no_grad():  # soft Bellman target (episodes are cut by time only: no terminal flag)
                a2, lp2 = action_and_log_prob(squashed_gaussian(impl, *actor(o2)))
                y = r + cfg.gamma * (torch.min(*target(o2, a2)) - cfg.alpha * lp2)
            q1, q2 = critic(o, a)
            critic_loss = (q1 - y).square().mean() + (q2 - y).square().mean()
            critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_opt.step()
            exclude = [o, *actor.parameters(), *critic.parameters()]
            with C.SavedTensorBytes(exclude) as saved:
                new_a, lp = action_and_log_prob(squashed_gaussian(impl, *actor(o)))
                actor_loss = (cfg.alpha * lp - torch.min(*critic(o, new_a))).mean()
            saved_bytes = saved.nbytes
            actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            actor_opt.step()
            with torch.no_grad():
                for p, tp in zip(critic.parameters(), target.parameters()):
                    tp.lerp_(p, cfg.tau)
            C.synchronize(device)
            if step >= 10:
                timed_s += time.perf_counter() - t0
                timed += 1
            bar.update(f"return {returns[-1]:.2f}" if returns else "")
        bar.close()
        eval_after = evaluate(actor, cfg, device)
    if verbose:
        print(f"[{impl}] return of the deterministic action on the evaluation episodes: {eval_before:.2f} -> {eval_after:.2f}")
    return {"impl": impl, "returns": returns, "eval_before": eval_before, "eval_after": eval_after,
            "updates_per_s": timed / timed_s if timed else None, "actor_saved_bytes": saved_bytes,
            "peak_bytes": C.peak_bytes(device)}


def build_parser() -> argparse.ArgumentParser:
    d = SACConfig()
    p = argparse.ArgumentParser(prog="python -m torchdist_fast.examples.sac", description=" ".join(__doc__.split("\n\n")[0].split()))
    C.add_common_args(p)
    p.add_argument("--envs", type=C.positive_int, default=d.envs, help=f"environments stepped together (default {d.envs})")
    p.add_argument("--horizon", type=C.positive_int, default=d.horizon, help=f"steps per episode (default {d.horizon})")
    p.add_argument("--steps", type=C.positive_int, default=d.steps, help=f"environment steps = updates (default {d.steps})")
    p.add_argument("--batch-size", type=C.positive_int, default=d.batch_size, help=f"replay batch per update (default {d.batch_size})")
    p.add_argument("--eval-envs", type=C.positive_int, default=d.eval_envs, help=f"evaluation episodes (default {d.eval_envs})")
    p.add_argument("--hidden", type=C.positive_int, default=d.hidden, help=f"MLP width (default {d.hidden})")
    p.add_argument("--lr", type=C.positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--alpha", type=C.positive_float, default=d.alpha, help=f"entropy weight (default {d.alpha})")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = C.prepare_out(parser, args.out)
    device = args.device or C.default_device()
    cfg = SACConfig(envs=args.envs, horizon=args.horizon, steps=args.steps, batch_size=args.batch_size,
                    hidden=args.hidden, lr=args.lr, alpha=args.alpha, eval_envs=args.eval_envs, seed=args.seed)
    print(C.describe_run(device, args.cpu_sampling))
    print(f"SAC: {cfg.envs} point masses, episodes of {cfg.horizon} steps, {cfg.steps} steps and updates "
          f"(batch {cfg.batch_size}), seed {cfg.seed}")
    runs = [train(cfg, impl, device, cpu_sampling=args.cpu_sampling, progress=not args.no_progress)
            for impl in C.selected_impls(args.impl)]
    print()
    print(C.format_table(
        ["impl", "eval return before", "eval return after", "updates/s", "actor step saved", "peak CUDA memory"],
        [[r["impl"], f"{r['eval_before']:.3f}", f"{r['eval_after']:.3f}",
          "-" if r["updates_per_s"] is None else f"{r['updates_per_s']:,.1f}", f"{r['actor_saved_bytes']:,} B",
          C.mib(r["peak_bytes"])] for r in runs]))
    curves = {r["impl"]: (list(range(1, len(r["returns"]) + 1)), r["returns"]) for r in runs}
    C.write_report(out, "sac_return.png", "sac.json", curves, xlabel="episode", ylabel="mean return of the sampled episodes",
                   title=f"SAC, {cfg.envs} point masses, {C.run_label(device, args.cpu_sampling)}\ntorch TransformedDistribution vs torchdist_fast.TanhNormal",
                   record={"config": asdict(cfg), "runs": runs}, device=device, sampling=args.cpu_sampling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
