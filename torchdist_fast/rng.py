"""(seed, offset) for the Philox stream, taken from a ``torch.Generator``.

Rules (README "Random numbers"):
- The generator is the one passed as ``generator=``, else the default generator of the device.
- Philox-based generators (CUDA and others with an offset): seed = ``initial_seed()``,
  offset = ``get_offset()``; the generator is then advanced by the counters consumed
  (ceil(numel / 4)), rounded up to a multiple of 4 because CUDA generators require it.
  Consecutive calls therefore never reuse a counter.
- The CPU generator (mt19937) has no offset: each call draws a 64-bit key from it (two 32-bit
  words, ``torch.randint``), counters start at 0. ``torch.manual_seed`` reproduces a run, and
  two calls share a key with probability 2**-64.
The pair travels as a CPU int64 tensor ``[seed, offset]`` (64-bit patterns), so that the ops
that use it are pure functions of their inputs and can be recomputed (backward, checkpoint).
"""
from __future__ import annotations

import torch

_UINT64 = (1 << 64) - 1


def to_int64(value: int) -> int:
    """A uint64 bit pattern as a signed int64 Python int."""
    value &= _UINT64
    return value - (1 << 64) if value >= (1 << 63) else value


def unpack_seed_offset(seed_offset: torch.Tensor) -> tuple[int, int]:
    """The CPU tensor ``[seed, offset]`` as two uint64 Python ints."""
    if seed_offset.device.type != "cpu" or seed_offset.dtype != torch.int64 or seed_offset.shape != (2,):
        raise ValueError(
            "seed_offset must be a CPU int64 tensor of shape (2,) holding [seed, offset], got "
            f"{seed_offset.dtype} {tuple(seed_offset.shape)} on {seed_offset.device}"
        )
    seed, offset = seed_offset.tolist()
    return seed & _UINT64, offset & _UINT64


def pack_seed_offset(seed: int, offset: int) -> torch.Tensor:
    return torch.tensor([to_int64(seed), to_int64(offset)], dtype=torch.int64)


def default_generator(device: torch.device) -> torch.Generator:
    device = torch.device(device)
    if device.type == "cpu":
        return torch.default_generator
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "default_generators"):
        raise RuntimeError(f"torchdist_fast: no default generator for device type '{device.type}'")
    index = device.index if device.index is not None else module.current_device()
    return module.default_generators[index]


def check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != torch.device(device).type:
        # same wording as torch's own check (at::check_generator)
        raise RuntimeError(
            f"Expected a '{torch.device(device).type}' device type for generator but found '{generator.device.type}'"
        )


def take_seed_offset(device: torch.device, counters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Read (seed, offset) from the generator and advance it past ``counters`` counters."""
    device = torch.device(device)
    check_generator(generator, device)
    if counters < 0:
        raise RuntimeError(f"torchdist_fast: counters must be non-negative, got {counters}")
    return take_seed_offset_from(generator if generator is not None else default_generator(device), counters)


def take_seed_offset_from(gen, counters: int) -> torch.Tensor:
    if gen.device.type == "cpu":
        words = torch.randint(0, 1 << 32, (2,), generator=gen, dtype=torch.int64).tolist()
        return pack_seed_offset(words[0] | (words[1] << 32), 0)
    if gen.device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        # the position is read on the host: a captured graph would replay the same noise
        raise RuntimeError(
            "torchdist_fast: sampling under CUDA graph capture is not supported yet (every replay "
            "would draw the same noise); sample outside the captured region"
        )
    seed, offset = gen.initial_seed(), gen.get_offset()
    gen.set_offset(offset + -(-counters // 4) * 4)
    return pack_seed_offset(seed, offset)
