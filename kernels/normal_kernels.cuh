// Per-thread bodies of the Normal kernels (CUDA backend), for host and device.
//
// One GPU thread handles one Philox counter c, i.e. the 4 consecutive output elements
// 4c .. 4c + 3 (fewer for the last counter). The __global__ kernels in normal_ops.cu only compute
// c and call the *_thread functions below; the host check (host_check.cpp, built with g++ by
// tests/test_cuda_backend.py) calls the very same functions in a loop over c, which is how the
// index math, broadcasting, tails and element formulas are tested without a GPU.
//
// Semantics are those of the Triton kernels (torchdist_fast/triton_kernels/normal_rsample.py,
// normal_log_prob.py) and of the reference (torchdist_fast/reference.py):
//   rsample fwd:  z = loc + scale * eps;  log_prob = -eps^2/2 - log(scale) - log(sqrt(2 pi))
//   rsample bwd:  grad_scale element = grad_z * eps - grad_log_prob / scale  (each term optional)
//   log_prob fwd: y = (value - loc) / scale;  -y^2/2 - log(scale) - log(sqrt(2 pi))
//   log_prob bwd: grad_loc = g y / scale = -grad_value;  grad_scale = g (y^2 - 1) / scale
// float16 / bfloat16 compute in float32, float64 in float64.
//
// Broadcasting without copies: every input is described by its element strides over the output
// shape (0 along broadcast dimensions). The host coalesces dimensions every operand traverses
// contiguously (plan_layout) and right-aligns the remaining <= 4 dims in 4 slots; a kernel is
// instantiated for NDIM = 1 (no div/mod at all: contiguous or scalar operands), 2 (the common
// sample_shape x batch_shape broadcast) or 4 (anything else). Indices are 64-bit; when the
// output has fewer than 2^32 elements the div/mod use 32-bit arithmetic (a uniform branch).
#pragma once

#include <stdint.h>

#include <type_traits>

#include "philox.cuh"

namespace tdf {

constexpr int MAX_DIMS = 4;

template <class T>
struct AccType {
  using type = float;  // float32, float16, bfloat16
};
template <>
struct AccType<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccType<T>::type;

TDF_HOST_DEVICE float log_(float x) { return logf(x); }
TDF_HOST_DEVICE double log_(double x) { return log(x); }

// 4 elements stored or loaded as one access: 16 bytes for float32 (a float4), 8 for 16-bit
// types, 32 for float64 (two 16-byte accesses before sm_100).
template <class T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

// The output shape, coalesced and right-aligned: slots 4 - NDIM .. 3 are used (outer slots 1).
struct Layout {
  int64_t size[MAX_DIMS];
  bool idx32;  // numel < 2^32: div/mod in 32-bit arithmetic
};

// An input read through the layout.
template <class T>
struct In {
  const T* ptr;
  int64_t stride[MAX_DIMS];  // element strides per slot, 0 along broadcast dims
  bool vec;                  // a counter's 4 elements are contiguous and 4-element aligned: one load
};

// An output of a backward kernel: written only when ptr is set, in T or (half types, when the
// host reduces it afterwards) in the compute type.
struct Out {
  void* ptr;
  bool acc;  // element type is acc_t<T> rather than T
  bool vec;  // 4-element aligned: 4-wide stores
};

template <int NDIM>
struct Pos {
  int64_t i[NDIM];  // multi-index over slots 4 - NDIM .. 3
};

TDF_HOST_DEVICE void divmod(int64_t a, int64_t b, bool idx32, int64_t& q, int64_t& r) {
  if (idx32) {
    const uint32_t q32 = static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
    q = static_cast<int64_t>(q32);
  } else {
    q = a / b;
  }
  r = a - q * b;
}

template <int NDIM>
TDF_HOST_DEVICE Pos<NDIM> unravel(int64_t idx, const Layout& L) {
  Pos<NDIM> p;
  int64_t rest = idx;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int d = NDIM - 1; d > 0; --d) {
    int64_t q, r;
    divmod(rest, L.size[MAX_DIMS - NDIM + d], L.idx32, q, r);
    p.i[d] = r;
    rest = q;
  }
  p.i[0] = rest;
  return p;
}

// The multi-index of the next flat index (innermost slot first, carrying outwards).
template <int NDIM>
TDF_HOST_DEVICE void advance(Pos<NDIM>& p, const Layout& L) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int d = NDIM - 1; d > 0; --d) {
    if (++p.i[d] < L.size[MAX_DIMS - NDIM + d]) return;
    p.i[d] = 0;
  }
  ++p.i[0];
}

