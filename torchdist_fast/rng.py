"""(seed, offset) for the Philox stream, taken from a ``torch.Generator``.

Rules (docs/random-numbers.md, "Where (seed, offset) come from"):
- The generator is the one passed as ``generator=``, else the default generator of the device.
- Philox-based generators (CUDA and others with an offset): seed = ``initial_seed()``,
  offset = ``get_offset()``; the generator is then advanced by the counters consumed
  (ceil(numel / 4)), rounded up to a multiple of 4 because CUDA generators require it.
  Consecutive calls therefore never reuse a counter.
- The CPU generator (mt19937) has no offset, so one is kept for it, keyed by the generator's
  state (see ``CpuStreams``): right after ``manual_seed(s)`` the position is (s, 0), and each
  draw moves it on exactly as a CUDA generator's offset moves. So ``torch.manual_seed(s)``
  followed by torchdist_fast draws gives the same numbers on CPU (Philox) and on the GPU.
  Each draw also consumes one 32-bit word of the mt19937 stream, so the state after a draw is
  never the freshly seeded one. A state this process has not seen after one of our draws
  (the generator was used by torch's own sampling, or restored from elsewhere) starts a new
  stream: a 64-bit key drawn from the generator, counters from 0. Either way the position is
  a function of the generator state: runs reproduce, and checkpoint recomputation (which
  restores the state) redraws the same noise.
- Taking a position and advancing the generator is one atomic step (``POSITION_LOCK``, on every
  path), so draws from one generator in several threads never share a counter (docs/random-numbers.md, "Threads
  and processes").
Through the ops the pair travels as an int64 tensor ``[seed, offset]`` (64-bit patterns), so that
the ops that use it are pure functions of their inputs and can be recomputed (backward,
checkpoint): on the CPU, or, for CUDA ops with the CUDA backend extension built, on the device,
written there by a graph-safe draw and read from memory by the kernels (``take_seed_offset``,
``kernel_position``). The eager fast path (``ops/eager_path.py``) passes the two ints straight to the
kernels instead, except under CUDA graph capture.

Per-rank seeds (the end of this module; ``torchdist_fast.streams`` is the same functions under
their documented older path):
Independent, reproducible random streams for parallel workers (ranks) from one seed.

The rule: the seed of rank ``r`` under base seed ``s`` is output number ``r + 1`` of SplitMix64
seeded with ``s``::

    rank_seed(s, r) = mix64((s + (r + 1) * 0x9E3779B97F4A7C15) mod 2**64)

where ``mix64`` is SplitMix64's output function (Steele, Lea and Flood 2014; Stafford's "Mix13",
as in Java's ``SplittableRandom``). ``mix64`` is a
bijection of 64-bit words and the increment is odd, so for one base seed the ranks 0, 1, 2, ...
get pairwise different seeds (for any number of ranks below 2**64), and nearby base seeds or
ranks give unrelated ones.

Why a different *seed* per rank is enough for torchdist_fast: a seed is the Philox key
(docs/random-numbers.md). After ``torch.manual_seed(k)`` (or ``Generator.manual_seed(k)``) the
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

import hashlib
import threading

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


def kernel_position(seed_offset: torch.Tensor, device: torch.device, kernels: bool) -> tuple[int, int, torch.Tensor | None]:
    """(seed, offset, position) for an op on ``device``.

    A pair on ``device`` run by GPU kernels (``kernels``) is handed over as it is: the kernel reads
    it from memory (``position``), so nothing is read on the host (no sync, and a CUDA graph
    replays it with the values of the replay). A CPU pair is read on the host. The reference
    (CPU) implementation takes ints: a CPU pair.
    """
    if (kernels and seed_offset.device == device and seed_offset.dtype == torch.int64 and seed_offset.shape == (2,)
            and seed_offset.is_contiguous()):
        return 0, 0, seed_offset
    if seed_offset.device.type != "cpu":
        raise ValueError(
            f"seed_offset must be an int64 tensor of shape (2,) on the CPU or on the op's device ({device}), got "
            f"{seed_offset.dtype} {tuple(seed_offset.shape)} on {seed_offset.device}"
        )
    if capturing(device):
        raise RuntimeError(
            "torchdist_fast: a CPU seed_offset is read on the host, so a CUDA graph would replay the same noise "
            "every time; under capture draw it with torchdist_fast.functional.draw_seed_offset (on the device)"
        )
    return (*unpack_seed_offset(seed_offset), None)


def pack_seed_offset(seed: int, offset: int) -> torch.Tensor:
    return torch.tensor([to_int64(seed), to_int64(offset)], dtype=torch.int64)


def default_generator(device: torch.device) -> torch.Generator:
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type == "cpu":
        return torch.default_generator
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "default_generators"):
        raise RuntimeError(f"torchdist_fast: no default generator for device type '{device.type}'")
    index = device.index if device.index is not None else module.current_device()
    if index >= len(module.default_generators) and hasattr(module, "init"):
        # torch.cuda.default_generators is empty until CUDA's lazy init (current_device() runs it,
        # an explicit index does not): this draw may be the program's first CUDA call
        module.init()
    if not 0 <= index < len(module.default_generators):
        raise RuntimeError(
            f"torchdist_fast: no default generator for {device}: {len(module.default_generators)} "
            f"{device.type} device(s) available"
        )
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


def _check_draw(device: torch.device, counters: int, generator) -> None:
    """The checks of every draw, whichever way its position is taken."""
    check_generator(generator, device)
    if counters < 0:
        raise RuntimeError(f"torchdist_fast: counters must be non-negative, got {counters}")


def take_position(device: torch.device, counters: int, generator: torch.Generator | None = None, *,
                  capture_checked: bool = False) -> tuple[int, int]:
    """Read (seed, offset) from the generator as two uint64 ints and advance it past ``counters``
    counters. ``capture_checked``: the caller has just checked that ``device`` is not capturing."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    _check_draw(device, counters, generator)
    return take_position_from(generator if generator is not None else default_generator(device), counters,
                              capture_checked)


