"""The CUDA C++ backend (kernels/, setup_cuda.py, torchdist_fast/cuda_backend.py), checked without a GPU.

1. kernels/host_check.cpp, the device code (philox.cuh, normal_kernels.cuh) built for the host with
   g++ and with ``nvcc -x cu``: Philox words bit for bit against the Random123 known answers and
   ``reference.philox_words``; normals against ``reference.philox_normals`` to float rounding.
2. kernels/normal_ops.cu built with g++ and -DTDF_HOST_EMULATION against this (CPU) torch: the
   launchers and op registrations with every kernel launch replaced by a loop over the Philox
   counters through the same per-thread functions, as torch.ops.torchdist_fast_cuda_host.* on CPU
   tensors: every op against the reference (broadcasting, fallbacks, tails, reductions, masks),
   and the Python launchers of cuda_backend.py on top of them.
3. ``python kernels/check_compile.py``: every .cu compiles with nvcc for sm_80 and sm_90 with
   warnings as errors; no register spills; 128-bit stores in the float32 and float64 kernels.
4. With a GPU and the built extension (``python setup_cuda.py build_ext --inplace``): the real
   kernels against the reference (marked gpu; skipped here otherwise).
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TOLERANCES, assert_close, kat_rows

from torchdist_fast import cuda_backend, reference, rng

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
BWD_TOLERANCES = [
    (torch.float32, 1e-4, 1e-4),
    (torch.float64, 1e-10, 1e-10),
    (torch.float16, 1e-2, 1e-2),
    (torch.bfloat16, 5e-2, 5e-2),
]
SEEDS_OFFSETS = [
    (0, 0),
    (123456789, 5),
    (2**63 + 12345, 2**32 - 3),  # the counter crosses into its high word
    (2**64 - 1, 2**64 - 2),      # the counter wraps modulo 2**64
    (0xDEADBEEF, 2**40 + 7),
]


# ---------------------------------------------------------------------------------- builds
def _torch_include_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    flags = []
    for inc in include_paths():
        flags += ["-isystem", inc]
    return flags


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME")
    for cand in (os.environ.get("NVCC"), os.path.join(home, "bin", "nvcc") if home else None, shutil.which("nvcc")):
        if cand and os.path.isfile(cand):
            return cand
    return None


def _build_commands(out: Path) -> dict[str, list[str] | None]:
    """Compiler command per build (None: compiler missing)."""
    gxx = shutil.which("g++")
    nvcc = _nvcc()
    torch_lib = str(Path(torch.__file__).parent / "lib")
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    c10 = ["-DTDF_HOST_CHECK_C10"] + _torch_include_flags()
    return {
        "g++": None if gxx is None else [
            gxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", *c10,
            str(KERNELS / "host_check.cpp"), "-o", str(out / "host_check_gxx.so")],
        # nvcc compiles the file as CUDA (-x cu): __host__ __device__ functions, host code only
        "nvcc": None if nvcc is None else [
            nvcc, "-x", "cu", "-O2", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-Wall,-Wextra,-Werror",
            "--Werror", "all-warnings", "-arch=sm_80", *c10,
            str(KERNELS / "host_check.cpp"), "-o", str(out / "host_check_nvcc.so")],
        "emulation": None if gxx is None else [
            gxx, "-x", "c++", "-O1", "-std=c++20", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
            "-DTDF_HOST_EMULATION", abi, *_torch_include_flags(), str(KERNELS / "normal_ops.cu"),
            f"-L{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{torch_lib}",
            "-o", str(out / "normal_ops_host.so")],
    }


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """The three host builds, compiled concurrently once per session: name -> (path or None, log)."""
    out = tmp_path_factory.mktemp("cuda_backend_host")
    cmds = _build_commands(out)

    def run(item):
        name, cmd = item
        if cmd is None:
            return name, (None, "compiler not found")
        res = subprocess.run(cmd, capture_output=True, text=True)
        path = Path(cmd[cmd.index("-o") + 1])
        return name, (path if res.returncode == 0 else None, " ".join(cmd) + "\n" + res.stdout + res.stderr)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, cmds.items()))


def _built(builds, name):
    path, log = builds[name]
    if path is None:
        if log == "compiler not found":
            pytest.skip(f"{name}: compiler not found (g++ / nvcc)")
        pytest.fail(f"host build {name!r} failed:\n{log[-6000:]}")
    return path


def _load_host_lib(path: Path):
    lib = ctypes.CDLL(str(path))
    vp, i64, u64, u32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int
    lib.tdf_philox4x32.argtypes = [vp, vp, i32, vp]
    lib.tdf_words.argtypes = [i64, u64, u64, u32, vp]
    lib.tdf_randn.argtypes = [i32, i64, u64, u64, vp]
    lib.tdf_randn.restype = i32
    lib.tdf_rsample_fwd.argtypes = [i32, i32, vp, vp, vp, vp, vp, u64, u64, vp, vp]
    lib.tdf_rsample_fwd.restype = i32
    lib.tdf_has_half.restype = i32
    lib.tdf_box_muller32.argtypes = [i64, vp, vp]
    return lib


@pytest.fixture(scope="session", params=["g++", "nvcc"])
def host_lib(request, builds):
    """kernels/host_check.cpp built with g++, and with nvcc -x cu."""
    return _load_host_lib(_built(builds, request.param))


@pytest.fixture(scope="session")
def host_ops(builds):
    """torch.ops.torchdist_fast_cuda_host: normal_ops.cu under TDF_HOST_EMULATION, for CPU tensors."""
    torch.ops.load_library(str(_built(builds, "emulation")))
    return torch.ops.torchdist_fast_cuda_host


def _ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def _i64_array(values):
    return (ctypes.c_int64 * max(1, len(values)))(*values)


# ---------------------------------------------------------------------------------- Philox words
def test_kat_vectors_exact(host_lib):
    rows = kat_rows()
    assert len(rows) == 6 and {r for r, _ in rows} == {7, 10}
    for rounds, words in rows:
        ctr = (ctypes.c_uint32 * 4)(*words[:4])
        key = (ctypes.c_uint32 * 2)(*words[4:6])
        out = (ctypes.c_uint32 * 4)()
        host_lib.tdf_philox4x32(ctr, key, rounds, out)
        assert list(out) == words[6:], f"rounds={rounds} ctr={[hex(w) for w in words[:4]]}"


@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
@pytest.mark.parametrize("call", [0, 1])
def test_words_equal_reference(host_lib, seed, offset, call):
    n = 517
    out = torch.empty((n, 4), dtype=torch.int32)
    host_lib.tdf_words(n, seed, offset, call, _ptr(out))
    got = out.to(torch.int64) & 0xFFFFFFFF
    assert torch.equal(got, reference.philox_words(n, seed, offset, call))


# ---------------------------------------------------------------------------------- normals
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
def test_normals_equal_reference(host_lib, dtype, atol, rtol, seed, offset):
    if dtype in (torch.float16, torch.bfloat16) and not host_lib.tdf_has_half():
        pytest.skip("host check built without c10 half types")
    numel = 1001  # not a multiple of 4: the last counter is partial
    got = torch.full((numel,), float("nan"), dtype=dtype)
    assert host_lib.tdf_randn(DTYPE_CODES[dtype], numel, seed, offset, _ptr(got)) == 1
    assert_close(got, reference.philox_normals(numel, seed, offset, dtype), atol, rtol)


def test_box_muller_meets_accuracy_contract(host_lib):
    """The kernels' float32 Box-Muller (host build: same steps, precise functions) on the contract's
    words; the device approximations are checked by emulation in test_normal_accuracy.py."""
    from test_normal_accuracy import contract_errors, contract_words

    words = contract_words()
    raw = (ctypes.c_uint32 * words.numel())(*words.flatten().tolist())
    out = torch.full(tuple(words.shape), float("nan"), dtype=torch.float32)   # poisoned
    host_lib.tdf_box_muller32(words.shape[0], ctypes.cast(raw, ctypes.c_void_p), ctypes.c_void_p(out.data_ptr()))
    ideal = torch.stack(reference.ideal_normals32(words[:, 0], words[:, 1]), 1)
    abs_err, rel_err = contract_errors(out, ideal)
    assert abs_err <= reference.FAST_ABS_ERR and rel_err <= reference.FAST_REL_ERR, (abs_err, rel_err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_normals_are_rounded_float32_normals(host_lib, dtype):
    if not host_lib.tdf_has_half():
        pytest.skip("host check built without c10 half types")
    numel, seed, offset = 999, 42, 2**33 + 1
    f32 = torch.empty(numel, dtype=torch.float32)
    half = torch.empty(numel, dtype=dtype)
    host_lib.tdf_randn(0, numel, seed, offset, _ptr(f32))
    host_lib.tdf_randn(DTYPE_CODES[dtype], numel, seed, offset, _ptr(half))
    assert torch.equal(half, f32.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stream_layout_and_unaligned_stores(host_lib, dtype):
    """Element j is lane j % 4 of counter offset + j // 4, whatever the length or alignment."""
    seed, offset, numel = 2**64 - 5, 2**64 - 3, 203
    full = torch.empty(numel, dtype=dtype)
    host_lib.tdf_randn(DTYPE_CODES[dtype], numel, seed, offset, _ptr(full))
    shifted = torch.empty(numel - 8, dtype=dtype)
    host_lib.tdf_randn(DTYPE_CODES[dtype], numel - 8, seed, offset + 2, _ptr(shifted))  # wraps past 2**64
    assert torch.equal(shifted, full[8:])
    # an output pointer off the 4-element alignment takes the scalar stores: same values
    buf = torch.full((numel + 1,), float("nan"), dtype=dtype)
    host_lib.tdf_randn(DTYPE_CODES[dtype], numel, seed, offset, ctypes.c_void_p(buf.data_ptr() + buf.element_size()))
    assert torch.equal(buf[1:], full) and math.isnan(buf[0].item())
    for n in (1, 2, 3, 5):  # partial last counters: a prefix of the stream, nothing written past n
        part = torch.full((n + 4,), float("nan"), dtype=dtype)
        host_lib.tdf_randn(DTYPE_CODES[dtype], n, seed, offset, _ptr(part))
        assert torch.equal(part[:n], full[:n]) and torch.isnan(part[n:]).all()


