"""What the GPU check's steps run: sizes, cases, worker counts, and the workloads run under the
tools (compute-sanitizer, Nsight Compute). Shared by ``gpu_check`` (the plans) and
``gpu_estimate`` (their time estimates), which import it and not each other."""
from __future__ import annotations

from pathlib import Path

PLAN_LIMIT_S = 540          # one command of a GPU window: 9 minutes
PLAN_DEADLINE_S = 530       # the runner's own deadline: the last archive is written before the limit
BENCH_SIZES = [f"2^{k}" for k in range(0, 29, 2)]
HEADLINE_SIZES = ["2^8", "2^12", "2^20", "2^24", "2^28"]
HEADLINE_DTYPES = ("float32", "bfloat16")
HEADLINE_OP_MODES = ("randn:fwd", "rsample:fwd", "log_prob:fwd+bwd", "rsample_and_log_prob:fwd+bwd")
SILICON_WORKERS = 8         # pytest-xdist workers (the GPU machines have 16 cores; the build takes some)
GRAPHS_WORKERS = 4
SUITE_WORKERS = 8
NCU_SIZE = 2**24
NCU_METRICS = ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
               "dram__throughput.avg.pct_of_peak_sustained_elapsed")
NO_INTERPRET = {"TRITON_INTERPRET": None}
PYTEST_PLUGIN = "torchdist_fast.tools.gpu_check_pytest"
SILICON_CASES = Path(__file__).with_name("gpu_check_silicon_cases.txt")

# The silicon step picks its cases from these tests (SILICON_CASES, chosen by
# ``python -m torchdist_fast.tools.gpu_estimate --recount``: every kernel, dtype, code-path constexpr
# value and tail launch at least once, in float32 and bfloat16, with the fewest compiles) ...
SILICON_CANDIDATES = (
    "tests/test_philox_stream.py::test_triton_words_equal_reference",
    "tests/test_philox_stream.py::test_triton_normals_equal_reference",
    "tests/test_normal_ops.py::test_rsample_log_prob_forward_matches_reference",
    "tests/test_normal_ops.py::test_log_prob_forward_matches_reference",
    "tests/test_normal_ops.py::test_rsample_log_prob_backward_matches_reference",
    "tests/test_normal_ops.py::test_log_prob_backward_matches_reference",
    "tests/test_tiles.py::test_rsample_tiles_match_reference",
    "tests/test_tiles.py::test_rsample_output_shaped_as_loc",
    "tests/test_tiles.py::test_rsample_tiles_backward_match_reference",
    "tests/test_tiles.py::test_log_prob_tiles_match_reference",
    "tests/test_tiles.py::test_tiles_with_64_bit_indices",
    "tests/test_kl.py::test_kernel_matches_reference_forward_and_backward",
    "tests/test_kl.py::test_backward_writes_only_what_is_asked",
    "tests/test_independent.py::test_log_prob_sum_kernel_and_reference",
    "tests/test_independent.py::test_entropy_sum_kernel_and_reference",
    "tests/test_independent.py::test_rsample_log_prob_sum_is_rsample_then_the_sum",
    "tests/test_tanh_normal.py::test_kernel_matches_reference",
    "tests/test_memory_and_launches.py::test_one_kernel_forward_one_backward",
)
# ... and runs these whole: the Philox words bit for bit at every position (one compiled kernel),
# and the tests that need a GPU (the FAST_MATH accuracy contract over 2^24 draws among them)
SILICON_ALWAYS = (
    "tests/test_philox_stream.py::test_triton_words_equal_reference",
    "tests/test_normal_accuracy.py::test_gpu_fast_math_meets_contract",
    "tests/test_normal_accuracy.py::test_gpu_stream_meets_contract",
    "tests/test_kl.py::test_cuda_kl_matches_torch_without_host_sync",
    "tests/test_tanh_normal.py::test_cuda_matches_cpu_philox_within_the_contract",
    "tests/test_normal_class.py::test_cuda_step_never_synchronizes",
    "tests/test_normal_class.py::test_cuda_matches_cpu_philox_for_the_same_seed_offset",
)
GRAPHS_TESTS = (
    "tests/test_cuda_graphs.py",
    "tests/test_compiled_kernels.py::test_inductor_calls_the_kernels_from_its_generated_code",
    "tests/test_normal_accuracy.py::test_gpu_cuda_backend_stream_meets_contract",
    "tests/test_cuda_backend.py::test_gpu_kernels_match_reference",
)


