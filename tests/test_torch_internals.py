"""The torch internals (not public API) the ops rely on, listed in ``ops/inductor.py`` (the ops under
torch.compile) and ``ops/eager_path.py`` (the eager fast path): each one exists, with the shape we use.

Checked on torch 2.13 (this suite's environment) and torch 2.11 (the GPU machine's stack: run
this file there). A new torch that moves one fails here first, by name, rather than deep inside a
compiled graph; the features themselves are tested in test_compiled_kernels.py / test_eager_path.py.
"""
import importlib

import pytest
import torch

from torchdist_fast.ops import eager_path, inductor

CHECKED_ON = ("2.11", "2.13")
# present only from some version on; the code falls back without them (ops/inductor.py)
OPTIONAL_BEFORE = {("torch._library.triton", "triton_ops_to_kernels"): "2.10",
                   ("torch.export._trace", "custom_triton_ops_decomposition_disabled"): "2.10"}


def _version() -> tuple:
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def _resolve(module: str, attribute: str):
    """``module`` may name a class inside a module (``torch._library.custom_ops.CustomOpDef``)."""
    try:
        owner = importlib.import_module(module)
    except ImportError:
        parent, cls = module.rsplit(".", 1)
        owner = getattr(importlib.import_module(parent), cls)
    if isinstance(owner, type) and owner.__name__ == "CustomOpDef":
        from torchdist_fast.ops.normal import normal_log_prob as owner  # an instance: these are set in __init__
    return getattr(owner, attribute)


INTERNALS = sorted({**inductor.TORCH_INTERNALS, **eager_path.TORCH_INTERNALS})


def test_the_environment_is_one_the_list_was_checked_on():
    assert f"{_version()[0]}.{_version()[1]}" in CHECKED_ON or _version() > (2, 13), torch.__version__


@pytest.mark.parametrize("module, attribute", INTERNALS)
def test_torch_internal_exists(module, attribute):
    since = OPTIONAL_BEFORE.get((module, attribute))
    if since is not None and _version() < tuple(map(int, since.split("."))):
        pytest.skip(f"absent before torch {since}: the code falls back")
    assert _resolve(module, attribute) is not None


def test_the_eager_path_apply_is_the_c_plus_plus_apply():
    """``super(torch.autograd.Function, F).apply`` is the C++ apply (torch._C._FunctionBase.apply),
    not torch.autograd.Function.apply's Python wrapper."""
    from torchdist_fast.ops.normal import EagerLogProb

    apply = eager_path.apply_without_wrapper(EagerLogProb)
    assert apply is not EagerLogProb.apply
    assert type(apply).__name__ == "builtin_function_or_method"  # C++, not a Python function
    v, m, s = torch.randn(3, requires_grad=True), torch.zeros(3), torch.ones(3)
    out = apply(v, m, s)
    out.sum().backward()
    torch.testing.assert_close(v.grad, -v.detach())


def test_dispatch_and_function_stack_lengths_are_counts():
    assert torch._C._len_torch_dispatch_stack() == 0 and torch._C._len_torch_function_stack() == 0
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert torch._C._len_torch_dispatch_stack() == 1


def test_the_effect_registration_takes_an_op_overload():
    from torch._higher_order_ops.effects import _EffectType, _get_effect

    assert _get_effect(torch.ops.torchdist_fast.draw_seed_offset.default) == _EffectType.ORDERED


def test_the_cache_key_table_holds_each_exposed_op():
    try:
        from torch._library.triton import triton_ops_to_kernels
    except ImportError:
        pytest.skip("no AOTAutograd cache key of Triton kernels in this torch")
    assert all(f"torchdist_fast::{op._name}" in triton_ops_to_kernels for op in inductor.EXPOSED_OPS)