def capturing(device: torch.device) -> bool:
    """Whether work on ``device`` is being captured into a CUDA graph (False without CUDA: a CPU
    build of torch has no capture to ask about)."""
    # no capture without CUDA initialized (is_initialized is a flag; is_available a driver query)
    return device.type == "cuda" and torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def take_seed_offset(device: torch.device, counters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The stream position as the int64 tensor ``[seed, offset]`` the ops take, the generator
    advanced as by ``take_position``.

    On CUDA with the CUDA backend extension built, it is written on the device by the extension's
    ``draw_position`` op: under CUDA graph capture it then holds the values of each replay
    (docs/compile.md, "CUDA graphs"). Elsewhere it is a CPU tensor (and capture is
    refused with a RuntimeError that says how to build the extension).
    """
    device = torch.device(device)
    if not position_on_device(device):
        if capturing(device):
            from . import cuda_backend

            raise RuntimeError(
                "torchdist_fast: sampling under CUDA graph capture reads the generator on the device, which needs "
                f"the CUDA backend extension: {cuda_backend.unavailable_reason()}"
            )
        return pack_seed_offset(*take_position(device, counters, generator))
    _check_draw(device, counters, generator)
    from . import cuda_backend

    with POSITION_LOCK:  # the extension takes the generator's mutex too; this orders it with our host draws
        return cuda_backend.draw_position(generator, counters, device)


def position_on_device(device: torch.device) -> bool:
    """Whether ``take_seed_offset`` (and the draw op's fake) put the pair on ``device``: CUDA with
    the CUDA backend extension built. Without it the pair stays on the CPU, so torch.compile's
    CUDA graphs (mode="reduce-overhead") see a CPU tensor and leave the graph uncaptured rather
    than fail."""
    if device.type != "cuda":
        return False
    from . import cuda_backend

    return cuda_backend.available()


def advance(counters: int) -> int:
    """How far a draw of ``counters`` counters moves the offset: rounded up to a multiple of 4
    (CUDA generators refuse other offsets), whatever the kernel's block size."""
    return -(-counters // 4) * 4


class CpuStreams:
    """Stream positions for mt19937 CPU generators, which have no offset of their own.

    Maps a digest of the generator state (as it is after one of our draws) to the position the
    next draw continues from; the freshly seeded state of a generator maps to
    (initial_seed, 0), like a CUDA generator after ``manual_seed``.
    """

    MAX_ENTRIES = 4096

    def __init__(self):
        self._positions: dict[bytes, tuple[int, int]] = {}
        self._fresh: dict[int, bytes] = {}

    @staticmethod
    def _digest(state: torch.Tensor) -> bytes:
        return hashlib.blake2b(state.numpy().tobytes(), digest_size=16).digest()

    def _fresh_digest(self, seed: int) -> bytes:
        if seed not in self._fresh:
            if len(self._fresh) >= 64:
                self._fresh.clear()
            self._fresh[seed] = self._digest(torch.Generator().manual_seed(seed).get_state())
        return self._fresh[seed]

    def take(self, gen: torch.Generator, counters: int) -> tuple[int, int]:
        """Read the position of ``gen``'s state and advance it past ``counters`` counters. Call
        under ``POSITION_LOCK``: reading the state, moving it on and recording the new state is one
        step, or two threads could read the same state and continue the same stream."""
        seed = gen.initial_seed()
        digest = self._digest(gen.get_state())
        if digest == self._fresh_digest(seed):
            key, offset = seed, 0
        elif digest in self._positions:
            key, offset = self._positions[digest]
        else:
            words = torch.randint(0, 1 << 32, (2,), generator=gen, dtype=torch.int64).tolist()
            key, offset = words[0] | (words[1] << 32), 0
        torch.randint(0, 1 << 32, (1,), generator=gen)  # mark the state as "after one of our draws"
        if len(self._positions) >= self.MAX_ENTRIES:
            self._positions.pop(next(iter(self._positions)))
        self._positions[self._digest(gen.get_state())] = (key, offset + advance(counters))
        return key, offset


_CPU_STREAMS = CpuStreams()

# Held while a draw reads its stream position and advances the generator, on every path
# (``take_position_from`` and the CUDA backend's device-side draw, ``take_seed_offset``): two of
# our draws, from any threads, never read the same position. One lock for all generators: the
# step it guards takes about a microsecond on an offset generator (an uncontended acquire costs
# ~0.05 us) and ~20 us on the mt19937 one. torch's own random ops hold the generator's C++ mutex,
# which Python cannot take (docs/random-numbers.md, "Threads and processes").
POSITION_LOCK = threading.Lock()


def take_position_from(gen, counters: int, capture_checked: bool = False) -> tuple[int, int]:
    """(seed, offset) of ``gen`` as two uint64 ints, ``gen`` advanced past ``counters`` counters:
    one atomic step (``POSITION_LOCK``)."""
    device = gen.device
    if device.type == "cpu":
        with POSITION_LOCK:
            return _CPU_STREAMS.take(gen, counters)
    if not capture_checked and capturing(device):
        # a host position would be baked into the graph: every replay would draw the same noise
        raise RuntimeError(
            "torchdist_fast: a stream position read on the host cannot be captured in a CUDA graph "
            "(every replay would draw the same noise); under capture it is taken on the device (take_seed_offset)"
        )
    with POSITION_LOCK:
        seed, offset = gen.initial_seed(), gen.get_offset()
        gen.set_offset(offset + advance(counters))
    return seed, offset


# ---------------------------------------------------------------------------------- counters
def counters_for(numel) -> int:
    """Philox counters a draw of ``numel`` normals consumes: 4 normals per counter."""
    return (numel + 3) // 4


# ---------------------------------------------------------------------------------- per-rank seeds
GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment: 2**64 / golden ratio, odd


def mix64(x: int) -> int:
    """SplitMix64's output function: a bijection of 64-bit words with full avalanche."""
    x &= _UINT64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _UINT64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _UINT64
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