template <int NDIM, class T>
TDF_HOST_DEVICE int64_t offset_of(const Pos<NDIM>& p, const In<T>& in) {
  int64_t o = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int d = 0; d < NDIM; ++d) o += p.i[d] * in.stride[MAX_DIMS - NDIM + d];
  return o;
}

// The 4 elements of a counter starting at multi-index p (n valid, the others set to fill).
template <int NDIM, class T>
TDF_HOST_DEVICE void load4(const In<T>& in, const Layout& L, Pos<NDIM> p, int n, acc_t<T> out[4], acc_t<T> fill) {
  using A = acc_t<T>;
  if (in.vec && n == 4) {
    const Pack4<T> v = *reinterpret_cast<const Pack4<T>*>(in.ptr + offset_of(p, in));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) out[k] = static_cast<A>(v.v[k]);
    return;
  }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {
    out[k] = k < n ? static_cast<A>(in.ptr[offset_of(p, in)]) : fill;
    if (k < 3) advance(p, L);
  }
}

template <class T, class A>
TDF_HOST_DEVICE void store4(T* out, int64_t i0, int n, bool vec, const A v[4]) {
  if (vec && n == 4) {
    Pack4<T> pk;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) pk.v[k] = static_cast<T>(v[k]);
    *reinterpret_cast<Pack4<T>*>(out + i0) = pk;
    return;
  }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {  // constant trip count: v stays in registers
    if (k < n) out[i0 + k] = static_cast<T>(v[k]);
  }
}

template <class T>
TDF_HOST_DEVICE void store4_out(const Out& o, int64_t i0, int n, const acc_t<T> v[4]) {
  using A = acc_t<T>;
  if (!std::is_same<T, A>::value && o.acc) {
    store4(static_cast<A*>(o.ptr), i0, n, o.vec, v);
  } else {
    store4(static_cast<T*>(o.ptr), i0, n, o.vec, v);
  }
}

TDF_HOST_DEVICE int valid_in_counter(int64_t i0, int64_t numel) {
  return numel - i0 < 4 ? static_cast<int>(numel - i0) : 4;
}

// ------------------------------------------------------------------------------ stream position
// The Philox key and first counter of a launch: the launch's own values, or, when `position` is
// set, the int64 pair [seed, offset] in device memory. The latter is what a CUDA graph captures:
// the pair is written at replay time (draw_position in normal_ops.cu), so every replay draws new
// noise, and nothing is read on the host.
struct Stream {
  uint64_t offset;
  uint32_t k0, k1;
};

template <class Args>
TDF_HOST_DEVICE Stream stream_of(const Args& a) {
  if (a.position == nullptr) return Stream{a.offset, a.k0, a.k1};
  const uint64_t seed = static_cast<uint64_t>(a.position[0]);
  return Stream{static_cast<uint64_t>(a.position[1]), seed_lo(seed), seed_hi(seed)};
}

// ------------------------------------------------------------------------------ philox_randn
template <class T>
struct RandnArgs {
  T* out;
  int64_t numel;
  uint64_t offset;
  uint32_t k0, k1;
  bool vec;
  const int64_t* position = nullptr;  // see stream_of
};

template <class T>
TDF_HOST_DEVICE void philox_randn_thread(const RandnArgs<T>& a, int64_t c) {
  const int64_t i0 = 4 * c;
  if (i0 >= a.numel) return;
  acc_t<T> z[4];
  const Stream st = stream_of(a);
  stream_normals(st.offset + static_cast<uint64_t>(c), st.k0, st.k1, z);
  store4(a.out, i0, valid_in_counter(i0, a.numel), a.vec, z);
}

// ------------------------------------------------------------------------------ rsample fwd
template <class T>
struct RsampleFwdArgs {
  T* z;
  T* log_prob;  // nullptr: z only
  In<T> loc, scale;
  Layout layout;
  int64_t numel;
  uint64_t offset;
  uint32_t k0, k1;
  bool vec;  // z and log_prob 4-element aligned
  const int64_t* position = nullptr;  // see stream_of
};

template <class T, int NDIM>
TDF_HOST_DEVICE void rsample_fwd_thread(const RsampleFwdArgs<T>& a, int64_t c) {
  using A = acc_t<T>;
  const int64_t i0 = 4 * c;
  if (i0 >= a.numel) return;
  const int n = valid_in_counter(i0, a.numel);
  A eps[4], loc[4], scale[4], z[4];
  const Stream st = stream_of(a);
  stream_normals(st.offset + static_cast<uint64_t>(c), st.k0, st.k1, eps);
  const Pos<NDIM> p = unravel<NDIM>(i0, a.layout);
  load4(a.loc, a.layout, p, n, loc, A(0));
  load4(a.scale, a.layout, p, n, scale, A(1));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) z[k] = loc[k] + scale[k] * eps[k];
  store4(a.z, i0, n, a.vec, z);
  if (a.log_prob != nullptr) {
    A lp[4];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) lp[k] = A(-0.5) * eps[k] * eps[k] - log_(scale[k]) - A(LOG_SQRT_2PI);
    store4(a.log_prob, i0, n, a.vec, lp);
  }
}

