// Host build of the CUDA backend's device code, for checking it without a GPU.
//
// Compiled by tests/test_cuda_backend.py with g++ (and with `nvcc -x cu`, host code only) into a
// shared library loaded through ctypes. It exposes the Philox words and, through the very
// per-thread functions the __global__ kernels call (kernels/normal_kernels.cuh), every kernel
// run on the host: a loop over the Philox counters stands in for the grid. The test compares the
// results with torchdist_fast/reference.py (words bit for bit, normals to float rounding).
//
// Build:  g++ -O2 -std=c++17 -shared -fPIC kernels/host_check.cpp -o host_check.so
//         add -DTDF_HOST_CHECK_C10 -I<torch include> for float16 / bfloat16 (c10::Half, c10::BFloat16)
//
// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
// Operands are passed as (pointer, element strides over the output shape, 0 along broadcast dims),
// i.e. what `tensor.expand(out_shape).stride()` gives.
// Return values of the kernel entry points: the NDIM the kernel was instantiated with (1, 2, 4),
// 0 when more than 4 dims remain after coalescing (the launcher would make the inputs
// contiguous first; nothing is computed here), -1 for an unsupported dtype.
#include <stdint.h>

#include "normal_kernels.cuh"

#if defined(TDF_HOST_CHECK_C10)
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#endif

namespace {

using namespace tdf;

template <class F>
int with_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0: return f(float{});
    case 1: return f(double{});
#if defined(TDF_HOST_CHECK_C10)
    case 2: return f(c10::Half{});
    case 3: return f(c10::BFloat16{});
#endif
    default: return -1;
  }
}

int64_t numel_of(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

}  // namespace

extern "C" {

int tdf_has_half(void) {
#if defined(TDF_HOST_CHECK_C10)
  return 1;
#else
  return 0;
#endif
}

// One Philox4x32-R block: ctr[4], key[2] -> out[4] (the Random123 known-answer format).
void tdf_philox4x32(const uint32_t* ctr, const uint32_t* key, int rounds, uint32_t* out) {
  const U32x4 w = philox4x32(U32x4{ctr[0], ctr[1], ctr[2], ctr[3]}, key[0], key[1], rounds);
  out[0] = w.x;
  out[1] = w.y;
  out[2] = w.z;
  out[3] = w.w;
}

// The [n, 4] words of counters offset .. offset + n - 1 (mod 2^64) for Philox call `call`.
void tdf_words(int64_t n, uint64_t seed, uint64_t offset, uint32_t call, uint32_t* out) {
  for (int64_t c = 0; c < n; ++c) {
    const U32x4 w = stream_words(offset + static_cast<uint64_t>(c), call, seed_lo(seed), seed_hi(seed));
    out[4 * c] = w.x;
    out[4 * c + 1] = w.y;
    out[4 * c + 2] = w.z;
    out[4 * c + 3] = w.w;
  }
}

// The float32 Box-Muller of n word pairs (w_r, w_t) -> n pairs (r cos, r sin): accuracy-contract checks.
void tdf_box_muller32(int64_t n, const uint32_t* words, float* out) {
  for (int64_t i = 0; i < n; ++i) box_muller32(words[2 * i], words[2 * i + 1], out[2 * i], out[2 * i + 1]);
}

int tdf_randn(int dtype, int64_t numel, uint64_t seed, uint64_t offset, void* out) {
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    RandnArgs<T> a;
    a.out = static_cast<T*>(out);
    a.numel = numel;
    a.offset = offset;
    a.k0 = seed_lo(seed);
    a.k1 = seed_hi(seed);
    a.vec = aligned4<T>(out);
    for (int64_t c = 0; c < n_counters(numel); ++c) philox_randn_thread(a, c);
    return 1;
  });
}

int tdf_rsample_fwd(int dtype, int ndim, const int64_t* shape, const void* loc, const int64_t* loc_strides,
                    const void* scale, const int64_t* scale_strides, uint64_t seed, uint64_t offset, void* z,
                    void* log_prob) {
  const int64_t* strides[2] = {loc_strides, scale_strides};
  LayoutPlan plan;
  if (!plan_layout(ndim, shape, 2, strides, plan)) return 0;
  const int64_t numel = numel_of(ndim, shape);
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    RsampleFwdArgs<T> a;
    a.z = static_cast<T*>(z);
    a.log_prob = static_cast<T*>(log_prob);
    a.loc = make_in(static_cast<const T*>(loc), plan, 0);
    a.scale = make_in(static_cast<const T*>(scale), plan, 1);
    a.layout = make_layout(plan, numel);
    a.numel = numel;
    a.offset = offset;
    a.k0 = seed_lo(seed);
    a.k1 = seed_hi(seed);
    a.vec = aligned4<T>(z) && (log_prob == nullptr || aligned4<T>(log_prob));
    dispatch_ndim(plan.ndim, [&](auto nd) {
      for (int64_t c = 0; c < n_counters(numel); ++c) rsample_fwd_thread<T, decltype(nd)::value>(a, c);
    });
    return plan.ndim;
  });
}

