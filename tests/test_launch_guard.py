"""The triton_device guard (conftest.py): a test that takes the fixture and launches no Triton kernel
on a tensor of its device fails, on CUDA as under the interpreter (where the device is the CPU)."""
from pathlib import Path

import pytest
import torch

import torchdist_fast  # noqa: F401  (registers the ops)
from conftest import kernel_devices
from helpers import counting_triton_launches
from torchdist_fast import rng

TESTS = Path(__file__).resolve().parent


def _launch_on(device):
    """One Triton launch (philox_randn) on a tensor of ``device``."""
    with torchdist_fast.cpu_kernel("triton"):
        return torch.ops.torchdist_fast.philox_randn([8], rng.pack_seed_offset(1, 2), torch.float32, torch.device(device))


@pytest.mark.parametrize("device", kernel_devices())
def test_counts_launches_by_device(device):
    other = "cuda" if device == "cpu" else "cpu"
    with counting_triton_launches(device) as here, counting_triton_launches(other) as there:
        with pytest.raises(pytest.fail.Exception, match="launched no Triton kernel"):
            here.check()
        torch.ones(4, device=device).add_(1)  # a torch kernel, not a Triton one
        with pytest.raises(pytest.fail.Exception, match="launched no Triton kernel"):
            here.check()
        _launch_on(device)
        here.check()
        with pytest.raises(pytest.fail.Exception, match=f"launched no Triton kernel on a {other} tensor"):
            there.check()  # a launch on another device does not count
    assert (here.on_device, here.elsewhere, there.on_device, there.elsewhere) == (1, 0, 0, 1)
    # uninstalled on exit: no more counting
    _launch_on(device)
    assert here.on_device == 1


GUARDED = '''
import torch
import torchdist_fast
from torchdist_fast import rng


def test_launches_nothing(triton_device):
    torch.ones(4, device=triton_device).add_(1)


def test_launches_on_the_device(triton_device):
    torch.ops.torchdist_fast.philox_randn([8], rng.pack_seed_offset(1, 2), torch.float32, triton_device)


def test_skips(triton_device):
    import pytest
    pytest.skip("a skip is not a guard failure")


def test_fails_by_itself(triton_device):
    assert False, "its own failure"
'''


def test_the_fixture_fails_a_test_that_launches_nothing(pytester):
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_guarded=GUARDED)
    rec = pytester.inline_run("-p", "no:cacheprovider")
    passed, skipped, failed = rec.listoutcomes()
    name = lambda r: r.nodeid.split("::")[1].split("[")[0]  # noqa: E731
    assert [name(r) for r in passed] == ["test_launches_on_the_device"]
    assert [name(r) for r in skipped] == ["test_skips"]
    assert sorted(name(r) for r in failed) == ["test_fails_by_itself", "test_launches_nothing"]
    why = {name(r): str(r.longrepr) for r in failed}
    assert "launched no Triton kernel" in why["test_launches_nothing"]
    # a test that failed by itself keeps its own failure; the guard adds nothing
    assert "its own failure" in why["test_fails_by_itself"] and "launched no Triton kernel" not in why["test_fails_by_itself"]
    assert all(r.when == "call" for r in failed)  # failures of the test, not errors of a fixture
