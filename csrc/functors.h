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
#include <c10/macros/Macros.h>
#include <cmath>
#include "nyto.h"

#define NYTO_HD C10_HOST_DEVICE C10_ALWAYS_INLINE

namespace nyto {
namespace math {
template <class V> NYTO_HD V neg(V a) { return -a; }
NYTO_HD float pow(float a, float b) { return ::powf(a, b); }
NYTO_HD double pow(double a, double b) { return ::pow(a, b); }
NYTO_HD float sqrt(float a) { return ::sqrtf(a); }
NYTO_HD double sqrt(double a) { return ::sqrt(a); }
NYTO_HD float fmadd(float a, float b, float c) { return ::fmaf(a, b, c); }
NYTO_HD double fmadd(double a, double b, double c) { return ::fma(a, b, c); }
#ifdef NYTO_CPU_KERNEL
template <class T> inline at::vec::Vectorized<T> neg(const at::vec::Vectorized<T>& a) { return a.neg(); }
template <class T> inline at::vec::Vectorized<T> pow(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) { return a.pow(b); }
template <class T> inline at::vec::Vectorized<T> sqrt(const at::vec::Vectorized<T>& a) { return a.sqrt(); }
template <class T> inline at::vec::Vectorized<T> fmadd(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b, const at::vec::Vectorized<T>& c) { return at::vec::fmadd(a, b, c); }
#endif
}  // namespace math

template <class M> struct FNeg  { static constexpr int nin = 1; template <class V> NYTO_HD V operator()(V a) const { return math::neg(a); } };
template <class M> struct FCopy { static constexpr int nin = 1; template <class V> NYTO_HD V operator()(V a) const { return a; } };
template <class M> struct FAdd  { static constexpr int nin = 2; template <class V> NYTO_HD V operator()(V a, V b) const { return a + b; } };
template <class M> struct FSub  { static constexpr int nin = 2; template <class V> NYTO_HD V operator()(V a, V b) const { return a - b; } };
template <class M> struct FMul  { static constexpr int nin = 2; template <class V> NYTO_HD V operator()(V a, V b) const { return a * b; } };
template <class M> struct FDiv  { static constexpr int nin = 2; template <class V> NYTO_HD V operator()(V a, V b) const { return a / b; } };
template <class M> struct FPow  { static constexpr int nin = 2; template <class V> NYTO_HD V operator()(V a, V b) const { return math::pow(a, b); } };

template <class M> struct FAddS  { static constexpr int nin = 1; M s; template <class V> NYTO_HD V operator()(V a) const { return a + V(s); } };
template <class M> struct FSubS  { static constexpr int nin = 1; M s; template <class V> NYTO_HD V operator()(V a) const { return a - V(s); } };
template <class M> struct FMulS  { static constexpr int nin = 1; M s; template <class V> NYTO_HD V operator()(V a) const { return a * V(s); } };
// x / s: torch's CUDA kernel multiplies by the reciprocal (taken in op-math
// precision on the host side); its CPU kernel divides. Both are mirrored.
template <class M> struct FDivS  { static constexpr int nin = 1; M s; M inv;
  template <class V> NYTO_HD V operator()(V a) const {
#ifdef __CUDA_ARCH__
    return a * V(inv);
#else
    return a / V(s);
#endif
  } };
template <class M> struct FRSubS { static constexpr int nin = 1; M s; template <class V> NYTO_HD V operator()(V a) const { return V(s) - a; } };
template <class M> struct FRDivS { static constexpr int nin = 1; M s; template <class V> NYTO_HD V operator()(V a) const { return V(s) / a; } };
template <class M> struct FRPowS { static constexpr int nin = 1; M s; template <class V> NYTO_HD V operator()(V a) const { return math::pow(V(s), a); } };

// x ** e with torch's special cases for common exponents (exact like torch).
enum PowKind : int { kPowGeneral, kPowSquare, kPowCube, kPowSqrt, kPowRecip, kPowRsqrt, kPowInvSquare };
inline int pow_kind(double e) {
  if (e == 2.0) return kPowSquare;
  if (e == 3.0) return kPowCube;
  if (e == 0.5) return kPowSqrt;
  if (e == -1.0) return kPowRecip;
  if (e == -0.5) return kPowRsqrt;
  if (e == -2.0) return kPowInvSquare;
  return kPowGeneral;
}
template <class M> struct FPowS {
  static constexpr int nin = 1; M e; int kind;
  template <class V> NYTO_HD V operator()(V a) const {
    switch (kind) {
      case kPowSquare: return a * a;
      case kPowCube: return a * a * a;
      case kPowSqrt: return math::sqrt(a);
      case kPowRecip: return V(M(1)) / a;
      case kPowRsqrt: return V(M(1)) / math::sqrt(a);
      case kPowInvSquare: return V(M(1)) / (a * a);
      default: return math::pow(a, V(e));
    }
  }
};

// a*x + b*y
template <class M> struct FAxpby { static constexpr int nin = 2; M a, b;
  template <class V> NYTO_HD V operator()(V x, V y) const { return x * V(a) + y * V(b); } };
// torch.lerp: the branch on |w| < 0.5 is taken once on the host.
template <class M> struct FLerp { static constexpr int nin = 2; M w; bool small;
  template <class V> NYTO_HD V operator()(V x, V e) const {
    return small ? math::fmadd(V(w), e - x, x) : math::fmadd(V(w - M(1)), e - x, e); } };
// torch.addcmul: x + value * y * z
template <class M> struct FAddcmul { static constexpr int nin = 3; M v;
  template <class V> NYTO_HD V operator()(V x, V y, V z) const { return x + V(v) * y * z; } };
// PSO velocity: w*v + c1*r1*(p - x) + c2*r2*(g - x), in Python's evaluation order.
template <class M> struct FPsoVelocity { static constexpr int nin = 6; M w, c1, c2;
  template <class V> NYTO_HD V operator()(V v, V x, V p, V g, V r1, V r2) const {
    return V(w) * v + V(c1) * r1 * (p - x) + V(c2) * r2 * (g - x); } };
template <class M> struct FFill { static constexpr int nin = 0; M s;
  template <class V> NYTO_HD V operator()() const { return V(s); } };

// Calls fn(functor) with the functor of job.op built from the job's scalars.
// Every driver (CPU per ISA, CUDA) goes through this one switch.
template <class M, class Fn>
inline void with_functor(const Job& job, Fn&& fn) {
  const M s0 = static_cast<M>(job.s[0]), s1 = static_cast<M>(job.s[1]), s2 = static_cast<M>(job.s[2]);
  switch (job.op) {
    case Op::Neg: return fn(FNeg<M>{});
    case Op::Copy: return fn(FCopy<M>{});
    case Op::Add: return fn(FAdd<M>{});
    case Op::Sub: return fn(FSub<M>{});
    case Op::Mul: return fn(FMul<M>{});
    case Op::Div: return fn(FDiv<M>{});
    case Op::Pow: return fn(FPow<M>{});
    case Op::AddS: return fn(FAddS<M>{s0});
    case Op::SubS: return fn(FSubS<M>{s0});
    case Op::MulS: return fn(FMulS<M>{s0});
    case Op::DivS: return fn(FDivS<M>{s0, M(1) / s0});
    case Op::PowS: return fn(FPowS<M>{s0, pow_kind(job.s[0])});
    case Op::RSubS: return fn(FRSubS<M>{s0});
    case Op::RDivS: return fn(FRDivS<M>{s0});
    case Op::RPowS: return fn(FRPowS<M>{s0});
    case Op::Axpby: return fn(FAxpby<M>{s0, s1});
    case Op::Lerp: return fn(FLerp<M>{s0, std::abs(job.s[0]) < 0.5});
    case Op::Addcmul: return fn(FAddcmul<M>{s0});
    case Op::PsoVelocity: return fn(FPsoVelocity<M>{s0, s1, s2});
    case Op::Fill: return fn(FFill<M>{s0});
    default: break;
  }
}

}  // namespace nyto
