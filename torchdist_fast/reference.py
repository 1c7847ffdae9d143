"""CPU reference: the executable specification every kernel is tested against.

Pure torch, vectorized, device-agnostic (it runs wherever its inputs live, CPU in practice).

Random-number stream (a promise to users, written for users in docs/random-numbers.md)
-------------------------------------------------------------------------------
Philox4x32-10 (Random123), key = (seed & 0xFFFFFFFF, seed >> 32), both 32-bit words of the
64-bit seed. Element ``j`` (flat row-major index of the output) belongs to counter
``c = offset + j // 4`` and lane ``j % 4``. The counter block of a Philox call is

    ctr = (c & 0xFFFFFFFF, c >> 32, call, STREAM_TAG)

``call`` is 0 for 32-bit and 16-bit outputs; float64 makes two calls per counter (``call`` 0
gives lanes 0 and 1, ``call`` 1 gives lanes 2 and 3). ``STREAM_TAG`` keeps our counters apart
from those curand hands torch's own CUDA kernels (which hold a thread index < 2**32 in
ctr[2..3], so their ctr[3] is 0).

Words -> normals (Box-Muller on both pairs, so every word is used and each counter gives
4 normals):
    32-bit outputs, from the pairs (w0, w1) -> lanes 0, 1 and (w2, w3) -> lanes 2, 3:
        u(w) = (w + 0.5) * 2**-32 (never 0), r = sqrt(-2 ln u(w_even)),
        theta = 2*pi*u(w_odd) (equivalently 2*pi*(int32(w_odd) + 0.5) * 2**-32, the same angle
        modulo 2*pi, in [-pi, pi)), lanes = (r cos theta, r sin theta).
        The reference evaluates this in float64 and rounds to float32 (``box_muller32``); the
        GPU evaluates it in float32 with hardware-approximation lg2/sin/cos under the accuracy
        contract below.
    float64: u(a, b) = ((a << 21) + (b >> 11) + 0.5) * 2**-53 (53 random bits), in float64.
        per call: r = sqrt(-2 ln u(w0, w1)), theta = 2*pi*u(w2, w3) -> (r cos theta, r sin theta)
float16/bfloat16 outputs are the float32 normals rounded.

Accuracy contract (float32, float16, bfloat16 outputs; float64 is precise math)
--------------------------------------------------------------------------------
The uint32 words are exact on every device. Against the float64 evaluation of the formula
above (``ideal_normals32``), a float32 normal z from the GPU kernels differs by at most
``FAST_ABS_ERR`` where |z| <= 6 and by at most ``FAST_REL_ERR * |z|`` beyond (before rounding
to float16/bfloat16). The bound is derived from the documented worst-case errors of the
hardware approximations the GPU uses (``HW_*`` below), float32 rounding and the kernel's
algorithm (``_box_muller32_steps``); tests/test_normal_accuracy.py checks it on the extreme
words of each lane and on an even sweep of 2**16 words.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
STREAM_TAG = 0x54444631  # "TDF1"
MASK32 = 0xFFFFFFFF
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

# The GPU kernels' float32 Box-Muller (triton_kernels/philox.py ``_box_muller32``): below this
# t = 1 - u the radius comes from the series of -2 ln(1 - t), not from log2(u), whose
# approximation has an absolute (not relative) error near u = 1.
BOX_MULLER_SMALL_T = 2.0**-10
# Documented worst-case errors of the approximations (PTX ISA / CUDA C++ Programming Guide,
# intrinsic functions): sin.approx/cos.approx.f32 on [-pi, pi]: absolute 2^-20.5 (PTX; the
# CUDA guide gives 2^-21.41 / 2^-21.19 for __sinf/__cosf); lg2.approx.f32: absolute 2^-22 for
# x in [0.5, 2], else 2 ulp (relative 2^-22); sqrt.approx.f32: taken as relative 2^-22.
HW_SINCOS_ABS = 2.0**-20.5
HW_LG2_ABS = 2.0**-22
HW_LG2_REL = 2.0**-22
HW_SQRT_REL = 2.0**-22
# The contract: max |z_gpu - z_ideal| for |z_ideal| <= 6, and max relative error beyond.
FAST_ABS_ERR = 8e-6
FAST_REL_ERR = 2e-6
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _mul_hi_lo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (hi, lo) 32-bit words of a * m for uint32 values held in int64.

    The full product needs 64 unsigned bits. int64 multiplication wraps modulo 2**64 (two's
    complement), so the product's bit pattern is exact; an arithmetic shift then a mask reads
    bits 32..63 whatever the sign. (The known-answer tests check this on every run.)
    """
    p = a * m
    return (p >> 32) & MASK32, p & MASK32


