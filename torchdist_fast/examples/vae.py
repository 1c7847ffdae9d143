"""A variational autoencoder trained with large batches, with ``torch.distributions.Normal`` or
``torchdist_fast.Normal`` (``--impl``; default: both in turn, same seed).

    python -m torchdist_fast.examples.vae                        # both, default device
    python -m torchdist_fast.examples.vae --cpu-sampling philox  # CPU: torchdist_fast draws the Philox stream

The data are made here, deterministically from ``--seed``: 12x12 images of one blurred stroke
(an elongated Gaussian) with a random centre, angle and brightness, plus pixel noise: four
factors of variation that a VAE with a 4-dimensional latent space learns to encode.

The model: an MLP encoder giving ``q(z|x) = Normal(mu, sigma)``, the reparameterization trick
``z = q.rsample()``, an MLP decoder giving the mean of ``p(x|z) = Normal(mean, s)`` with one
learned pixel noise ``s`` (so the ELBO is a true lower bound on log p(x) for continuous pixels),
a standard-normal prior and the analytic KL (``torch.distributions.kl_divergence``, which works
for both classes). The loss is the negative ELBO in nats per image.

Printed: the training and held-out ELBO per epoch for each implementation, throughput (training
images per second, first step excluded), memory (CUDA: ``torch.cuda.max_memory_allocated``;
every device: bytes autograd saves for backward in one training step beyond the batch and the
parameters, measured with ``torch.autograd.graph.saved_tensors_hooks``). Written to ``--out``:
``vae_elbo.png`` (ELBO per step, both implementations) and ``vae.json``.

On CPU, ``torchdist_fast.Normal`` is torch's Normal bit for bit by default
(``cpu_sampling("torch")``: samples, ``log_prob`` and the KL), so the two runs give the same
numbers; ``--cpu-sampling philox`` makes it draw the Philox stream of the GPU kernels instead
(different noise, the same distribution) and use the fused ``log_prob`` and KL
(``torchdist_fast.kl``: ``kl_divergence`` with a ``torchdist_fast.Normal`` dispatches there).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.distributions import kl_divergence

from torchdist_fast.examples import _common as C

IMAGE_SIDE = 12
PIXEL_NOISE = 0.05


@dataclass
class VAEConfig:
    batch_size: int = 4096
    epochs: int = 20
    dataset_size: int = 65536
    eval_size: int = 4096
    latent_dim: int = 4
    hidden: int = 256
    lr: float = 3e-3
    seed: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_size // self.batch_size  # the last partial batch is dropped


# ---------------------------------------------------------------------------------- data
def make_images(n: int, generator: torch.Generator, side: int = IMAGE_SIDE) -> torch.Tensor:
    """``n`` flattened ``side x side`` images of one stroke each; a pure function of the
    generator's state (CPU, float32)."""
    u = torch.rand(n, 4, generator=generator)
    cx = 2.5 + u[:, 0] * (side - 6)  # centre kept off the border: the whole stroke is seen
    cy = 2.5 + u[:, 1] * (side - 6)
    angle = u[:, 2] * math.pi
    brightness = 0.5 + 0.5 * u[:, 3]
    coords = torch.arange(side, dtype=torch.float32)
    dx = coords.view(1, 1, side) - cx.view(n, 1, 1)
    dy = coords.view(1, side, 1) - cy.view(n, 1, 1)
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    img = brightness.view(n, 1, 1) * torch.exp(-0.5 * ((along / 2.5) ** 2 + (across / 0.8) ** 2))
    # pixel noise makes the data a density in R^144 (without it the learned decoder noise
    # could shrink without bound on the empty background and the ELBO would diverge)
    img = img + PIXEL_NOISE * torch.randn(n, side, side, generator=generator)
    return img.reshape(n, side * side)


