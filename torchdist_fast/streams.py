"""Independent, reproducible random streams for parallel workers (ranks) from one seed.

The rule: the seed of rank ``r`` under base seed ``s`` is output number ``r + 1`` of SplitMix64
seeded with ``s``::

    rank_seed(s, r) = mix64((s + (r + 1) * 0x9E3779B97F4A7C15) mod 2**64)

where ``mix64`` is SplitMix64's output function (Steele, Lea and Flood 2014; Stafford's "Mix13",
as in Java's ``SplittableRandom``). ``mix64`` is a
bijection of 64-bit words and the increment is odd, so for one base seed the ranks 0, 1, 2, ...
get pairwise different seeds (for any number of ranks below 2**64), and nearby base seeds or
ranks give unrelated ones.

Why a different *seed* per rank is enough for torchdist_fast: a seed is the Philox key
(README, "Random numbers"). After ``torch.manual_seed(k)`` (or ``Generator.manual_seed(k)``) the
Philox draws of torchdist_fast start at position ``(k, 0)``, on CUDA and on CPU, so two ranks with
different keys draw from different Philox permutations and never share noise, and the whole run
is reproducible from the base seed alone. On CPU in the default ``cpu_sampling("torch")`` mode the
noise comes from torch's mt19937 seeded with the same per-rank seed.

Use it with a per-rank generator (``rank_generator``; pass it as ``generator=`` to ``sample``,
``rsample`` and friends) so that everything else seeded from the base seed (model
initialization, data order) stays identical on every rank, or with
``torch.manual_seed(rank_seed(base_seed, rank))`` for code that draws from the default generator.
"""
from __future__ import annotations

import torch

__all__ = ["GOLDEN_GAMMA", "mix64", "rank_seed", "rank_generator"]

GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment: 2**64 / golden ratio, odd
_MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64's output function: a bijection of 64-bit words with full avalanche."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _check_int(name: str, value, upper: int) -> int:
    # bool is an int subclass; a True rank is almost certainly a bug
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < upper:
        raise ValueError(f"{name} must be in [0, {upper}), got {value}")
    return value


def rank_seed(base_seed: int, rank: int) -> int:
    """The 64-bit seed of ``rank``'s stream in a run seeded with ``base_seed`` (see the module doc).

    ``base_seed`` and ``rank`` are non-negative ints below 2**64. The result is a valid seed for
    ``torch.manual_seed`` and ``torch.Generator.manual_seed`` (which take 64-bit unsigned values).
    """
    _check_int("base_seed", base_seed, 1 << 64)
    _check_int("rank", rank, 1 << 64)
    return mix64(base_seed + (rank + 1) * GOLDEN_GAMMA)


def rank_generator(base_seed: int, rank: int, device="cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``rank_seed(base_seed, rank)``."""
    return torch.Generator(device=device).manual_seed(rank_seed(base_seed, rank))
