"""What processes draw (docs/random-numbers.md, "Threads and processes"): each worker gets distinct streams where
torch gives distinct generator states, and identical ones where the user seeds identically.

torchdist_fast's CPU stream position is a function of the generator state (``rng.CpuStreams``),
so in every case below our draws repeat across processes exactly when torch's own ``randn``
does: DataLoader workers (fork and spawn: torch seeds each worker with ``base_seed + id``),
``torch.multiprocessing`` children (fork inherits the parent's state; spawn starts from the
seed torch picks at start-up) and ranks started like DDP ranks (``mp.spawn``: the same seed on every rank gives
the same noise; ``rank_seed(s, r)`` gives each rank its own). The real DDP example
(``examples/distributed.py``) is tested in tests/test_examples.py.
"""
from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned children import process_workers
import process_workers  # noqa: E402

MODES = ["torch", "philox"]


@pytest.fixture(params=MODES)
def sampling_mode(request, monkeypatch):
    """The cpu_sampling mode in this process and in every child (spawned children read the
    environment variable at import: settings are per process)."""
    import torchdist_fast

    monkeypatch.setenv("TORCHDIST_FAST_CPU_SAMPLING", request.param)
    with torchdist_fast.cpu_sampling(request.param):
        yield request.param


def repeats(rows: list, kind: str) -> bool:
    """Whether any two rows hold the same ``kind`` draw."""
    values = [tuple(r[kind]) for r in rows]
    return len(set(values)) < len(values)


def load_all(context: str, seed: int) -> list:
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(process_workers.DrawingDataset(), batch_size=None, num_workers=2,
                                         multiprocessing_context=context)
    return list(loader)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(context, sampling_mode):
    rows = load_all(context, 5)
    assert {r["worker"] for r in rows} == {0, 1} and {r["mode"] for r in rows} == {sampling_mode}
    # torch seeds each worker differently: every item's draws differ, ours as torch's
    assert not repeats(rows, "torch") and not repeats(rows, "ours")
    # the same seed in the main process gives every worker the same streams again
    again = load_all(context, 5)
    assert [(r["torch"], r["ours"]) for r in again] == [(r["torch"], r["ours"]) for r in rows]


def run_processes(context: str, seed, per_rank: bool, n: int = 2) -> list:
    ctx = torch.multiprocessing.get_context(context)
    queue = ctx.Queue()
    procs = [ctx.Process(target=process_workers.process_draws, args=(rank, seed, per_rank, queue)) for rank in range(n)]
    for p in procs:
        p.start()
    rows = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return [rows[r] for r in range(n)]


def test_forked_children_inherit_the_parent_stream(sampling_mode):
    """Fork copies the generator state (and our positions for it): unseeded children repeat each
    other's draws, torch's and ours alike, and continue the parent's stream."""
    torch.manual_seed(3)
    rows = run_processes("fork", None, per_rank=False)
    assert repeats(rows, "torch") and repeats(rows, "ours")
    torch.manual_seed(3)
    assert process_workers.draws() == rows[0]


def test_unseeded_spawned_children_follow_torch(sampling_mode):
    """An unseeded spawned child starts from the seed torch picks at start-up (torch 2.13: a
    fresh one per process; older releases: one fixed seed): ours repeat exactly where torch's do."""
    rows = run_processes("spawn", None, per_rank=False, n=3)
    assert repeats(rows, "torch") == repeats(rows, "ours")


@pytest.mark.parametrize("per_rank", [False, True], ids=["same-seed", "rank_seed"])
def test_ranks_seeded_alike_draw_alike(per_rank, sampling_mode):
    """Ranks started as DDP starts them (spawn): identical where seeded identically, distinct
    with ``torchdist_fast.streams.rank_seed(seed, rank)``."""
    rows = run_processes("spawn", 11, per_rank=per_rank)
    assert repeats(rows, "torch") == repeats(rows, "ours") == (not per_rank)