@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape,ndim", [
    ((8,), (8,), (2,), 2), ((8,), (3, 1), (2,), 4), ((7,), (), (), 1), ((3, 1), (), (2,), 2)])
def test_rsample_kernel_body_through_ctypes(host_lib, loc_shape, scale_shape, sample_shape, ndim):
    """normal_kernels.cuh through both compilers: a broadcast rsample with log_prob, float64."""
    loc = torch.randn(loc_shape, dtype=torch.float64)
    scale = torch.rand(scale_shape, dtype=torch.float64) + 0.5
    shape = sample_shape + tuple(torch.broadcast_shapes(loc_shape, scale_shape))
    z = torch.empty(shape, dtype=torch.float64)
    lp = torch.empty(shape, dtype=torch.float64)
    strides = [_i64_array(t.expand(shape).stride()) for t in (loc, scale)]
    nd = host_lib.tdf_rsample_fwd(1, len(shape), _i64_array(shape), _ptr(loc), strides[0], _ptr(scale), strides[1], 5, 7, _ptr(z), _ptr(lp))
    assert nd == ndim  # the kernel instantiation the layout plan picked
    z_ref, lp_ref = reference.normal_rsample(loc, scale, sample_shape, 5, 7, with_log_prob=True)
    assert_close(z, z_ref, 1e-12, 1e-12)
    assert_close(lp, lp_ref, 1e-12, 1e-12)


