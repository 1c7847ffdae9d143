// The CUDA C++ backend of torchdist_fast: Philox normals and the Normal rsample / log_prob
// kernels, forward and backward, registered as torch.ops.torchdist_fast_cuda.* (CUDA key).
//
// Built by setup_cuda.py into torchdist_fast._cuda_backend; used through
// torchdist_fast/cuda_backend.py, whose launchers have the signatures of the Triton launchers.
// Stream layout: kernels/philox.cuh (the same words as torchdist_fast/reference.py, bit for bit).
// Per-thread bodies, broadcasting and the layout plan: kernels/normal_kernels.cuh.
//
// Every kernel: one thread per Philox counter (4 consecutive output elements), 64-bit indices,
// 4-wide (16-byte for float32) loads and stores where aligned. Seeds and offsets arrive as int64
// bit patterns of uint64 values.
//
// TDF_HOST_EMULATION (tests only): the same file compiled by a plain C++ compiler against a CPU
// build of torch. Each launch becomes a host loop over the Philox counters calling the same
// per-thread functions, and the ops are registered as torch.ops.torchdist_fast_cuda_host.* for
// CPU tensors, so the host-side glue (shapes, broadcast layout, buffer dtypes, reductions,
// output_mask) is tested against the reference without a GPU (tests/test_cuda_backend.py).
#if !defined(TDF_HOST_EMULATION)
#include <Python.h>
#endif

#include <ATen/Dispatch.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#if !defined(TDF_HOST_EMULATION)
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <mutex>
#include <tuple>
#endif

#include <cstdint>
#include <vector>

#include "normal_kernels.cuh"

