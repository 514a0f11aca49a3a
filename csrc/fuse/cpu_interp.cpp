// nytorch.fuse on the CPU: a block interpreter, compiled once per instruction
// set (CMake sets CPU_CAPABILITY and the -m flags; fuse.cpp picks one).
//
// The group's element range is cut into blocks of kBlockBytes / sizeof(M)
// elements at fixed global positions; at::parallel_for hands out runs of
// blocks. For one block, every instruction is one tight at::vec loop over
// per-thread register arrays (L1-resident), so each input element is read
// from memory once and each output element written once. A float32/float64
// LOAD of a block of whole vectors reads the input in place (no copy) unless
// the input is also an output. Scalar operands are broadcast into a register once per
// task, so every instruction is a plain vector-vector loop.
#define NYTO_CPU_KERNEL  // csrc/nyto_math.h: at::vec overloads
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include "dispatch.h"
#include "fuse/fop_math.h"
#include "fuse/program.h"

namespace nyto::fuse {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kBlockBytes = 4096;       // one register: 1024 floats or 512 doubles
constexpr int64_t kGrain = 1 << 15;         // elements per parallel task at least
constexpr int64_t kStreamBytes = 64 << 20;  // calls touching more: non-temporal output stores

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace nyto::fuse

#include "fuse/cpu_random.h"  // Random<M>::fill, LinePrefetcher (same per-ISA namespace)

namespace nyto::fuse {
namespace CPU_CAPABILITY {
namespace {

// Read prefetches into L2 spread over calls of step(): the streams of a
// block that LinePrefetcher (cpu_random.h, into L1, 16 streams) has no room for.
struct L2Prefetcher {
  static constexpr int kMax = 64;
  const char* base[kMax];
  int n = 0, s = 0;
  int64_t bytes = 0, off = 0, per_call = 0;
  void add(const void* p) {
    if (n < kMax) base[n++] = static_cast<const char*>(p);
  }
  void step() {
    for (int64_t k = 0; k < per_call && s < n; ++k) {
      __builtin_prefetch(base[s] + off, 0, 2);
      off += 64;
      if (off >= bytes) {
        off = 0;
        ++s;
      }
    }
  }
};

template <class M>
struct Interp {
  using Vec = at::vec::Vectorized<M>;
  static constexpr int64_t W = Vec::size();
  static constexpr int64_t B = kBlockBytes / sizeof(M);
  static_assert(B % W == 0 && B % 4 == 0, "block must hold whole vectors and counters");

  template <class F>
  static void map1(M* d, const M* a, int64_t n, const F& f) {
    for (int64_t i = 0; i < n; i += W) f(Vec::loadu(a + i)).store(d + i);
  }
  // A binary operand that is a scalar slot stays in a register (a_s / b_s).
  template <class F>
  static void map2(M* d, const M* a, const M* b, int64_t n, const F& f, bool a_s = false, bool b_s = false) {
    if (b_s && !a_s) {
      const Vec bv(*b);
      for (int64_t i = 0; i < n; i += W) f(Vec::loadu(a + i), bv).store(d + i);
    } else if (a_s && !b_s) {
      const Vec av(*a);
      for (int64_t i = 0; i < n; i += W) f(av, Vec::loadu(b + i)).store(d + i);
    } else {
      for (int64_t i = 0; i < n; i += W) f(Vec::loadu(a + i), Vec::loadu(b + i)).store(d + i);
    }
  }
  template <class F>
  static void map3(M* d, const M* a, const M* b, const M* c, int64_t n, const F& f) {
    for (int64_t i = 0; i < n; i += W) f(Vec::loadu(a + i), Vec::loadu(b + i), Vec::loadu(c + i)).store(d + i);
  }

  // x ** e for a number e: torch's special exponents (math::pow_special),
  // one loop per kind.
  template <int K>
  static void pow_loop(M* d, const M* a, const Vec& ev, int64_t n) {
    map1(d, a, n, [&](Vec x) { return math::pow_special(x, ev, K); });
  }
  static void pow_scalar(M* d, const M* a, double e, int64_t n) {
    const Vec ev(static_cast<M>(e));
    switch (math::pow_kind(e)) {
      case math::kPowSquare:
        return pow_loop<math::kPowSquare>(d, a, ev, n);
      case math::kPowCube:
        return pow_loop<math::kPowCube>(d, a, ev, n);
      case math::kPowSqrt:
        return pow_loop<math::kPowSqrt>(d, a, ev, n);
      case math::kPowRecip:
        return pow_loop<math::kPowRecip>(d, a, ev, n);
      case math::kPowRsqrt:
        return pow_loop<math::kPowRsqrt>(d, a, ev, n);
      case math::kPowInvSquare:
        return pow_loop<math::kPowInvSquare>(d, a, ev, n);
      default:
        return pow_loop<math::kPowGeneral>(d, a, ev, n);
    }
  }

