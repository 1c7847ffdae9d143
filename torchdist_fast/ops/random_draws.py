"""The random-draws family: ``draw_seed_offset`` (the only op that touches a generator) and
``philox_randn``.

Random ops take their stream position as an int64 tensor ``seed_offset = [seed, offset]`` (on the
CPU, or on the op's CUDA device, where the kernels read it from memory: ``rng.kernel_position``)
drawn by ``draw_seed_offset``, tagged ``nondeterministic_seeded`` so the compiler neither merges
nor reorders it. Every other op is a pure function of its inputs, which is what lets backward and
checkpoint regenerate noise.
"""
from __future__ import annotations

import torch

from .. import reference, rng
from ..reference import FLOAT_DTYPES
from ..settings import uses_gpu_kernels
from . import inductor
from .checks import check_shape
from .launch import KernelFamily

RANDOM_DRAWS = KernelFamily("random_draws")

# ---------------------------------------------------------------------------- draw_seed_offset
# Defined with torch.library.Library rather than custom_op, for one reason: the alias analysis.
# CONSERVATIVE tells TorchScript (torch.jit.trace replays) that the op has side effects, so the
# JIT neither constant-folds a draw (every replay would reuse one stream position) nor merges
# two draws (two samples with the same noise). custom_op always registers FROM_SCHEMA.
LIBRARY = torch.library.Library("torchdist_fast", "FRAGMENT")
LIBRARY.define(
    # the device as a string: torch.jit.trace cannot record a Device argument of a custom op
    "draw_seed_offset(str device, SymInt counters, Generator? generator=None) -> Tensor",
    alias_analysis="CONSERVATIVE",
    tags=(torch.Tag.nondeterministic_seeded,),
)


@torch.library.impl(LIBRARY, "draw_seed_offset", "CompositeExplicitAutograd")
def draw_seed_offset(device, counters, generator=None):
    return rng.take_seed_offset(device, counters, generator)


@torch.library.register_fake("torchdist_fast::draw_seed_offset", lib=LIBRARY)
def _(device, counters, generator=None):
    device = torch.device(device)
    return torch.empty(2, dtype=torch.int64, device=device if rng.position_on_device(device) else "cpu")


inductor.mark_ordered(torch.ops.torchdist_fast.draw_seed_offset.default)


# ---------------------------------------------------------------------------- philox_randn
@torch.library.custom_op(
    "torchdist_fast::philox_randn", mutates_args=(),
    schema="(SymInt[] size, Tensor seed_offset, ScalarType dtype, Device device) -> Tensor",
)
def philox_randn(size, seed_offset, dtype, device):
    size = check_shape(size, "size")
    if dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"torchdist_fast.philox_randn: unsupported dtype {dtype}; use float32, float64, float16 or bfloat16")
    device = torch.device(device)
    seed, offset, position = rng.kernel_position(seed_offset, device, uses_gpu_kernels(device))
    launchers = RANDOM_DRAWS.launchers(device)
    if launchers is not None:
        return launchers.philox_randn(size, seed, offset, dtype, device, position=position)
    return reference.philox_randn(size, seed, offset, dtype, device)


@philox_randn.register_fake
def _(size, seed_offset, dtype, device):
    return torch.empty(size, dtype=dtype, device=device)


RANDOM_DRAWS.register(philox_randn, launches=("philox",))
