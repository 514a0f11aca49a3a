// nytorch.fuse on the CPU: a block interpreter, compiled once per instruction
// set (CMake sets CPU_CAPABILITY and the -m flags; fuse.cpp picks one).
//
// The group's element range is cut into blocks of kBlockBytes / sizeof(M)
// elements at fixed global positions; at::parallel_for hands out runs of
// blocks. For one block, every instruction is one tight at::vec loop over
// per-thread register arrays (L1-resident), so each input element is read
// from memory once and each output element written once. A float32/float64
// LOAD of a full block reads the input in place (no copy) unless the input
// is also an output. Scalar operands are broadcast into a register once per
// task, so every instruction is a plain vector-vector loop.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include "fuse/philox.h"
#include "fuse/program.h"

namespace nyto::fuse {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kBlockBytes = 2048;  // one register: 512 floats or 256 doubles
constexpr int64_t kGrain = 1 << 15;    // elements per parallel task at least

template <class M>
struct Interp {
  using Vec = at::vec::Vectorized<M>;
  static constexpr int64_t W = Vec::size();
  static constexpr int64_t B = kBlockBytes / sizeof(M);
  static_assert(B % W == 0 && B % 4 == 0, "block must hold whole vectors and counters");

  static Vec fma(const Vec& a, const Vec& b, const Vec& c) {
#if defined(CPU_CAPABILITY_AVX2)
    return at::vec::fmadd(a, b, c);  // one rounding (vfmadd)
#else
    alignas(64) M x[W], y[W], z[W];
    a.store(x);
    b.store(y);
    c.store(z);
    for (int64_t j = 0; j < W; ++j) x[j] = std::fma(x[j], y[j], z[j]);
    return Vec::loadu(x);
#endif
  }

  template <class F>
  static void map1(M* d, const M* a, int64_t n, const F& f) {
    for (int64_t i = 0; i < n; i += W) f(Vec::loadu(a + i)).store(d + i);
  }
  template <class F>
  static void map2(M* d, const M* a, const M* b, int64_t n, const F& f) {
    for (int64_t i = 0; i < n; i += W) f(Vec::loadu(a + i), Vec::loadu(b + i)).store(d + i);
  }
  template <class F>
  static void map3(M* d, const M* a, const M* b, const M* c, int64_t n, const F& f) {
    for (int64_t i = 0; i < n; i += W) f(Vec::loadu(a + i), Vec::loadu(b + i), Vec::loadu(c + i)).store(d + i);
  }

  // x ** e for a scalar e: torch's special exponents (see csrc/functors.h FPowS).
  static void pow_scalar(M* d, const M* a, double e, int64_t n) {
    if (e == 2.0) return map1(d, a, n, [](Vec x) { return x * x; });
    if (e == 3.0) return map1(d, a, n, [](Vec x) { return x * x * x; });
    if (e == 0.5) return map1(d, a, n, [](Vec x) { return x.sqrt(); });
    if (e == -1.0) return map1(d, a, n, [](Vec x) { return Vec(M(1)) / x; });
    if (e == -0.5) return map1(d, a, n, [](Vec x) { return Vec(M(1)) / x.sqrt(); });
    if (e == -2.0) return map1(d, a, n, [](Vec x) { return Vec(M(1)) / (x * x); });
    const Vec ev(static_cast<M>(e));
    map1(d, a, n, [&](Vec x) { return x.pow(ev); });
  }

