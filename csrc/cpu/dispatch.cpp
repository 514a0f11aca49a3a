// Chooses the CPU kernel build for this processor once, at load time.
// Like torch itself, ATEN_CPU_CAPABILITY=default forces the portable build.
#include <cstdlib>
#include <cstring>
#include "nyto.h"

namespace nyto {
namespace DEFAULT { void run_job(const Job& job); }
namespace AVX2 { void run_job(const Job& job); }

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
const JobRunner cpu_runner = want_avx2() ? &AVX2::run_job : &DEFAULT::run_job;
}  // namespace

const char* cpu_kernel_isa() { return cpu_runner == &AVX2::run_job ? "AVX2" : "DEFAULT"; }
void run_cpu_job(const Job& job) { cpu_runner(job); }
}  // namespace nyto
