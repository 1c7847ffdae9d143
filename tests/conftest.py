import os

import pytest
import torch

pytest_plugins = ["pytester"]  # tests/test_launch_guard.py runs the triton_device guard on a test file of its own

# Triton reads TRITON_INTERPRET when a kernel is defined: decide before torchdist_fast is imported.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Under pytest-xdist each worker takes its share of the cores for torch's intra-op threads: two
# workers of two threads each on two cores oversubscribe them, and torch's OpenMP threads then
# spin against each other. Without xdist torch keeps its own default.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
HAS_CUDA = torch.cuda.is_available()


def kernel_devices():
    """Where the Triton kernels can run here: CPU tensors under the interpreter, CUDA tensors on a GPU."""
    return (["cpu"] if INTERPRET else []) + (["cuda"] if HAS_CUDA and not INTERPRET else [])


@pytest.fixture(params=kernel_devices())
def triton_device(request):
    """A device on which the ops run the Triton kernels (CPU tensors use the interpreter).

    Guarded: a test that takes it and launches no Triton kernel on a tensor of that device fails
    (``pytest_runtest_call`` below), so that it cannot pass on CUDA by comparing the CPU reference
    with itself."""
    import torchdist_fast
    from helpers import counting_triton_launches

    device = torch.device(request.param)
    with counting_triton_launches(device) as launches:
        request.node.triton_launches = launches
        if request.param == "cpu":
            with torchdist_fast.cpu_kernel("triton"):
                yield device
        else:
            yield device


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """The triton_device guard: once the test body has passed, it must have launched a kernel there."""
    result = yield
    launches = getattr(item, "triton_launches", None)
    if launches is not None:
        launches.check(item.nodeid)
    return result


@pytest.fixture(params=["reference"] + (["triton"] if INTERPRET else []))
def cpu_kernel(request):
    """Run the test with each CPU kernel: the reference and, under the interpreter, Triton."""
    import torchdist_fast

    with torchdist_fast.cpu_kernel(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _gpu_marker(request):
    if request.node.get_closest_marker("gpu") and not HAS_CUDA:
        pytest.skip("needs a CUDA device")


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty and torch.empty_like return NaN-filled (float) or -7 filled (int) memory:
    unwritten elements show."""
    for name in ("empty", "empty_like"):
        real = getattr(torch, name)

        def poisoned(*args, _real=real, **kwargs):
            t = _real(*args, **kwargs)
            return t.fill_(float("nan") if t.is_floating_point() else -7)

        monkeypatch.setattr(torch, name, poisoned)


@pytest.fixture
def no_recompiles():
    """A fresh dynamo; one cache entry per function, and an error instead of a silent fallback past it."""
    import torch._dynamo

    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()
