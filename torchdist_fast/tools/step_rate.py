"""``python -m torchdist_fast.tools.step_rate``: training steps per second of two small policy updates.

The RL case where a step is bound by per-call cost, not bandwidth (batch 256, action dim 8):
  * ``sac``: a SAC-style actor update: MLP -> Normal(mu, std) -> rsample, log_prob, tanh
    squashing with its log-det correction, a fixed critic, backward, SGD step;
  * ``reinforce``: a REINFORCE update: MLP -> Normal -> sample, log_prob * advantage, backward, SGD.
Each with ``torch.distributions.Normal`` and with ``torchdist_fast.Normal`` (ours uses the fused
``rsample_and_log_prob`` / ``sample_and_log_prob``), in eager mode, under ``torch.compile``, and
(CUDA) under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: ours needs the CUDA backend
extension for graph-safe draws, see docs/compile.md). A column that fails says why in the
table instead of a number. Compile warm-up is excluded; timing ends with a device sync.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

MODES = ("eager", "compile", "reduce-overhead")
TASKS = ("sac", "reinforce")


def _make(task: str, impl: str, device, batch: int, obs_dim: int, act_dim: int, seed: int = 0):
    """(step function, parameters): one update of ``task`` with ``impl``'s Normal."""
    import torch

    import torchdist_fast

    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(obs_dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2 * act_dim))
    for p in net.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    net = net.to(device)
    critic = (torch.randn(act_dim, generator=gen) * 0.5).to(device)
    obs = torch.randn(batch, obs_dim, generator=gen).to(device)
    advantage = torch.randn(batch, generator=gen).to(device)
    normal = torch.distributions.Normal if impl == "torch" else torchdist_fast.Normal

    def loss_sac():
        mu, log_std = net(obs).chunk(2, -1)
        d = normal(mu, log_std.clamp(-5, 2).exp(), validate_args=False)
        if impl == "torch":
            z = d.rsample()
            lp = d.log_prob(z)
        else:
            z, lp = d.rsample_and_log_prob()
        a = z.tanh()
        lp = lp.sum(-1) - torch.log1p(-a * a + 1e-6).sum(-1)
        return (0.2 * lp - a @ critic).mean()

    def loss_reinforce():
        mu, log_std = net(obs).chunk(2, -1)
        d = normal(mu, log_std.clamp(-5, 2).exp(), validate_args=False)
        if impl == "torch":
            lp = d.log_prob(d.sample())
        else:
            _, lp = d.sample_and_log_prob()
        return -(lp.sum(-1) * advantage).mean()

    return (loss_sac if task == "sac" else loss_reinforce), list(net.parameters())


def steps_per_second(task: str, impl: str, mode: str, device: str, steps: int, batch: int = 256, act_dim: int = 8,
                     obs_dim: int = 17) -> float:
    import torch

    loss_fn, params = _make(task, impl, torch.device(device), batch, obs_dim, act_dim)
    if mode != "eager":
        torch._dynamo.reset()
        loss_fn = torch.compile(loss_fn, mode="reduce-overhead" if mode == "reduce-overhead" else None)
    opt = torch.optim.SGD(params, lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    for _ in range(5 if mode == "eager" else 8):  # warm-up (compile, CUDA graph recording)
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps / (time.perf_counter() - t0)


def measure(device: str, steps: int, modes=MODES, tasks=TASKS) -> dict:
    import torch

    rows = {}
    for task in tasks:
        for mode in modes:
            if mode == "reduce-overhead" and device != "cuda":
                continue  # CUDA graphs: a GPU mode
            for impl in ("torch", "torchdist_fast"):
                try:
                    value = steps_per_second(task, impl, mode, device, steps)
                except Exception as e:  # reported in the table, not hidden
                    value = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                rows[f"{task} | {mode} | {impl}"] = value
    return {"device": device, "steps": steps, "rows": rows,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                            "date": time.strftime("%Y-%m-%d")}}


def table(result: dict) -> str:
    lines = [f"training steps per second, {result['device']}, batch 256 x action dim 8 ({result['steps']} steps)",
             "| task | mode | torch.distributions | torchdist_fast | ours / torch |", "|---|---|---|---|---|"]
    rows = result["rows"]
    for key in rows:
        task, mode, impl = key.split(" | ")
        if impl != "torch":
            continue
        t, o = rows[key], rows.get(f"{task} | {mode} | torchdist_fast")
        ratio = f"{o / t:.2f}" if isinstance(t, float) and isinstance(o, float) else "-"
        fmt = (lambda v: f"{v:.0f}/s" if isinstance(v, float) else str(v))
        lines.append(f"| {task} | {mode} | {fmt(t)} | {fmt(o)} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchdist_fast.tools.step_rate", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=200, help="timed steps per column (default 200)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    result = measure(args.device, args.steps, args.modes, args.tasks)
    from .bench import print_and_save

    return print_and_save(table(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
