// The CUDA multi-tensor driver: the twin of csrc/cpu/kernels.cpp.
//
// A Job holds n contiguous tensors of one dtype on one device. Each tensor is
// cut into chunks of kChunk elements; one thread block runs one chunk. A
// launch carries, by value in its kernel arguments (< 4 KB), a Pack: the
// operand addresses and sizes of up to kTensors<D> tensors and the prefix sum
// of their chunk counts; a block finds its (tensor, chunk) by binary search
// over that prefix sum, so one launch covers any number of chunks and a
// particle's flat buffer (one big tensor) is one launch. Within a block, when
// every operand of the chunk is 16-byte aligned, each thread keeps kILP
// 16-byte loads per operand in flight (4 floats, 2 doubles, 8 halves);
// otherwise, and for the tail, it runs a scalar loop with kILP loads in flight.
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
#include "dispatch.h"
#include "functors.h"

namespace nyto {
namespace {

constexpr int kBlock = 256;                             // threads per block
constexpr int64_t kChunk = 16384;                       // elements per block
constexpr int kILP = 4;                                 // loads in flight per thread and operand
constexpr int kParamBytes = 4096;                       // the classic kernel-parameter limit
constexpr int kFunctorBytes = 64;                       // reserved for the functor argument
constexpr int64_t kMaxBlocks = (int64_t(1) << 31) - 1;  // gridDim.x limit

// Tensors per launch for D operands (output + inputs): what fits in the
// parameter space, each tensor costing D addresses, a size and a block start.
constexpr int tensors_per_launch(int D) { return (kParamBytes - kFunctorBytes - 16) / (8 * (D + 2)); }
template <int D>
constexpr int kTensors = tensors_per_launch(D);

// One launch: up to kTensors<D> tensors; tensor t runs blocks
// [first[t], first[t+1]), one kChunk-element chunk each.
template <int D>
struct Pack {
  void* ptr[D][kTensors<D>];
  int64_t numel[kTensors<D>];
  int64_t first[kTensors<D> + 1];
  int n;  // tensors in this pack
};

template <class T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

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
__global__ void __launch_bounds__(kBlock) mta_kernel(const __grid_constant__ Pack<D> pk, F f) {
  using M = typename OpMath<T>::type;
  constexpr int nin = D - 1;
  constexpr int nk = nin > 0 ? nin : 1;
  constexpr auto seq = std::make_index_sequence<nin>{};
  const int64_t b = blockIdx.x;
  int lo = 0, hi = pk.n;  // the tensor t with first[t] <= b < first[t+1]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (pk.first[mid] <= b)
      lo = mid;
    else
      hi = mid;
  }
  const int t = lo;
  const int64_t base = (b - pk.first[t]) * kChunk;
  const int64_t left = pk.numel[t] - base;
  const int n = static_cast<int>(left < kChunk ? left : kChunk);

  T* out = static_cast<T*>(pk.ptr[0][t]) + base;
  const T* in[nk];
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
    // kILP vectors per operand in flight before any store (out may alias in[0]).
    for (int i0 = threadIdx.x; i0 < nv; i0 += kBlock * kILP) {
      V x[kILP][nk];
#pragma unroll
      for (int u = 0; u < kILP; ++u) {
        const int i = i0 + u * kBlock;
        if (i < nv) {
#pragma unroll
          for (int k = 0; k < nin; ++k) x[u][k] = reinterpret_cast<const V*>(in[k])[i];
        }
      }
#pragma unroll
      for (int u = 0; u < kILP; ++u) {
        const int i = i0 + u * kBlock;
        if (i < nv) {
          V y;
#pragma unroll
          for (int j = 0; j < W; ++j) {
            y.v[j] = static_cast<T>(call<M>(f, [&](size_t k) { return x[u][k].v[j]; }, seq));
          }
          reinterpret_cast<V*>(out)[i] = y;
        }
      }
    }
    done = nv * W;
  }

  // Misaligned chunks and the vector tail: kILP strided elements per thread,
  // all loads issued before any store (the output may alias input 0).
  for (int i0 = done; i0 < n; i0 += kBlock * kILP) {
    M r[kILP][nk];
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
  const size_t n = job.numels.size();
  for (size_t i = 0; i < n; ++i) {  // before any launch: nothing is written on failure
    TORCH_CHECK((job.numels[i] + kChunk - 1) / kChunk <= kMaxBlocks, "nytorch: a tensor of ", job.numels[i],
                " elements is too large for the CUDA kernel");
  }
  Pack<D> pk;
  pk.n = 0;
  pk.first[0] = 0;
  auto launch = [&]() {
    if (pk.n == 0) return;
    mta_kernel<T, D, F><<<static_cast<unsigned>(pk.first[pk.n]), kBlock, 0, stream>>>(pk, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pk.n = 0;
  };
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = job.numels[i];
    if (numel == 0) continue;
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    if (pk.n == kT || pk.first[pk.n] + chunks > kMaxBlocks) launch();
    void* const* p = job.ptrs.data() + i * D;
    for (int k = 0; k < D; ++k) pk.ptr[k][pk.n] = p[k];
    pk.numel[pk.n] = numel;
    pk.first[pk.n + 1] = pk.first[pk.n] + chunks;
    ++pk.n;
  }
  launch();
}

template <class T, class M>
void run_typed(const Job& job) {
  with_functor<M>(job, [&](const auto& f) { drive<T, std::decay_t<decltype(f)>>(job, f); });
}

void run_cuda_job(const Job& job) {
  dispatch_fast(job.dtype, "nytorch: the CUDA fast route", [&](auto t) {
    using T = decltype(t);
    run_typed<T, typename OpMath<T>::type>(job);
  });
}

// Installs the runner when the extension is loaded.
struct Installer {
  Installer() { cuda_runners().job = &run_cuda_job; }
} installer;

}  // namespace
}  // namespace nyto