  // One math instruction over a block: FMath<E> (fops.def) on vectors, with
  // a number operand kept in a register (map2), pow's special exponents,
  // muladd's number factor and clamp's number bounds as their own loops.
  template <FOp E, class Src>
  static void math_op(M* d, const Instr& ins, const Program& p, const Src& src, int64_t nw) {
    using F = FMath<E>;
    if constexpr (E == FOp::Pow) {
      if (ins.b < 0 && ins.a >= 0) return pow_scalar(d, src(ins.a), p.sval[-1 - ins.b], nw);
    }
    if constexpr (E == FOp::MulAdd) {  // a * b + c, two roundings (the unfused pair; no contraction here)
      if (ins.a < 0 && ins.b >= 0 && ins.c >= 0) {
        const Vec av(*src(ins.a));
        const M* b = src(ins.b);
        const M* c = src(ins.c);
        for (int64_t i = 0; i < nw; i += W) (av * Vec::loadu(b + i) + Vec::loadu(c + i)).store(d + i);
        return;
      }
    }
    if constexpr (E == FOp::Clamp) {  // number bounds in registers
      if (ins.a >= 0 && ins.b < 0 && ins.c < 0) {
        const Vec lo(*src(ins.b)), hi(*src(ins.c));
        map1(d, src(ins.a), nw, [&](Vec a) { return F::f(a, lo, hi); });
        return;
      }
    }
    if constexpr (F::nin == 1) {
      map1(d, src(ins.a), nw, [](Vec a) { return F::f(a, a, a); });
    } else if constexpr (F::nin == 2) {
      map2(d, src(ins.a), src(ins.b), nw, [](Vec a, Vec b) { return F::f(a, b, b); }, ins.a < 0, ins.b < 0);
    } else {
      static_assert(F::nin == 3, "fops.def: math ops read 1 to 3 operands");
      map3(d, src(ins.a), src(ins.b), src(ins.c), nw, [](Vec a, Vec b, Vec c) { return F::f(a, b, c); });
    }
  }

  // Runs of `mul`/`muladd` then `muladd`s accumulating into one register
  // (a*b + c*d + ...: soups, EMA, PSO's velocity) run as one loop with the
  // sum in CPU registers, in the same order and roundings. A `sub` whose
  // value only one product of a chain reads (PSO's p - x, DE's x_b - x_c) is
  // deferred into it: that term computes a * (b - c) in the loop and the
  // sub's own pass is skipped (the same roundings: the difference, then the
  // product, then the sum). A lone mul/muladd with such a sub is a chain of 1.
  static constexpr int kMaxChain = 16;
  struct Term {
    int32_t a = 0, b = 0, c = 0;  // the product a * b, or a * (b - c) when sub (a: the number, if one is)
    bool sub = false;
  };
  struct Chains {
    Small<int> len;        // per instruction: the run starting there (0: none; else its instructions)
    Small<char> deferred;  // per instruction: a sub computed inside a chain's term
    Small<Term> term;      // per instruction of a run: its product
  };
  static Chains chains(const Program& p) {
    const int ni = static_cast<int>(p.vec.size());
    Chains ch;
    ch.len.assign(ni, 0);
    ch.deferred.assign(ni, 0);
    ch.term.assign(ni, Term{});
    auto writes = [&](int k, int32_t r) {
      const Instr& q = p.vec[k];
      return static_cast<FOp>(q.op) != FOp::Store && q.dst == r;
    };
    // the sub defining register r for instruction j, if only j reads it (once)
    // and its operands still hold their values at j: its index, else -1
    auto deferrable = [&](int j, int32_t r) {
      if (r < 0) return -1;
      int s = j - 1;
      while (s >= 0 && !writes(s, r)) --s;
      if (s < 0) return -1;
      const Instr& sub = p.vec[s];
      if (static_cast<FOp>(sub.op) != FOp::Sub || sub.a < 0 || sub.b < 0 || ch.deferred[s]) return -1;
      for (int k = s + 1; k < ni; ++k) {
        const Instr& q = p.vec[k];
        const int32_t o[3] = {q.a, q.b, q.c};
        const int na = static_cast<FOp>(q.op) == FOp::Store ? 1 : arity(static_cast<FOp>(q.op));
        int n = 0;
        for (int m = 0; m < na; ++m) n += o[m] == r;
        if (n != (k == j ? 1 : 0)) return -1;
        if (k > j && writes(k, r)) break;  // overwritten: no later reader of this value
        if (k < j && (writes(k, sub.a) || writes(k, sub.b) || writes(k, r))) return -1;
      }
      return s;
    };
    for (int i = 0; i < ni; ++i) {
      const FOp op = static_cast<FOp>(p.vec[i].op);
      if (op != FOp::Mul && op != FOp::MulAdd) continue;
      int k = i;
      while (k + 1 < ni && k + 1 - i < kMaxChain) {
        const Instr& cur = p.vec[k];
        const Instr& nx = p.vec[k + 1];
        if (static_cast<FOp>(nx.op) != FOp::MulAdd || nx.c != cur.dst || nx.dst != cur.dst || nx.a == cur.dst ||
            nx.b == cur.dst)
          break;
        ++k;
      }
      bool ok = true, any_sub = false;
      for (int t = i; t <= k && ok; ++t) {
        const Instr& q = p.vec[t];
        Term& tm = ch.term[t];
        tm.a = q.a;
        tm.b = q.b;
        if (tm.b < 0) std::swap(tm.a, tm.b);  // the number first (a * b == b * a exactly)
        ok = tm.b >= 0;                       // (two numbers: not a vector product)
      }
      if (ok) {
        for (int t = i; t <= k; ++t) {
          Term& tm = ch.term[t];
          int s = deferrable(t, tm.b);
          if (s < 0 && tm.a >= 0 && (s = deferrable(t, tm.a)) >= 0) std::swap(tm.a, tm.b);
          if (s < 0) continue;
          tm.b = p.vec[s].a;
          tm.c = p.vec[s].b;
          tm.sub = true;
          ch.deferred[s] = 1;
          any_sub = true;
        }
      }
      if (ok && (k > i || any_sub)) ch.len[i] = k - i + 1;
      i = k;
    }
    return ch;
  }

