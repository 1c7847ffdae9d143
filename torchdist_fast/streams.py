"""Per-rank seeds for multi-process runs, under the path the README documented first: the
functions live in ``torchdist_fast.rng`` (the module whose streams they seed)."""
from .rng import GOLDEN_GAMMA, mix64, rank_generator, rank_seed

__all__ = ["GOLDEN_GAMMA", "mix64", "rank_seed", "rank_generator"]
