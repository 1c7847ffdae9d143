"""The accuracy contract of the float32 normals (reference.py "Accuracy contract").

The GPU evaluates Box-Muller with hardware-approximation lg2/sin/cos, which the interpreter
cannot run. CI checks the contract in three ways: (1) an emulation of the kernel's float32
algorithm in which every approximation is pushed to its documented worst-case error (both
signs), (2) the kernel itself under the interpreter (same algorithm, precise functions), and
(3) on a GPU (``gpu`` marker), the real kernel. Each is compared with the float64 formula on
the extreme words of each lane and an even sweep of 2**16 words.
"""
import itertools
import math

import pytest
import torch

from torchdist_fast import reference

MASK32 = 0xFFFFFFFF


def contract_words() -> torch.Tensor:
    """[n, 2] word pairs (w_r, w_t): the 4096 smallest and largest words of each lane (paired
    with an even sweep of the other lane), the words around 2**31 (the angle's wrap to -pi),
    the largest radii along the axes, and an even sweep of 2**16 words of each lane."""
    k = torch.arange(4096, dtype=torch.int64)
    sweep = k * (2**32 // 4096) + 12345
    edges = torch.cat((k, MASK32 - k))
    wrap = torch.cat((2**31 + k, 2**31 - 1 - k))
    pairs = [
        torch.stack((edges, torch.cat((sweep, sweep))), 1),          # radius word extreme
        torch.stack((torch.cat((sweep, sweep)), edges), 1),          # angle word extreme
        torch.stack((torch.cat((sweep, sweep)), wrap), 1),           # angle at +-pi
        torch.stack((torch.cat((k, k)), edges), 1),                   # largest radii at angle 0
        torch.stack((torch.cat((k, k)), wrap), 1),                    # largest radii at angle +-pi
    ]
    i = torch.arange(2**16, dtype=torch.int64)
    even = i * 2**16 + 2**15
    pairs.append(torch.stack((even, (i * 40503 % 2**16) * 2**16 + 777), 1))   # both lanes evenly, decorrelated
    return torch.cat(pairs)


def contract_errors(z: torch.Tensor, ideal: torch.Tensor) -> tuple[float, float]:
    """(max abs error where |ideal| <= 6, max relative error where |ideal| > 6)."""
    err = (z.double() - ideal).abs()
    inner = ideal.abs() <= 6
    abs_err = err[inner].max().item() if inner.any() else 0.0
    rel_err = (err[~inner] / ideal[~inner].abs()).max().item() if (~inner).any() else 0.0
    return abs_err, rel_err


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).to(torch.float64)


def emulated_fast(w_r, w_t, s_lg2, s_sqrt, s_cos, s_sin, small_t=reference.BOX_MULLER_SMALL_T):
    """The kernel's float32 Box-Muller (philox.py ``_box_muller32``), operation by operation:
    float32 rounding after each step (FFMA: one rounding), and each hardware approximation
    off by its documented worst-case error times the sign s_* (+1 or -1)."""
    def fma_word(w, scale, add):  # I2F (rounds the word to float32), then one FFMA
        return _f32(_f32(w.to(torch.float64)) * _f32(torch.tensor(scale, dtype=torch.float64)) + add)

    u = fma_word(w_r, 2.0**-32, 2.0**-33)
    t2 = fma_word(torch.where(w_r >= 2**31, w_r - 2**32, w_r), -(2.0**-31), -(2.0**-32))   # 2 (1 - u) where used
    lg_exact = torch.log2(u)
    in_range = (u >= 0.5) & (u <= 2.0)
    lg_err = torch.where(in_range, torch.full_like(u, reference.HW_LG2_ABS), reference.HW_LG2_REL * lg_exact.abs())
    lg = _f32(lg_exact + s_lg2 * lg_err)
    big = _f32(lg * _f32(torch.tensor(-2.0 * math.log(2.0), dtype=torch.float64)))
    small = _f32(t2 * _f32(t2 * 0.25) + t2)       # 2t + t^2: FMUL, FFMA
    r2 = torch.where(u >= 1.0 - small_t, small, big)
    r = _f32(torch.sqrt(r2) * (1.0 + s_sqrt * reference.HW_SQRT_REL))
    signed = torch.where(w_t >= 2**31, w_t - 2**32, w_t)
    theta = fma_word(signed, 2.0 * math.pi * 2.0**-32, _f32(torch.tensor(math.pi * 2.0**-32, dtype=torch.float64)))
    cos = _f32(torch.cos(theta) + s_cos * reference.HW_SINCOS_ABS)
    sin = _f32(torch.sin(theta) + s_sin * reference.HW_SINCOS_ABS)
    return _f32(r * cos), _f32(r * sin)