# ---------------------------------------------------------------------------------- ops (emulated)
# (loc shape, scale shape, sample shape, how to lay loc out): contiguous, scalar, the sample x batch
# broadcast with inner size a multiple of 4 (vector loads in NDIM 2) and not, NDIM 4, an irreducible
# 6-D pattern (contiguous fallback), non-contiguous, misaligned and zero-stride inputs, empty
RSAMPLE_CASES = [
    ((1029,), (1029,), (), "contiguous"),
    ((7,), (), (3,), "contiguous"),
    ((8,), (8,), (5,), "contiguous"),
    ((3, 5), (5,), (2,), "contiguous"),
    ((4, 1, 6), (5, 1), (2, 3), "contiguous"),
    ((2, 1, 2, 1, 2, 1), (1, 2, 1, 2, 1, 2), (), "contiguous"),
    ((6, 5), (5,), (3,), "transposed"),
    ((9,), (9,), (2,), "misaligned"),
    ((4, 8), (8,), (), "expanded"),
    ((), (), (), "contiguous"),
    ((0, 3), (3,), (2,), "contiguous"),
]


def _make(shape, dtype, layout="contiguous", positive=False, gen=None):
    t = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5 if positive else torch.randn(shape, generator=gen, dtype=torch.float64)
    t = t.to(dtype)
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # strided (unless a dim is 0 or 1)
    elif layout == "misaligned" and t.numel():
        t = torch.cat((t.new_zeros(1), t.flatten()))[1:].view(shape)  # data pointer off by one element
    elif layout == "expanded" and t.dim() >= 1:
        t = t[..., :1].expand(shape)  # zero strides
    return t


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape,layout", RSAMPLE_CASES)
@pytest.mark.parametrize("with_log_prob", [False, True])
def test_rsample_fwd_matches_reference(host_ops, dtype, atol, rtol, loc_shape, scale_shape, sample_shape, layout, with_log_prob):
    gen = torch.Generator().manual_seed(1)
    loc = _make(loc_shape, dtype, layout, gen=gen)
    scale = _make(scale_shape, dtype, positive=True, gen=gen)
    seed, offset = 2**63 + 99, 2**32 - 70
    out = host_ops.normal_rsample_fwd(loc, scale, list(sample_shape), cuda_backend._i64(seed), cuda_backend._i64(offset), with_log_prob)
    expected = reference.normal_rsample(loc, scale, sample_shape, seed, offset, with_log_prob)
    expected = expected if with_log_prob else (expected,)
    assert len(out) == len(expected)
    for got, exp in zip(out, expected):
        assert_close(got, exp, atol, rtol)


