// The CPU multi-tensor driver. Compiled once per instruction set (CMake sets
// CPU_CAPABILITY and the -m flags); csrc/cpu/dispatch.cpp picks one at load.
//
// One parallel pass over the concatenated element range of all tensors of a
// job: at::parallel_for splits [0, total) and each worker walks the tensors
// its range covers. float/double run at::vec::Vectorized directly; bfloat16
// and float16 are staged through small float buffers and computed in float.
#define NYTO_CPU_KERNEL
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/functional.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <utility>
#include "dispatch.h"
#include "functors.h"

namespace nyto {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel task at least
constexpr int64_t kStage = 1024;     // staging block for reduced precision

template <class T, class F, size_t... I>
inline void span_vec(const F& f, T* out, T* const* in, int64_t n, std::index_sequence<I...>) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  int64_t i = 0;
  if constexpr (sizeof...(I) == 0) {
    const Vec v = f.template operator()<Vec>();
    const T s = f.template operator()<T>();
    for (; i + W <= n; i += W) v.store(out + i);
    for (; i < n; ++i) out[i] = s;
  } else {
    for (; i + W <= n; i += W) f(Vec::loadu(in[I] + i)...).store(out + i);
    for (; i < n; ++i) out[i] = f(in[I][i]...);
  }
}

// Reduced precision: convert each input block to float, run the float path,
// convert back. The output block may alias an input (in-place ops).
template <class T, class F, size_t... I>
inline void span_staged(const F& f, T* out, T* const* in, int64_t n, std::index_sequence<I...> seq) {
  float buf[sizeof...(I) + 1][kStage];
  float* fin[sizeof...(I) + 1];
  for (int64_t off = 0; off < n; off += kStage) {
    const int64_t m = std::min(kStage, n - off);
    ((at::vec::convert(in[I] + off, buf[I], m), fin[I] = buf[I]), ...);
    float* fout = buf[sizeof...(I)];
    span_vec<float>(f, fout, fin, m, seq);
    at::vec::convert(fout, out + off, m);
  }
}

template <class T, class F>
void drive(const Job& job, const F& f) {
  constexpr int nin = F::nin;
  const int stride = job.nin + 1;
  const size_t nt = job.numels.size();
  c10::SmallVector<int64_t, 16> start(nt + 1, 0);
  for (size_t t = 0; t < nt; ++t) start[t + 1] = start[t] + job.numels[t];
  const int64_t total = start[nt];
  auto body = [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
    for (int64_t pos = begin; pos < end; ++t) {
      const int64_t lo = pos - start[t];
      const int64_t hi = std::min(end, start[t + 1]) - start[t];
      if (hi <= lo) continue;
      void* const* p = job.ptrs.data() + t * stride;
      T* out = static_cast<T*>(p[0]) + lo;
      T* in[nin > 0 ? nin : 1];
      for (int k = 0; k < nin; ++k) in[k] = static_cast<T*>(p[k + 1]) + lo;
      if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
        span_vec<T>(f, out, in, hi - lo, std::make_index_sequence<nin>{});
      } else {
        span_staged<T>(f, out, in, hi - lo, std::make_index_sequence<nin>{});
      }
      pos = start[t] + hi;
    }
  };
  // One task: run it here (parallel_for's own check costs thread-local guards).
  if (total <= kGrain)
    body(0, total);
  else
    at::parallel_for(0, total, kGrain, body);
}

template <class T, class M>
void run_typed(const Job& job) {
  with_functor<M>(job, [&](const auto& f) { drive<T>(job, f); });
}

}  // namespace

void run_job(const Job& job) {
  dispatch_fast(job.dtype, "nytorch: the CPU fast route", [&](auto t) {
    using T = decltype(t);
    run_typed<T, typename OpMath<T>::type>(job);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace nyto