def worst_case_errors(small_t=reference.BOX_MULLER_SMALL_T):
    words = contract_words()
    w_r, w_t = words[:, 0], words[:, 1]
    ideal = torch.stack(reference.ideal_normals32(w_r, w_t), 1)
    worst_abs = worst_rel = 0.0
    for signs in itertools.product((-1.0, 1.0), repeat=4):
        z = torch.stack(emulated_fast(w_r, w_t, *signs, small_t=small_t), 1)
        a, r = contract_errors(z, ideal)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
    return worst_abs, worst_rel


def test_contract_words_cover_the_tails():
    words = contract_words()
    ideal = torch.stack(reference.ideal_normals32(words[:, 0], words[:, 1]), 1)
    assert ideal.abs().max() > 6.6          # the smallest radius words reach past 6 sigma
    assert (ideal.abs() > 6).sum() > 100    # the relative part of the contract is exercised
    assert ideal.abs().min() < 1e-4         # and the largest radius words reach 0


def test_emulated_hardware_worst_case_meets_contract():
    abs_err, rel_err = worst_case_errors()
    assert abs_err <= reference.FAST_ABS_ERR, abs_err
    assert rel_err <= reference.FAST_REL_ERR, rel_err
    # the contract is not loose by orders of magnitude
    assert abs_err > reference.FAST_ABS_ERR / 4, abs_err


def test_contract_catches_log2_near_one():
    """Without the series near u = 1 the documented lg2 error breaks the contract: the check can fail."""
    abs_err, _ = worst_case_errors(small_t=0.0)
    assert abs_err > reference.FAST_ABS_ERR, abs_err


def test_reference_meets_contract():
    words = contract_words()
    z = torch.stack(reference.box_muller32(words[:, 0], words[:, 1]), 1)
    ideal = torch.stack(reference.ideal_normals32(words[:, 0], words[:, 1]), 1)
    abs_err, rel_err = contract_errors(z, ideal)
    assert abs_err <= 2.4e-7 and rel_err <= 6e-8   # float64 rounded to float32: half an ulp


def _kernel_errors(device):
    from torchdist_fast.triton_kernels.philox import box_muller_words

    words = contract_words()
    out = box_muller_words(words.to(device)).cpu()
    ideal = torch.stack(reference.ideal_normals32(words[:, 0], words[:, 1]), 1)
    assert torch.isfinite(out).all()
    return contract_errors(out, ideal)


@pytest.mark.interpreter
def test_kernel_algorithm_meets_contract_interpreter(triton_device):
    if triton_device.type != "cpu":
        pytest.skip("the CUDA kernel is checked by the gpu test")
    import torchdist_fast

    with torchdist_fast.cpu_kernel("triton"):
        abs_err, rel_err = _kernel_errors("cpu")
    assert abs_err <= reference.FAST_ABS_ERR, abs_err
    assert rel_err <= reference.FAST_REL_ERR, rel_err


@pytest.mark.gpu
def test_gpu_fast_math_meets_contract():
    """The real hardware approximations (measured error, reported on failure)."""
    abs_err, rel_err = _kernel_errors("cuda")
    assert abs_err <= reference.FAST_ABS_ERR, abs_err
    assert rel_err <= reference.FAST_REL_ERR, rel_err


@pytest.mark.gpu
def test_gpu_stream_meets_contract():
    """philox_randn on CUDA against the float64 formula on the same words, over 2**24 draws (the
    first-contact plan's FAST_MATH contract check; the CPU side takes a few seconds)."""
    seed, offset, n = 12345, 678, 2**24
    from torchdist_fast.triton_kernels.philox import philox_randn

    got = philox_randn((n,), seed, offset, torch.float32, "cuda").cpu().view(-1, 4)
    w = reference.philox_words(n // 4, seed, offset)
    z0, z1 = reference.ideal_normals32(w[:, 0], w[:, 1])
    z2, z3 = reference.ideal_normals32(w[:, 2], w[:, 3])
    ideal = torch.stack((z0, z1, z2, z3), 1)
    abs_err, rel_err = contract_errors(got, ideal)
    assert abs_err <= reference.FAST_ABS_ERR and rel_err <= reference.FAST_REL_ERR, (abs_err, rel_err)


@pytest.mark.gpu
def test_gpu_cuda_backend_stream_meets_contract():
    """The CUDA C++ backend (kernels/philox.cuh box_muller32, __log2f/__sincosf) on a GPU."""
    from torchdist_fast import cuda_backend

    if not cuda_backend.available():
        pytest.skip(cuda_backend.unavailable_reason())
    seed, offset, n = 4321, 8, 2**22
    got = cuda_backend.philox_randn((n,), seed, offset, torch.float32, "cuda").cpu().view(-1, 4)
    w = reference.philox_words(n // 4, seed, offset)
    z0, z1 = reference.ideal_normals32(w[:, 0], w[:, 1])
    z2, z3 = reference.ideal_normals32(w[:, 2], w[:, 3])
    abs_err, rel_err = contract_errors(got, torch.stack((z0, z1, z2, z3), 1))
    assert abs_err <= reference.FAST_ABS_ERR and rel_err <= reference.FAST_REL_ERR, (abs_err, rel_err)