def make_datasets(cfg: VAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) images from ``cfg.seed``: the same on every run and every rank."""
    g = torch.Generator().manual_seed(cfg.seed)
    return make_images(cfg.dataset_size, g), make_images(cfg.eval_size, g)


# ---------------------------------------------------------------------------------- model
class VAE(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(data_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, data_dim)
        )
        # log s of p(x|z), learned. Starts at s = 0.135, near the pixels' spread: from s = 1, Adam
        # (steps of about lr in log s) would spend most of a short run just shrinking s
        self.log_pixel_scale = nn.Parameter(torch.tensor(-2.0))

    def elbo(self, x: torch.Tensor, normal, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-image ELBO (nats), one latent sample each. ``normal`` is the Normal class;
        ``generator`` (torchdist_fast.Normal only: torch's ``rsample`` has no such argument)
        gives the noise its own stream, as the distributed example does per rank."""
        mu, pre_scale = self.encoder(x).chunk(2, dim=-1)
        q = normal(mu, nn.functional.softplus(pre_scale) + 1e-4)  # softplus: no exp overflow early on
        z = q.rsample() if generator is None else q.rsample(generator=generator)  # the reparameterization trick
        mean = self.decoder(z)
        reconstruction = normal(mean, self.log_pixel_scale.exp()).log_prob(x).sum(-1)
        prior = normal(torch.zeros_like(mu), torch.ones_like(mu))
        return reconstruction - kl_divergence(q, prior).sum(-1)

    def forward(self, x: torch.Tensor, normal, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.elbo(x, normal, generator)  # DistributedDataParallel hooks into forward


def build_model(cfg: VAEConfig, device: torch.device) -> VAE:
    torch.manual_seed(cfg.seed)  # same initial weights for both implementations
    return VAE(IMAGE_SIDE * IMAGE_SIDE, cfg.latent_dim, cfg.hidden).to(device)


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, normal, batch_size: int) -> float:
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        total += model.elbo(x[i : i + batch_size], normal).sum().item()
    return total / x.shape[0]


# ---------------------------------------------------------------------------------- training
def train(cfg: VAEConfig, impl: str, device: torch.device, *, cpu_sampling: str | None = None,
          progress: bool = True, verbose: bool = True) -> dict:
    """Train one VAE with one implementation; returns the curves and measurements.

    The noise comes from the device's default generator, seeded by ``build_model``: with the
    default CPU sampling the two implementations see the very same noise.
    """
    normal = C.normal_class(impl)
    train_x, eval_x = (t.to(device) for t in make_datasets(cfg))
    order = torch.Generator().manual_seed(cfg.seed + 1)  # batch order: the same for both
    with C.sampling_mode(cpu_sampling):
        model = build_model(cfg, device)
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        steps = cfg.steps_per_epoch
        bar = C.Progress(cfg.epochs * steps, f"vae [{impl}]", progress)
        eval_elbo = [evaluate(model, eval_x, normal, cfg.batch_size)]
        train_elbo, step_elbo = [], []
        saved_bytes, timed_s, timed_steps = None, 0.0, 0
        C.reset_peak(device)
        for epoch in range(cfg.epochs):
            perm = torch.randperm(cfg.dataset_size, generator=order).to(device)
            epoch_sum = torch.zeros((), device=device)  # summed on device: no sync per step
            for s in range(steps):
                first = epoch == 0 and s == 0
                C.synchronize(device)
                t0 = time.perf_counter()
                x = train_x[perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]]
                if first:
                    # the first step also measures what autograd keeps; it is not timed
                    with C.SavedTensorBytes(exclude=[x, *params]) as saved:
                        elbo = model.elbo(x, normal).mean()
                    saved_bytes = saved.nbytes
                else:
                    elbo = model.elbo(x, normal).mean()
                opt.zero_grad(set_to_none=True)
                (-elbo).backward()
                opt.step()
                epoch_sum += elbo.detach()
                step_elbo.append(elbo.detach())
                C.synchronize(device)
                if not first:
                    timed_s += time.perf_counter() - t0
                    timed_steps += 1
                bar.update()
            train_elbo.append(epoch_sum.item() / steps)
            eval_elbo.append(evaluate(model, eval_x, normal, cfg.batch_size))
            if verbose:
                bar.write(f"[{impl}] epoch {epoch + 1}/{cfg.epochs}: train ELBO {train_elbo[-1]:9.3f}  "
                          f"held-out ELBO {eval_elbo[-1]:9.3f} nats/image")
        bar.close()
    return {
        "impl": impl,
        "train_elbo": train_elbo,
        "eval_elbo": eval_elbo,
        "step_elbo": [v.item() for v in step_elbo],
        "samples_per_s": timed_steps * cfg.batch_size / timed_s if timed_steps else None,
        "saved_bytes_per_step": saved_bytes,
        "peak_bytes": C.peak_bytes(device),
        "pixel_scale": model.log_pixel_scale.exp().item(),
    }


