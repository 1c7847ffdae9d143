"""The optional hand-written CUDA backend: Python launchers over ``torch.ops.torchdist_fast_cuda``.

The kernels live in ``kernels/*.cu`` (repository root) and are built, only on request, by
``python setup_cuda.py build_ext --inplace`` into the extension ``torchdist_fast._cuda_backend``,
which registers the ops ``torch.ops.torchdist_fast_cuda.*`` for CUDA tensors. Nothing imports it
by default: ``available()`` tries, ``unavailable_reason()`` says why it failed.

A build kept out of the source tree (``python setup_cuda.py build_ext --build-lib DIR``, as the
GPU check does) is used when the environment variable ``TORCHDIST_FAST_CUDA_BACKEND_DIR`` names
DIR (the folder that holds ``torchdist_fast/_cuda_backend*.so``, or the ``.so`` itself); it then
takes the place of any in-tree build.

The launchers below have exactly the signatures and return conventions of the Triton launchers
(``triton_kernels/philox.py``, ``normal_rsample.py``, ``normal_log_prob.py``), so either can serve
the ``torch.ops.torchdist_fast`` ops. Both produce the stream of ``reference.py`` (same words bit
for bit; normals equal to float rounding). Seeds and offsets are Python ints holding uint64 values;
they cross into C++ as int64 bit patterns.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import torch

EXTENSION = "torchdist_fast._cuda_backend"
BUILD_DIR_ENV = "TORCHDIST_FAST_CUDA_BACKEND_DIR"
# the op families (``ops/``) it has kernels for; the others raise under gpu_kernel("cuda") (``ops.launch``)
FAMILIES = ("random_draws", "normal")
_MASK64 = (1 << 64) - 1
_state: dict = {"tried": False, "ok": False, "reason": ""}


def built_extension(folder) -> Path | None:
    """The extension's shared library inside an out-of-tree build folder (or ``folder`` itself when
    it is that file); None when there is none."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    stem = EXTENSION.rsplit(".", 1)[1]
    for sub in (folder / "torchdist_fast", folder):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (sub / f"{stem}{suffix}").is_file():
                return sub / f"{stem}{suffix}"
    return None


def _import_from(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(EXTENSION, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[EXTENSION] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(EXTENSION, None)
        raise


def _try_load() -> None:
    if _state["tried"]:
        return
    _state["tried"] = True
    folder = os.environ.get(BUILD_DIR_ENV)
    try:
        if folder:
            path = built_extension(folder)
            if path is None:
                _state["reason"] = f"{BUILD_DIR_ENV}={folder} holds no built {EXTENSION} (torchdist_fast/_cuda_backend*.so)"
                return
            _import_from(path)
        else:
            importlib.import_module(EXTENSION)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and e.name == EXTENSION
        _state["reason"] = (
            f"the CUDA backend is not built ({EXTENSION} not found): run `python setup_cuda.py build_ext --inplace` "
            "in the repository (needs a CUDA build of torch and nvcc)"
            if missing else f"the CUDA backend {EXTENSION} failed to load (built for another torch or CUDA?): {e}"
        )
        return
    except OSError as e:  # a shared library it links against is missing
        _state["reason"] = f"the CUDA backend {EXTENSION} failed to load: {e}"
        return
    if not hasattr(torch.ops, "torchdist_fast_cuda") or not hasattr(torch.ops.torchdist_fast_cuda, "normal_rsample_fwd"):
        _state["reason"] = f"{EXTENSION} loaded but registered no torch.ops.torchdist_fast_cuda ops"
        return
    _state["ok"] = True


def available() -> bool:
    """True when the extension is built and loads (it says nothing about a GPU being present)."""
    _try_load()
    return _state["ok"]


def unavailable_reason() -> str:
    """Why ``available()`` is False ("" when it is True)."""
    _try_load()
    return "" if _state["ok"] else _state["reason"]


def _ops():
    if not available():
        raise RuntimeError(f"torchdist_fast.cuda_backend: {unavailable_reason()}")
    return torch.ops.torchdist_fast_cuda


def _i64(value: int) -> int:
    """A uint64 value (any Python int, taken modulo 2**64) as the int64 with the same bits."""
    value = int(value) & _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


# ---------------------------------------------------------------------------- launchers
# ``position``: None, or the int64 pair [seed, offset] on the device, which the kernels then read
# instead of ``seed``/``offset`` (CUDA graphs, torch.compile; see triton_kernels/layout.position_args)
def philox_randn(shape, seed: int, offset: int, dtype: torch.dtype, device, position=None) -> torch.Tensor:
    return _ops().philox_randn([int(s) for s in shape], _i64(seed), _i64(offset), dtype, torch.device(device), position)


def normal_rsample_fwd(loc, scale, sample_shape, seed: int, offset: int, with_log_prob: bool, position=None):
    """z, or (z, log_prob(z)) when with_log_prob; shape sample_shape + broadcast(loc, scale)."""
    out = _ops().normal_rsample_fwd(loc, scale, [int(s) for s in sample_shape], _i64(seed), _i64(offset),
                                    bool(with_log_prob), position)
    return (out[0], out[1]) if with_log_prob else out[0]


def normal_rsample_bwd(grad_z, grad_log_prob, scale, seed: int, offset: int, position=None):
    """grad_scale reduced to scale.shape; either grad may be None (grad_loc needs no kernel)."""
    return _ops().normal_rsample_bwd(grad_z, grad_log_prob, scale, _i64(seed), _i64(offset), position)


def draw_position(generator, counters: int, device) -> torch.Tensor:
    """The stream position of a draw as the int64 pair [seed, offset] written on ``device``, the
    generator advanced by ``counters`` (rounded up to 4): CUDA-graph safe (kernels/normal_ops.cu)."""
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _ops().draw_position(generator, int(counters), device)


def normal_log_prob_fwd(value, loc, scale):
    return _ops().normal_log_prob_fwd(value, loc, scale)


def normal_log_prob_bwd(grad, value, loc, scale, output_mask):
    """(grad_value, grad_loc, grad_scale) reduced to the inputs' shapes; None where not needed."""
    mask = [bool(m) for m in output_mask]
    grads = _ops().normal_log_prob_bwd(grad, value, loc, scale, mask)
    return tuple(g if need else None for g, need in zip(grads, mask))
