// Philox4x32-10 and the words -> normals mapping of torchdist_fast, for host and device.
//
// This header is the C++ twin of torchdist_fast/reference.py (whose module docstring is the
// normative stream spec) and of torchdist_fast/triton_kernels/philox.py. It has no dependency
// besides <stdint.h> and <math.h>: under nvcc every function is __host__ __device__, under a
// plain C++ compiler (g++) it is ordinary inline code, which is how the words and normals are
// checked against the reference on a machine without a GPU (tests/test_cuda_backend.py).
//
// Stream layout (a promise to users; see reference.py):
//   key = (seed & 0xFFFFFFFF, seed >> 32)
//   output element j (flat row-major index) <- counter c = offset + j / 4 (mod 2^64), lane j % 4
//   ctr = (c & 0xFFFFFFFF, c >> 32, call, STREAM_TAG = 0x54444631)
//   32-bit and 16-bit outputs: one call (call = 0) per counter,
//       u(w) = (float(w) + 0.5f) * 2^-32 in float32 (never 0)
//       lane 0, 1 = r0 * (cos, sin)(2 pi u(w1)), r0 = sqrt(-2 ln u(w0))
//       lane 2, 3 = r2 * (cos, sin)(2 pi u(w3)), r2 = sqrt(-2 ln u(w2))
//       float16 / bfloat16 outputs are these float32 normals rounded.
//   float64: two calls per counter (call 0 -> lanes 0, 1; call 1 -> lanes 2, 3),
//       u(a, b) = ((a << 21) + (b >> 11) + 0.5) * 2^-53 in float64 (53 random bits, never 0)
//       per call: r = sqrt(-2 ln u(w0, w1)), theta = 2 pi u(w2, w3) -> (r cos theta, r sin theta)
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define TDF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TDF_HOST_DEVICE inline
#endif

namespace tdf {

constexpr uint32_t PHILOX_M0 = 0xD2511F53u;
constexpr uint32_t PHILOX_M1 = 0xCD9E8D57u;
constexpr uint32_t PHILOX_W0 = 0x9E3779B9u;
constexpr uint32_t PHILOX_W1 = 0xBB67AE85u;
constexpr uint32_t STREAM_TAG = 0x54444631u;  // "TDF1"

// float32 constants, spelled as the reference computes them (Python double -> float32)
constexpr float INV_2_32_F = 2.3283064365386963e-10f;  // 2^-32, exact
constexpr float TWO_PI_F = 6.283185307179586f;          // float32(2 pi)
constexpr double INV_2_53 = 1.1102230246251565e-16;     // 2^-53, exact
constexpr double TWO_PI = 6.283185307179586;
constexpr double LOG_SQRT_2PI = 0.91893853320467274178;  // 0.5 * log(2 pi)

struct U32x4 {
  uint32_t x, y, z, w;
};

// Philox4x32-R (Random123): R rounds, the key bumped before every round but the first.
TDF_HOST_DEVICE U32x4 philox4x32(U32x4 ctr, uint32_t k0, uint32_t k1, int rounds = 10) {
  uint32_t c0 = ctr.x, c1 = ctr.y, c2 = ctr.z, c3 = ctr.w;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < rounds; ++r) {
    if (r) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    // one 32x32 -> 64 multiply per product (IMAD.WIDE.U32) gives both halves
    const uint64_t p0 = static_cast<uint64_t>(c0) * PHILOX_M0, p1 = static_cast<uint64_t>(c2) * PHILOX_M1;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return U32x4{c0, c1, c2, c3};
}

// The counter block of stream counter c (already offset-added, modulo 2^64) for Philox call `call`.
TDF_HOST_DEVICE U32x4 stream_counter(uint64_t c, uint32_t call) {
  return U32x4{static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), call, STREAM_TAG};
}

// The four words of counter c (= offset + counter index, wrapping) for `call`.
TDF_HOST_DEVICE U32x4 stream_words(uint64_t c, uint32_t call, uint32_t k0, uint32_t k1) {
  return philox4x32(stream_counter(c, call), k0, k1, 10);
}

// Constants of the float32 Box-Muller (box_muller32 below).
constexpr float INV_2_33_F = 1.1641532182693481e-10f;     // 2^-33
constexpr float NEG_INV_2_31_F = -4.656612873077393e-10f;  // -2^-31
constexpr float NEG_INV_2_32_F = -2.3283064365386963e-10f; // -2^-32
constexpr float TWO_PI_INV_2_32_F = 1.4629180792671596e-09f;  // float32(2 pi 2^-32)
constexpr float PI_INV_2_32_F = 7.314590396335798e-10f;       // float32(pi 2^-32)
constexpr float NEG_2_LN2_F = -1.3862943611198906f;           // float32(-2 ln 2)
constexpr float ONE_MINUS_SMALL_T_F = 0.9990234375f;          // 1 - 2^-10 (reference.BOX_MULLER_SMALL_T)

