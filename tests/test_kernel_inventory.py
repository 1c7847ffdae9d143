"""The kernel inventory (``triton_kernels/inventory.py``): every Triton kernel is declared, every
declared kernel has variants (picked by its launchers), and every one is in some op's kernels."""
import pkgutil

import pytest

pytest.importorskip("triton")

from torchdist_fast import triton_kernels  # noqa: E402
from torchdist_fast.triton_kernels import inventory  # noqa: E402


def _jit_functions(module):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return {k for k, v in vars(module).items()
            if isinstance(v, (JITFunction, InterpretedFunction)) and v.fn.__module__ == module.__name__}


def test_every_module_with_kernels_is_in_the_inventory():
    with_kernels = {info.name for info in pkgutil.iter_modules(triton_kernels.__path__)
                    if any(k.endswith("_kernel") for k in _jit_functions(inventory.module(info.name)))}
    assert with_kernels == set(inventory.MODULES)


@pytest.mark.parametrize("name", inventory.MODULES)
def test_every_kernel_is_declared(name):
    """A module's ``KERNELS`` are exactly its jit functions named ``*_kernel`` (the others are helpers)."""
    module = inventory.module(name)
    assert set(module.KERNELS) == {k for k in _jit_functions(module) if k.endswith("_kernel")}
    assert len(set(module.KERNELS)) == len(module.KERNELS)


def test_sixteen_kernels():
    assert len(inventory.kernels()) == 16


def test_every_declared_kernel_has_variants_picked_by_its_launchers():
    variants = inventory.variants()
    assert {(v.module, v.kernel) for v in variants} == set(inventory.kernels())
    for v in variants:
        assert v.cases and v.num_warps == inventory.DEFAULT_NUM_WARPS
        assert v.dtype in inventory.DTYPES
        constexprs = dict(v.constexprs)
        assert constexprs.get("FAST_MATH", True) is True  # what CUDA launches compile


def test_the_variants_are_the_launchers_block_sizes():
    """The inventory records what the launchers pass: a BLOCK the launcher does not use cannot appear."""
    import torch

    from torchdist_fast.triton_kernels.layout import block_counters

    for v in inventory.variants():
        c = dict(v.constexprs)
        dt = getattr(torch, inventory.TORCH_DTYPES[v.dtype])
        if v.kernel in ("_philox_randn_kernel", "_normal_rsample_fwd_kernel", "_normal_rsample_bwd_kernel"):
            assert c["BLOCK"] == block_counters(dt), v
        if v.kernel in ("_normal_log_prob_fwd_kernel", "_normal_log_prob_bwd_kernel"):
            assert c["BLOCK"] == 4 * block_counters(dt), v


def test_a_launch_of_an_undeclared_kernel_is_an_error(monkeypatch):
    from torchdist_fast.triton_kernels import normal_kl

    monkeypatch.setattr(normal_kl, "KERNELS", ("_normal_kl_fwd_kernel",))
    monkeypatch.setattr(inventory, "_VARIANTS", {})
    with pytest.raises(RuntimeError, match="_normal_kl_bwd_kernel"):
        inventory.variants(("normal_kl",))