@pytest.mark.parametrize("dtype,atol,rtol", BWD_TOLERANCES)
@pytest.mark.parametrize("loc_shape,scale_shape,sample_shape,layout", RSAMPLE_CASES)
@pytest.mark.parametrize("use", ["z", "log_prob", "both"])
def test_rsample_bwd_matches_reference(host_ops, dtype, atol, rtol, loc_shape, scale_shape, sample_shape, layout, use):
    gen = torch.Generator().manual_seed(2)
    scale = _make(scale_shape, dtype, positive=True, gen=gen)
    out_shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc_shape, scale_shape))
    grad_z = _make(out_shape, dtype, layout, gen=gen) if use in ("z", "both") else None
    grad_lp = _make(out_shape, dtype, gen=gen) if use in ("log_prob", "both") else None
    seed, offset = 7, 2**64 - 9
    got = host_ops.normal_rsample_bwd(grad_z, grad_lp, scale, seed, cuda_backend._i64(offset))
    assert_close(got, reference.normal_rsample_backward(grad_z, grad_lp, scale, seed, offset), atol, rtol)


LOG_PROB_CASES = [
    ((1030,), (1030,), (1030,)),
    ((3, 4), (4,), ()),
    ((2, 1, 3), (5, 1), (1, 3)),
    ((), (6,), ()),
    ((2, 1, 2, 1, 2), (1, 2, 1, 2, 1), (2, 1, 1, 1, 2)),
    ((0, 2), (2,), ()),
]


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("shapes", LOG_PROB_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "misaligned", "transposed"])
def test_log_prob_fwd_matches_reference(host_ops, dtype, atol, rtol, shapes, layout):
    gen = torch.Generator().manual_seed(3)
    value = _make(shapes[0], dtype, layout, gen=gen)
    loc = _make(shapes[1], dtype, gen=gen)
    scale = _make(shapes[2], dtype, positive=True, gen=gen)
    assert_close(host_ops.normal_log_prob_fwd(value, loc, scale), reference.normal_log_prob(value, loc, scale), atol, rtol)


