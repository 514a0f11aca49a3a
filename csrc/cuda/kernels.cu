// The CUDA multi-tensor driver: the twin of csrc/cpu/kernels.cpp.
//
// A Job holds n contiguous tensors of one dtype on one device. Each tensor is
// cut into chunks of kChunk elements; one thread block runs one chunk. A
// launch carries, by value in its kernel arguments (< 4 KB), a Pack: the
// operand addresses and sizes of up to kTensors<D> tensors and, for each of
// up to kBlocks blocks, which (tensor, chunk) it runs. The host fills a Pack
// walking the tensors in order and launches whenever the block table or the
// tensor table is full; a tensor cut by a launch boundary carries over to
// slot 0 of the next Pack. Within a block, when every operand of the chunk
// is 16-byte aligned, each thread moves 16 bytes per operand per step
// (4 floats, 2 doubles, 8 halves); otherwise, and for the tail, it runs a
// scalar loop that issues kILP independent loads before computing.
// float/double compute natively; bfloat16/float16 compute in float (opmath).
// Built with --fmad=false, like the CPU's -ffp-contract=off, so a fused op
// rounds like the op-by-op torch chain.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstdint>
#include <type_traits>
#include <utility>
#include "functors.h"

namespace nyto {
namespace {

constexpr int kBlock = 512;                // threads per block
constexpr int64_t kChunk = 65536;          // elements per block
constexpr int kILP = 4;                    // scalar path: loads in flight per thread
constexpr int kBlocks = 512;               // blocks per launch
constexpr int kParamBytes = 4096;          // the classic kernel-parameter limit
constexpr int kFunctorBytes = 64;          // reserved for the functor argument
constexpr int kTensorBits = 8;             // block entry: chunk << 8 | tensor slot
constexpr int64_t kMaxChunks = int64_t(1) << (32 - kTensorBits);

// Tensors per launch for D operands (output + inputs): what fits beside the
// block table, each tensor costing D addresses and one size.
constexpr int tensors_per_launch(int D) {
  const int fit = (kParamBytes - kFunctorBytes - kBlocks * 4) / (8 * (D + 1));
  return fit < (1 << kTensorBits) ? fit : (1 << kTensorBits) - 1;
}
template <int D>
constexpr int kTensors = tensors_per_launch(D);

template <int D>
struct Pack {
  void* ptr[D][kTensors<D>];
  int64_t numel[kTensors<D>];
  uint32_t block[kBlocks];
};

template <class T> struct OpMath { using type = T; };
template <> struct OpMath<c10::Half> { using type = float; };
template <> struct OpMath<c10::BFloat16> { using type = float; };

template <class T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// out = f(in[0][j], ..., in[nin-1][j]) in op-math precision M.
template <class M, class F, class Get, size_t... I>
__device__ __forceinline__ M call(const F& f, const Get& get, std::index_sequence<I...>) {
  if constexpr (sizeof...(I) == 0) {
    return f.template operator()<M>();
  } else {
    return f(static_cast<M>(get(I))...);
  }
}

template <class T, int D, class F>
__global__ void __launch_bounds__(kBlock) mta_kernel(Pack<D> pk, F f) {
  using M = typename OpMath<T>::type;
  constexpr int nin = D - 1;
  constexpr auto seq = std::make_index_sequence<nin>{};
  const uint32_t entry = pk.block[blockIdx.x];
  const int t = entry & ((1u << kTensorBits) - 1);
  const int64_t base = int64_t(entry >> kTensorBits) * kChunk;
  const int64_t left = pk.numel[t] - base;
  const int n = static_cast<int>(left < kChunk ? left : kChunk);

  T* out = static_cast<T*>(pk.ptr[0][t]) + base;
  const T* in[nin > 0 ? nin : 1];
  bool vec_ok = aligned16(out);
#pragma unroll
  for (int k = 0; k < nin; ++k) {
    in[k] = static_cast<const T*>(pk.ptr[k + 1][t]) + base;
    vec_ok = vec_ok && aligned16(in[k]);
  }

  int done = 0;
  if (vec_ok) {
    using V = Vec16<T>;
    constexpr int W = V::N;
    const int nv = n / W;
    for (int i = threadIdx.x; i < nv; i += kBlock) {
      V x[nin > 0 ? nin : 1];
#pragma unroll
      for (int k = 0; k < nin; ++k) x[k] = reinterpret_cast<const V*>(in[k])[i];
      V y;
#pragma unroll
      for (int j = 0; j < W; ++j) {
        y.v[j] = static_cast<T>(call<M>(f, [&](size_t k) { return x[k].v[j]; }, seq));
      }
      reinterpret_cast<V*>(out)[i] = y;
    }
    done = nv * W;
  }

  // Misaligned chunks and the vector tail: kILP strided elements per thread,
  // all loads issued before any store (the output may alias input 0).
  for (int i0 = done; i0 < n; i0 += kBlock * kILP) {
    M r[kILP][nin > 0 ? nin : 1];
#pragma unroll
    for (int u = 0; u < kILP; ++u) {
      const int i = i0 + u * kBlock + threadIdx.x;
      if (i < n) {
#pragma unroll
        for (int k = 0; k < nin; ++k) r[u][k] = static_cast<M>(in[k][i]);
      }
    }
#pragma unroll
    for (int u = 0; u < kILP; ++u) {
      const int i = i0 + u * kBlock + threadIdx.x;
      if (i < n) out[i] = static_cast<T>(call<M>(f, [&](size_t k) { return r[u][k]; }, seq));
    }
  }
}

template <class T, class F>
void drive(const Job& job, const F& f) {
  constexpr int nin = F::nin;
  constexpr int D = nin + 1;
  constexpr int kT = kTensors<D>;
  static_assert(sizeof(Pack<D>) + sizeof(F) <= kParamBytes, "kernel arguments over 4 KB");
  static_assert(sizeof(F) <= kFunctorBytes, "functor larger than its reserved space");
  TORCH_INTERNAL_ASSERT(job.nin == nin, "nytorch: job has ", job.nin, " inputs, functor ", nin);

  c10::cuda::CUDAGuard guard(job.device_index);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(job.device_index).stream();
  auto launch = [&](const Pack<D>& pk, int blocks) {
    mta_kernel<T, D, F><<<blocks, kBlock, 0, stream>>>(pk, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };

  const size_t n = job.numels.size();
  for (size_t i = 0; i < n; ++i) {  // before any launch: nothing is written on failure
    TORCH_CHECK((job.numels[i] + kChunk - 1) / kChunk <= kMaxChunks, "nytorch: a tensor of ",
                job.numels[i], " elements is too large for the CUDA kernel");
  }
  Pack<D> pk;
  int slot = 0, nb = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = job.numels[i];
    if (numel == 0) continue;
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    void* const* p = job.ptrs.data() + i * D;
    for (int k = 0; k < D; ++k) pk.ptr[k][slot] = p[k];
    pk.numel[slot] = numel;
    bool flushed_at_end = false;
    for (int64_t c = 0; c < chunks; ++c) {
      pk.block[nb++] = (static_cast<uint32_t>(c) << kTensorBits) | static_cast<uint32_t>(slot);
      const bool last = c + 1 == chunks;
      if (nb == kBlocks || (last && slot + 1 == kT)) {
        launch(pk, nb);
        nb = 0;
        if (last) {
          flushed_at_end = true;
        } else if (slot != 0) {  // the rest of this tensor goes on in slot 0
          for (int k = 0; k < D; ++k) pk.ptr[k][0] = pk.ptr[k][slot];
          pk.numel[0] = numel;
          slot = 0;
        }
      }
    }
    slot = flushed_at_end ? 0 : slot + 1;
  }
  if (nb > 0) launch(pk, nb);
}

template <class T, class M>
void run_typed(const Job& job) {
  with_functor<M>(job, [&](const auto& f) { drive<T, std::decay_t<decltype(f)>>(job, f); });
}

void run_cuda_job(const Job& job) {
  switch (job.dtype) {
    case at::ScalarType::Float: return run_typed<float, float>(job);
    case at::ScalarType::Double: return run_typed<double, double>(job);
    case at::ScalarType::BFloat16: return run_typed<c10::BFloat16, float>(job);
    case at::ScalarType::Half: return run_typed<c10::Half, float>(job);
    default: TORCH_INTERNAL_ASSERT(false, "nytorch: no CUDA fast route for ", job.dtype);
  }
}

// Installs the runner when the extension is loaded.
struct Installer {
  Installer() { set_cuda_job_runner(&run_cuda_job); }
} installer;

}  // namespace
}  // namespace nyto
