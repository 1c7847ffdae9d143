"""Concurrent draws from one generator never share a Philox counter (docs/random-numbers.md,
"Threads and processes").

Taking a stream position and advancing the generator is one atomic step on every path: the CPU
Philox mode (positions kept per mt19937 state), offset generators (CUDA), the eager fast path,
the op path, ``generator=`` and the default generator. The stress test draws from 8 threads at
once with mixed sizes and methods, records every position taken (a spy around
``rng.take_position_from``, which every host draw goes through), and checks

- that no two draws overlap in counters,
- that the generator's final position is the sum of what the draws consumed,
- that every draw's numbers are the reference's at the position recorded for it, and
- (black box, without the spy) that no two draws returned the same noise.
"""
from __future__ import annotations

import random
import sys
import threading

import pytest
import torch

import torchdist_fast
from torchdist_fast import reference, rng
from torchdist_fast.functional import draw_seed_offset

THREADS = 8
DRAWS_PER_THREAD = 2000
SIZES = (1, 2, 3, 4, 5, 7, 8, 13, 16, 33)
CHECK_EVERY = 10
METHODS = ("sample", "rsample", "rsample_and_log_prob", "sample_and_log_prob", "randn", "op")


@pytest.fixture
def switch_often():
    """Thread switches every 0.1 ms instead of every 5 ms: races show within a short test."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


class PositionSpy:
    """Records (thread, key, offset, counters) of every position taken, in each thread's order."""

    def __init__(self, monkeypatch):
        self.taken = []  # list.append is atomic
        real = rng.take_position_from

        def spy(gen, counters, *args, **kwargs):
            key, offset = real(gen, counters, *args, **kwargs)
            self.taken.append((threading.get_ident(), key, offset, counters))
            return key, offset

        monkeypatch.setattr(rng, "take_position_from", spy)

    def overlaps(self) -> list:
        """Pairs of draws whose counter ranges [offset, offset + advance(counters)) intersect."""
        by_key = {}
        for _, key, offset, counters in self.taken:
            by_key.setdefault(key, []).append((offset, offset + rng.advance(counters)))
        bad = []
        for ranges in by_key.values():
            ranges.sort()
            bad += [(a, b) for a, b in zip(ranges, ranges[1:]) if b[0] < a[1]]
        return bad


def draw(method: str, n: int, generator):
    """One draw of n float64 normals (scaled so that the noise can be read back) by ``method``."""
    loc = torch.zeros(n, dtype=torch.float64)
    scale = torch.ones(n, dtype=torch.float64)
    kwargs = {} if generator is None else {"generator": generator}
    if method == "randn":
        return torchdist_fast.randn(n, dtype=torch.float64, **kwargs)
    if method == "op":  # the op path: a position drawn as a tensor, then the custom op
        seed_offset = draw_seed_offset(torch.device("cpu"), n, generator)
        return torch.ops.torchdist_fast.philox_randn([n], seed_offset, torch.float64, torch.device("cpu"))
    d = torchdist_fast.Normal(loc.requires_grad_(method == "rsample"), scale)
    out = getattr(d, method)(**kwargs)
    return (out[0] if isinstance(out, tuple) else out).detach()


def run_threads(generator, methods=METHODS, threads=THREADS, draws=DRAWS_PER_THREAD):
    """Every thread's draws in its own order: {thread ident: [(n, noise), ...]}."""
    start = threading.Barrier(threads)
    results, errors = {}, []

    def worker(index):
        rnd = random.Random(index)
        mine = []
        try:
            start.wait()
            for _ in range(draws):
                n = rnd.choice(SIZES)
                mine.append((n, draw(rnd.choice(methods), n, generator)))
        except BaseException as exc:  # noqa: BLE001  (reported below, in the test's thread)
            errors.append(exc)
        results[threading.get_ident()] = mine

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results


def distinct_noise(results) -> tuple[int, int]:
    """(draws, distinct first values): float64 normals repeat only when a counter does."""
    firsts = [noise[0].item() for mine in results.values() for _, noise in mine]
    return len(firsts), len(set(firsts))


@pytest.mark.parametrize("explicit_generator", [False, True], ids=["default-generator", "generator="])
def test_philox_mode_threads_never_share_a_counter(monkeypatch, switch_often, explicit_generator):
    spy = PositionSpy(monkeypatch)
    seed = 20261206
    generator = torch.Generator().manual_seed(seed) if explicit_generator else None
    if generator is None:
        torch.manual_seed(seed)
    draws = DRAWS_PER_THREAD if generator is None else DRAWS_PER_THREAD // 4  # the same path, fewer draws
    with torchdist_fast.cpu_sampling("philox"):
        results = run_threads(generator, draws=draws)

    total = THREADS * draws
    assert len(spy.taken) == total
    assert spy.overlaps() == []
    assert {key for _, key, _, _ in spy.taken} == {seed}  # one stream, continued by every draw
    # the generator's position moved on by exactly what the draws consumed
    consumed = sum(rng.advance(counters) for *_, counters in spy.taken)
    assert rng.take_position_from(generator if generator is not None else torch.default_generator, 1) == (seed, consumed)
    # each draw's numbers are the reference's at the position the spy saw it take (every
    # CHECK_EVERY-th draw of each thread: the reference costs more than the draw)
    taken_by_thread = {}
    for ident, key, offset, _ in spy.taken:
        taken_by_thread.setdefault(ident, []).append((key, offset))
    for ident, mine in results.items():
        assert len(mine) == len(taken_by_thread[ident]) == draws
        for (n, noise), (key, offset) in list(zip(mine, taken_by_thread[ident]))[::CHECK_EVERY]:
            assert torch.equal(noise, reference.philox_normals(n, key, offset, torch.float64))
    assert distinct_noise(results) == (total, total)


def test_torch_mode_threads_never_share_noise(switch_often):
    """The default CPU mode is torch's own sampling (torch's generator takes its own lock)."""
    torch.manual_seed(7)
    results = run_threads(None, methods=("sample", "rsample", "rsample_and_log_prob", "sample_and_log_prob"))
    total = THREADS * DRAWS_PER_THREAD
    assert distinct_noise(results) == (total, total)


class OffsetGenerator:
    """A stand-in for a CUDA generator (seed plus a settable offset), with a thread switch between
    reading the offset and setting it, the window a non-atomic read-and-advance leaves open."""

    device = torch.device("cuda")

    def __init__(self, seed):
        self.seed, self.offset = seed, 0

    def initial_seed(self):
        return self.seed

    def get_offset(self):
        offset = self.offset
        threading.Event().wait(1e-5)  # invite another thread in
        return offset

    def set_offset(self, offset):
        assert offset % 4 == 0
        self.offset = offset


def test_offset_generator_threads_never_share_a_counter(monkeypatch, switch_often):
    """The path of CUDA generators without the CUDA backend extension (the extension takes the
    position under the generator's own mutex)."""
    spy = PositionSpy(monkeypatch)
    gen = OffsetGenerator(11)
    start = threading.Barrier(THREADS)

    def worker(index):
        rnd = random.Random(index)
        start.wait()
        for _ in range(500):
            rng.take_position_from(gen, rnd.choice(SIZES), capture_checked=True)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(spy.taken) == THREADS * 500
    assert spy.overlaps() == []
    assert gen.offset == sum(rng.advance(counters) for *_, counters in spy.taken)
