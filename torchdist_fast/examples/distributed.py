"""Data-parallel training with ``torch.distributed`` and ``torchdist_fast.Normal``: the VAE of
``torchdist_fast.examples.vae`` under ``DistributedDataParallel``, each rank drawing its noise
from its own stream.

    python -m torchdist_fast.examples.distributed --nproc 2          # spawns 2 processes here
    torchrun --nproc-per-node 2 -m torchdist_fast.examples.distributed

Backend: gloo on CPU, nccl on CUDA (one GPU per process). Each rank trains on its own slice of
every global batch (``--batch-size`` images per rank); DDP averages the gradients, so every rank
holds the same parameters after every step (checked at the end).

The per-rank stream rule (``torchdist_fast.rng``): rank ``r`` of a run seeded with ``s``
draws from a ``torch.Generator`` seeded with ``rank_seed(s, r)``, SplitMix64 output ``r + 1`` of
``s``; the generator is passed as ``generator=`` to ``rsample``. The seed is the Philox key of
torchdist_fast's draws, so ranks never draw the same noise, and one seed reproduces every rank's
draws. Everything else (data, batch order, initial weights) comes from ``s`` itself and is the
same on every rank. (Seeding every rank with ``s`` would give every rank the same noise;
``s + r`` works but makes run ``s`` rank 1 and run ``s + 1`` rank 0 share a stream.)

``--dump-draws PATH`` writes, from rank 0, a JSON file with each rank's stream seed and its first
draws: ``z`` and the noise ``(z - loc) / scale`` of the first ``--dump-count`` latent values of
the first ``--dump-steps`` steps.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import torchdist_fast
from torchdist_fast.examples import _common as C
from torchdist_fast.examples import vae
from torchdist_fast.rng import rank_generator, rank_seed

_TIMEOUT = datetime.timedelta(seconds=120)  # a lost peer fails the run instead of hanging it


@dataclass
class DistConfig:
    batch_size: int = 512  # per rank
    steps: int = 100
    dataset_size: int = 16384
    eval_size: int = 2048
    latent_dim: int = 4
    hidden: int = 128
    lr: float = 3e-3
    seed: int = 0
    dump_steps: int = 2
    dump_count: int = 8
    log_every: int = 10


class _RecordingNormal(torchdist_fast.Normal):
    """torchdist_fast.Normal that keeps the first values of its first ``rsample`` calls (for
    ``--dump-draws``); the numbers are exactly what the training step uses."""

    record: list | None = None  # set on the class by the worker; None: record nothing
    steps = 0
    count = 0

    def rsample(self, sample_shape=torch.Size(), *, generator=None):
        z = super().rsample(sample_shape, generator=generator)
        rec = type(self).record
        if rec is not None and len(rec) < type(self).steps:
            with torch.no_grad():
                k = type(self).count
                zf, loc, scale = z.flatten()[:k], self.loc.flatten()[:k], self.scale.flatten()[:k]
                rec.append({"z": zf.cpu().tolist(), "eps": ((zf - loc) / scale).cpu().tolist()})
        return z


def _device_for(local_rank: int, device_type: str) -> torch.device:
    return torch.device("cuda", local_rank) if device_type == "cuda" else torch.device("cpu")


def run_rank(rank: int, local_rank: int, world_size: int, cfg: DistConfig, device_type: str, *,
             cpu_sampling: str | None = None, dump_path: str | None = None, progress: bool = True) -> None:
    """One process of the run; the process group is initialized from MASTER_ADDR/MASTER_PORT."""
    device = _device_for(local_rank, device_type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world_size, timeout=_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=_TIMEOUT)
    try:
        with C.sampling_mode(cpu_sampling):
            _train(rank, world_size, cfg, device, dump_path, progress)
    finally:
        dist.destroy_process_group()


def _train(rank: int, world: int, cfg: DistConfig, device: torch.device, dump_path, progress: bool) -> None:
    vcfg = vae.VAEConfig(batch_size=cfg.batch_size, dataset_size=cfg.dataset_size, eval_size=cfg.eval_size,
                         latent_dim=cfg.latent_dim, hidden=cfg.hidden, lr=cfg.lr, seed=cfg.seed)
    train_x, eval_x = (t.to(device) for t in vae.make_datasets(vcfg))  # the same data on every rank
    model = vae.build_model(vcfg, device)  # torch.manual_seed(seed): the same weights on every rank
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(ddp.parameters(), lr=cfg.lr)
    noise = rank_generator(cfg.seed, rank, device)  # this rank's stream
    order = torch.Generator().manual_seed(cfg.seed + 1)  # the global batch order: the same on every rank

    _RecordingNormal.record = [] if dump_path else None
    _RecordingNormal.steps, _RecordingNormal.count = cfg.dump_steps, cfg.dump_count
    normal = _RecordingNormal if dump_path else torchdist_fast.Normal

    if rank == 0:
        print(C.describe_run(device, torchdist_fast.get_cpu_sampling()))
        print(f"{world} ranks ({dist.get_backend()}), {cfg.batch_size} images per rank and step, {cfg.steps} steps, "
              f"seed {cfg.seed}; held-out ELBO before training {vae.evaluate(model, eval_x, torchdist_fast.Normal, 4096):.3f}")
    seeds = [None] * world
    dist.all_gather_object(seeds, rank_seed(cfg.seed, rank))
    if rank == 0:
        print("noise streams: " + ", ".join(f"rank {r}: seed {s:#018x}" for r, s in enumerate(seeds)))

    global_batch = cfg.batch_size * world
    per_epoch = cfg.dataset_size // global_batch
    bar = C.Progress(cfg.steps, "distributed vae", progress and rank == 0)
    perm = None
    for step in range(cfg.steps):
        if step % per_epoch == 0:
            perm = torch.randperm(cfg.dataset_size, generator=order).to(device)
        start = (step % per_epoch) * global_batch + rank * cfg.batch_size  # this rank's slice
        x = train_x[perm[start : start + cfg.batch_size]]
        elbo = ddp(x, normal, noise).mean()
        opt.zero_grad(set_to_none=True)
        (-elbo).backward()  # DDP all-reduces (averages) the gradients here
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean_elbo = elbo.detach().clone()
            dist.all_reduce(mean_elbo)  # the mean over ranks, for the log line
            if rank == 0:
                bar.write(f"step {step + 1}/{cfg.steps}: training ELBO {mean_elbo.item() / world:.3f} nats/image")
        bar.update()
    bar.close()

    # DDP keeps replicas identical; checked here on a checksum of all parameters
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    checksums = [None] * world
    dist.all_gather_object(checksums, (flat.sum().item(), flat.square().sum().item()))
    records = [None] * world
    dist.all_gather_object(records, _RecordingNormal.record)
    if rank == 0:
        in_sync = all(c == checksums[0] for c in checksums)
        print(f"held-out ELBO after training {vae.evaluate(model, eval_x, torchdist_fast.Normal, 4096):.3f}; "
              f"parameters identical on all ranks: {'yes' if in_sync else 'NO'}")
        if dump_path:
            dump = {"base_seed": cfg.seed, "world_size": world, "device": str(device.type),
                    "cpu_sampling": torchdist_fast.get_cpu_sampling(), "params_in_sync": in_sync,
                    "ranks": [{"rank": r, "seed": seeds[r], "draws": records[r]} for r in range(world)]}
            with open(dump_path, "w") as f:
                json.dump(dump, f, indent=1)
            print(f"wrote {dump_path}")
    dist.barrier()  # no rank leaves while another still needs it


# ---------------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, world: int, cfg: DistConfig, device_type: str, options: dict) -> None:
    """Entry point of a process started by ``torch.multiprocessing.spawn``."""
    if device_type == "cpu":
        # the ranks share this machine's cores; torch's default (all cores each) oversubscribes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    run_rank(local_rank, local_rank, world, cfg, device_type, **options)
    exit_rank(0)


def exit_rank(code: int) -> None:
    """End a rank's process once its work is done, without interpreter finalization.

    Why (torch 2.13, gloo): DistributedDataParallel leaves references to the process group
    behind, so ``destroy_process_group`` does not stop gloo's worker threads. A worker that is
    still releasing the tensors of the last collective when the interpreter finalizes needs the
    GIL, is stopped by ``pthread_exit`` inside C++ code and aborts the process ("terminate called
    without an active exception", SIGABRT: about 1 run in 20 on a 2-core machine). Everything
    the rank owes is written by then, so it flushes its output and leaves with ``os._exit``.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def build_parser() -> argparse.ArgumentParser:
    d = DistConfig()
    p = argparse.ArgumentParser(prog="python -m torchdist_fast.examples.distributed", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--nproc", type=C.positive_int, default=None,
                   help="processes to spawn here (default 2); not with torchrun, which sets the world size")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="cpu (gloo) or cuda (nccl, GPU = local rank); default: cuda when available")
    p.add_argument("--seed", type=C.seed_int, default=d.seed, help="the one seed of the run (per-rank streams derive from it)")
    p.add_argument("--cpu-sampling", choices=("torch", "philox"), default=None,
                   help="how torchdist_fast.Normal draws on CPU (default: the library's setting)")
    p.add_argument("--batch-size", type=C.positive_int, default=d.batch_size, help=f"images per rank and step (default {d.batch_size})")
    p.add_argument("--steps", type=C.positive_int, default=d.steps, help=f"(default {d.steps})")
    p.add_argument("--dataset-size", type=C.positive_int, default=d.dataset_size, help=f"(default {d.dataset_size})")
    p.add_argument("--eval-size", type=C.positive_int, default=d.eval_size, help=f"(default {d.eval_size})")
    p.add_argument("--hidden", type=C.positive_int, default=d.hidden, help=f"MLP width (default {d.hidden})")
    p.add_argument("--lr", type=C.positive_float, default=d.lr, help=f"(default {d.lr})")
    p.add_argument("--log-every", type=C.positive_int, default=d.log_every, help=f"steps between log lines (default {d.log_every})")
    p.add_argument("--dump-draws", metavar="PATH", default=None, help="write each rank's first draws to this JSON file")
    p.add_argument("--dump-steps", type=C.positive_int, default=d.dump_steps, help=f"steps recorded by --dump-draws (default {d.dump_steps})")
    p.add_argument("--dump-count", type=C.positive_int, default=d.dump_count, help=f"values per step recorded (default {d.dump_count})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torchrun = _launched_by_torchrun()
    if torchrun and args.nproc is not None:
        parser.error("--nproc is for spawning processes here; under torchrun, use torchrun's --nproc-per-node")
    world = int(os.environ["WORLD_SIZE"]) if torchrun else (args.nproc or 2)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine")
        local = int(os.environ["LOCAL_WORLD_SIZE"]) if torchrun and "LOCAL_WORLD_SIZE" in os.environ else world
        if local > torch.cuda.device_count():
            parser.error(f"{local} processes on this machine need {local} GPUs; it has {torch.cuda.device_count()}")
    if args.batch_size * world > args.dataset_size:
        parser.error(f"a global batch ({world} ranks x {args.batch_size}) is larger than --dataset-size {args.dataset_size}")
    if args.dump_draws is not None:
        dump = Path(args.dump_draws)
        if dump.is_dir():
            parser.error(f"--dump-draws {args.dump_draws!r} is a folder")
        if not dump.parent.is_dir():
            parser.error(f"--dump-draws {args.dump_draws!r}: the folder {str(dump.parent)!r} does not exist")
    cfg = DistConfig(batch_size=args.batch_size, steps=args.steps, dataset_size=args.dataset_size, eval_size=args.eval_size,
                     hidden=args.hidden, lr=args.lr, seed=args.seed, dump_steps=args.dump_steps,
                     dump_count=args.dump_count, log_every=args.log_every)
    options = {"cpu_sampling": args.cpu_sampling, "dump_path": args.dump_draws, "progress": not args.no_progress}

    if torchrun:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        run_rank(rank, local_rank, world, cfg, device_type, **options)
        return 0

    # spawn the ranks here: one machine, so the loopback interface
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    import torch.multiprocessing as mp

    try:
        mp.spawn(_spawned, args=(world, cfg, device_type, options), nprocs=world, join=True)
    except mp.ProcessRaisedException as e:  # a rank raised: its traceback is in the message
        print(f"error: a rank failed:\n{e}", file=sys.stderr)
        return 1
    except mp.ProcessExitedException as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main()
    if _launched_by_torchrun():
        exit_rank(status)  # a rank process: see exit_rank
    sys.exit(status)