def philox4x32(counter: torch.Tensor, key: torch.Tensor, rounds: int = 10) -> torch.Tensor:
    """Philox4x32-``rounds`` on int64 tensors of uint32 words: counter[..., 4], key[..., 2] -> [..., 4]."""
    if counter.shape[-1] != 4 or key.shape[-1] != 2:
        raise ValueError(f"philox4x32 expects counter[..., 4] and key[..., 2], got {tuple(counter.shape)} and {tuple(key.shape)}")
    if counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise TypeError("philox4x32 expects int64 tensors holding uint32 words")
    c0, c1, c2, c3 = (counter[..., i] for i in range(4))
    k0, k1 = key[..., 0], key[..., 1]
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mul_hi_lo(c0, PHILOX_M0)
        hi1, lo1 = _mul_hi_lo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3), dim=-1)


def split_seed(seed: int) -> tuple[int, int]:
    seed &= (1 << 64) - 1
    return seed & MASK32, seed >> 32


def philox_words(n_counters: int, seed: int, offset: int, call: int = 0, device=None) -> torch.Tensor:
    """The [n_counters, 4] uint32 words (in int64) of counters offset .. offset + n_counters - 1."""
    # counters are modulo 2**64; int64 addition wraps the same way, so add the offset as signed
    offset &= (1 << 64) - 1
    c = torch.arange(n_counters, dtype=torch.int64, device=device) + (offset - (1 << 64) if offset >= (1 << 63) else offset)
    counter = torch.stack((c & MASK32, (c >> 32) & MASK32, torch.full_like(c, call), torch.full_like(c, STREAM_TAG)), dim=-1)
    k0, k1 = split_seed(seed)
    key = torch.tensor([k0, k1], dtype=torch.int64, device=device).expand(n_counters, 2)
    return philox4x32(counter, key)


def uniform_from_words32(w: torch.Tensor) -> torch.Tensor:
    """uint32 words -> float32 uniforms in (0, 1]: (w + 0.5) * 2**-32 rounded, never 0."""
    return ((w.to(torch.float64) + 0.5) * 2.0**-32).to(torch.float32)


