"""What each worker process of tests/test_process_streams.py draws (importable by spawned
children, which re-import the functions they run by name)."""
from __future__ import annotations

import torch

import torchdist_fast
from torchdist_fast.rng import rank_seed


def draws() -> dict:
    """One draw from torch's own sampler and one from torchdist_fast.Normal (in the process's
    cpu_sampling mode), both from the default CPU generator, in this order."""
    torch_noise = torch.randn(8, dtype=torch.float64)
    ours = torchdist_fast.Normal(torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)).sample()
    return {"torch": torch_noise.tolist(), "ours": ours.tolist(), "mode": torchdist_fast.get_cpu_sampling()}


class DrawingDataset(torch.utils.data.Dataset):
    """Item i: the draws of the worker that loads it (an augmentation-style use of the generator)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        return {"worker": -1 if info is None else info.id, **draws()}


def process_draws(rank: int, seed: int | None, per_rank: bool, queue) -> None:
    """A worker process (torch.multiprocessing, or a DDP-style rank from mp.spawn): seeds the
    default generator as told (``seed`` None: leave it as the process has it), then draws."""
    if seed is not None:
        torch.manual_seed(rank_seed(seed, rank) if per_rank else seed)
    queue.put((rank, draws()))
