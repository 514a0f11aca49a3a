// The choices every engine shares, made in one place: the fast-route dtypes
// and their op-math type (one dtype dispatch), the CPU instruction set (one
// choice, at load time) and the CUDA kernels' entry points (one registry the
// .cu files fill when the extension is built with CUDA).
#pragma once
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace nyto {
struct Job;
namespace fuse {
struct Program;
struct GroupJob;
}  // namespace fuse

// float32/float64/bfloat16/float16: the dtypes with kernels (ops and fuse).
inline bool is_fast_dtype(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kBFloat16 || t == c10::kHalf;
}
// The precision a dtype computes in: float for the reduced floats (as torch).
template <class T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<c10::Half> {
  using type = float;
};
template <>
struct OpMath<c10::BFloat16> {
  using type = float;
};

// Calls f(T()) with the storage type T of a fast dtype (use
// typename OpMath<T>::type for the math); `what` names the caller in the
// error for any other dtype.
template <class F>
decltype(auto) dispatch_fast(c10::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case c10::kFloat:
      return f(float());
    case c10::kDouble:
      return f(double());
    case c10::kBFloat16:
      return f(c10::BFloat16());
    case c10::kHalf:
      return f(c10::Half());
    default:
      TORCH_CHECK(false, what, ": no kernel for ", t);
  }
}

// The CPU kernels are compiled per instruction set (namespaces DEFAULT and
// AVX2, see CMakeLists.txt); csrc/cpu/dispatch.cpp picks one at load time
// (ATEN_CPU_CAPABILITY=default forces the portable build, as for torch).
bool cpu_avx2();
// Whether the AVX2 build may also run its AVX-512 Philox rounds (the CPU has
// AVX-512 F/VL/DQ and ATEN_CPU_CAPABILITY does not cap it at avx2 or default).
// Same bits either way: only the speed differs.
bool cpu_avx512();
const char* cpu_kernel_isa();  // "AVX2" or "DEFAULT"
template <class F>
F by_isa(F default_build, F avx2_build) {
  return cpu_avx2() ? avx2_build : default_build;
}

// The CUDA kernels, installed at load by csrc/cuda/kernels.cu and
// csrc/fuse/fuse_cuda.cu; null without CUDA.
struct CudaRunners {
  void (*job)(const Job&) = nullptr;                                    // the op library's fast route
  void (*fuse)(const fuse::Program&, const fuse::GroupJob&) = nullptr;  // a fuse program over one group
};
CudaRunners& cuda_runners();

}  // namespace nyto