// Two uint32 words -> float64 uniform with 53 random bits, never 0.
TDF_HOST_DEVICE double uniform64(uint32_t a, uint32_t b) {
  const uint64_t m = (static_cast<uint64_t>(a) << 21) + (b >> 11);  // < 2^53: exact in a double
  return (static_cast<double>(m) + 0.5) * INV_2_53;
}

// Two float32 normals from a word pair: the algorithm of triton_kernels/philox.py _box_muller32,
// under the accuracy contract of reference.py. r^2 = -2 ln u, u = (w_r + 0.5) 2^-32; near u = 1
// (1 - u < 2^-10) r^2 = 2t + t^2 with 2t = -(int32(w_r) + 0.5) 2^-31 exact; elsewhere
// -2 ln 2 log2(u). The angle 2 pi (int32(w_t) + 0.5) 2^-32 lies in [-pi, pi). On the device the
// log2, sin and cos are the hardware approximations (__log2f, __sincosf: MUFU), as curand's
// __sincosf; the host build runs the same steps with precise functions.
TDF_HOST_DEVICE void box_muller32(uint32_t w_r, uint32_t w_t, float& z0, float& z1) {
#if defined(__CUDA_ARCH__)
  const float fw = __uint2float_rn(w_r), fs = __int2float_rn(static_cast<int32_t>(w_r));
  const float ft = __int2float_rn(static_cast<int32_t>(w_t));
#else
  const float fw = static_cast<float>(w_r), fs = static_cast<float>(static_cast<int32_t>(w_r));
  const float ft = static_cast<float>(static_cast<int32_t>(w_t));
#endif
  const float u = fmaf(fw, INV_2_32_F, INV_2_33_F);
  const float t2 = fmaf(fs, NEG_INV_2_31_F, NEG_INV_2_32_F);
  const float theta = fmaf(ft, TWO_PI_INV_2_32_F, PI_INV_2_32_F);
  float lg, s, c;
#if defined(__CUDA_ARCH__)
  lg = __log2f(u);
  __sincosf(theta, &s, &c);
#else
  lg = log2f(u);
  s = sinf(theta);
  c = cosf(theta);
#endif
  const float small = fmaf(t2, t2 * 0.25f, t2);
  const float r = sqrtf(u >= ONE_MINUS_SMALL_T_F ? small : lg * NEG_2_LN2_F);
  z0 = r * c;
  z1 = r * s;
}

TDF_HOST_DEVICE void box_muller(double u_r, double u_theta, double& z0, double& z1) {
  const double r = sqrt(-2.0 * log(u_r));
  const double theta = TWO_PI * u_theta;
  double s, c;
#if defined(__CUDA_ARCH__)
  sincos(theta, &s, &c);
#else
  s = sin(theta);
  c = cos(theta);
#endif
  z0 = r * c;
  z1 = r * s;
}

// The four normals (lanes 0..3) of stream counter c = offset + counter index, in float32
// (also what float16 / bfloat16 outputs round) or float64.
TDF_HOST_DEVICE void stream_normals(uint64_t c, uint32_t k0, uint32_t k1, float z[4]) {
  const U32x4 w = stream_words(c, 0u, k0, k1);
  box_muller32(w.x, w.y, z[0], z[1]);
  box_muller32(w.z, w.w, z[2], z[3]);
}

TDF_HOST_DEVICE void stream_normals(uint64_t c, uint32_t k0, uint32_t k1, double z[4]) {
  const U32x4 w = stream_words(c, 0u, k0, k1);
  box_muller(uniform64(w.x, w.y), uniform64(w.z, w.w), z[0], z[1]);
  const U32x4 v = stream_words(c, 1u, k0, k1);
  box_muller(uniform64(v.x, v.y), uniform64(v.z, v.w), z[2], z[3]);
}

// Seeds and offsets cross the op boundary as int64 bit patterns of uint64 values.
TDF_HOST_DEVICE uint32_t seed_lo(uint64_t seed) { return static_cast<uint32_t>(seed); }
TDF_HOST_DEVICE uint32_t seed_hi(uint64_t seed) { return static_cast<uint32_t>(seed >> 32); }

}  // namespace tdf