@pytest.mark.parametrize("dtype,atol,rtol", BWD_TOLERANCES)
@pytest.mark.parametrize("shapes", LOG_PROB_CASES)
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False), (False, False, True), (False, False, False)])
def test_log_prob_bwd_matches_reference(host_ops, dtype, atol, rtol, shapes, needs):
    gen = torch.Generator().manual_seed(4)
    value = _make(shapes[0], dtype, gen=gen)
    loc = _make(shapes[1], dtype, gen=gen)
    scale = _make(shapes[2], dtype, positive=True, gen=gen)
    grad = _make(torch.broadcast_shapes(*shapes), dtype, "transposed", gen=gen)
    got = host_ops.normal_log_prob_bwd(grad, value, loc, scale, list(needs))
    expected = reference.normal_log_prob_backward(grad, value, loc, scale, needs)
    assert len(got) == 3
    for g, e, need, t in zip(got, expected, needs, (value, loc, scale)):
        if need:
            assert_close(g, e, atol, rtol)
        else:
            assert g.numel() == 0 and g.dtype == t.dtype  # an unneeded grad is an empty tensor


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("shape", [(1,), (7,), (1025,), (3, 5, 7), (), (0,), (2, 0, 3)])
@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS[1:4])
def test_philox_randn_op_matches_reference(host_ops, dtype, atol, rtol, shape, seed, offset):
    got = host_ops.philox_randn(list(shape), cuda_backend._i64(seed), cuda_backend._i64(offset), dtype, torch.device("cpu"))
    assert got.shape == shape and got.dtype == dtype
    assert_close(got, reference.philox_randn(shape, seed, offset, dtype), atol, rtol)


def test_ops_reject_bad_input(host_ops):
    x = torch.ones(3)
    with pytest.raises(RuntimeError, match="one dtype"):
        host_ops.normal_log_prob_fwd(x, x.double(), x)
    with pytest.raises(RuntimeError, match="floating dtype"):
        host_ops.normal_rsample_fwd(x.long(), x.long(), [], 0, 0, False)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        host_ops.philox_randn([2], 0, 0, torch.int32, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="negative dimension"):
        host_ops.philox_randn([-1], 0, 0, torch.float32, torch.device("cpu"))
    # the device argument picks the backend (BackendSelect): no kernel for the meta device here
    with pytest.raises(NotImplementedError):
        host_ops.philox_randn([2], 0, 0, torch.float32, torch.device("meta"))
    assert torch.equal(host_ops.normal_rsample_bwd(None, None, x, 0, 0), torch.zeros(3))


def test_schemas_mirror_the_python_launchers(host_ops):
    schemas = {name: str(getattr(host_ops, name).default._schema).split("::", 1)[1] for name in
               ("philox_randn", "normal_rsample_fwd", "normal_rsample_bwd", "normal_log_prob_fwd", "normal_log_prob_bwd")}
    assert schemas == {
        "philox_randn": "philox_randn(int[] size, int seed, int offset, ScalarType dtype, Device device, "
                        "Tensor? position=None) -> Tensor",
        "normal_rsample_fwd": "normal_rsample_fwd(Tensor loc, Tensor scale, int[] sample_shape, int seed, int offset, "
                              "bool with_log_prob, Tensor? position=None) -> Tensor[]",
        "normal_rsample_bwd": "normal_rsample_bwd(Tensor? grad_z, Tensor? grad_log_prob, Tensor scale, int seed, int offset, "
                              "Tensor? position=None) -> Tensor",
        "normal_log_prob_fwd": "normal_log_prob_fwd(Tensor value, Tensor loc, Tensor scale) -> Tensor",
        "normal_log_prob_bwd": "normal_log_prob_bwd(Tensor grad, Tensor value, Tensor loc, Tensor scale, bool[] output_mask) -> Tensor[]",
    }


# ---------------------------------------------------------------------------------- Python launchers
@pytest.fixture
def launchers_on_host_ops(host_ops, monkeypatch):
    """cuda_backend's launchers, calling the emulated ops (same schemas) instead of the CUDA ones."""
    monkeypatch.setattr(cuda_backend, "_ops", lambda: host_ops)
    return cuda_backend


def test_kernels_read_the_stream_position_from_memory(launchers_on_host_ops):
    """``position``: the pair [seed, offset] the kernels read (on the GPU: from device memory,
    which a CUDA graph replay rewrites); the same stream as the ints."""
    cb = launchers_on_host_ops
    seed, offset = 2**64 - 3, 2**63 + 4
    pos = rng.pack_seed_offset(seed, offset)
    loc, scale = torch.randn(3, 8), torch.rand(8) + 0.5
    assert torch.equal(cb.philox_randn((37,), seed, offset, torch.float32, "cpu"),
                       cb.philox_randn((37,), 0, 0, torch.float32, "cpu", position=pos))
    for a, b in zip(cb.normal_rsample_fwd(loc, scale, (2,), seed, offset, True),
                    cb.normal_rsample_fwd(loc, scale, (2,), 0, 0, True, position=pos)):
        assert torch.equal(a, b)
    g = torch.randn(2, 3, 8)
    assert torch.equal(cb.normal_rsample_bwd(g, g, scale, seed, offset), cb.normal_rsample_bwd(g, g, scale, 0, 0, position=pos))
    with pytest.raises(RuntimeError, match="position must be a contiguous int64 tensor"):
        cb.philox_randn((4,), 0, 0, torch.float32, "cpu", position=torch.zeros(3, dtype=torch.int64))