namespace tdf {

constexpr int THREADS = 256;

// ------------------------------------------------------------------------------------ kernels
#if !defined(TDF_HOST_EMULATION)
template <class T>
__global__ void __launch_bounds__(THREADS) philox_randn_kernel(const RandnArgs<T> a) {
  philox_randn_thread(a, static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x);
}

template <class T, int NDIM>
__global__ void __launch_bounds__(THREADS) normal_rsample_fwd_kernel(const RsampleFwdArgs<T> a) {
  rsample_fwd_thread<T, NDIM>(a, static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x);
}

template <class T, int NDIM>
__global__ void __launch_bounds__(THREADS) normal_rsample_bwd_kernel(const RsampleBwdArgs<T> a) {
  rsample_bwd_thread<T, NDIM>(a, static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x);
}

template <class T, int NDIM>
__global__ void __launch_bounds__(THREADS) normal_log_prob_fwd_kernel(const LogProbFwdArgs<T> a) {
  log_prob_fwd_thread<T, NDIM>(a, static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x);
}

template <class T, int NDIM>
__global__ void __launch_bounds__(THREADS) normal_log_prob_bwd_kernel(const LogProbBwdArgs<T> a) {
  log_prob_bwd_thread<T, NDIM>(a, static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x);
}
#endif

namespace {

#if !defined(TDF_HOST_EMULATION)
dim3 grid_for(int64_t numel) {
  const int64_t blocks = (n_counters(numel) + THREADS - 1) / THREADS;
  TORCH_CHECK(blocks <= int64_t(0x7FFFFFFF), "torchdist_fast_cuda: tensor too large (", numel, " elements)");
  return dim3(static_cast<unsigned int>(blocks));
}
#endif

// One launch on the current stream of the current (guarded) device; under TDF_HOST_EMULATION the
// grid is a loop over the counters calling the same per-thread body.
template <class T>
void launch_philox_randn(const RandnArgs<T>& a) {
#if defined(TDF_HOST_EMULATION)
  for (int64_t c = 0; c < n_counters(a.numel); ++c) philox_randn_thread<T>(a, c);
#else
  philox_randn_kernel<T><<<grid_for(a.numel), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

template <class T, int NDIM>
void launch_rsample_fwd(const RsampleFwdArgs<T>& a) {
#if defined(TDF_HOST_EMULATION)
  for (int64_t c = 0; c < n_counters(a.numel); ++c) rsample_fwd_thread<T, NDIM>(a, c);
#else
  normal_rsample_fwd_kernel<T, NDIM><<<grid_for(a.numel), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

template <class T, int NDIM>
void launch_rsample_bwd(const RsampleBwdArgs<T>& a) {
#if defined(TDF_HOST_EMULATION)
  for (int64_t c = 0; c < n_counters(a.numel); ++c) rsample_bwd_thread<T, NDIM>(a, c);
#else
  normal_rsample_bwd_kernel<T, NDIM><<<grid_for(a.numel), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

template <class T, int NDIM>
void launch_log_prob_fwd(const LogProbFwdArgs<T>& a) {
#if defined(TDF_HOST_EMULATION)
  for (int64_t c = 0; c < n_counters(a.numel); ++c) log_prob_fwd_thread<T, NDIM>(a, c);
#else
  normal_log_prob_fwd_kernel<T, NDIM><<<grid_for(a.numel), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

template <class T, int NDIM>
void launch_log_prob_bwd(const LogProbBwdArgs<T>& a) {
#if defined(TDF_HOST_EMULATION)
  for (int64_t c = 0; c < n_counters(a.numel); ++c) log_prob_bwd_thread<T, NDIM>(a, c);
#else
  normal_log_prob_bwd_kernel<T, NDIM><<<grid_for(a.numel), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace

// ------------------------------------------------------------------------------------ host helpers
namespace {

#if defined(TDF_HOST_EMULATION)
#define TDF_DEVICE_OK(dev) (dev).is_cpu()
#define TDF_DEVICE_GUARD(dev) \
  do {                        \
  } while (0)
#else
#define TDF_DEVICE_OK(dev) (dev).is_cuda()
#define TDF_DEVICE_GUARD(dev) const c10::cuda::CUDAGuard device_guard_(dev)
#endif

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(TDF_DEVICE_OK(t.device()), "torchdist_fast_cuda: ", what, " must be a CUDA tensor, got ", t.device());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "torchdist_fast_cuda: expected a floating dtype (float32, float64, float16, bfloat16) for ", what, ", got ", st);
}

void check_same(const at::Tensor& ref, const at::Tensor& t, const char* what) {
  check_float(t, what);
  TORCH_CHECK(t.device() == ref.device(), "Expected all tensors to be on the same device, but found at least two devices, ",
              ref.device(), " and ", t.device(), "!");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "torchdist_fast_cuda: expected tensors of one dtype, got ",
              ref.scalar_type(), " and ", t.scalar_type(), " (", what, ")");
}

bool needs_acc_buffer(at::ScalarType st) { return st == at::kHalf || st == at::kBFloat16; }

at::ScalarType compute_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// Plans the broadcast layout of `operands` over out_shape; when more than MAX_DIMS dims remain
// after coalescing (rare), the operands are replaced by contiguous expanded copies.
bool try_plan(at::IntArrayRef out_shape, const std::vector<at::Tensor>& operands, LayoutPlan& plan) {
  std::vector<std::vector<int64_t>> strides;
  std::vector<const int64_t*> ptrs;
  strides.reserve(operands.size());
  for (const auto& t : operands) strides.push_back(t.expand(out_shape).strides().vec());
  for (const auto& s : strides) ptrs.push_back(s.data());
  return plan_layout(static_cast<int>(out_shape.size()), out_shape.data(), static_cast<int>(operands.size()), ptrs.data(), plan) != 0;
}

LayoutPlan plan_for(at::IntArrayRef out_shape, std::vector<at::Tensor>& operands) {
  LayoutPlan plan;
  if (!try_plan(out_shape, operands, plan)) {
    for (auto& t : operands) t = t.expand(out_shape).contiguous();
    const bool ok = try_plan(out_shape, operands, plan);
    TORCH_INTERNAL_ASSERT(ok, "torchdist_fast_cuda: no broadcast layout for ", out_shape);
  }
  return plan;
}

void key_of(int64_t seed, uint32_t& k0, uint32_t& k1) {
  const uint64_t s = static_cast<uint64_t>(seed);
  k0 = seed_lo(s);
  k1 = seed_hi(s);
}

template <class T>
const T* data_of(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}

template <class T>
T* mutable_data_of(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

// The stream position in device memory (the int64 pair [seed, offset] on the launch's device), or
// nullptr when the launch's seed and offset arguments hold it (Stream in normal_kernels.cuh).
const int64_t* position_of(const std::optional<at::Tensor>& position, const at::Device& device, const char* op) {
  if (!position.has_value() || !position->defined()) return nullptr;
  const at::Tensor& p = *position;
  TORCH_CHECK(p.scalar_type() == at::kLong && p.dim() == 1 && p.size(0) == 2 && p.is_contiguous() && p.device() == device,
              op, ": position must be a contiguous int64 tensor [seed, offset] on ", device, ", got ", p.scalar_type(), " ",
              p.sizes(), " on ", p.device());
  return p.const_data_ptr<int64_t>();
}

at::Tensor reduce_to(const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype) {
  // sum over broadcast dims (in the compute dtype the buffer holds), then to the input's dtype
  at::Tensor r = t.sizes() == shape ? t : at::sum_to(t, shape);
  return r.scalar_type() == dtype ? r : r.to(dtype);
}

}  // namespace

// ------------------------------------------------------------------------------------ launchers
at::Tensor philox_randn(at::IntArrayRef size, int64_t seed, int64_t offset, at::ScalarType dtype, at::Device device,
                        const std::optional<at::Tensor>& position) {
  TORCH_CHECK(TDF_DEVICE_OK(device), "torchdist_fast_cuda.philox_randn: device must be CUDA, got ", device);
  for (const auto s : size) TORCH_CHECK(s >= 0, "Trying to create tensor with negative dimension ", s, ": ", size);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "torchdist_fast_cuda.philox_randn: unsupported dtype ", dtype, "; use float32, float64, float16 or bfloat16");
  TDF_DEVICE_GUARD(device);
  at::Tensor out = at::empty(size, at::TensorOptions().dtype(dtype).device(device));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  uint32_t k0, k1;
  key_of(seed, k0, k1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "torchdist_fast_cuda.philox_randn", [&] {
    RandnArgs<scalar_t> a;
    a.out = mutable_data_of<scalar_t>(out);
    a.numel = numel;
    a.offset = static_cast<uint64_t>(offset);
    a.k0 = k0;
    a.k1 = k1;
    a.vec = aligned4<scalar_t>(a.out);
    a.position = position_of(position, device, "torchdist_fast_cuda.philox_randn");
    launch_philox_randn(a);
  });
  return out;
}

std::vector<at::Tensor> normal_rsample_fwd(const at::Tensor& loc, const at::Tensor& scale, at::IntArrayRef sample_shape,
                                           int64_t seed, int64_t offset, bool with_log_prob,
                                           const std::optional<at::Tensor>& position) {
  check_float(loc, "loc");
  check_same(loc, scale, "scale");
  TDF_DEVICE_GUARD(loc.device());
  std::vector<int64_t> out_shape(sample_shape.begin(), sample_shape.end());
  for (const auto s : out_shape) TORCH_CHECK(s >= 0, "Trying to create tensor with negative dimension ", s, ": ", sample_shape);
  const auto batch = at::infer_size(loc.sizes(), scale.sizes());
  out_shape.insert(out_shape.end(), batch.begin(), batch.end());
  at::Tensor z = at::empty(out_shape, loc.options());
  at::Tensor log_prob = with_log_prob ? at::empty(out_shape, loc.options()) : at::Tensor();
  const int64_t numel = z.numel();
  if (numel > 0) {
    std::vector<at::Tensor> ops{loc, scale};
    const LayoutPlan plan = plan_for(out_shape, ops);
    uint32_t k0, k1;
    key_of(seed, k0, k1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, loc.scalar_type(), "torchdist_fast_cuda.normal_rsample_fwd", [&] {
      RsampleFwdArgs<scalar_t> a;
      a.z = mutable_data_of<scalar_t>(z);
      a.log_prob = with_log_prob ? mutable_data_of<scalar_t>(log_prob) : nullptr;
      a.loc = make_in(data_of<scalar_t>(ops[0]), plan, 0);
      a.scale = make_in(data_of<scalar_t>(ops[1]), plan, 1);
      a.layout = make_layout(plan, numel);
      a.numel = numel;
      a.offset = static_cast<uint64_t>(offset);
      a.k0 = k0;
      a.k1 = k1;
      a.vec = aligned4<scalar_t>(a.z) && (a.log_prob == nullptr || aligned4<scalar_t>(a.log_prob));
      a.position = position_of(position, loc.device(), "torchdist_fast_cuda.normal_rsample_fwd");
      dispatch_ndim(plan.ndim, [&](auto nd) { launch_rsample_fwd<scalar_t, decltype(nd)::value>(a); });
    });
  }
  if (with_log_prob) return {z, log_prob};
  return {z};
}

at::Tensor normal_rsample_bwd(const std::optional<at::Tensor>& grad_z, const std::optional<at::Tensor>& grad_log_prob,
                              const at::Tensor& scale, int64_t seed, int64_t offset,
                              const std::optional<at::Tensor>& position) {
  check_float(scale, "scale");
  const bool has_gz = grad_z.has_value() && grad_z->defined();
  const bool has_glp = grad_log_prob.has_value() && grad_log_prob->defined();
  if (!has_gz && !has_glp) return at::zeros_like(scale);
  TDF_DEVICE_GUARD(scale.device());
  // autograd hands grads in the output's dtype; anything else is converted
  at::Tensor gz = has_gz ? grad_z->to(scale.scalar_type()) : at::Tensor();
  at::Tensor glp = has_glp ? grad_log_prob->to(scale.scalar_type()) : at::Tensor();
  if (has_gz) check_same(scale, gz, "grad_z");
  if (has_glp) check_same(scale, glp, "grad_log_prob");
  const at::Tensor& ref = has_gz ? gz : glp;
  if (has_gz && has_glp) TORCH_CHECK(gz.sizes() == glp.sizes(), "torchdist_fast_cuda.normal_rsample_bwd: grad_z and grad_log_prob shapes differ");
  const std::vector<int64_t> out_shape = ref.sizes().vec();
  const bool reduce = scale.sizes() != ref.sizes();
  // element grads are summed over broadcast dims: keep them in the compute dtype until then
  const bool acc = reduce && needs_acc_buffer(scale.scalar_type());
  at::Tensor buf = at::empty(out_shape, scale.options().dtype(acc ? compute_type(scale.scalar_type()) : scale.scalar_type()));
  const int64_t numel = buf.numel();
  if (numel > 0) {
    std::vector<at::Tensor> ops{has_gz ? gz : scale, has_glp ? glp : scale, scale};
    const LayoutPlan plan = plan_for(out_shape, ops);
    uint32_t k0, k1;
    key_of(seed, k0, k1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scale.scalar_type(), "torchdist_fast_cuda.normal_rsample_bwd", [&] {
      RsampleBwdArgs<scalar_t> a;
      a.grad_scale = make_out<scalar_t>(buf.mutable_data_ptr(), acc);
      a.grad_z = make_in(data_of<scalar_t>(ops[0]), plan, 0);
      a.grad_log_prob = make_in(data_of<scalar_t>(ops[1]), plan, 1);
      a.scale = make_in(data_of<scalar_t>(ops[2]), plan, 2);
      a.has_grad_z = has_gz;
      a.has_grad_log_prob = has_glp;
      a.layout = make_layout(plan, numel);
      a.numel = numel;
      a.offset = static_cast<uint64_t>(offset);
      a.k0 = k0;
      a.k1 = k1;
      a.position = position_of(position, scale.device(), "torchdist_fast_cuda.normal_rsample_bwd");
      dispatch_ndim(plan.ndim, [&](auto nd) { launch_rsample_bwd<scalar_t, decltype(nd)::value>(a); });
    });
  }
  return reduce_to(buf, scale.sizes(), scale.scalar_type());
}

at::Tensor normal_log_prob_fwd(const at::Tensor& value, const at::Tensor& loc, const at::Tensor& scale) {
  check_float(value, "value");
  check_same(value, loc, "loc");
  check_same(value, scale, "scale");
  TDF_DEVICE_GUARD(value.device());
  const auto out_shape = at::infer_size(at::infer_size(value.sizes(), loc.sizes()), scale.sizes());
  at::Tensor out = at::empty(out_shape, value.options());
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  std::vector<at::Tensor> ops{value, loc, scale};
  const LayoutPlan plan = plan_for(out_shape, ops);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "torchdist_fast_cuda.normal_log_prob_fwd", [&] {
    LogProbFwdArgs<scalar_t> a;
    a.out = mutable_data_of<scalar_t>(out);
    a.value = make_in(data_of<scalar_t>(ops[0]), plan, 0);
    a.loc = make_in(data_of<scalar_t>(ops[1]), plan, 1);
    a.scale = make_in(data_of<scalar_t>(ops[2]), plan, 2);
    a.layout = make_layout(plan, numel);
    a.numel = numel;
    a.vec = aligned4<scalar_t>(a.out);
    dispatch_ndim(plan.ndim, [&](auto nd) { launch_log_prob_fwd<scalar_t, decltype(nd)::value>(a); });
  });
  return out;
}

std::vector<at::Tensor> normal_log_prob_bwd(const at::Tensor& grad, const at::Tensor& value, const at::Tensor& loc,
                                            const at::Tensor& scale, const c10::List<bool>& mask_list) {
  TORCH_CHECK(mask_list.size() == 3, "torchdist_fast_cuda.normal_log_prob_bwd: output_mask must have 3 entries");
  const bool output_mask[3] = {mask_list.get(0), mask_list.get(1), mask_list.get(2)};
  check_float(value, "value");
  check_same(value, loc, "loc");
  check_same(value, scale, "scale");
  TDF_DEVICE_GUARD(value.device());
  const at::Tensor g = grad.to(value.scalar_type());
  check_same(value, g, "grad");
  const std::vector<int64_t> out_shape = g.sizes().vec();
  const at::Tensor* inputs[3] = {&value, &loc, &scale};
  at::Tensor bufs[3];
  bool acc[3] = {false, false, false};
  for (int i = 0; i < 3; ++i) {
    if (!output_mask[i]) continue;
    const bool reduce = inputs[i]->sizes() != g.sizes();
    acc[i] = reduce && needs_acc_buffer(value.scalar_type());
    bufs[i] = at::empty(out_shape, value.options().dtype(acc[i] ? compute_type(value.scalar_type()) : value.scalar_type()));
  }
  const int64_t numel = g.numel();
  if (numel > 0 && (output_mask[0] || output_mask[1] || output_mask[2])) {
    std::vector<at::Tensor> ops{g, value, loc, scale};
    const LayoutPlan plan = plan_for(out_shape, ops);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "torchdist_fast_cuda.normal_log_prob_bwd", [&] {
      LogProbBwdArgs<scalar_t> a;
      a.grad_value = make_out<scalar_t>(output_mask[0] ? bufs[0].mutable_data_ptr() : nullptr, acc[0]);
      a.grad_loc = make_out<scalar_t>(output_mask[1] ? bufs[1].mutable_data_ptr() : nullptr, acc[1]);
      a.grad_scale = make_out<scalar_t>(output_mask[2] ? bufs[2].mutable_data_ptr() : nullptr, acc[2]);
      a.grad = make_in(data_of<scalar_t>(ops[0]), plan, 0);
      a.value = make_in(data_of<scalar_t>(ops[1]), plan, 1);
      a.loc = make_in(data_of<scalar_t>(ops[2]), plan, 2);
      a.scale = make_in(data_of<scalar_t>(ops[3]), plan, 3);
      a.layout = make_layout(plan, numel);
      a.numel = numel;
      dispatch_ndim(plan.ndim, [&](auto nd) { launch_log_prob_bwd<scalar_t, decltype(nd)::value>(a); });
    });
  }
  std::vector<at::Tensor> result;
  for (int i = 0; i < 3; ++i) {
    // an unneeded gradient is an empty tensor, as in torch.ops.torchdist_fast.normal_log_prob_backward
    result.push_back(output_mask[i] ? reduce_to(bufs[i], inputs[i]->sizes(), inputs[i]->scalar_type())
                                    : at::empty({0}, inputs[i]->options()));
  }
  return result;
}

#if defined(TDF_HOST_EMULATION)
#define TDF_NAMESPACE "torchdist_fast_cuda_host"
#else
#define TDF_NAMESPACE "torchdist_fast_cuda"
#endif

namespace {

// philox_randn has no tensor argument, so the dispatcher cannot pick a backend from its inputs:
// this BackendSelect kernel picks it from `device` and redispatches (a CPU device then fails with
// the dispatcher's usual "Could not run ... with arguments from the 'CPU' backend").
at::Tensor philox_randn_backend_select(at::IntArrayRef size, int64_t seed, int64_t offset, at::ScalarType dtype,
                                       at::Device device, const std::optional<at::Tensor>& position) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(TDF_NAMESPACE "::philox_randn", "")
                       .typed<at::Tensor(at::IntArrayRef, int64_t, int64_t, at::ScalarType, at::Device,
                                         const std::optional<at::Tensor>&)>();
  const c10::DispatchKeySet ks(c10::computeDispatchKey(dtype, std::nullopt, device));
  return op.redispatch(ks, size, seed, offset, dtype, device, position);
}

// The schemas mirror the Python launchers (torchdist_fast/cuda_backend.py).
void define_ops(torch::Library& m) {
  // position: the int64 pair [seed, offset] on the device, read by the kernels instead of seed/offset
  m.def("philox_randn(int[] size, int seed, int offset, ScalarType dtype, Device device, Tensor? position=None) -> Tensor");
  m.def("normal_rsample_fwd(Tensor loc, Tensor scale, int[] sample_shape, int seed, int offset, bool with_log_prob, "
        "Tensor? position=None) -> Tensor[]");
  m.def("normal_rsample_bwd(Tensor? grad_z, Tensor? grad_log_prob, Tensor scale, int seed, int offset, "
        "Tensor? position=None) -> Tensor");
  m.def("normal_log_prob_fwd(Tensor value, Tensor loc, Tensor scale) -> Tensor");
  m.def("normal_log_prob_bwd(Tensor grad, Tensor value, Tensor loc, Tensor scale, bool[] output_mask) -> Tensor[]");
}

void impl_ops(torch::Library& m) {
  m.impl("philox_randn", TORCH_FN(philox_randn));
  m.impl("normal_rsample_fwd", TORCH_FN(normal_rsample_fwd));
  m.impl("normal_rsample_bwd", TORCH_FN(normal_rsample_bwd));
  m.impl("normal_log_prob_fwd", TORCH_FN(normal_log_prob_fwd));
  m.impl("normal_log_prob_bwd", TORCH_FN(normal_log_prob_bwd));
}

void impl_backend_select(torch::Library& m) { m.impl("philox_randn", TORCH_FN(philox_randn_backend_select)); }

}  // namespace

}  // namespace tdf