  // Float32/float64 blocks of whole vectors (full blocks, and shorter ones
  // of a multiple of the vector width: a population row of 1000 elements)
  // read inputs in place, and an instruction whose
  // value feeds one STORE writes the output directly (no copy) when no later
  // instruction reads that output's memory as an input. Returns, per
  // instruction, the output it writes directly or -1; skip: stores so covered.
  static Small<int> plan_direct(const Program& p, const Chains& ch, const GroupJob& job, Small<char>& skip,
                                Small<char>& alias_ok) {
    const int ni = static_cast<int>(p.vec.size());
    Small<int> direct(ni, -1);
    skip.assign(ni, 0);
    Small<int> origin(p.n_vreg, -1);      // input whose memory a register holds
    Small<std::array<int, 5>> reads(ni);  // inputs whose memory each instruction reads
    for (int i = 0; i < ni; ++i) {
      const Instr& in = p.vec[i];
      const FOp op = static_cast<FOp>(in.op);
      const Term& tm = ch.term[i];
      // a chain term with a deferred sub reads the sub's operands (still
      // holding the same memory: see chains) instead of its result
      const int32_t o[4] = {in.a, in.b, in.c, tm.sub ? tm.c : -1};
      const int32_t ob = tm.sub ? tm.b : o[1];
      reads[i] = {-1, -1, -1, -1, -1};
      const int na = arity(op);
      for (int k = 0; k < na; ++k) {
        const int32_t r = tm.sub && k < 2 ? (k == 0 ? tm.a : ob) : o[k];
        if (r >= 0) reads[i][k] = origin[r];
      }
      if (o[3] >= 0) reads[i][4] = origin[o[3]];
      if (op == FOp::Load) {
        reads[i][3] = in.a;
        origin[in.dst] = in.a;
      } else if (op != FOp::Store) {
        origin[in.dst] = -1;
      }
    }
    for (int i = 0; i < ni; ++i) {
      const Instr& in = p.vec[i];
      const FOp op = static_cast<FOp>(in.op);
      if (op == FOp::Load || op == FOp::Store) continue;
      int stores = 0, store = -1;
      for (int k = i + 1; k < ni; ++k) {
        const Instr& u = p.vec[k];
        const FOp uop = static_cast<FOp>(u.op);
        const int32_t o[3] = {u.a, u.b, u.c};
        const int na = arity(uop);
        for (int m = 0; m < na; ++m) {
          if (o[m] == in.dst && uop == FOp::Store) {
            ++stores;
            store = k;
          }
        }
        if (uop != FOp::Store && u.dst == in.dst) break;  // overwritten
      }
      if (stores != 1) continue;  // later readers then read the output's (L1-hot) memory
      const int j = p.vec[store].dst;
      bool ok = true;
      for (int k = i + 1; k < ni && ok; ++k) {
        for (int m = 0; m < 5; ++m) {
          if (reads[k][m] >= 0 && job.in[reads[k][m]] == job.out[j]) ok = false;
        }
      }
      if (ok) {
        direct[i] = j;
        skip[store] = 1;
      }
    }
    // An input that is also an output is read in place only if every read of
    // it comes before the first write of its memory; else LOAD copies it.
    alias_ok.assign(p.n_in, 1);
    for (int k = 0; k < p.n_in; ++k) {
      if (!job.in_is_out[k]) continue;
      int first_write = ni, last_read = -1;
      for (int i = 0; i < ni; ++i) {
        const Instr& in = p.vec[i];
        const int j = static_cast<FOp>(in.op) == FOp::Store ? (skip[i] ? -1 : in.dst) : direct[i];
        if (j >= 0 && job.out[j] == job.in[k]) first_write = std::min(first_write, i);
        for (int m = 0; m < 5; ++m) {
          if (m != 3 && reads[i][m] == k) last_read = i;  // (3: a load's in-place read, made by its readers)
        }
      }
      alias_ok[k] = last_read <= first_write;  // an instruction reads each element before writing it
    }
    return direct;
  }

  // Non-temporal store (AVX2; d 32-byte aligned): writes an output that is
  // not read in this call around the caches, so the store costs no read.
  static void store_nt(const Vec& v, M* d) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (sizeof(M) == 4) {
      _mm256_stream_ps(reinterpret_cast<float*>(d), v);
    } else {
      _mm256_stream_pd(reinterpret_cast<double*>(d), v);
    }
#else
    v.store(d);
#endif
  }
  static void copy_nt(M* d, const M* s, int64_t n) {
    for (int64_t i = 0; i < n; i += W) store_nt(Vec::loadu(s + i), d + i);
  }

