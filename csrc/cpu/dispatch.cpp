// The one instruction-set choice of the CPU kernels (csrc/dispatch.h), made
// once at load time, and the CUDA runner registry.
#include <cstdlib>
#include <cstring>
#include "dispatch.h"
#include "nyto.h"

namespace nyto {
namespace DEFAULT {
void run_job(const Job& job);
}
namespace AVX2 {
void run_job(const Job& job);
}

namespace {
bool want_avx2() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  if (env && (std::strcmp(env, "default") == 0 || std::strcmp(env, "DEFAULT") == 0)) return false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}
bool want_avx512() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  if (env && (std::strcmp(env, "avx2") == 0 || std::strcmp(env, "AVX2") == 0)) return false;
#if defined(__x86_64__) || defined(__i386__)
  return want_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}
}  // namespace

bool cpu_avx512() {
  static const bool avx512 = want_avx512();
  return avx512;
}

bool cpu_avx2() {
  static const bool avx2 = want_avx2();  // on first use: static initialization order across files is unspecified
  return avx2;
}
const char* cpu_kernel_isa() { return cpu_avx2() ? "AVX2" : "DEFAULT"; }

void run_cpu_job(const Job& job) {
  static const JobRunner runner = by_isa<JobRunner>(&DEFAULT::run_job, &AVX2::run_job);
  runner(job);
}

CudaRunners& cuda_runners() {
  static CudaRunners runners;
  return runners;
}
}  // namespace nyto