// ------------------------------------------------------------------------------ rsample bwd
template <class T>
struct RsampleBwdArgs {
  Out grad_scale;
  In<T> grad_z, grad_log_prob, scale;
  bool has_grad_z, has_grad_log_prob;
  Layout layout;
  int64_t numel;
  uint64_t offset;
  uint32_t k0, k1;
  const int64_t* position = nullptr;  // see stream_of
};

template <class T, int NDIM>
TDF_HOST_DEVICE void rsample_bwd_thread(const RsampleBwdArgs<T>& a, int64_t c) {
  using A = acc_t<T>;
  const int64_t i0 = 4 * c;
  if (i0 >= a.numel) return;
  const int n = valid_in_counter(i0, a.numel);
  A g[4] = {A(0), A(0), A(0), A(0)};
  const Pos<NDIM> p = unravel<NDIM>(i0, a.layout);
  if (a.has_grad_z) {
    A eps[4], gz[4];
    const Stream st = stream_of(a);
    stream_normals(st.offset + static_cast<uint64_t>(c), st.k0, st.k1, eps);
    load4(a.grad_z, a.layout, p, n, gz, A(0));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) g[k] += gz[k] * eps[k];
  }
  if (a.has_grad_log_prob) {
    A glp[4], scale[4];
    load4(a.grad_log_prob, a.layout, p, n, glp, A(0));
    load4(a.scale, a.layout, p, n, scale, A(1));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) g[k] -= glp[k] / scale[k];
  }
  store4_out<T>(a.grad_scale, i0, n, g);
}

// ------------------------------------------------------------------------------ log_prob fwd
template <class T>
struct LogProbFwdArgs {
  T* out;
  In<T> value, loc, scale;
  Layout layout;
  int64_t numel;
  bool vec;
};

template <class T, int NDIM>
TDF_HOST_DEVICE void log_prob_fwd_thread(const LogProbFwdArgs<T>& a, int64_t c) {
  using A = acc_t<T>;
  const int64_t i0 = 4 * c;
  if (i0 >= a.numel) return;
  const int n = valid_in_counter(i0, a.numel);
  A v[4], m[4], s[4], out[4];
  const Pos<NDIM> p = unravel<NDIM>(i0, a.layout);
  load4(a.value, a.layout, p, n, v, A(0));
  load4(a.loc, a.layout, p, n, m, A(0));
  load4(a.scale, a.layout, p, n, s, A(1));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {
    const A y = (v[k] - m[k]) / s[k];
    out[k] = A(-0.5) * y * y - log_(s[k]) - A(LOG_SQRT_2PI);
  }
  store4(a.out, i0, n, a.vec, out);
}

// ------------------------------------------------------------------------------ log_prob bwd
template <class T>
struct LogProbBwdArgs {
  Out grad_value, grad_loc, grad_scale;  // ptr nullptr: not needed
  In<T> grad, value, loc, scale;
  Layout layout;
  int64_t numel;
};

template <class T, int NDIM>
TDF_HOST_DEVICE void log_prob_bwd_thread(const LogProbBwdArgs<T>& a, int64_t c) {
  using A = acc_t<T>;
  const int64_t i0 = 4 * c;
  if (i0 >= a.numel) return;
  const int n = valid_in_counter(i0, a.numel);
  A g[4], v[4], m[4], s[4], y[4], g_loc[4];
  const Pos<NDIM> p = unravel<NDIM>(i0, a.layout);
  load4(a.grad, a.layout, p, n, g, A(0));
  load4(a.value, a.layout, p, n, v, A(0));
  load4(a.loc, a.layout, p, n, m, A(0));
  load4(a.scale, a.layout, p, n, s, A(1));
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {
    y[k] = (v[k] - m[k]) / s[k];
    g_loc[k] = g[k] * y[k] / s[k];
  }
  if (a.grad_value.ptr != nullptr) {
    A gv[4];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) gv[k] = -g_loc[k];
    store4_out<T>(a.grad_value, i0, n, gv);
  }
  if (a.grad_loc.ptr != nullptr) store4_out<T>(a.grad_loc, i0, n, g_loc);
  if (a.grad_scale.ptr != nullptr) {
    A gs[4];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) gs[k] = g[k] * (y[k] * y[k] - A(1)) / s[k];
    store4_out<T>(a.grad_scale, i0, n, gs);
  }
}