  // acc = a0*b0 (+ c0); acc = a_t*b_t + acc for t < K, the sum in a register.
  // A: the a_t operands, either blocks (numbers as broadcast blocks) or, when
  // every a_t is a number (soups, EMA), values held in registers (sa). Sub:
  // b_t is pb[t] - pc[t] (a deferred sub; pc[t] a block of zeros for the
  // other terms: b - (+0) == b exactly, -0 and NaN included).
  template <int K, bool HasC, bool AScalar, bool Sub>
  static void chain_loop(M* d, const M* const* pa_, const M* const* pb_, const M* const* pc_, const M* c0, int64_t nw,
                         bool nt) {
    const M* pa[K];
    const M* pb[K];
    const M* pc[K];
    Vec sa[K];
    for (int t = 0; t < K; ++t) {
      pa[t] = pa_[t];
      pb[t] = pb_[t];
      pc[t] = pc_[t];
      if constexpr (AScalar) sa[t] = Vec(*pa_[t]);
    }
    auto a_at = [&](int t, int64_t i) {
      if constexpr (AScalar) {
        return sa[t];
      } else {
        return Vec::loadu(pa[t] + i);
      }
    };
    auto b_at = [&](int t, int64_t i) {
      if constexpr (Sub) {
        return Vec::loadu(pb[t] + i) - Vec::loadu(pc[t] + i);
      } else {
        return Vec::loadu(pb[t] + i);
      }
    };
    auto loop = [&](auto put) {
      for (int64_t i = 0; i < nw; i += W) {
        Vec acc = a_at(0, i) * b_at(0, i);
        if constexpr (HasC) acc = acc + Vec::loadu(c0 + i);
#pragma GCC unroll 16
        for (int t = 1; t < K; ++t) acc = a_at(t, i) * b_at(t, i) + acc;
        put(acc, d + i);
      }
    };
    if (nt) {
      loop([](const Vec& v, M* q) { store_nt(v, q); });
    } else {
      loop([](const Vec& v, M* q) { v.store(q); });
    }
  }
  template <bool HasC, bool AScalar, bool Sub>
  static void chain_k(int K, M* d, const M* const* pa, const M* const* pb, const M* const* pc, const M* c0, int64_t nw,
                      bool nt) {
    switch (K) {
      case 1:
        return chain_loop<1, HasC, AScalar, Sub>(d, pa, pb, pc, c0, nw, nt);
      case 2:
        return chain_loop<2, HasC, AScalar, Sub>(d, pa, pb, pc, c0, nw, nt);
      case 3:
        return chain_loop<3, HasC, AScalar, Sub>(d, pa, pb, pc, c0, nw, nt);
      case 4:
        return chain_loop<4, HasC, AScalar, Sub>(d, pa, pb, pc, c0, nw, nt);
      case 5:
        return chain_loop<5, HasC, AScalar, Sub>(d, pa, pb, pc, c0, nw, nt);
      case 6:
        return chain_loop<6, HasC, AScalar, Sub>(d, pa, pb, pc, c0, nw, nt);
      default:
        for (int64_t i = 0; i < nw; i += W) {
          auto b_at = [&](int t) {
            return Sub ? Vec::loadu(pb[t] + i) - Vec::loadu(pc[t] + i) : Vec::loadu(pb[t] + i);
          };
          Vec acc = Vec::loadu(pa[0] + i) * b_at(0);
          if constexpr (HasC) acc = acc + Vec::loadu(c0 + i);
          for (int t = 1; t < K; ++t) acc = Vec::loadu(pa[t] + i) * b_at(t) + acc;
          acc.store(d + i);
        }
    }
  }
  // a_scalar: every a_t is a number (then pa[t] points at its value; only up
  // to 6 terms, the general loop reads broadcast blocks).
  static void run_chain(int K, bool has_c, bool a_scalar, bool sub, M* d, const M* const* pa, const M* const* pb,
                        const M* const* pc, const M* c0, int64_t nw, bool nt) {
    if (sub) {
      if (has_c) {
        return a_scalar ? chain_k<true, true, true>(K, d, pa, pb, pc, c0, nw, nt)
                        : chain_k<true, false, true>(K, d, pa, pb, pc, c0, nw, nt);
      }
      return a_scalar ? chain_k<false, true, true>(K, d, pa, pb, pc, c0, nw, nt)
                      : chain_k<false, false, true>(K, d, pa, pb, pc, c0, nw, nt);
    }
    if (has_c) {
      return a_scalar ? chain_k<true, true, false>(K, d, pa, pb, pc, c0, nw, nt)
                      : chain_k<true, false, false>(K, d, pa, pb, pc, c0, nw, nt);
    }
    return a_scalar ? chain_k<false, true, false>(K, d, pa, pb, pc, c0, nw, nt)
                    : chain_k<false, false, false>(K, d, pa, pb, pc, c0, nw, nt);
  }

  // The aliasing of one group's operands: for each input, the output that is
  // the same memory (or -1). Groups with the same aliasing share a plan.
  static Small<int> aliasing(const Program& p, const GroupJob& job) {
    Small<int> sig(p.n_in, -1);
    for (int k = 0; k < p.n_in; ++k) {
      if (!job.in_is_out[k]) continue;
      for (int j = 0; j < p.n_out; ++j) {
        if (job.out[j] == job.in[k]) sig[k] = j;
      }
    }
    return sig;
  }

