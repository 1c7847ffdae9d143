"""The Philox4x32-10 stream: known answers, reference == Triton kernel, layout promises."""
import pytest
import torch
from conftest import kernel_devices
from helpers import TOLERANCES, assert_close, counting_triton_launches, kat_rows

import torchdist_fast
from torchdist_fast import reference, rng

def test_vendored_kat_vectors_are_the_shared_copy():
    """tests/data/philox_kat.txt is ../shared/philox_kat.txt after its one header line."""
    from helpers import KAT_FILE, SHARED_KAT_FILE

    vendored = KAT_FILE.read_text().split("\n", 1)
    assert vendored[0].startswith("# Vendored") and "Random123" in vendored[0]
    assert "# Source: github.com/DEShawResearch/random123" in vendored[1]
    if not SHARED_KAT_FILE.exists():
        pytest.skip(f"{SHARED_KAT_FILE} not found (../shared beside the checkout): the vendored copy is used alone")
    assert vendored[1] == SHARED_KAT_FILE.read_text()


def test_kat_vectors_exact():
    rows = kat_rows()
    assert len(rows) == 6 and {r for r, _ in rows} == {7, 10}
    for rounds, words in rows:
        out = reference.philox4x32(torch.tensor(words[:4]), torch.tensor(words[4:6]), rounds)
        assert out.tolist() == words[6:], f"rounds={rounds} ctr={words[:4]}"


def test_kat_vectors_batched():
    # the same vectors in one batched call: vectorization must not mix rows
    rows = [w for r, w in kat_rows() if r == 10]
    out = reference.philox4x32(torch.tensor([w[:4] for w in rows]), torch.tensor([w[4:6] for w in rows]))
    assert out.tolist() == [w[6:] for w in rows]


SEEDS_OFFSETS = [
    (0, 0),
    (123456789, 5),
    (2**63 + 12345, 2**32 - 3),  # counter crosses a 32-bit word boundary
    (2**64 - 1, 2**64 - 2),      # counter wraps modulo 2**64
    (0xDEADBEEF, 2**40 + 7),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
@pytest.mark.parametrize("call", [0, 1])
def test_triton_words_equal_reference(seed, offset, call, triton_device):
    from torchdist_fast.triton_kernels.philox import philox_words

    n = 517  # not a multiple of the block
    got = philox_words(n, seed, offset, call, device=triton_device).cpu()
    assert torch.equal(got, reference.philox_words(n, seed, offset, call))


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("shape", [(1,), (7,), (1023,), (1025,), (3, 5, 7)])
@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS[1:4])
def test_triton_normals_equal_reference(dtype, atol, rtol, shape, seed, offset, triton_device, poisoned_empty):
    so = rng.pack_seed_offset(seed, offset)
    got = torch.ops.torchdist_fast.philox_randn(list(shape), so, dtype, triton_device)
    expected = reference.philox_randn(shape, seed, offset, dtype)
    assert_close(got.cpu(), expected, atol, rtol)


@pytest.mark.parametrize("dtype", [t[0] for t in TOLERANCES])
@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)])
@pytest.mark.parametrize("device", kernel_devices())
def test_triton_normals_of_no_elements_launch_nothing(dtype, shape, device):
    """A draw of no elements: an empty tensor on the device, and no kernel launched (so it does not
    take triton_device, whose guard wants a launch)."""
    so = rng.pack_seed_offset(123456789, 5)
    with torchdist_fast.cpu_kernel("triton"), counting_triton_launches(device) as launches:
        got = torch.ops.torchdist_fast.philox_randn(list(shape), so, dtype, torch.device(device))
    assert got.shape == shape and got.dtype == dtype and got.device.type == device
    assert launches.on_device == launches.elsewhere == 0
    assert torch.equal(got.cpu(), reference.philox_randn(shape, 123456789, 5, dtype))


def test_stream_layout_documented():
    """Element j is lane j % 4 of counter offset + j // 4, Box-Muller on word pairs (w0,w1), (w2,w3)."""
    seed, offset = 987654321, 11
    w = reference.philox_words(3, seed, offset)
    u = reference.uniform_from_words32(w)
    r0, r2 = torch.sqrt(-2 * torch.log(u[:, 0])), torch.sqrt(-2 * torch.log(u[:, 2]))
    t1, t3 = 2 * torch.pi * u[:, 1], 2 * torch.pi * u[:, 3]
    by_hand = torch.stack((r0 * torch.cos(t1), r0 * torch.sin(t1), r2 * torch.cos(t3), r2 * torch.sin(t3)), -1).flatten()
    z = reference.philox_randn((10,), seed, offset)
    assert_close(z, by_hand[:10], 1e-6, 1e-6)
    # a draw at offset + 1 is the same stream shifted by 4 elements
    assert torch.equal(reference.philox_randn((6,), seed, offset + 1), z[4:10])


def test_uniform_never_zero_and_finite_extremes():
    words = torch.tensor([0, 1, 2**31, 2**32 - 1], dtype=torch.int64)
    u = reference.uniform_from_words32(words)
    assert (u > 0).all() and (u <= 1).all()
    assert torch.isfinite(torch.log(u)).all()
    u64 = reference.uniform_from_words64(words, words)
    assert (u64 > 0).all() and (u64 <= 1).all()
    # the largest radius the stream can produce, from the smallest uniform: no clamp near 5.7
    assert torch.sqrt(-2 * torch.log(u[0])) > 6.7


def test_float64_uses_53_bits():
    a = torch.tensor([0x12345678], dtype=torch.int64)
    b = torch.tensor([0x9ABCDEF0], dtype=torch.int64)
    u = reference.uniform_from_words64(a, b)
    m = (0x12345678 << 21) + (0x9ABCDEF0 >> 11)
    assert u.item() == (m + 0.5) * 2.0**-53