int tdf_rsample_bwd(int dtype, int ndim, const int64_t* shape, const void* grad_z, const int64_t* gz_strides,
                    const void* grad_log_prob, const int64_t* glp_strides, const void* scale, const int64_t* scale_strides,
                    uint64_t seed, uint64_t offset, void* out, int out_acc) {
  // a missing grad (nullptr) reads scale in its place, as the launchers do
  const int64_t* strides[3] = {grad_z ? gz_strides : scale_strides, grad_log_prob ? glp_strides : scale_strides, scale_strides};
  LayoutPlan plan;
  if (!plan_layout(ndim, shape, 3, strides, plan)) return 0;
  const int64_t numel = numel_of(ndim, shape);
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    RsampleBwdArgs<T> a;
    a.grad_scale = make_out<T>(out, out_acc != 0);
    a.grad_z = make_in(static_cast<const T*>(grad_z ? grad_z : scale), plan, 0);
    a.grad_log_prob = make_in(static_cast<const T*>(grad_log_prob ? grad_log_prob : scale), plan, 1);
    a.scale = make_in(static_cast<const T*>(scale), plan, 2);
    a.has_grad_z = grad_z != nullptr;
    a.has_grad_log_prob = grad_log_prob != nullptr;
    a.layout = make_layout(plan, numel);
    a.numel = numel;
    a.offset = offset;
    a.k0 = seed_lo(seed);
    a.k1 = seed_hi(seed);
    dispatch_ndim(plan.ndim, [&](auto nd) {
      for (int64_t c = 0; c < n_counters(numel); ++c) rsample_bwd_thread<T, decltype(nd)::value>(a, c);
    });
    return plan.ndim;
  });
}

int tdf_log_prob_fwd(int dtype, int ndim, const int64_t* shape, const void* value, const int64_t* v_strides,
                     const void* loc, const int64_t* loc_strides, const void* scale, const int64_t* scale_strides,
                     void* out) {
  const int64_t* strides[3] = {v_strides, loc_strides, scale_strides};
  LayoutPlan plan;
  if (!plan_layout(ndim, shape, 3, strides, plan)) return 0;
  const int64_t numel = numel_of(ndim, shape);
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    LogProbFwdArgs<T> a;
    a.out = static_cast<T*>(out);
    a.value = make_in(static_cast<const T*>(value), plan, 0);
    a.loc = make_in(static_cast<const T*>(loc), plan, 1);
    a.scale = make_in(static_cast<const T*>(scale), plan, 2);
    a.layout = make_layout(plan, numel);
    a.numel = numel;
    a.vec = aligned4<T>(out);
    dispatch_ndim(plan.ndim, [&](auto nd) {
      for (int64_t c = 0; c < n_counters(numel); ++c) log_prob_fwd_thread<T, decltype(nd)::value>(a, c);
    });
    return plan.ndim;
  });
}

int tdf_log_prob_bwd(int dtype, int ndim, const int64_t* shape, const void* grad, const int64_t* g_strides,
                     const void* value, const int64_t* v_strides, const void* loc, const int64_t* loc_strides,
                     const void* scale, const int64_t* scale_strides, void* grad_value, int gv_acc, void* grad_loc,
                     int gl_acc, void* grad_scale, int gs_acc) {
  const int64_t* strides[4] = {g_strides, v_strides, loc_strides, scale_strides};
  LayoutPlan plan;
  if (!plan_layout(ndim, shape, 4, strides, plan)) return 0;
  const int64_t numel = numel_of(ndim, shape);
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    LogProbBwdArgs<T> a;
    a.grad_value = make_out<T>(grad_value, gv_acc != 0);
    a.grad_loc = make_out<T>(grad_loc, gl_acc != 0);
    a.grad_scale = make_out<T>(grad_scale, gs_acc != 0);
    a.grad = make_in(static_cast<const T*>(grad), plan, 0);
    a.value = make_in(static_cast<const T*>(value), plan, 1);
    a.loc = make_in(static_cast<const T*>(loc), plan, 2);
    a.scale = make_in(static_cast<const T*>(scale), plan, 3);
    a.layout = make_layout(plan, numel);
    a.numel = numel;
    dispatch_ndim(plan.ndim, [&](auto nd) {
      for (int64_t c = 0; c < n_counters(numel); ++c) log_prob_bwd_thread<T, decltype(nd)::value>(a, c);
    });
    return plan.ndim;
  });
}

}  // extern "C"