def ideal_normals32(w_r: torch.Tensor, w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 value of the 32-bit-output formula for word pairs (w_r, w_t) (int64 uint32 values)."""
    t = ((MASK32 - w_r).to(torch.float64) + 0.5) * 2.0**-32       # 1 - u, exact
    r = torch.sqrt(-2.0 * torch.log1p(-t))
    theta = (2.0 * math.pi) * ((w_t.to(torch.float64) + 0.5) * 2.0**-32)
    return r * torch.cos(theta), r * torch.sin(theta)


def box_muller32(w_r: torch.Tensor, w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference 32-bit normals: the float64 formula rounded to float32."""
    z0, z1 = ideal_normals32(w_r, w_t)
    return z0.to(torch.float32), z1.to(torch.float32)


def uniform_from_words64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two uint32 words -> float64 uniform with 53 random bits, never 0."""
    m = (a << 21) + (b >> 11)
    return (m.to(torch.float64) + 0.5) * 2.0**-53


def _box_muller(u_r: torch.Tensor, u_theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.sqrt(-2.0 * torch.log(u_r))
    theta = (2.0 * math.pi) * u_theta
    return r * torch.cos(theta), r * torch.sin(theta)


def philox_normals(numel: int, seed: int, offset: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The first ``numel`` normals of the stream, flat, in ``dtype``."""
    n_counters = -(-numel // 4)
    if dtype == torch.float64:
        w = philox_words(n_counters, seed, offset, call=0, device=device)
        v = philox_words(n_counters, seed, offset, call=1, device=device)
        z0, z1 = _box_muller(uniform_from_words64(w[:, 0], w[:, 1]), uniform_from_words64(w[:, 2], w[:, 3]))
        z2, z3 = _box_muller(uniform_from_words64(v[:, 0], v[:, 1]), uniform_from_words64(v[:, 2], v[:, 3]))
    else:
        w = philox_words(n_counters, seed, offset, call=0, device=device)
        z0, z1 = box_muller32(w[:, 0], w[:, 1])
        z2, z3 = box_muller32(w[:, 2], w[:, 3])
    return torch.stack((z0, z1, z2, z3), dim=-1).reshape(-1)[:numel].to(dtype)


def broadcast_shape(*shapes) -> tuple:
    """torch.broadcast_shapes, with a fast path for the common case of equal shapes.

    torch.broadcast_shapes costs ~25 us per call on CPU, more than the op itself at small sizes.
    """
    first = tuple(shapes[0])
    if all(tuple(s) == first for s in shapes[1:]):
        return first
    return tuple(torch.broadcast_shapes(*shapes))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def philox_randn(shape: Sequence[int], seed: int, offset: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    return philox_normals(math.prod(shape), seed, offset, dtype, device).reshape(shape)


# ---------------------------------------------------------------------------------------
# Normal distribution ops. Inputs are already broadcast-compatible and of one float dtype.
# ---------------------------------------------------------------------------------------

def normal_rsample(loc, scale, sample_shape, seed, offset, with_log_prob=False):
    """z = loc + scale * eps over sample_shape + broadcast(loc, scale).shape; optionally log_prob(z)."""
    batch_shape = broadcast_shape(loc.shape, scale.shape)
    out_shape = tuple(sample_shape) + tuple(batch_shape)
    cdt = compute_dtype(loc.dtype)
    eps = philox_randn(out_shape, seed, offset, cdt, loc.device)
    scale_c = scale.to(cdt)
    z = (loc.to(cdt) + scale_c * eps).to(loc.dtype)
    if not with_log_prob:
        return z
    log_prob = log_prob_of_noise(eps, scale_c).expand(out_shape).to(loc.dtype)
    return z, log_prob


def normal_rsample_backward(grad_z, grad_log_prob, scale, seed, offset):
    """grad of (z, log_prob(z)) w.r.t. scale, reduced to scale's shape (grad_loc is grad_z summed).

    d z/d scale = eps; through the reparameterization log_prob(z) = -eps^2/2 - log(scale) - c
    depends on scale only: d log_prob/d scale = -1/scale (its loc derivative is 0).
    """
    ref = grad_z if grad_z is not None else grad_log_prob
    cdt = compute_dtype(scale.dtype)
    g_scale = torch.zeros(ref.shape, dtype=cdt, device=ref.device)
    if grad_z is not None:
        g_scale = g_scale + grad_z.to(cdt) * philox_randn(ref.shape, seed, offset, cdt, ref.device)
    if grad_log_prob is not None:
        g_scale = g_scale - grad_log_prob.to(cdt) / scale.to(cdt)
    return reduce_to(g_scale, scale.shape).to(scale.dtype)


def log_prob_formula(value, loc, scale):
    """THE log-density of Normal(loc, scale) at ``value``, elementwise, in the inputs' (compute) dtype:
    ``y = (value - loc) / scale; -y*y/2 - log(scale) - log(sqrt(2 pi))``. It never forms ``scale**2``
    or ``(value - loc)**2``. Every log_prob of the package is this formula (the kernels write it
    in ``triton_kernels/normal_log_prob.py``, ``normal_event_sum.py``). ``-0.5 * (y * y)``: under
    autograd (the CPU "stable" log_prob of ``torchdist_fast.Normal``) only ``y`` is saved, where
    ``(-0.5 * y) * y`` would also save the scaled copy (one tensor of the output's size)."""
    y = (value - loc) / scale
    return -0.5 * (y * y) - torch.log(scale) - LOG_SQRT_2PI


def log_prob_of_noise(eps, scale):
    """``log_prob_formula(loc + scale * eps, loc, scale)`` from the noise itself (the fused
    rsample ops): ``-eps*eps/2 - log(scale) - log(sqrt(2 pi))``."""
    return -0.5 * eps * eps - torch.log(scale) - LOG_SQRT_2PI


def entropy_formula(scale):
    """The Normal entropy ``1/2 + log(sqrt(2 pi)) + log(scale)``, elementwise."""
    return 0.5 + LOG_SQRT_2PI + torch.log(scale)


def normal_log_prob(value, loc, scale):
    """``log_prob_formula`` with half types computed in float32, rounded to ``value``'s dtype.
    (Also the CPU "stable" log_prob of ``torchdist_fast.Normal``, called without the op.)"""
    dtype = value.dtype
    if dtype in (torch.float16, torch.bfloat16):
        value, loc, scale = value.float(), loc.float(), scale.float()
    out = log_prob_formula(value, loc, scale)
    return out if out.dtype == dtype else out.to(dtype)


def normal_log_prob_backward(grad, value, loc, scale, output_mask=(True, True, True)):
    """(grad_value, grad_loc, grad_scale), each reduced to its input's shape; None where masked."""
    cdt = compute_dtype(value.dtype)
    g, v, m, s = grad.to(cdt), value.to(cdt), loc.to(cdt), scale.to(cdt)
    y = (v - m) / s
    g_loc = g * y / s
    elems = (-g_loc, g_loc, g * (y * y - 1.0) / s)
    return tuple(
        reduce_to(e, t.shape).to(t.dtype) if need else None
        for e, t, need in zip(elems, (value, loc, scale), output_mask)
    )


def reduce_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (leading and size-1 dimensions)."""
    shape = tuple(shape)
    if tuple(t.shape) == shape:
        return t
    return t.sum_to_size(shape) if len(shape) else t.sum()


def event_sum(x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Sum over the rightmost ``event_dims`` dims (none for 0)."""
    return x.sum(tuple(range(-event_dims, 0))) if event_dims else x


# ---------------------------------------------------------------------------------------
# Event-dim sums (Independent(Normal, k)): summed in the compute dtype, rounded once.
# ---------------------------------------------------------------------------------------

def normal_log_prob_sum(value, loc, scale, event_dims: int):
    """normal_log_prob summed over the rightmost ``event_dims`` dims of the broadcast shape."""
    full = broadcast_shape(value.shape, loc.shape, scale.shape)
    cdt = compute_dtype(value.dtype)
    per_element = log_prob_formula(value.to(cdt), loc.to(cdt), scale.to(cdt)).expand(full)
    return event_sum(per_element, event_dims).to(value.dtype)


def normal_entropy_sum(scale, event_dims: int):
    """The Normal entropy summed over the rightmost ``event_dims`` dims of ``scale``."""
    return event_sum(entropy_formula(scale.to(compute_dtype(scale.dtype))), event_dims).to(scale.dtype)


# ---------------------------------------------------------------------------------------
# KL(N(p_loc, p_scale) || N(q_loc, q_scale)); None is the standard normal's loc 0 / scale 1.
# With r = p_scale / q_scale and t = (p_loc - q_loc) / q_scale:
#     kl = (r^2 + t^2 - 1) / 2 - (log p_scale - log q_scale)
# (never the log of a squared ratio, which underflows for r < 1e-23 in float32).
# ---------------------------------------------------------------------------------------

def _materialize_kl_params(params, dtype, device):
    """The four parameters in the compute dtype; None becomes the standard normal's 0 or 1."""
    cdt = compute_dtype(dtype)
    defaults = (0.0, 1.0, 0.0, 1.0)
    return [
        torch.tensor(d, dtype=cdt, device=device) if t is None else t.to(cdt) for t, d in zip(params, defaults)
    ]


def normal_kl(p_loc, p_scale, q_loc, q_scale):
    """KL(N(p_loc, p_scale) || N(q_loc, q_scale)) elementwise (None: loc 0, scale 1); half types in float32."""
    present = [t for t in (p_loc, p_scale, q_loc, q_scale) if t is not None]
    dtype, device = present[0].dtype, present[0].device
    pl, ps, ql, qs = _materialize_kl_params((p_loc, p_scale, q_loc, q_scale), dtype, device)
    shape = torch.broadcast_shapes(*(t.shape for t in present))
    inv_qs = 1.0 / qs
    r = ps * inv_qs
    t = (pl - ql) * inv_qs
    kl = 0.5 * (r * r + t * t - 1.0) - (ps.log() - qs.log())
    return kl.expand(shape).to(dtype).contiguous()


def normal_kl_backward(grad, p_loc, p_scale, q_loc, q_scale, output_mask):
    """Gradients for (p_loc, p_scale, q_loc, q_scale), reduced to their shapes; None where not needed."""
    params = (p_loc, p_scale, q_loc, q_scale)
    pl, ps, ql, qs = _materialize_kl_params(params, grad.dtype, grad.device)
    g = grad.to(compute_dtype(grad.dtype))
    inv_qs = 1.0 / qs
    r = ps * inv_qs
    t = (pl - ql) * inv_qs
    g_loc = g * t * inv_qs
    elementwise = (g_loc, g * (r * r - 1.0) / ps, -g_loc, g * (1.0 - r * r - t * t) * inv_qs)
    out = []
    for e, p, need in zip(elementwise, params, output_mask):
        if not need or p is None:
            out.append(None)
        else:
            out.append(reduce_to(e.expand(grad.shape), p.shape).to(p.dtype).contiguous())
    return tuple(out)


# ---------------------------------------------------------------------------------------
# TanhNormal: a = mid + half * tanh(u), u = loc + scale * eps, the log-density summed over the
# ``event_dims`` rightmost dims:
#     log p(a) = sum over events of [ log N(u; loc, scale) - log(half) - log(1 - tanh(u)^2) ],
#     log(1 - tanh(u)^2) = 2 * (log 2 - |u| - log1p(exp(-2 |u|)))
# (torch's TanhTransform.log_abs_det_jacobian formula; it never forms 1 - tanh(u)^2, which rounds
# to 0 for |u| > 9 in float32). ``squash=False`` is the plain Normal with its log_prob summed over
# the event dims (normal_rsample_log_prob_sum), on the same kernels.
# ---------------------------------------------------------------------------------------
LN2 = math.log(2.0)


def log_one_minus_tanh2(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), without forming 1 - tanh(u)^2."""
    t = u.abs()
    return 2.0 * (LN2 - t - torch.log1p(torch.exp(-2.0 * t)))


def tanh_normal(eps, loc, scale, event_dims, mid, half, with_log_prob, squash=True):
    """(a, log_prob or None) from the noise ``eps`` (full shape, compute dtype). ``squash=False``:
    the plain Normal, a = loc + scale * eps (``normal_rsample_log_prob_sum``)."""
    dtype, cdt = loc.dtype, eps.dtype
    scale_c = scale.to(cdt)
    u = loc.to(cdt) + scale_c * eps
    a = (mid + half * torch.tanh(u) if squash else u).to(dtype)
    if not with_log_prob:
        return a, None
    term = log_prob_of_noise(eps, scale_c)
    if squash:
        term = term - math.log(half) - log_one_minus_tanh2(u)
    return a, event_sum(term.expand(eps.shape), event_dims).to(dtype)


def tanh_normal_backward(eps, grad_a, grad_lp, loc, scale, event_dims, half, output_mask, squash=True):
    """(grad_loc, grad_scale) of ``tanh_normal`` reduced to the parameters' shapes; None where not needed."""
    cdt = eps.dtype
    scale_c = scale.to(cdt)
    u = loc.to(cdt) + scale_c * eps
    y = torch.tanh(u)
    e = torch.exp(-2.0 * u.abs())
    gu = torch.zeros_like(eps)
    g_scale = torch.zeros_like(eps)
    if grad_a is not None:
        gu = gu + (grad_a.to(cdt) * half * (4.0 * e / ((1.0 + e) * (1.0 + e))) if squash else grad_a.to(cdt))
    if grad_lp is not None:
        gl = grad_lp.to(cdt).reshape(tuple(grad_lp.shape) + (1,) * event_dims)
        if squash:
            gu = gu + gl * 2.0 * y
        g_scale = g_scale - gl / scale_c
    g_scale = g_scale + gu * eps
    return tuple(
        reduce_to(g.expand(eps.shape), t.shape).to(t.dtype).contiguous() if need else None
        for g, t, need in zip((gu, g_scale), (loc, scale), output_mask)
    )


def tanh_normal_log_prob(value, loc, scale, low: float, high: float, event_dims: int):
    """log_prob of a given action: ``y = (a - mid) / half`` clamped to ``[-1 + eps, 1 - eps]``
    (``eps = torch.finfo(dtype).eps``), ``u = atanh(y)``, then the density above."""
    mid, half = (high + low) / 2, (high - low) / 2
    cdt = compute_dtype(value.dtype)
    tiny = torch.finfo(value.dtype).eps
    y = ((value.to(cdt) - mid) / half).clamp(-1.0 + tiny, 1.0 - tiny)
    log1p_y, log1m_y = torch.log1p(y), torch.log1p(-y)
    u = 0.5 * (log1p_y - log1m_y)  # atanh(y)
    # log(1 - y^2) = log1p(y) + log1p(-y)
    term = log_prob_formula(u, loc.to(cdt), scale.to(cdt)) - math.log(half) - (log1p_y + log1m_y)
    return event_sum(term, event_dims).to(value.dtype)
