"""The ops under ``torch.compile``: the kernels in compiled graphs, the compile cache key, and the
effect token that keeps draws apart.

Under torch.compile an op is first one opaque node (its fake kernel gives the shapes). When
AOTAutograd functionalizes the graph, an op that would launch Triton kernels is replaced by its
own implementation, run on FunctionalTensors: each launch goes through ``wrap_triton``
(``triton_kernels.layout.launcher``) and becomes a triton_kernel_wrapper_functional node, which
Inductor calls from its generated code, with no Python frame of ours per call. This is what
``torch.library.triton_op`` does, with one difference that is why it is not used: the choice is
made per call. Calls that run no Triton kernel (the CPU reference, the CUDA C++ backend), that
take their stream position on the host (a CPU seed_offset for a CUDA op: no extension built), or
that have symbolic shapes (the launch plans are computed from concrete sizes and strides) stay
opaque, as before. Only the draw of the stream position (draw_seed_offset) remains a Python op.

It relies on torch internals (not public API), listed in ``TORCH_INTERNALS`` and checked, each,
by tests/test_torch_internals.py, which names the torch versions they were checked on.
"""
from __future__ import annotations

import contextlib

import torch

from ..settings import get_cpu_kernel, get_gpu_kernel, uses_gpu_kernels

# (module, attribute): what this module uses of it
TORCH_INTERNALS = {
    ("torch._subclasses.functional_tensor", "FunctionalTensorMode"):
        "the mode an op's functionalization rule is registered for (CustomOpDef.register_torch_dispatch)",
    ("torch._subclasses.functional_tensor", "FunctionalTensor"): "the tensors the rule accepts",
    ("torch._subclasses.fake_tensor", "FakeTensor"): "the tensors the rule accepts",
    ("torch._library.custom_ops.CustomOpDef", "_init_fn"): "an op's implementation, run inside the rule",
    ("torch._library.custom_ops.CustomOpDef", "_namespace"): "the op's qualified name, for the cache key",
    ("torch._library.custom_ops.CustomOpDef", "_name"): "the op's qualified name, for the cache key",
    ("torch._library.triton", "triton_ops_to_kernels"):
        "AOTAutograd's cache key: the Triton kernels an op may launch (absent before torch 2.10: no key)",
    ("torch.export._trace", "custom_triton_ops_decomposition_disabled"):
        "torch.export keeps custom ops whole (absent in older torch: never disabled)",
    ("torch._higher_order_ops.effects", "_register_effectful_op"): "the ORDERED effect of draw_seed_offset",
    ("torch._higher_order_ops.effects", "_EffectType"): "the ORDERED effect of draw_seed_offset",
}


def mark_ordered(op) -> None:
    """Thread an effect token through ``op`` under torch.compile.

    nondeterministic_seeded alone does not stop AOTAutograd's CSE from merging two draws with
    equal arguments (its list of random ops is a fixed set of aten ops), which would give two
    samples in one graph the same noise. An ORDERED effect keeps every call, in program order.
    """
    from torch._higher_order_ops.effects import _EffectType, _register_effectful_op

    _register_effectful_op(op, _EffectType.ORDERED)


_CPU_GRAPHS = {"on": False}


@contextlib.contextmanager
def kernels_in_cpu_graphs(on: bool = True):
    """Expose the kernels of CPU ops (``cpu_kernel("triton")``, TRITON_INTERPRET=1) to compiled graphs
    too, for tests: Inductor cannot build user Triton kernels for the CPU, but ``backend="aot_eager"``
    runs the same functionalized graph, launches and all, through the interpreter.

    Test mode only: Inductor's mutation analysis of a kernel needs a GPU driver, so here it fails
    and assumes every argument written; the graph then copies each input of a launch back into
    itself (same values, but the inputs' version counters move: an eager autograd graph that
    saved them refuses to run backward afterwards)."""
    saved, _CPU_GRAPHS["on"] = _CPU_GRAPHS["on"], on
    try:
        yield
    finally:
        _CPU_GRAPHS["on"] = saved


def kernel_settings() -> tuple:
    """The switches that decide whether an op becomes launches in a compiled graph. The distribution
    methods read them while dynamo traces (``eager_path.direct_ok``), so dynamo guards on them: a graph
    compiled under one setting is recompiled, not reused, under another. (A direct call of an op
    inside a compiled function reads them when the graph is compiled.)"""
    return get_cpu_kernel(), get_gpu_kernel(), _CPU_GRAPHS["on"]


def _concrete(t: torch.Tensor) -> bool:
    return all(type(n) is int for n in (*t.shape, *t.stride()))


def kernels_traceable(args, kwargs) -> bool:
    """Whether an op call with these (functional) arguments is replaced by its kernel launches."""
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves((args, kwargs))
    tensors = [a for a in leaves if isinstance(a, torch.Tensor)]
    if not tensors:
        return False
    device = tensors[0].device
    if any(t.device != device for t in tensors) or not uses_gpu_kernels(device):
        return False
    if device.type == "cuda" and get_gpu_kernel() != "triton":
        return False
    if device.type != "cuda" and not _CPU_GRAPHS["on"]:
        return False
    for a in leaves:
        if isinstance(a, torch.device) and a.type != device.type:
            return False
        if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return False
    return all(_concrete(t) for t in tensors)


def _decomposition_disabled() -> bool:
    try:
        from torch.export._trace import custom_triton_ops_decomposition_disabled
    except ImportError:  # older torch: export has no such switch
        return False
    return custom_triton_ops_decomposition_disabled()


# every op that may launch kernels (all but draw_seed_offset), and the triton_kernels modules of each:
# filled by ``expose_kernels`` as the op families register their ops
EXPOSED_OPS: list = []
KERNEL_MODULES: dict = {}


def expose_kernels(op, kernel_modules: tuple) -> None:
    """Register the functionalization rule above for ``op``, and key AOTAutograd's cache on the
    kernels of ``kernel_modules`` (the ``triton_kernels`` modules whose launchers ``op`` calls; the
    kernels' jit helpers in other modules come with them: the source closure torch computes)."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

    impl = op._init_fn

    def functionalize(mode, overload, types, args, kwargs):
        if any(t not in (torch.Tensor, FunctionalTensor) and not issubclass(t, FakeTensor) for t in types):
            return NotImplemented  # as triton_op: other subclasses get their own say
        # torch.export keeps custom ops whole (as it does triton_op's): an exported program holds the op
        if not _decomposition_disabled() and kernels_traceable(args, kwargs):
            with mode:
                return impl(*args, **kwargs)
        return mode.__torch_dispatch__(overload, types, args, kwargs)

    op.register_torch_dispatch(FunctionalTensorMode, functionalize)
    EXPOSED_OPS.append(op)
    KERNEL_MODULES[op._name] = tuple(kernel_modules)
    try:
        from torch._library.triton import triton_ops_to_kernels
    except ImportError:  # older torch: no such cache key
        return
    triton_ops_to_kernels[f"{op._namespace}::{op._name}"] = _Kernels(tuple(kernel_modules))


class _Kernels:
    """The Triton kernels of some launcher modules as the kernel inventory declares them (each
    module's ``KERNELS``: ``triton_kernels/inventory.py``), listed when first iterated (the package
    imports without triton)."""

    def __init__(self, modules):
        self.modules = modules

    def __iter__(self):
        from ..triton_kernels import inventory
        from ..triton_kernels.layout import traceable

        return iter([traceable(k) for k in inventory.kernel_functions(self.modules)])
