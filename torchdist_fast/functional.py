"""Public functions over the ops: ``randn``, the draw of a stream position, and the checkpoint
policy that saves the draws."""
from __future__ import annotations

import math
import numbers

import torch

from . import ops  # noqa: F401  (registers torch.ops.torchdist_fast)
from .reference import FLOAT_DTYPES
from .rng import check_generator, counters_for


def draw_seed_offset(device: torch.device, numel, generator: torch.Generator | None = None) -> torch.Tensor:
    """Take a stream position for ``numel`` normals from ``generator`` (or the device default)."""
    check_generator(generator, device)
    if numel < 0:
        raise RuntimeError(f"Trying to draw a negative number of elements: {numel}")
    if numel > 2**63 - 1:
        # torch.Size.numel() wraps silently past int64; say what happened instead
        raise RuntimeError(f"torchdist_fast: {numel} elements do not fit a tensor (more than 2**63 - 1)")
    if generator is not None and torch.jit.is_tracing():
        raise RuntimeError(
            "torchdist_fast: torch.jit.trace cannot record a generator= argument (a trace replays with "
            "the default generator); trace without generator=, or use torch.compile, which supports it"
        )
    return torch.ops.torchdist_fast.draw_seed_offset(str(device), counters_for(numel), generator)


def _save_draws(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    if op == torch.ops.torchdist_fast.draw_seed_offset.default:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_context():
    """``context_fn`` for ``torch.utils.checkpoint(..., use_reentrant=False)`` around code that samples:
    the stream-position draws are saved (16 bytes each), everything else is recomputed.

    Needed under ``torch.compile``: there a draw inside a checkpointed function would otherwise be
    recomputed in the backward graph, which AOTAutograd refuses for an effectful op (an
    ``AssertionError`` when the compiled forward runs). Eager checkpointing works either way; with
    this policy the backward reuses the saved positions instead of restoring the generator.
    """
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_save_draws)


def _parse_size(size) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    for i, s in enumerate(size):
        if isinstance(s, bool) or not isinstance(s, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"randn(): argument 'size' must be tuple of ints, but found element of type {type(s).__name__} at pos {i}")
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(size)}")
    return tuple(size)


def randn(*size, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
          device=None, requires_grad: bool = False) -> torch.Tensor:
    """Standard normals from the Philox stream, like ``torch.randn``.

    ``generator`` (else the default generator of ``device``) supplies (seed, offset) and is
    advanced by ceil(numel / 4) counters; see docs/random-numbers.md.
    """
    size = _parse_size(size)
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"randn(): argument 'dtype' must be torch.dtype, not {type(dtype).__name__}")
    if dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"torchdist_fast.randn: unsupported dtype {dtype}; use float32, float64, float16 or bfloat16")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"randn(): argument 'generator' must be torch.Generator, not {type(generator).__name__}")
    if device is None:
        if generator is not None:
            device = generator.device
        elif torch.compiler.is_compiling():  # dynamo cannot trace get_default_device (an empty tensor it can)
            device = torch.empty(()).device
        else:
            device = torch.get_default_device()
    device = torch.device(device)
    check_generator(generator, device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    seed_offset = draw_seed_offset(device, math.prod(size), generator)
    out = torch.ops.torchdist_fast.philox_randn(list(size), seed_offset, dtype, device)
    return out.requires_grad_(requires_grad) if requires_grad else out