def test_launchers_follow_triton_conventions(launchers_on_host_ops):
    cb = launchers_on_host_ops
    seed, offset = 2**64 - 1, 2**63 + 5  # uint64 values beyond int64: passed as bit patterns
    loc, scale = torch.randn(3, 4), torch.rand(4) + 0.5
    z = cb.normal_rsample_fwd(loc, scale, (2,), seed, offset, False)
    assert isinstance(z, torch.Tensor) and z.shape == (2, 3, 4)
    z2, lp = cb.normal_rsample_fwd(loc, scale, (2,), seed, offset, True)
    assert torch.equal(z, z2)
    z_ref, lp_ref = reference.normal_rsample(loc, scale, (2,), seed, offset, True)
    assert_close(z, z_ref, 1e-5, 1e-5)
    assert_close(lp, lp_ref, 1e-5, 1e-5)
    g = cb.normal_rsample_bwd(torch.ones_like(z), None, scale, seed, offset)
    assert_close(g, reference.normal_rsample_backward(torch.ones_like(z), None, scale, seed, offset), 1e-4, 1e-4)
    eps = cb.philox_randn((5, 3), seed, offset, torch.float64, "cpu")
    assert_close(eps, reference.philox_randn((5, 3), seed, offset, torch.float64), 1e-12, 1e-12)
    value = torch.randn(2, 3, 4)
    assert_close(cb.normal_log_prob_fwd(value, loc, scale), reference.normal_log_prob(value, loc, scale), 1e-5, 1e-5)
    grads = cb.normal_log_prob_bwd(torch.ones(2, 3, 4), value, loc, scale, [False, True, True])
    assert isinstance(grads, tuple) and len(grads) == 3 and grads[0] is None
    expected = reference.normal_log_prob_backward(torch.ones(2, 3, 4), value, loc, scale, (False, True, True))
    for got, exp in zip(grads[1:], expected[1:]):
        assert_close(got, exp, 1e-4, 1e-4)


def test_seed_offset_bit_patterns():
    assert cuda_backend._i64(0) == 0
    assert cuda_backend._i64(2**63 - 1) == 2**63 - 1
    assert cuda_backend._i64(2**63) == -(2**63)
    assert cuda_backend._i64(2**64 - 1) == -1
    assert cuda_backend._i64(-1) == -1
    assert cuda_backend._i64(2**64 + 3) == 3


def test_unavailable_backend_says_why():
    if cuda_backend.available():
        pytest.skip("the CUDA backend is built here")
    reason = cuda_backend.unavailable_reason()
    assert "setup_cuda.py" in reason or "failed to load" in reason
    with pytest.raises(RuntimeError, match="torchdist_fast.cuda_backend"):
        cuda_backend.normal_log_prob_fwd(torch.ones(1), torch.ones(1), torch.ones(1))