  // What the block loop needs of one group: plan_direct's result (shared by
  // the groups with the same aliasing), its non-temporal outputs, its blocks.
  struct GroupPlan {
    const GroupJob* job;
    int shared;         // index of the group whose direct/skip/alias_ok this one uses
    Small<int> sig;     // aliasing (its own)
    Small<int> direct;  // plan_direct (on the sharing group only)
    Small<char> skip, alias_ok;
    Small<char> out_nt;
    int64_t nblocks = 0;
    int64_t first_item = 0;  // its first work item (runs of kChunk blocks) in the call
  };

  // Every group of one call (one dtype): program-level planning once, then
  // one pool of workers over the runs of blocks of all groups (many small
  // groups -- a population's rows -- cost no per-group setup or thread
  // start, and run in parallel with each other).
  template <class T>
  static void run(const Program& p, const GroupJob* const* jobs, int64_t njobs) {
    constexpr bool native = std::is_same_v<T, M>;
    const Chains ch = chains(p);
    const Small<int>& chain = ch.len;
    const Small<char>& deferred = ch.deferred;
    // A chain whose every product has one number operand (up to 6 terms)
    // keeps those numbers in registers; other chains read numbers as blocks.
    Small<char> chain_scalar(chain.size(), 0), chain_sub(chain.size(), 0);
    Small<char> s_block = p.s_used;  // numbers read as broadcast blocks
    for (size_t i = 0; i < chain.size(); ++i) {
      if (chain[i] < 1) continue;
      bool sc = chain[i] <= 6;
      for (int t = 0; t < chain[i]; ++t) {
        sc = sc && ch.term[i + t].a < 0;
        chain_sub[i] |= ch.term[i + t].sub;
      }
      chain_scalar[i] = sc;
      for (int t = 0; t < chain[i]; ++t) {
        const Instr& q = p.vec[i + t];
        for (int32_t o : {q.a, q.b, q.c}) {
          const bool acc = t > 0 && o == q.c;  // the running sum
          if (o < 0 && !acc && !(sc && o != q.c)) s_block[-1 - o] = 1;
        }
      }
    }
    int64_t n_rand = 0;  // random instructions: prefetching rides on them
    for (const Instr& in : p.vec) {
      const FOp op = static_cast<FOp>(in.op);
      n_rand += op == FOp::Rand || op == FOp::Randn || op == FOp::Rands;
    }
    // Dynamic scheduling: each worker takes the next run of kChunk blocks, so
    // a worker descheduled by other load (shared machines) delays nobody.
    constexpr int64_t kChunk = std::max<int64_t>(1, kGrain / B);
    std::vector<GroupPlan> plans(njobs);
    int64_t items = 0, max_n = 0;
    for (int64_t g = 0; g < njobs; ++g) {
      const GroupJob& job = *jobs[g];
      GroupPlan& gp = plans[g];
      gp.job = &job;
      gp.shared = static_cast<int>(g);
      if constexpr (native) {
        gp.sig = aliasing(p, job);
        if (g > 0 && plans[plans[g - 1].shared].sig == gp.sig) {
          gp.shared = plans[g - 1].shared;
        } else {
          gp.direct = plan_direct(p, ch, job, gp.skip, gp.alias_ok);
        }
      }
      // Outputs written around the caches: those no input shares, when the
      // group's memory is well past the caches (else a reader soon after
      // would find them in cache) and blocks start 32-byte aligned.
      int64_t call_bytes = 0;
      for (int j = 0; j < p.n_out; ++j) call_bytes += job.out_is_in[j] ? 0 : 1;
      call_bytes = (call_bytes + p.n_in) * job.n * static_cast<int64_t>(sizeof(T));
      gp.out_nt.assign(p.n_out, 0);
      for (int j = 0; j < p.n_out; ++j) {
        gp.out_nt[j] = native && !job.out_is_in[j] && call_bytes >= kStreamBytes &&
                       reinterpret_cast<uintptr_t>(job.out[j]) % 32 == 0;
      }
      gp.nblocks = (job.n + B - 1) / B;
      gp.first_item = items;
      items += (gp.nblocks + kChunk - 1) / kChunk;
      max_n = std::max(max_n, job.n);
    }
    if (items == 0) return;
    std::atomic<int64_t> next{0};
    const int64_t workers = std::min<int64_t>(items, at::get_num_threads());
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      // Registers, scalar broadcasts and random scratch of this task.
      // Register k starts k * (B + pad) elements in: register strides that
      // are not multiples of 4 KiB (no false store-to-load aliasing).
      // Scalars: one value each (register operands read *sptr), or a
      // broadcast block where an instruction reads them as a vector.
      const int nv = p.n_vreg, ns = p.n_sreg;
      // Blocks of small groups are as small as the largest group.
      const int64_t Bk = std::min<int64_t>(B, (max_n + W - 1) / W * W);
      const int64_t R = Bk + 64 / sizeof(M);
      int nfull = 0;
      for (int s = 0; s < ns; ++s) nfull += s_block[s];
      const int nzero = std::any_of(chain_sub.begin(), chain_sub.end(), [](char c) { return c != 0; }) ? 1 : 0;
      const int64_t elems = (nv + nfull + (p.has_rand ? 4 : 0) + nzero) * R + ns + 64 / sizeof(M);
      std::unique_ptr<M[]> mem(new M[elems]);
      M* base = reinterpret_cast<M*>((reinterpret_cast<uintptr_t>(mem.get()) + 63) & ~uintptr_t(63));
      Small<M*> vbuf(nv);
      Small<const M*> vptr(nv, nullptr);
      Small<const M*> sptr(ns, nullptr);
      for (int r = 0; r < nv; ++r) vbuf[r] = base + r * R;
      M* zeros = base + (nv + nfull + (p.has_rand ? 4 : 0)) * R;  // chains with a deferred sub: b - 0 elsewhere
      std::fill(zeros, zeros + nzero * R, M(0));
      M* one = zeros + nzero * R;
      for (int s = 0, f = 0; s < ns; ++s) {
        one[s] = static_cast<M>(p.sval[s]);
        sptr[s] = one + s;
        if (!s_block[s]) continue;
        M* b = base + (nv + f++) * R;
        std::fill(b, b + Bk, one[s]);
        sptr[s] = b;
      }
      M* scratch = base + (nv + nfull) * R;
      std::unique_ptr<uint32_t[]> words(p.has_rand ? new uint32_t[4 * (Bk + 8)] : nullptr);
      auto src = [&](int32_t o) -> const M* { return o >= 0 ? vptr[o] : sptr[-1 - o]; };
      LinePrefetcher pf;
      // Prefetching for random programs: pf (Random::fill steps it, into L1)
      // takes the first LinePrefetcher::kMax streams of the next block,
      // pf_more the rest (a population's rows: up to 2 inputs and 3 K
      // outputs), into L2 (L1 cannot hold a block of each: prefetching them
      // there too was measured slower), stepped after each random instruction.
      L2Prefetcher pf_more;
      auto plan_prefetch = [&](const GroupJob& nj, int64_t nblk) {
        const int64_t at = nblk * B * static_cast<int64_t>(sizeof(T));
        const int64_t bytes = B * static_cast<int64_t>(sizeof(T));
        int streams = 0;
        auto add = [&](const void* base, bool w) {
          if (streams++ < LinePrefetcher::kMax) {
            pf.add(static_cast<const char*>(base) + at, w);
          } else {
            pf_more.add(static_cast<const char*>(base) + at);
          }
        };
        for (int k = 0; k < p.n_in; ++k) {
          if (nj.period.empty() || nj.period[k] == 0) add(nj.in[k], false);  // (one row read cyclically: cache-hot)
        }
        for (int j = 0; j < p.n_out; ++j) {
          if (!nj.out_is_in[j]) add(nj.out[j], true);
        }
        pf.bytes = pf_more.bytes = bytes;
        const int64_t calls = n_rand * (B >> RandShift<M>::value) / 8;  // philox8 calls per block
        pf.per_call = (pf.n * bytes / 64 + calls - 1) / calls;
        pf_more.per_call = (pf_more.n * bytes / 64 + n_rand - 1) / n_rand;  // per random instruction
      };
      int64_t g = 0;  // this worker's items come in increasing order: its group only moves forward
      auto group_of = [&](int64_t item, int64_t from) {
        while (from + 1 < njobs && plans[from + 1].first_item <= item) ++from;
        return from;
      };
      for (int64_t it = next.fetch_add(1); it < items;) {
        g = group_of(it, g);
        const GroupPlan& gp = plans[g];
        const GroupPlan& shared = plans[gp.shared];
        const GroupJob& job = *gp.job;
        const Small<int>& direct = shared.direct;
        const Small<char>& skip_store = shared.skip;
        const Small<char>& alias_ok = shared.alias_ok;
        const Small<char>& out_nt = gp.out_nt;
        const int64_t c = it - gp.first_item;
        const int64_t b0 = c * kChunk, b1 = std::min(gp.nblocks, b0 + kChunk);
        int64_t claimed = -1;  // the next item, claimed during this one's last block (random programs)

        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t g0 = blk * B;
          const int64_t n = std::min(B, job.n - g0);
          const int64_t nw = (n + W - 1) / W * W;
          // whole vectors: instructions write exactly n elements, so inputs are read in place and
          // outputs written directly (a short block -- a group's tail, a small group -- too)
          const bool full = native && n == nw;
          pf.n = pf.s = 0;
          pf.off = 0;
          pf_more.n = pf_more.s = 0;
          pf_more.off = 0;
          if (n_rand > 0 && blk + 1 < b1) {  // the next block's inputs and outputs
            plan_prefetch(job, blk + 1);
          } else if (n_rand > 0) {
            // The last block: claim the next item now and prefetch its first
            // block (small groups -- a population's rows of a few blocks --
            // would otherwise start every group cold).
            claimed = next.fetch_add(1);
            if (claimed < items) {
              const GroupPlan& np = plans[group_of(claimed, g)];
              plan_prefetch(*np.job, (claimed - np.first_item) * kChunk);
            }
          }
          for (size_t ii = 0; ii < p.vec.size(); ++ii) {
            const Instr& ins = p.vec[ii];
            const FOp op = static_cast<FOp>(ins.op);
            if (op == FOp::Store) {
              if (full && skip_store[ii]) continue;  // written directly
              T* out = static_cast<T*>(job.out[ins.dst]) + g0;
              const M* s = src(ins.a);
              if constexpr (std::is_same_v<T, M>) {
                if (full && out_nt[ins.dst]) {
                  copy_nt(out, s, n);
                } else {
                  std::memcpy(out, s, n * sizeof(T));
                }
              } else {
                at::vec::convert(s, out, n);
              }
              continue;
            }
            if (deferred[ii]) continue;  // computed inside a chain's term
            if (chain[ii] > 0) {
              const int K = chain[ii];
              const size_t last = ii + K - 1;
              M* d = full && direct[last] >= 0 ? static_cast<M*>(job.out[direct[last]]) + g0 : vbuf[p.vec[last].dst];
              const M* pa[kMaxChain];
              const M* pb[kMaxChain];
              const M* pc[kMaxChain];
              for (int t = 0; t < K; ++t) {
                const Term& tm = ch.term[ii + t];
                pa[t] = src(tm.a);
                pb[t] = src(tm.b);
                pc[t] = tm.sub ? src(tm.c) : zeros;
              }
              const bool nt = full && direct[last] >= 0 && out_nt[direct[last]];
              run_chain(K, op == FOp::MulAdd, chain_scalar[ii], chain_sub[ii], d, pa, pb, pc,
                        op == FOp::MulAdd ? src(ins.c) : nullptr, nw, nt);
              vptr[p.vec[last].dst] = d;
              ii = last;
              continue;
            }
            M* d = full && direct[ii] >= 0 ? static_cast<M*>(job.out[direct[ii]]) + g0 : vbuf[ins.dst];
            switch (op) {
              case FOp::Load: {
                // an input read cyclically (GroupJob::period) starts at g0 % P
                const int64_t P = job.period.empty() ? 0 : job.period[ins.a];
                const int64_t e0 = P ? g0 % P : g0;
                const T* in = static_cast<const T*>(job.in[ins.a]) + e0;
                if (P == 0 || e0 + n <= P) {
                  if constexpr (std::is_same_v<T, M>) {
                    if (full && alias_ok[ins.a]) {
                      vptr[ins.dst] = in;  // read in place (see plan_direct)
                      continue;
                    }
                    std::memcpy(d, in, n * sizeof(T));
                  } else {
                    at::vec::convert(in, d, n);
                  }
                } else {  // the block wraps around the row: copied piece by piece
                  const T* row = static_cast<const T*>(job.in[ins.a]);
                  for (int64_t i = 0, e = e0; i < n; e = 0) {
                    const int64_t m = std::min(n - i, P - e);
                    if constexpr (std::is_same_v<T, M>) {
                      std::memcpy(d + i, row + e, m * sizeof(T));
                    } else {
                      at::vec::convert(row + e, d + i, m);
                    }
                    i += m;
                  }
                }
                std::fill(d + n, d + nw, M(0));
                break;
              }
              case FOp::Rand:
              case FOp::Randn:
                Random<M>::fill(d, static_cast<uint64_t>(g0) + job.offset, nw, op == FOp::Randn,
                                static_cast<uint32_t>(ins.a), job, words.get(), scratch, pf);
                pf_more.step();
                break;
              case FOp::Rands:
                Random<M>::fill(d, static_cast<uint64_t>(g0) + job.offset, nw, false, static_cast<uint32_t>(ins.a), job,
                                words.get(), scratch, pf, static_cast<M>(p.sval[-1 - ins.b]));
                pf_more.step();
                break;
                // Every math op: the expr column of fuse/fops.def (see math_op).
#define NYTO_FOP(E, ...)                 \
  case FOp::E:                           \
    math_op<FOp::E>(d, ins, p, src, nw); \
    break;
#define NYTO_FOP_IO(...)
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO
              default:
                break;  // decode() admits no other op
            }
            vptr[ins.dst] = d;
          }
        }
        it = claimed >= 0 ? claimed : next.fetch_add(1);
      }
#if defined(CPU_CAPABILITY_AVX2)
      _mm_sfence();  // order this worker's non-temporal stores before the join
#endif
    });
  }
};

