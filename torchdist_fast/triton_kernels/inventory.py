"""The kernel inventory: every Triton kernel of the package and the variants its launchers pick.

Each kernel module declares, beside its kernels and launchers:

- ``KERNELS``: the names of its ``@triton.jit`` kernels (the functions a launcher launches; the
  jit helpers they call are not kernels);
- ``LAUNCH_CASES``: ``LaunchCase``s, each a small call of the module's own launchers (a
  broadcast pattern, a flag combination) on CPU tensors, per dtype.

The variants are not written a second time: ``variants()`` runs every case with the launch
intercepted (nothing executes, nothing compiles) and records what the launcher passed: the
kernel, the pointer dtype, the constexprs (BLOCK sizes, flags, operand kinds, ``FAST_MATH`` as on
CUDA) and ``num_warps``. So the inventory and the launchers cannot drift apart: a launcher that
picks another BLOCK changes the inventory with it.

Read by ``aot`` (compiles every kernel in every variant), the cost model (checks that it models
every kernel: ``tests/test_cost_model.py``), the compile cache key (``ops.inductor``: the kernels
of an op's modules) and the tests (``tests/test_aot_compile.py``: every jit kernel is declared,
every declared kernel has a variant and is launched by some op).
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Callable

MODULES = ("philox", "normal_rsample", "normal_log_prob", "normal_kl", "normal_event_sum", "tanh_normal")
DTYPES = ("fp32", "fp64", "fp16", "bf16")
TORCH_DTYPES = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "bf16": "bfloat16"}
DEFAULT_NUM_WARPS = 4  # Triton's default; no launcher passes num_warps


@dataclass(frozen=True)
class LaunchCase:
    """One call of a module's launchers: ``run(torch_dtype)`` on small CPU tensors."""

    label: str
    run: Callable
    dtypes: tuple = DTYPES


@dataclass(frozen=True)
class KernelVariant:
    """One compiled form of a kernel, as a launcher launches it."""

    module: str
    kernel: str           # the kernel's name in its module, e.g. "_philox_randn_kernel"
    dtype: str            # the float dtype of the launch ("fp32", ...)
    constexprs: tuple     # sorted (name, value) pairs, as the launcher passes them
    num_warps: int
    cases: tuple          # labels of the launch cases that pick it


def short_name(kernel: str) -> str:
    return kernel.strip("_").removesuffix("_kernel")


def module(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def kernels(modules=MODULES) -> list:
    """[(module name, kernel name)] of every declared kernel, in declaration order."""
    return [(m, k) for m in modules for k in module(m).KERNELS]


def kernel_functions(modules=MODULES) -> list:
    """The declared kernels themselves (JITFunctions, or InterpretedFunctions under TRITON_INTERPRET=1)."""
    return [getattr(module(m), k) for m, k in kernels(modules)]


@contextlib.contextmanager
def captured_launches():
    """Intercept ``JITFunction.run`` (and the interpreter's ``InterpretedFunction.run`` under
    TRITON_INTERPRET=1): record (kernel, args, kwargs, grid) instead of launching."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    calls = []
    real = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}

    def fake_run(self, *args, grid, warmup=False, **kwargs):
        calls.append((self, args, kwargs, grid))
        return None

    for cls in real:
        cls.run = fake_run
    try:
        yield calls
    finally:
        for cls, run in real.items():
            cls.run = run


def _dtype_of(args, default: str) -> str:
    """The float dtype of a launch: of its first float tensor (``default``, the case's, if none)."""
    import torch

    names = {getattr(torch, v): k for k, v in TORCH_DTYPES.items()}
    for a in args:
        if isinstance(a, torch.Tensor) and a.dtype in names:
            return names[a.dtype]
    return default


_VARIANTS: dict = {}


def variants(modules=MODULES) -> list:
    """Every ``KernelVariant`` the declared launch cases pick (with ``FAST_MATH`` as on CUDA, also
    under TRITON_INTERPRET=1)."""
    key = tuple(modules)
    if key not in _VARIANTS:
        import torch

        from .layout import force_fast_math

        found: dict = {}
        for m in modules:
            mod = module(m)
            names = {getattr(mod, k): k for k in mod.KERNELS}
            for case in mod.LAUNCH_CASES:
                for dt in case.dtypes:
                    with force_fast_math(True), captured_launches() as calls:
                        case.run(getattr(torch, TORCH_DTYPES[dt]))
                    for fn, args, kwargs, _grid in calls:
                        if fn not in names:
                            raise RuntimeError(f"{m}: launch case {case.label!r} launched {fn.fn.__name__}, "
                                               f"which {m}.KERNELS does not declare")
                        kw = dict(kwargs)
                        num_warps = kw.pop("num_warps", DEFAULT_NUM_WARPS)
                        vkey = (m, names[fn], _dtype_of(args, dt), tuple(sorted(kw.items())), num_warps)
                        found.setdefault(vkey, []).append(case.label)
        _VARIANTS[key] = [KernelVariant(*k, cases=tuple(dict.fromkeys(labels))) for k, labels in found.items()]
    return _VARIANTS[key]