def test_setup_cuda_explains_why_it_cannot_build(tmp_path):
    """setup_cuda.py builds nothing where it cannot and says why, keyed by the torch build: with a CPU
    build (CI's torch 2.13), that; with a CUDA build (torch 2.11, the GPU machine's), a missing nvcc."""
    env = dict(os.environ)
    if torch.version.cuda is None:
        expected = "CPU-only build"
    else:
        env["CUDA_HOME"] = str(tmp_path / "no-toolkit-here")
        expected = "nvcc (the CUDA compiler) was not found"
    built_before = sorted((ROOT / "torchdist_fast").glob("_cuda_backend*"))  # a warm GPU machine may have one
    res = subprocess.run([sys.executable, str(ROOT / "setup_cuda.py"), "build_ext", "--inplace"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert expected in res.stderr and "setup_cuda.py build_ext --inplace" in res.stderr
    assert sorted((ROOT / "torchdist_fast").glob("_cuda_backend*")) == built_before, "nothing may be built"


def _setup_cuda_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("setup_cuda_under_test", ROOT / "setup_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_setup_cuda_finds_the_toolkit_behind_a_wrapper_script(tmp_path, monkeypatch):
    """Without CUDA_HOME: the toolkit of the nvcc on PATH, also where that nvcc is a wrapper script
    elsewhere (as on the GPU machines: /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc),
    where torch's own guess, the folder above the script's, is no toolkit."""
    toolkit = tmp_path / "cuda-99.9"
    (toolkit / "targets" / "x86_64-linux" / "include").mkdir(parents=True)
    (toolkit / "targets" / "x86_64-linux" / "include" / "cuda_runtime.h").write_text("")
    # a stand-in nvcc that reports its root as the real one does under --dryrun
    real = _executable(toolkit / "bin" / "nvcc", f'#!/bin/sh\necho "#$ _HERE_={toolkit}/bin" >&2\n'
                                                  f'echo "#$ TOP={toolkit}/bin/.." >&2\n')
    wrapper = _executable(tmp_path / "local" / "bin" / "nvcc", f'#!/bin/sh\nexec {real} "$@"\n')
    setup_cuda = _setup_cuda_module()
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert setup_cuda.find_cuda_home() == str(toolkit)
    link = tmp_path / "links" / "nvcc"  # a symlink: resolved without asking nvcc
    link.parent.mkdir()
    link.symlink_to(real)
    monkeypatch.setenv("PATH", f"{link.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert setup_cuda.find_cuda_home() == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "chosen"))  # CUDA_HOME, when set, decides
    assert setup_cuda.find_cuda_home() == str(tmp_path / "chosen")


def test_kernels_is_not_a_python_package():
    assert not (KERNELS / "__init__.py").exists()


# ---------------------------------------------------------------------------------- nvcc compile
@pytest.mark.aot
def test_cu_files_compile_for_sm80_and_sm90():
    """``python kernels/check_compile.py``: nvcc -c for sm_80 and sm_90, warnings as errors, ptxas stats."""
    if _nvcc() is None:
        pytest.skip("nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)")
    res = subprocess.run([sys.executable, str(KERNELS / "check_compile.py"), "--arch", "80", "90"],
                         capture_output=True, text=True, timeout=900)
    print(res.stdout)  # registers / spills per kernel, shown with pytest -s
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]
    assert "all kernels compiled" in res.stdout
    lines = [line for line in res.stdout.splitlines() if line.startswith("ok ")]
    # philox_randn x 4 dtypes, 4 Normal kernels x 4 dtypes x 3 layouts (NDIM 1, 2, 4), and the
    # graph-safe stream position (draw_position's kernel), per target
    for arch in ("sm_80", "sm_90"):
        assert sum(line.startswith(f"ok {arch} ") for line in lines) == 4 + 4 * 4 * 3 + 1, arch
        assert any(line.startswith(f"ok {arch} stream_position_kernel ") for line in lines), arch
    for line in lines:
        assert "spill_st=0B spill_ld=0B" in line, line
        kernel = line.split()[2]
        # float32 / float64 kernels write 4 elements per counter with 128-bit stores
        if re.search(r"<(float|double)\b", kernel):
            assert int(re.search(r"st128=(\d+)", line).group(1)) >= 1, line


# ---------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
def test_gpu_kernels_match_reference(dtype, atol, rtol):
    if not cuda_backend.available():
        pytest.skip(cuda_backend.unavailable_reason())
    seed, offset = 2**63 + 11, 2**32 - 5
    eps = cuda_backend.philox_randn((3, 1001), seed, offset, dtype, "cuda")
    assert_close(eps.cpu(), reference.philox_randn((3, 1001), seed, offset, dtype), atol, rtol)
    loc = torch.randn(4, 1, 6, dtype=torch.float64).to(dtype)
    scale = (torch.rand(5, 1, dtype=torch.float64) + 0.5).to(dtype)
    z, lp = cuda_backend.normal_rsample_fwd(loc.cuda(), scale.cuda(), (2,), seed, offset, True)
    z_ref, lp_ref = reference.normal_rsample(loc, scale, (2,), seed, offset, True)
    assert_close(z.cpu(), z_ref, atol, rtol)
    assert_close(lp.cpu(), lp_ref, atol, rtol)
    gz = torch.randn(z.shape, dtype=torch.float64).to(dtype)
    bwd_atol, bwd_rtol = {d: (a, r) for d, a, r in BWD_TOLERANCES}[dtype]
    g = cuda_backend.normal_rsample_bwd(gz.cuda(), None, scale.cuda(), seed, offset)
    assert_close(g.cpu(), reference.normal_rsample_backward(gz, None, scale, seed, offset), bwd_atol, bwd_rtol)
    value = torch.randn(3, 4, 5, 6, dtype=torch.float64).to(dtype)
    lp = cuda_backend.normal_log_prob_fwd(value.cuda(), loc.cuda(), scale.cuda())
    assert_close(lp.cpu(), reference.normal_log_prob(value, loc, scale), atol, rtol)
    grads = cuda_backend.normal_log_prob_bwd(gz[0].cuda().expand(3, 4, 5, 6), value.cuda(), loc.cuda(), scale.cuda(), [True, True, True])
    expected = reference.normal_log_prob_backward(gz[0].expand(3, 4, 5, 6), value, loc, scale)
    for got, exp in zip(grads, expected):
        assert_close(got.cpu(), exp, bwd_atol, bwd_rtol)


def test_gpu_kernel_setting_refuses_a_backend_that_is_not_built():
    import torchdist_fast
    from torchdist_fast import cuda_backend

    if cuda_backend.available():
        pytest.skip("the CUDA backend is built here")
    with pytest.raises(RuntimeError, match="setup_cuda.py"):
        torchdist_fast.set_gpu_kernel("cuda")
    with pytest.raises(ValueError):
        torchdist_fast.set_gpu_kernel("opencl")
    assert torchdist_fast.get_gpu_kernel() == "triton"


def test_an_out_of_tree_build_is_found_by_its_folder(tmp_path):
    """TORCHDIST_FAST_CUDA_BACKEND_DIR: a build kept out of the repository (the GPU check's)."""
    import importlib.machinery

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    assert cuda_backend.built_extension(tmp_path) is None
    (tmp_path / "torchdist_fast").mkdir()
    so = tmp_path / "torchdist_fast" / f"_cuda_backend{suffix}"
    so.write_bytes(b"")
    assert cuda_backend.built_extension(tmp_path) == so and cuda_backend.built_extension(so) == so
    empty = tmp_path / "empty"
    empty.mkdir()
    code = "from torchdist_fast import cuda_backend as c; print(c.available(), '|', c.unavailable_reason())"
    env = {**os.environ, cuda_backend.BUILD_DIR_ENV: str(empty)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("False |") and f"{cuda_backend.BUILD_DIR_ENV}={empty} holds no built" in res.stdout


def test_gpu_kernel_cuda_runs_every_family_on_the_cuda_backend_or_says_it_cannot(monkeypatch):
    """One backend choice for every op (ops/launch.py): under gpu_kernel("cuda") the families the
    CUDA C++ backend implements get its launchers; the others raise NotImplementedError (a
    RuntimeError) that names the family, never Triton kernels mixed in unasked."""
    import torchdist_fast
    from torchdist_fast import ops

    monkeypatch.setattr(cuda_backend, "available", lambda: True)
    cuda = torch.device("cuda")
    families = {"random_draws": ops.random_draws.RANDOM_DRAWS, "normal": ops.normal.NORMAL, "kl": ops.kl.KL,
                "event_sums": ops.event_sums.EVENT_SUMS, "tanh_normal": ops.tanh_normal.TANH_NORMAL}
    with torchdist_fast.gpu_kernel("cuda"):
        for name, family in families.items():
            if name in cuda_backend.FAMILIES:
                assert family.launchers(cuda) is cuda_backend
            else:
                with pytest.raises(NotImplementedError, match=f"no kernels for the {name} ops"):
                    family.launchers(cuda)
    assert set(cuda_backend.FAMILIES) < set(families)
    if os.environ.get("TRITON_INTERPRET") == "1":  # every family has Triton launchers
        with torchdist_fast.cpu_kernel("triton"):
            for family in families.values():
                assert family.launchers(torch.device("cpu")) is not None