// Weighted sums of the rows of a stored [h, n] buffer (see row_sums below).
template <class M>
struct RowSums {
  using Vec = at::vec::Vectorized<M>;
  static constexpr int64_t W = Vec::size();
  // Columns per tile: 64 KiB of each row (rows of up to 16k floats in one
  // tile: the accumulators stay in L2 and every row is read as one stream;
  // tiles of one 4 KiB page per row read 1.5x slower at P=1024 x D=5k).
  static constexpr int64_t T = (int64_t(64) << 10) / sizeof(M);
  static constexpr int RB = 8;                         // rows per pass over a tile
  static constexpr int64_t kAhead = 2048 / sizeof(M);  // prefetch distance along a row

  // K rows (at base + off[q]) into the tile's accumulators a1 (and a2), one
  // row after the other: a1 = w_q * e + a1, a2 = v_q * (e * e) + a2 (each
  // product and sum rounded: the fuse program's mul and muladd,
  // -ffp-contract=off), prefetching the rows 2 KiB ahead (across pages, where
  // the hardware's stream prefetchers stop).
  template <int K, bool Sq>
  static void pass(M* a1, M* a2, const M* base, const int64_t* off, const M* w, const M* v, int64_t m) {
    Vec wv[K], vv[K];
    const M* rp[K];
    for (int q = 0; q < K; ++q) {
      rp[q] = base + off[q];
      wv[q] = Vec(w[q]);
      if constexpr (Sq) vv[q] = Vec(v[q]);
    }
    constexpr int64_t kLine = 64 / sizeof(M);  // elements per cache line (a whole number of vectors)
    int64_t i = 0;
    for (; i + W <= m; i += W) {
      if (i % kLine == 0 && i + kAhead < m) {
        for (int q = 0; q < K; ++q) __builtin_prefetch(rp[q] + i + kAhead, 0, 2);
      }
      Vec s1 = Vec::loadu(a1 + i);
      Vec s2 = Sq ? Vec::loadu(a2 + i) : Vec(M(0));
#pragma GCC unroll 8
      for (int q = 0; q < K; ++q) {
        const Vec e = Vec::loadu(rp[q] + i);
        s1 = wv[q] * e + s1;
        if constexpr (Sq) s2 = vv[q] * (e * e) + s2;
      }
      s1.store(a1 + i);
      if constexpr (Sq) s2.store(a2 + i);
    }
    if (i < m) {  // the tile's tail: partial vectors (lanes past m are zeros and never stored)
      const int64_t r = m - i;
      Vec s1 = Vec::loadu(a1 + i, r);
      Vec s2 = Sq ? Vec::loadu(a2 + i, r) : Vec(M(0));
      for (int q = 0; q < K; ++q) {
        const Vec e = Vec::loadu(rp[q] + i, r);
        s1 = wv[q] * e + s1;
        if constexpr (Sq) s2 = vv[q] * (e * e) + s2;
      }
      s1.store(a1 + i, r);
      if constexpr (Sq) s2.store(a2 + i, r);
    }
  }