// ------------------------------------------------------------------------------ host side
// (plain host functions: visible in nvcc's device pass too, where the launchers are parsed)

// Coalesce the output shape over n_ops operands (element strides as expanded to the output
// shape, 0 along broadcast dims), like torchdist_fast/triton_kernels/layout.py: size-1 dims are
// dropped and a dim merges into the previous one when every operand allows it. The remaining
// dims are right-aligned in MAX_DIMS slots (outer slots: size 1, stride 0). Returns the NDIM the
// kernel is instantiated for (1, 2 or 4), or 0 when more than MAX_DIMS dims remain (the caller
// then makes the inputs contiguous and plans again).
constexpr int MAX_OPERANDS = 4;

struct LayoutPlan {
  int ndim;  // 1, 2 or 4
  int64_t size[MAX_DIMS];
  int64_t stride[MAX_OPERANDS][MAX_DIMS];
};

inline int plan_layout(int out_ndim, const int64_t* out_shape, int n_ops, const int64_t* const* strides, LayoutPlan& plan) {
  int64_t msize[64];
  int64_t mstride[MAX_OPERANDS][64];
  int nd = 0;
  if (n_ops > MAX_OPERANDS) return 0;
  for (int d = 0; d < out_ndim; ++d) {
    const int64_t s = out_shape[d];
    if (s == 1) continue;
    if (nd > 0) {
      bool merge = true;
      for (int k = 0; k < n_ops; ++k) merge = merge && mstride[k][nd - 1] == strides[k][d] * s;
      if (merge) {
        msize[nd - 1] *= s;
        for (int k = 0; k < n_ops; ++k) mstride[k][nd - 1] = strides[k][d];
        continue;
      }
    }
    if (nd == 64) return 0;  // (contiguous operands then coalesce into one dim)
    msize[nd] = s;
    for (int k = 0; k < n_ops; ++k) mstride[k][nd] = strides[k][d];
    ++nd;
  }
  if (nd > MAX_DIMS) return 0;
  for (int d = 0; d < MAX_DIMS; ++d) {
    const int src = d - (MAX_DIMS - nd);  // right-aligned
    plan.size[d] = src >= 0 ? msize[src] : 1;
    for (int k = 0; k < MAX_OPERANDS; ++k) plan.stride[k][d] = (src >= 0 && k < n_ops) ? mstride[k][src] : 0;
  }
  plan.ndim = nd <= 1 ? 1 : (nd == 2 ? 2 : 4);
  return plan.ndim;
}

inline Layout make_layout(const LayoutPlan& plan, int64_t numel) {
  Layout L;
  for (int d = 0; d < MAX_DIMS; ++d) L.size[d] = plan.size[d];
  L.idx32 = numel < (int64_t(1) << 32);
  return L;
}

template <class T>
inline bool aligned4(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % (4 * sizeof(T)) == 0;
}

// Operand k of the plan. 4-wide loads need the 4 elements of every counter contiguous and
// aligned: unit stride in the innermost slot, which (for NDIM > 1) has a size that is a multiple
// of 4, every other used stride a multiple of 4, and an aligned base pointer.
template <class T>
inline In<T> make_in(const T* ptr, const LayoutPlan& plan, int k) {
  In<T> in;
  in.ptr = ptr;
  for (int d = 0; d < MAX_DIMS; ++d) in.stride[d] = plan.stride[k][d];
  bool vec = aligned4<T>(ptr) && in.stride[MAX_DIMS - 1] == 1;
  if (plan.ndim > 1) {
    vec = vec && plan.size[MAX_DIMS - 1] % 4 == 0;
    for (int d = MAX_DIMS - plan.ndim; d < MAX_DIMS - 1; ++d) vec = vec && in.stride[d] % 4 == 0;
  }
  in.vec = vec;
  return in;
}

template <class T>
inline Out make_out(void* ptr, bool acc) {
  Out o;
  o.ptr = ptr;
  o.acc = acc;
  o.vec = ptr != nullptr && (acc ? aligned4<acc_t<T>>(ptr) : aligned4<T>(ptr));
  return o;
}

inline int64_t n_counters(int64_t numel) { return (numel + 3) / 4; }

// Calls f(std::integral_constant<int, NDIM>{}) for the plan's NDIM.
template <class F>
inline void dispatch_ndim(int ndim, F&& f) {
  switch (ndim) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace tdf
