// Elementwise functors shared by the CPU and CUDA drivers.
//
// Each functor maps `nin` input values to one output value. It is a template
// on the value type V, which is the op-math scalar (float for float32,
// bfloat16 and float16; double for float64) or, on the CPU, an
// at::vec::Vectorized of it. Scalars arrive as double in the Job and are held
// in op-math precision M, which is what torch does for `tensor op number`.
// The evaluation order mirrors torch's own kernels, so fused results equal the
// op-by-op torch chain (kernel files are built with -ffp-contract=off).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include "nyto_math.h"
#include "nyto.h"

namespace nyto {

template <class M>
struct FNeg {
  static constexpr int nin = 1;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return math::neg(a);
  }
};
template <class M>
struct FCopy {
  static constexpr int nin = 1;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return a;
  }
};
template <class M>
struct FAdd {
  static constexpr int nin = 2;
  template <class V>
  NYTO_HD V operator()(V a, V b) const {
    return a + b;
  }
};
template <class M>
struct FSub {
  static constexpr int nin = 2;
  template <class V>
  NYTO_HD V operator()(V a, V b) const {
    return a - b;
  }
};
template <class M>
struct FMul {
  static constexpr int nin = 2;
  template <class V>
  NYTO_HD V operator()(V a, V b) const {
    return a * b;
  }
};
template <class M>
struct FDiv {
  static constexpr int nin = 2;
  template <class V>
  NYTO_HD V operator()(V a, V b) const {
    return a / b;
  }
};
template <class M>
struct FPow {
  static constexpr int nin = 2;
  template <class V>
  NYTO_HD V operator()(V a, V b) const {
    return math::pow(a, b);
  }
};

template <class M>
struct FAddS {
  static constexpr int nin = 1;
  M s;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return a + V(s);
  }
};
template <class M>
struct FSubS {
  static constexpr int nin = 1;
  M s;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return a - V(s);
  }
};
template <class M>
struct FMulS {
  static constexpr int nin = 1;
  M s;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return a * V(s);
  }
};
// x / s: torch's CUDA kernel multiplies by the reciprocal (taken in op-math
// precision on the host side); its CPU kernel divides. Both are mirrored.
template <class M>
struct FDivS {
  static constexpr int nin = 1;
  M s;
  M inv;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return math::div_by_number(a, V(s), V(inv));
  }
};
template <class M>
struct FRSubS {
  static constexpr int nin = 1;
  M s;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return V(s) - a;
  }
};
template <class M>
struct FRDivS {
  static constexpr int nin = 1;
  M s;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return V(s) / a;
  }
};
template <class M>
struct FRPowS {
  static constexpr int nin = 1;
  M s;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return math::pow(V(s), a);
  }
};

// x ** e for a number e: torch's special exponents (math::pow_special).
template <class M>
struct FPowS {
  static constexpr int nin = 1;
  M e;
  int kind;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return math::pow_special(a, V(e), kind);
  }
};

template <class M>
struct FHypot {
  static constexpr int nin = 2;
  template <class V>
  NYTO_HD V operator()(V a, V b) const {
    return math::hypot(a, b);
  }
};
template <class M>
struct FHypotS {
  static constexpr int nin = 1;
  M s;
  template <class V>
  NYTO_HD V operator()(V a) const {
    return math::hypot(a, V(s));
  }
};

// a*x + b*y
template <class M>
struct FAxpby {
  static constexpr int nin = 2;
  M a, b;
  template <class V>
  NYTO_HD V operator()(V x, V y) const {
    return x * V(a) + y * V(b);
  }
};
// torch.lerp: the branch on |w| < 0.5 is taken once on the host.
template <class M>
struct FLerp {
  static constexpr int nin = 2;
  M w;
  bool small;
  template <class V>
  NYTO_HD V operator()(V x, V e) const {
    return small ? math::lerp_small(x, e, V(w)) : math::lerp_large(x, e, V(w));
  }
};
// torch.addcmul: x + value * y * z
template <class M>
struct FAddcmul {
  static constexpr int nin = 3;
  M v;
  template <class V>
  NYTO_HD V operator()(V x, V y, V z) const {
    return x + V(v) * y * z;
  }
};
// PSO velocity: w*v + c1*r1*(p - x) + c2*r2*(g - x), in Python's evaluation order.
template <class M>
struct FPsoVelocity {
  static constexpr int nin = 6;
  M w, c1, c2;
  template <class V>
  NYTO_HD V operator()(V v, V x, V p, V g, V r1, V r2) const {
    return V(w) * v + V(c1) * r1 * (p - x) + V(c2) * r2 * (g - x);
  }
};
template <class M>
struct FFill {
  static constexpr int nin = 0;
  M s;
  template <class V>
  NYTO_HD V operator()() const {
    return V(s);
  }
};

// A number as torch's kernels see it beside a tensor of `dtype` where the
// number is cast to the tensor's dtype first (hypot: a wrapped number).
inline double in_dtype(double v, at::ScalarType dtype) {
  if (dtype == at::kBFloat16) return static_cast<float>(c10::BFloat16(static_cast<float>(v)));
  if (dtype == at::kHalf) return static_cast<float>(c10::Half(static_cast<float>(v)));
  return v;
}

// Calls fn(functor) with the functor of job.op (csrc/ops.def's functor
// column) built from the job's scalars. Every driver (CPU per ISA, CUDA) goes
// through this one switch.
template <class M, class Fn>
inline void with_functor(const Job& job, Fn&& fn) {
  const auto& js = job.s;
  const M s0 = static_cast<M>(js[0]), s1 = static_cast<M>(js[1]), s2 = static_cast<M>(js[2]);
  (void)s1;
  (void)s2;
  switch (job.op) {
#define NYTO_OP(E, name, nl, nli, ns, args, extra, fuse, functor, ...) \
  case Op::E:                                                          \
    return fn(functor);
#include "ops.def"
#undef NYTO_OP
    default:
      break;
  }
}

}  // namespace nyto