  template <bool Sq>
  static void run(const RowSumJob& job) {
    const M* rows = static_cast<const M*>(job.rows);
    M* acc1 = static_cast<M*>(job.acc1);
    M* acc2 = static_cast<M*>(job.acc2);
    // The numbers in M, as a program's scalar slots hold them. A row whose
    // weights are both zero is skipped: it adds +-0 (the noise is finite) to
    // sums that start at +0, and x + +-0 == x for any x but -0, which such a
    // sum never is (+0 + -0 == +0). CEM's and sep-CMA-ES's non-elite half.
    std::vector<M> w, v;
    std::vector<int64_t> off;  // the kept rows' element offsets
    for (int64_t r = 0; r < job.h; ++r) {
      const M wr = static_cast<M>(job.w[r]);
      const M vr = Sq ? static_cast<M>(job.v[r]) : M(0);
      if (wr == M(0) && vr == M(0)) continue;
      w.push_back(wr);
      if constexpr (Sq) v.push_back(vr);
      off.push_back(r * job.stride);
    }
    const int64_t h = static_cast<int64_t>(off.size());
    if (h == 0) return;
    // Tiles are independent (each element's sum runs over the rows in order):
    // threads take tiles, narrower ones when there are fewer than threads.
    constexpr int64_t kLine = 64 / sizeof(M);
    int64_t tile = T;
    const int64_t nt = at::get_num_threads();
    if (nt > 1 && h * job.n >= kGrain * 8) tile = std::min(T, ((job.n + nt - 1) / nt + kLine - 1) / kLine * kLine);
    const int64_t ntiles = (job.n + tile - 1) / tile;
    at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * tile, m = std::min(tile, job.n - c0);
        M* a1 = acc1 + c0;
        M* a2 = Sq ? acc2 + c0 : nullptr;
        const M* base = rows + c0;
        int64_t r = 0;
        for (; r + RB <= h; r += RB) {
          pass<RB, Sq>(a1, a2, base, off.data() + r, w.data() + r, Sq ? v.data() + r : nullptr, m);
        }
        for (; r < h; ++r) pass<1, Sq>(a1, a2, base, off.data() + r, w.data() + r, Sq ? v.data() + r : nullptr, m);
      }
    });
  }
};

}  // namespace

