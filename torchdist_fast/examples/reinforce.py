"""REINFORCE (the score-function estimator) on a batch of 2-D point masses, with
``torch.distributions.Normal`` or ``torchdist_fast.Normal`` (``--impl``; default: both in turn,
same seed).

    python -m torchdist_fast.examples.reinforce
    python -m torchdist_fast.examples.reinforce --cpu-sampling philox   # CPU: the Philox stream

The task, written here in plain torch and vectorized over ``--envs`` environments: a point mass
in the plane starts at rest at a random position and must reach a random target and stay there.
The action is a 2-D force (clipped to [-2, 2] per axis); the reward per step is minus the
distance to the target, minus a small force cost; an episode lasts ``--horizon`` steps.

The policy is Gaussian, ``Normal(mean_net(obs), exp(log_std))`` with a state-independent learned
``log_std``. Actions come from ``sample`` (no gradient through the action) and their
``log_prob`` carries the gradient: ``torchdist_fast.Normal.sample_and_log_prob`` does both in one
call; torch's class needs ``sample`` then ``log_prob``. The gradient estimate is
``sum_t log pi(a_t | s_t) (G_t - b_t)`` with the return-to-go ``G_t`` and a leave-one-out baseline
``b_t`` (the mean return-to-go of the *other* episodes of the batch at step t: it cuts the
variance and, not depending on the episode's own actions, adds no bias).

Printed: the learning curve (mean return of the sampled episodes per iteration) for each
implementation, the return of the mean action on fixed evaluation episodes before and after
training, and environment steps per second (first iteration excluded). Written to ``--out``:
``reinforce_return.png`` and ``reinforce.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from torchdist_fast.examples import _common as C

DT = 0.1
MAX_FORCE = 2.0
FORCE_COST = 0.01


@dataclass
class ReinforceConfig:
    envs: int = 1024
    horizon: int = 40
    iterations: int = 100
    hidden: int = 64
    lr: float = 3e-3
    eval_envs: int = 1024
    seed: int = 0


# ---------------------------------------------------------------------------------- the task
class PointMass:
    """A batch of point masses; all state lives in tensors on one device."""

    def __init__(self, n: int, device: torch.device, generator: torch.Generator):
        self.n, self.device, self.generator = n, device, generator

    def reset(self) -> torch.Tensor:
        u = torch.rand(self.n, 4, generator=self.generator).to(self.device)
        self.pos, self.target = 2 * u[:, :2] - 1, 2 * u[:, 2:] - 1  # both uniform in [-1, 1]^2
        self.vel = torch.zeros_like(self.pos)
        return self.obs()

    def obs(self) -> torch.Tensor:
        return torch.cat([self.target - self.pos, self.vel], dim=-1)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        force = action.clamp(-MAX_FORCE, MAX_FORCE)
        self.vel = 0.95 * self.vel + DT * force  # a little drag: stopping on the target is reachable
        self.pos = self.pos + DT * self.vel
        reward = -(self.target - self.pos).norm(dim=-1) - FORCE_COST * force.square().sum(-1)
        return self.obs(), reward


class Policy(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.log_std = nn.Parameter(torch.zeros(2))

    def dist(self, obs: torch.Tensor, normal):
        return normal(self.mean(obs), self.log_std.exp())


def act(dist) -> tuple[torch.Tensor, torch.Tensor]:
    """(action, summed log-probability): one call where the class has it (torchdist_fast),
    ``sample`` then ``log_prob`` otherwise (torch)."""
    if hasattr(dist, "sample_and_log_prob"):
        action, log_prob = dist.sample_and_log_prob()
    else:
        action = dist.sample()
        log_prob = dist.log_prob(action)
    return action, log_prob.sum(-1)


def rollout(policy: Policy, env: PointMass, normal, horizon: int):
    """(log-probabilities, rewards), each (horizon, envs)."""
    obs = env.reset()
    log_probs, rewards = [], []
    for _ in range(horizon):
        action, log_prob = act(policy.dist(obs, normal))
        obs, reward = env.step(action)
        log_probs.append(log_prob)
        rewards.append(reward)
    return torch.stack(log_probs), torch.stack(rewards)


def reinforce_loss(log_probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Minus the score-function surrogate, whose gradient is the REINFORCE estimate."""
    to_go = rewards.flip(0).cumsum(0).flip(0)  # G_t, (horizon, envs)
    n = to_go.shape[1]
    baseline = (to_go.sum(1, keepdim=True) - to_go) / (n - 1)  # leave-one-out mean at each t
    return -(log_probs * (to_go - baseline)).sum(0).mean()


@torch.no_grad()
def evaluate(policy: Policy, cfg: ReinforceConfig, device: torch.device) -> float:
    """Mean return of the mean action on fixed episodes: no sampling, so it measures the
    trained policy only, the same way for both implementations."""
    env = PointMass(cfg.eval_envs, device, torch.Generator().manual_seed(cfg.seed + 1))
    obs, total = env.reset(), 0.0
    for _ in range(cfg.horizon):
        obs, reward = env.step(policy.mean(obs))
        total += reward.mean().item()
    return total