# ---------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = VAEConfig()
    p = argparse.ArgumentParser(prog="python -m torchdist_fast.examples.vae", description=" ".join(__doc__.split("\n\n")[0].split()))
    C.add_common_args(p)
    p.add_argument("--batch-size", type=C.positive_int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    p.add_argument("--epochs", type=C.positive_int, default=d.epochs, help=f"(default {d.epochs})")
    p.add_argument("--dataset-size", type=C.positive_int, default=d.dataset_size,
                   help=f"training images; steps per epoch = dataset size // batch size (default {d.dataset_size})")
    p.add_argument("--eval-size", type=C.positive_int, default=d.eval_size, help=f"held-out images (default {d.eval_size})")
    p.add_argument("--latent-dim", type=C.positive_int, default=d.latent_dim, help=f"(default {d.latent_dim})")
    p.add_argument("--hidden", type=C.positive_int, default=d.hidden, help=f"MLP width (default {d.hidden})")
    p.add_argument("--lr", type=C.positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size > args.dataset_size:
        parser.error(f"--batch-size {args.batch_size} is larger than --dataset-size {args.dataset_size}")
    out = C.prepare_out(parser, args.out)
    device = args.device or C.default_device()
    cfg = VAEConfig(batch_size=args.batch_size, epochs=args.epochs, dataset_size=args.dataset_size,
                    eval_size=args.eval_size, latent_dim=args.latent_dim, hidden=args.hidden, lr=args.lr, seed=args.seed)

    print(C.describe_run(device, args.cpu_sampling))
    print(f"VAE: {cfg.dataset_size} images of {IMAGE_SIDE}x{IMAGE_SIDE}, batch {cfg.batch_size}, "
          f"{cfg.steps_per_epoch} steps x {cfg.epochs} epochs, latent {cfg.latent_dim}, seed {cfg.seed}")
    runs = [train(cfg, impl, device, cpu_sampling=args.cpu_sampling, progress=not args.no_progress)
            for impl in C.selected_impls(args.impl)]

    print()
    print(C.format_table(["epoch"] + [f"ELBO {r['impl']}" for r in runs],
                         [[0] + [f"{r['eval_elbo'][0]:.3f}" for r in runs]]
                         + [[e + 1] + [f"{r['eval_elbo'][e + 1]:.3f}" for r in runs] for e in range(cfg.epochs)]))
    print("(held-out ELBO, nats per image; epoch 0: before training)\n")
    print(C.format_table(
        ["impl", "final ELBO", "images/s", "saved for backward/step", "peak CUDA memory"],
        [[r["impl"], f"{r['eval_elbo'][-1]:.3f}",
          "-" if r["samples_per_s"] is None else f"{r['samples_per_s']:,.0f}",
          C.mib(r["saved_bytes_per_step"]), C.mib(r["peak_bytes"])] for r in runs]))

    curves = {r["impl"]: (list(range(1, len(r["step_elbo"]) + 1)), r["step_elbo"]) for r in runs}
    C.write_report(out, "vae_elbo.png", "vae.json", curves, xlabel="training step", ylabel="ELBO (nats/image, training batch)",
                   title=f"VAE, batch {cfg.batch_size}, {C.run_label(device, args.cpu_sampling)}\ntorch.distributions vs torchdist_fast",
                   record={"config": asdict(cfg), "runs": runs}, device=device, sampling=args.cpu_sampling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