void run_groups(const Program& p, const GroupJob* const* jobs, int64_t n) {
  // runs of groups of one dtype (usually all of them)
  for (int64_t a = 0; a < n;) {
    int64_t b = a + 1;
    while (b < n && jobs[b]->dtype == jobs[a]->dtype) ++b;
    dispatch_fast(jobs[a]->dtype, "nytorch.fuse: the CPU kernel", [&](auto t) {
      using T = decltype(t);
      Interp<typename OpMath<T>::type>::template run<T>(p, jobs + a, b - a);
    });
    a = b;
  }
}

void row_sums(const RowSumJob& job) {
  if (job.h == 0 || job.n == 0) return;
  const bool sq = job.acc2 != nullptr;
  if (job.dtype == at::kFloat) {
    sq ? RowSums<float>::run<true>(job) : RowSums<float>::run<false>(job);
  } else {
    TORCH_CHECK(job.dtype == at::kDouble, "nytorch.fuse: row sums take float32 or float64 rows, got ", job.dtype);
    sq ? RowSums<double>::run<true>(job) : RowSums<double>::run<false>(job);
  }
}

// A math op on numbers: one lane of the float64 vector instruction (see
// scalar_op in fuse.cpp).
double scalar_math(FOp op, double a, double b, double c) {
  using Vec = at::vec::Vectorized<double>;
  alignas(64) double r[Vec::size()];
  switch (op) {
#define NYTO_FOP(E, ...)                               \
  case FOp::E:                                         \
    FMath<FOp::E>::f(Vec(a), Vec(b), Vec(c)).store(r); \
    return r[0];
#define NYTO_FOP_IO(...)
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO
    default:
      TORCH_CHECK(false, "nytorch.fuse: ", op_name(op), " has no scalar form");
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace nyto::fuse
