// nytorch.fuse on CUDA: one kernel interprets the program over a group's flat
// buffers. Each thread owns 4 consecutive elements (a "quad", grid-stride),
// keeps its registers in a small per-thread array, and runs the instructions
// with a switch: all loads of its elements happen before any store, so an
// output may be one of the inputs. The program, scalar values and buffer
// addresses travel by value in the launch arguments (< 4 KB), read in place
// (__grid_constant__: indexing them at run time never copies them to local
// memory).
// float/double compute natively, bfloat16/float16 in float. Built with
// --fmad=false: only explicit fma (lerp, fma) contracts.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstdint>
#include "dispatch.h"
#include "fuse/fop_math.h"
#include "fuse/normal_math.h"
#include "fuse/philox.h"
#include "fuse/program.h"

namespace nyto::fuse {
namespace {

constexpr int kThreads = 256;

struct KArgs {
  int16_t ins[kCudaMaxInstr][kWords];
  int n_instr;
  uint32_t group;
  double sval[kCudaMaxSreg];
  const void* in[kCudaMaxIn];
  void* out[kCudaMaxOut];
  int64_t n;
  uint64_t seed, offset;
  const int64_t* state;  // a random-state tensor {seed, offset}, or null (GroupJob::state)
};

// The key and counter offset of a launch: from the random state's memory when
// there is one (read at run time: a CUDA graph replay sees its current value).
struct RandKey {
  uint64_t seed, offset;
  uint32_t group;
};
__device__ __forceinline__ RandKey rand_key(const KArgs& a) {
  if (a.state == nullptr) return RandKey{a.seed, a.offset, a.group};
  return RandKey{static_cast<uint64_t>(a.state[0]), a.offset + static_cast<uint64_t>(a.state[1]), a.group};
}
static_assert(sizeof(KArgs) <= 4000, "fuse kernel arguments over 4 KB");

// One lane of a math instruction: FMath<op> (fops.def) on the operands it reads.
template <class F, class Get>
__device__ __forceinline__ auto lanes(const Get& get, int x, int y, int z, int l) {
  if constexpr (F::nin == 1) {
    const auto va = get(x, l);
    return F::f(va, va, va);
  } else if constexpr (F::nin == 2) {
    const auto va = get(x, l), vb = get(y, l);
    return F::f(va, vb, vb);
  } else {
    return F::f(get(x, l), get(y, l), get(z, l));
  }
}

// One math instruction over a thread's 4 lanes, with the fast paths for a
// number operand: x / number multiplies by the reciprocal (torch's CUDA
// kernel), pow takes torch's special exponents (decided on the double).
template <FOp E, class M, class Get>
__device__ __forceinline__ void math_instr(M (&r)[kCudaMaxVreg][4], int d, int x, int y, int z, const Get& get,
                                           const double* sval) {
  if constexpr (E == FOp::Div) {
    if (y < 0) {
      const M num = get(y, 0), inv = M(1) / num;
#pragma unroll
      for (int l = 0; l < 4; ++l) r[d][l] = math::div_by_number(get(x, l), num, inv);
      return;
    }
  }
  if constexpr (E == FOp::Pow) {
    if (y < 0 && x >= 0) {
      const int kind = math::pow_kind(sval[-1 - y]);
      const M e = get(y, 0);
#pragma unroll
      for (int l = 0; l < 4; ++l) r[d][l] = math::pow_special(get(x, l), e, kind);
      return;
    }
  }
#pragma unroll
  for (int l = 0; l < 4; ++l) r[d][l] = lanes<FMath<E>>(get, x, y, z, l);
}

// Random values of elements base..base+3 (see philox.h for the counter layout).
template <class M, class R>
__device__ void random4(M* dst, int64_t base, bool is_normal, uint32_t stream, const R& a, M scale) {
  constexpr int shift = RandShift<M>::value;
  const uint32_t k0 = static_cast<uint32_t>(a.seed), k1 = static_cast<uint32_t>(a.seed >> 32);
  uint64_t cur = ~uint64_t(0), cur_pair = ~uint64_t(0);
  Philox4 w{};
  M even = M(0), odd = M(0);  // the Box-Muller pair (elements 2p, 2p + 1) last computed
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    const uint64_t e = static_cast<uint64_t>(base + l) + a.offset;
    const uint64_t c = e >> shift;
    if (c != cur) {
      w = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), stream, a.group, k0, k1);
      cur = c;
    }
    const int k = static_cast<int>(e - (c << shift));
    if (!is_normal) {  // (bits * 2^-n) * scale == bits * (2^-n * scale) exactly
      if constexpr (sizeof(M) == 8) {
        dst[l] = static_cast<M>(((static_cast<uint64_t>(w.w[2 * k]) << 32) | w.w[2 * k + 1]) >> 11) *
                 (scale * M(1.1102230246251565e-16));
      } else {
        dst[l] = static_cast<M>(w.w[k] >> 8) * (scale * M(5.9604644775390625e-08));
      }
    } else {
      if ((e >> 1) != cur_pair) {  // one log, sqrt and sincos per pair (fuse/normal_math.h, as every engine)
        if constexpr (sizeof(M) == 8) {
          normal::box_muller(w.w[0], w.w[1], w.w[2], w.w[3], even, odd);
        } else {
          normal::box_muller(w.w[2 * (k >> 1)], w.w[2 * (k >> 1) + 1], even, odd);
        }
        cur_pair = e >> 1;
      }
      dst[l] = (k & 1) ? odd : even;
    }
  }
}