  // Random values for elements [e0, e0 + n) of stream `stream` (e0 includes
  // the call's offset); words: scratch for the Philox outputs.
  static void random(M* d, uint64_t e0, int64_t n, bool normal, uint32_t stream, const GroupJob& job,
                     uint32_t* words, M* scratch) {
    constexpr int shift = RandShift<M>::value;
    const uint64_t c_first = e0 >> shift, c_last = (e0 + n - 1) >> shift;
    const int64_t nc = static_cast<int64_t>(c_last - c_first) + 1;
    const uint32_t k0 = static_cast<uint32_t>(job.seed), k1 = static_cast<uint32_t>(job.seed >> 32);
    for (int64_t j = 0; j < nc; ++j) {
      const uint64_t c = c_first + j;
      const Philox4 r = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), stream, job.group, k0, k1);
      words[4 * j] = r.w[0];
      words[4 * j + 1] = r.w[1];
      words[4 * j + 2] = r.w[2];
      words[4 * j + 3] = r.w[3];
    }
    const int64_t skip = static_cast<int64_t>(e0 - (c_first << shift));  // elements before e0 in the first counter
    if (!normal) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = skip + i;
        if constexpr (sizeof(M) == 8) {
          d[i] = u53(words[2 * k], words[2 * k + 1]);
        } else {
          d[i] = u24(words[k]);
        }
      }
      return;
    }
    // Box-Muller: one (u1, u2) pair feeds two neighbouring elements, the even
    // one takes r*cos(2 pi u2), the odd one r*sin(2 pi u2).
    M* u1 = scratch;
    M* u2 = scratch + B;
    M* odd = scratch + 2 * B;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = skip + i;
      const int64_t pair = k >> 1;
      if constexpr (sizeof(M) == 8) {
        u1[i] = u53_open0(words[4 * pair], words[4 * pair + 1]);
        u2[i] = u53(words[4 * pair + 2], words[4 * pair + 3]);
      } else {
        u1[i] = u24_open0(words[2 * pair]);
        u2[i] = u24(words[2 * pair + 1]);
      }
      odd[i] = static_cast<M>(k & 1);
    }
    const int64_t nw = (n + W - 1) / W * W;
    for (int64_t i = n; i < nw; ++i) {
      u1[i] = M(1);
      u2[i] = M(0);
      odd[i] = M(0);
    }
    const Vec two_pi(static_cast<M>(6.283185307179586476925286766559));
    for (int64_t i = 0; i < nw; i += W) {
      const Vec r = (Vec(M(-2)) * Vec::loadu(u1 + i).log()).sqrt();
      const Vec t = Vec::loadu(u2 + i) * two_pi;
      const Vec is_odd = Vec::loadu(odd + i) != Vec(M(0));
      (r * Vec::blendv(t.cos(), t.sin(), is_odd)).store(d + i);
    }
  }

  template <class T>
  static void run(const Program& p, const GroupJob& job) {
    const int64_t nblocks = (job.n + B - 1) / B;
    at::parallel_for(0, nblocks, std::max<int64_t>(1, kGrain / B), [&](int64_t b0, int64_t b1) {
      // Registers, scalar broadcasts and random scratch of this task.
      const int nv = p.n_vreg, ns = p.n_sreg;
      const int64_t elems = (nv + ns + 3) * B + 64 / sizeof(M);
      std::unique_ptr<M[]> mem(new M[elems]);
      M* base = reinterpret_cast<M*>((reinterpret_cast<uintptr_t>(mem.get()) + 63) & ~uintptr_t(63));
      std::vector<M*> vbuf(nv);
      std::vector<const M*> vptr(nv, nullptr);
      std::vector<const M*> sptr(ns, nullptr);
      for (int r = 0; r < nv; ++r) vbuf[r] = base + r * B;
      for (int s = 0; s < ns; ++s) {
        if (!p.s_used[s]) continue;
        M* b = base + (nv + s) * B;
        std::fill(b, b + B, static_cast<M>(p.sval[s]));
        sptr[s] = b;
      }
      M* scratch = base + (nv + ns) * B;
      std::unique_ptr<uint32_t[]> words(p.has_rand ? new uint32_t[4 * (B + 4)] : nullptr);
      auto src = [&](int32_t o) -> const M* { return o >= 0 ? vptr[o] : sptr[-1 - o]; };

      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t g0 = blk * B;
        const int64_t n = std::min(B, job.n - g0);
        const int64_t nw = (n + W - 1) / W * W;
        for (const Instr& ins : p.vec) {
          const FOp op = static_cast<FOp>(ins.op);
          if (op == FOp::Store) {
            T* out = static_cast<T*>(job.out[ins.dst]) + g0;
            const M* s = src(ins.a);
            if constexpr (std::is_same_v<T, M>) {
              std::memcpy(out, s, n * sizeof(T));
            } else {
              at::vec::convert(s, out, n);
            }
            continue;
          }
          M* d = vbuf[ins.dst];
          switch (op) {
            case FOp::Load: {
              const T* in = static_cast<const T*>(job.in[ins.a]) + g0;
              if constexpr (std::is_same_v<T, M>) {
                if (n == B && !job.in_is_out[ins.a]) {
                  vptr[ins.dst] = in;  // read in place
                  continue;
                }
                std::memcpy(d, in, n * sizeof(T));
              } else {
                at::vec::convert(in, d, n);
              }
              std::fill(d + n, d + nw, M(0));
              break;
            }
            case FOp::Rand:
            case FOp::Randn:
              random(d, static_cast<uint64_t>(g0) + job.offset, nw, op == FOp::Randn,
                     static_cast<uint32_t>(ins.a), job, words.get(), scratch);
              break;
            case FOp::Neg: map1(d, src(ins.a), nw, [](Vec a) { return a.neg(); }); break;
            case FOp::Pos: map1(d, src(ins.a), nw, [](Vec a) { return a; }); break;
            case FOp::Abs: map1(d, src(ins.a), nw, [](Vec a) { return a.abs(); }); break;
            case FOp::Sqrt: map1(d, src(ins.a), nw, [](Vec a) { return a.sqrt(); }); break;
            case FOp::Exp: map1(d, src(ins.a), nw, [](Vec a) { return a.exp(); }); break;
            case FOp::Log: map1(d, src(ins.a), nw, [](Vec a) { return a.log(); }); break;
            case FOp::Sign:
              map1(d, src(ins.a), nw, [](Vec a) { return Vec(M(0)).lt(a) - a.lt(Vec(M(0))); });
              break;
            case FOp::Add: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a + b; }); break;
            case FOp::Sub: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a - b; }); break;
            case FOp::Mul: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a * b; }); break;
            case FOp::Div: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a / b; }); break;
            case FOp::Pow:
              if (ins.b < 0 && ins.a >= 0) {
                pow_scalar(d, src(ins.a), p.sval[-1 - ins.b], nw);
              } else {
                map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a.pow(b); });
              }
              break;
            case FOp::Min: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return at::vec::minimum(a, b); }); break;
            case FOp::Max: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return at::vec::maximum(a, b); }); break;
            case FOp::Lt: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a.lt(b); }); break;
            case FOp::Le: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a.le(b); }); break;
            case FOp::Gt: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a.gt(b); }); break;
            case FOp::Ge: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a.ge(b); }); break;
            case FOp::Eq: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a.eq(b); }); break;
            case FOp::Ne: map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return a.ne(b); }); break;
            case FOp::Where:
              map3(d, src(ins.a), src(ins.b), src(ins.c), nw,
                   [](Vec c, Vec a, Vec b) { return Vec::blendv(b, a, c != Vec(M(0))); });
              break;
            case FOp::Lerp:  // torch.lerp: the weight's size picks the better-rounding form
              map3(d, src(ins.a), src(ins.b), src(ins.c), nw, [](Vec x, Vec e, Vec w) {
                const Vec diff = e - x;
                const Vec small = w.abs() < Vec(M(0.5));
                return Vec::blendv(fma(w - Vec(M(1)), diff, e), fma(w, diff, x), small);
              });
              break;
            case FOp::Fma: map3(d, src(ins.a), src(ins.b), src(ins.c), nw, [](Vec a, Vec b, Vec c) { return fma(a, b, c); }); break;
            default: break;  // decode() admits no other op
          }
          vptr[ins.dst] = d;
        }
      }
    });
  }
};

}  // namespace

void run_group(const Program& p, const GroupJob& job) {
  switch (job.dtype) {
    case at::ScalarType::Float: return Interp<float>::run<float>(p, job);
    case at::ScalarType::Double: return Interp<double>::run<double>(p, job);
    case at::ScalarType::BFloat16: return Interp<float>::run<c10::BFloat16>(p, job);
    case at::ScalarType::Half: return Interp<float>::run<c10::Half>(p, job);
    default: TORCH_CHECK(false, "nytorch.fuse: no CPU kernel for ", job.dtype);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace nyto::fuse