#if !defined(TDF_HOST_EMULATION)
namespace tdf {

__global__ void stream_position_kernel(at::PhiloxCudaState state, int64_t* out) {
  const auto seed_offset = at::cuda::philox::unpack(state);
  out[0] = static_cast<int64_t>(std::get<0>(seed_offset));
  out[1] = static_cast<int64_t>(std::get<1>(seed_offset));
}

namespace {

// The stream position of a draw of `counters` Philox counters from `generator` (else the default
// generator of `device`), as the int64 pair [seed, offset] written on the device by a one-thread
// kernel; the generator is advanced by `counters` rounded up to a multiple of 4, the rule of the
// host path (torchdist_fast/rng.py). Through philox_cuda_state this is CUDA-graph safe: under
// capture the kernel reads the generator's device-side seed and offset at replay and adds the
// offset this draw holds within the graph, and each replay advances the generator by the graph's
// total (Note [CUDA Graph-safe RNG states] in ATen/cuda/CUDAGeneratorImpl.h). Eager, the same
// kernel writes the values read at launch, so eager and captured draws agree for a generator state.
at::Tensor draw_position(const std::optional<at::Generator>& generator, int64_t counters, at::Device device) {
  TORCH_CHECK(device.is_cuda(), "torchdist_fast_cuda.draw_position: device must be CUDA, got ", device);
  TORCH_CHECK(counters >= 0, "torchdist_fast_cuda.draw_position: counters must be non-negative, got ", counters);
  const c10::cuda::CUDAGuard guard(device);
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
  at::PhiloxCudaState state;
  {
    // Note [Acquire lock when using random generators]
    std::lock_guard<std::mutex> lock(gen->mutex_);
    state = gen->philox_cuda_state(static_cast<uint64_t>((counters + 3) / 4 * 4));
  }
  at::Tensor out = at::empty({2}, at::TensorOptions().dtype(at::kLong).device(device));
  stream_position_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(state, out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace tdf

TORCH_LIBRARY(torchdist_fast_cuda, m) {
  tdf::define_ops(m);
  m.def("draw_position(Generator? generator, int counters, Device device) -> Tensor");
}
TORCH_LIBRARY_IMPL(torchdist_fast_cuda, BackendSelect, m) { tdf::impl_backend_select(m); }
TORCH_LIBRARY_IMPL(torchdist_fast_cuda, CUDA, m) { tdf::impl_ops(m); }
// no tensor argument to dispatch on: one kernel for every key
TORCH_LIBRARY_IMPL(torchdist_fast_cuda, CompositeExplicitAutograd, m) { m.impl("draw_position", TORCH_FN(tdf::draw_position)); }

// The extension is a Python module only so that `import torchdist_fast._cuda_backend` loads the
// shared library (and with it the registrations above); it defines no Python functions.
extern "C" PyObject* PyInit__cuda_backend(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_cuda_backend", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
#else
// tests only: the same ops for CPU tensors, in their own namespace (loaded with torch.ops.load_library)
TORCH_LIBRARY(torchdist_fast_cuda_host, m) { tdf::define_ops(m); }
TORCH_LIBRARY_IMPL(torchdist_fast_cuda_host, BackendSelect, m) { tdf::impl_backend_select(m); }
TORCH_LIBRARY_IMPL(torchdist_fast_cuda_host, CPU, m) { tdf::impl_ops(m); }
#endif