template <class T, class M>
__global__ void __launch_bounds__(kThreads) fuse_kernel(const __grid_constant__ KArgs a) {
  const int64_t nq = (a.n + 3) / 4;
  const RandKey key = rand_key(a);
  M r[kCudaMaxVreg][4];
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < nq;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = q * 4;
    const int cnt = a.n - base < 4 ? static_cast<int>(a.n - base) : 4;
    for (int i = 0; i < a.n_instr; ++i) {
      const int op = a.ins[i][0], d = a.ins[i][1], x = a.ins[i][2], y = a.ins[i][3], z = a.ins[i][4];
      auto get = [&](int o, int l) -> M { return o >= 0 ? r[o][l] : static_cast<M>(a.sval[-1 - o]); };
      switch (static_cast<FOp>(op)) {
        case FOp::Load: {
          const T* p = static_cast<const T*>(a.in[x]) + base;
#pragma unroll
          for (int l = 0; l < 4; ++l) r[d][l] = l < cnt ? static_cast<M>(p[l]) : M(0);
          break;
        }
        case FOp::Store: {
          T* p = static_cast<T*>(a.out[d]) + base;
#pragma unroll
          for (int l = 0; l < 4; ++l) {
            if (l < cnt) p[l] = static_cast<T>(get(x, l));
          }
          break;
        }
        case FOp::Rand:
        case FOp::Randn:
        case FOp::Rands: {
          M v[4];
          random4<M>(v, base, op == static_cast<int>(FOp::Randn), static_cast<uint32_t>(x), key,
                     op == static_cast<int>(FOp::Rands) ? static_cast<M>(a.sval[-1 - y]) : M(1));
#pragma unroll
          for (int l = 0; l < 4; ++l) r[d][l] = v[l];
          break;
        }
        // Every math op: the expr column of fuse/fops.def (see math_instr).
#define NYTO_FOP_IO(...)
#define NYTO_FOP(E, ...)                            \
  case FOp::E:                                      \
    math_instr<FOp::E>(r, d, x, y, z, get, a.sval); \
    break;
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO
        default:
          break;
      }
    }
  }
}

int sm_count(c10::DeviceIndex dev) {
  static int cache[256] = {};
  const int i = dev < 0 ? 0 : dev;
  if (cache[i] == 0) {
    int v = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, i));
    cache[i] = v > 0 ? v : 1;
  }
  return cache[i];
}

template <class T, class M>
void launch(const Program& p, const GroupJob& job) {
  KArgs a{};
  TORCH_INTERNAL_ASSERT(p.vec.size() <= static_cast<size_t>(kCudaMaxInstr) && p.n_vreg <= kCudaMaxVreg &&
                        p.n_sreg <= kCudaMaxSreg && p.n_in <= kCudaMaxIn && p.n_out <= kCudaMaxOut);
  a.n_instr = static_cast<int>(p.vec.size());
  for (size_t i = 0; i < p.vec.size(); ++i) {
    const Instr& s = p.vec[i];
    a.ins[i][0] = static_cast<int16_t>(s.op);
    a.ins[i][1] = static_cast<int16_t>(s.dst);
    a.ins[i][2] = static_cast<int16_t>(s.a);
    a.ins[i][3] = static_cast<int16_t>(s.b);
    a.ins[i][4] = static_cast<int16_t>(s.c);
  }
  for (int s = 0; s < p.n_sreg; ++s) a.sval[s] = p.sval[s];
  for (int k = 0; k < p.n_in; ++k) a.in[k] = job.in[k];
  for (int j = 0; j < p.n_out; ++j) a.out[j] = job.out[j];
  a.n = job.n;
  a.seed = job.seed;
  a.offset = job.offset;
  a.state = p.has_rand ? job.state : nullptr;
  a.group = job.group;
  c10::cuda::CUDAGuard guard(job.device_index);
  const c10::DeviceIndex dev = c10::cuda::current_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev).stream();
  const int64_t nq = (job.n + 3) / 4;
  const int64_t sms = sm_count(dev);
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((nq + kThreads - 1) / kThreads, sms * 16));
  fuse_kernel<T, M><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void run_cuda(const Program& p, const GroupJob& job) {
  dispatch_fast(job.dtype, "nytorch.fuse: the CUDA kernel", [&](auto t) {
    using T = decltype(t);
    launch<T, typename OpMath<T>::type>(p, job);
  });
}

struct Installer {
  Installer() { cuda_runners().fuse = &run_cuda; }
} installer;

}  // namespace
}  // namespace nyto::fuse