def workload_ops(device: str = "cuda") -> int:
    """Every op, forward and backward, every dtype, at small and odd sizes, broadcast and
    non-contiguous inputs: what memcheck watches. Returns the number of op calls made."""
    import torch

    import torchdist_fast

    calls = 0
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    shapes = [((1,), (1,), ()), ((7,), (7,), (3,)), ((4099,), (4099,), ()), ((3, 1), (1, 5), (2,)), ((1000,), (), (2,))]
    for dtype in dtypes:
        for n in (1, 3, 4, 5, 1000, 4099):
            torchdist_fast.randn(n, dtype=dtype, device=device)
            calls += 1
        for loc_shape, scale_shape, sample_shape in shapes:
            loc = torch.randn(loc_shape, dtype=dtype, device=device).requires_grad_()
            scale = (torch.rand(scale_shape, dtype=dtype, device=device) + 0.5).requires_grad_()
            d = torchdist_fast.Normal(loc, scale)
            z = d.rsample(sample_shape)
            z2, lp = d.rsample_and_log_prob(sample_shape)
            value = torch.randn(z.shape, dtype=dtype, device=device).requires_grad_()
            lp2 = d.log_prob(value)
            torch.autograd.grad((z.sum() + z2.sum() + lp.sum() + lp2.sum()).float(), (loc, scale, value))
            _, lp3 = d.sample_and_log_prob(sample_shape)
            torch.autograd.grad(lp3.sum().float(), (loc, scale))
            calls += 5
        # non-contiguous (transposed, strided) parameters
        loc = torch.randn(64, 48, dtype=dtype, device=device).t().requires_grad_()
        scale = (torch.rand(48, 128, dtype=dtype, device=device) + 0.5)[:, ::2].requires_grad_()
        z, lp = torchdist_fast.Normal(loc, scale).rsample_and_log_prob()
        torch.autograd.grad((z.sum() + lp.sum()).float(), (loc, scale))
        calls += 1
    if device == "cuda":
        torch.cuda.synchronize()
        from .. import cuda_backend

        if cuda_backend.available():
            with torchdist_fast.gpu_kernel("cuda"):
                loc = torch.randn(4099, device=device, requires_grad=True)
                scale = (torch.rand(4099, device=device) + 0.5).requires_grad_()
                z, lp = torchdist_fast.Normal(loc, scale).rsample_and_log_prob()
                torch.autograd.grad(z.sum() + lp.sum(), (loc, scale))
                calls += 1
            torch.cuda.synchronize()
    return calls


def workload_ncu(device: str = "cuda", n: int = NCU_SIZE) -> None:
    """Each op forward and backward at n elements (fp32 and bf16), and the copy kernel of
    ``device_copy`` as the reference (a kernel, which ncu lists; ``Tensor.copy_`` is a memcpy it
    does not). The kernels are compiled in a warm-up; only the second pass is profiled
    (ncu --profile-from-start off)."""
    import torch

    import torchdist_fast

    from . import device_copy

    inputs = []
    for dtype in (torch.float32, torch.bfloat16):
        loc = torch.randn(n, dtype=dtype, device=device, requires_grad=True)
        scale = (torch.rand(n, dtype=dtype, device=device) + 0.5).requires_grad_()
        value, g = torch.randn(n, dtype=dtype, device=device), torch.randn(n, dtype=dtype, device=device)
        inputs.append((loc, scale, value, g, torch.empty_like(value)))

    def one_pass():
        for loc, scale, value, g, dst in inputs:
            device_copy.copy(value, dst)
            torchdist_fast.randn(n, dtype=loc.dtype, device=device)
            d = torchdist_fast.Normal(loc, scale)
            torch.autograd.grad(d.rsample(), (loc, scale), g)
            torch.autograd.grad(d.log_prob(value), (loc, scale), g)
            z, lp = d.rsample_and_log_prob()
            torch.autograd.grad((z, lp), (loc, scale), (g, g))
        if device == "cuda":
            torch.cuda.synchronize()

    one_pass()  # compiles the kernels
    if device == "cuda":
        torch.cuda.profiler.start()
    one_pass()
    if device == "cuda":
        torch.cuda.profiler.stop()