def train(cfg: ReinforceConfig, impl: str, device: torch.device, *, cpu_sampling: str | None = None,
          progress: bool = True, verbose: bool = True) -> dict:
    """Train one policy with one implementation; returns the learning curve and the speed."""
    if cfg.envs < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 environments")
    normal = C.normal_class(impl)
    with C.sampling_mode(cpu_sampling):
        torch.manual_seed(cfg.seed)  # same initial policy, same noise stream for both implementations
        policy = Policy(cfg.hidden).to(device)
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        env = PointMass(cfg.envs, device, torch.Generator().manual_seed(cfg.seed))
        eval_before = evaluate(policy, cfg, device)
        returns = []
        bar = C.Progress(cfg.iterations, f"reinforce [{impl}]", progress)
        timed_s, timed_iters = 0.0, 0
        C.reset_peak(device)
        for it in range(cfg.iterations):
            C.synchronize(device)
            t0 = time.perf_counter()
            log_probs, rewards = rollout(policy, env, normal, cfg.horizon)
            loss = reinforce_loss(log_probs, rewards)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mean_return = rewards.sum(0).mean()
            C.synchronize(device)
            if it > 0:  # the first iteration warms up allocator and thread pools
                timed_s += time.perf_counter() - t0
                timed_iters += 1
            returns.append(mean_return.item())
            bar.update(f"return {returns[-1]:.2f}")
        bar.close()
        eval_after = evaluate(policy, cfg, device)
    if verbose:
        print(f"[{impl}] return of the mean action on the evaluation episodes: {eval_before:.2f} -> {eval_after:.2f}")
    return {
        "impl": impl,
        "returns": returns,
        "eval_before": eval_before,
        "eval_after": eval_after,
        "steps_per_s": timed_iters * cfg.envs * cfg.horizon / timed_s if timed_iters else None,
        "std": policy.log_std.exp().tolist(),
        "peak_bytes": C.peak_bytes(device),
    }


# ---------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = ReinforceConfig()
    p = argparse.ArgumentParser(prog="python -m torchdist_fast.examples.reinforce", description=" ".join(__doc__.split("\n\n")[0].split()))
    C.add_common_args(p)
    p.add_argument("--envs", type=C.positive_int, default=d.envs, help=f"episodes per iteration, at least 2 (default {d.envs})")
    p.add_argument("--horizon", type=C.positive_int, default=d.horizon, help=f"steps per episode (default {d.horizon})")
    p.add_argument("--iterations", type=C.positive_int, default=d.iterations, help=f"policy updates (default {d.iterations})")
    p.add_argument("--eval-envs", type=C.positive_int, default=d.eval_envs, help=f"evaluation episodes (default {d.eval_envs})")
    p.add_argument("--hidden", type=C.positive_int, default=d.hidden, help=f"MLP width (default {d.hidden})")
    p.add_argument("--lr", type=C.positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--log-every", type=C.positive_int, default=None,
                   help="print every k-th iteration of the learning curve (default: about 20 rows)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.envs < 2:
        parser.error("--envs must be at least 2 (the baseline of an episode is the mean of the others)")
    out = C.prepare_out(parser, args.out)
    device = args.device or C.default_device()
    cfg = ReinforceConfig(envs=args.envs, horizon=args.horizon, iterations=args.iterations, hidden=args.hidden,
                          lr=args.lr, eval_envs=args.eval_envs, seed=args.seed)

    print(C.describe_run(device, args.cpu_sampling))
    print(f"REINFORCE: {cfg.envs} point-mass episodes of {cfg.horizon} steps per iteration, "
          f"{cfg.iterations} iterations, seed {cfg.seed}")
    runs = [train(cfg, impl, device, cpu_sampling=args.cpu_sampling, progress=not args.no_progress)
            for impl in C.selected_impls(args.impl)]

    every = args.log_every or max(1, cfg.iterations // 20)
    shown = sorted(set(range(0, cfg.iterations, every)) | {cfg.iterations - 1})
    print()
    print(C.format_table(["iteration"] + [f"return {r['impl']}" for r in runs],
                         [[i + 1] + [f"{r['returns'][i]:.3f}" for r in runs] for i in shown]))
    print("(mean return of the iteration's sampled episodes)\n")
    print(C.format_table(
        ["impl", "eval return before", "eval return after", "env steps/s", "peak CUDA memory"],
        [[r["impl"], f"{r['eval_before']:.3f}", f"{r['eval_after']:.3f}",
          "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:,.0f}", C.mib(r["peak_bytes"])] for r in runs]))

    curves = {r["impl"]: (list(range(1, cfg.iterations + 1)), r["returns"]) for r in runs}
    C.write_report(out, "reinforce_return.png", "reinforce.json", curves, xlabel="iteration", ylabel="mean return per episode",
                   title=f"REINFORCE, {cfg.envs} point masses, {C.run_label(device, args.cpu_sampling)}\ntorch.distributions vs torchdist_fast",
                   record={"config": asdict(cfg), "runs": runs}, device=device, sampling=args.cpu_sampling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
