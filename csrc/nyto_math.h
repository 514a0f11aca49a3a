// The elementwise math of every engine, stated once: the op functors
// (csrc/functors.h, CPU and CUDA drivers), the fuse interpreters
// (csrc/fuse/cpu_interp.cpp, csrc/fuse/fuse_cuda.cu), the fuse program's
// scalar instructions and the Python evaluation of number-only expressions
// (csrc/fuse/fuse.cpp scalar_op, reached through nytorch._C.fuse_scalar).
//
// Each function is a template on the value type V: float or double (host and
// device), or, in CPU kernel files (which define NYTO_CPU_KERNEL before
// including this header), an at::vec::Vectorized of one. Only the primitives
// that differ between those types are overloaded (pow, sqrt, fma, select and
// the comparisons); the formulas above them are written once. Kernel files are
// compiled with -ffp-contract=off / --fmad=false, so `a * b + c` rounds twice
// and only fma() contracts.
#pragma once
#include <c10/macros/Macros.h>
#include <cmath>
#ifdef NYTO_CPU_KERNEL
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#endif

#define NYTO_HD C10_HOST_DEVICE C10_ALWAYS_INLINE

namespace nyto::math {

// ---- primitives: scalar float / double --------------------------------------
template <class V>
NYTO_HD V neg(V a) {
  return -a;
}
NYTO_HD float pow(float a, float b) { return ::powf(a, b); }
NYTO_HD double pow(double a, double b) { return ::pow(a, b); }
NYTO_HD float sqrt(float a) { return ::sqrtf(a); }
NYTO_HD double sqrt(double a) { return ::sqrt(a); }
NYTO_HD float abs(float a) { return ::fabsf(a); }
NYTO_HD double abs(double a) { return ::fabs(a); }
NYTO_HD float exp(float a) { return ::expf(a); }
NYTO_HD double exp(double a) { return ::exp(a); }
NYTO_HD float log(float a) { return ::logf(a); }
NYTO_HD double log(double a) { return ::log(a); }
NYTO_HD float hypot(float a, float b) { return ::hypotf(a, b); }
NYTO_HD double hypot(double a, double b) { return ::hypot(a, b); }
// a * b + c with one rounding.
NYTO_HD float fma(float a, float b, float c) { return ::fmaf(a, b, c); }
NYTO_HD double fma(double a, double b, double c) { return ::fma(a, b, c); }
// torch's vectorized CPU kernels' at::vec::fmadd: one rounding on scalars and
// AVX2, `a * b + c` on the portable (DEFAULT) vector build. The op functors
// mirror torch's kernels with it; fuse's fma() is one rounding everywhere.
template <class V>
NYTO_HD V torch_fmadd(V a, V b, V c) {
  return fma(a, b, c);
}
// c ? a : b per element (c: a bool, or a comparison mask on vectors).
template <class C, class V>
NYTO_HD V select(C c, V a, V b) {
  return c ? a : b;
}
// Comparisons as 0/1 values of V (fuse's masks).
template <class V>
NYTO_HD V lt(V a, V b) {
  return static_cast<V>(a < b);
}
template <class V>
NYTO_HD V le(V a, V b) {
  return static_cast<V>(a <= b);
}
template <class V>
NYTO_HD V gt(V a, V b) {
  return static_cast<V>(a > b);
}
template <class V>
NYTO_HD V ge(V a, V b) {
  return static_cast<V>(a >= b);
}
template <class V>
NYTO_HD V eq(V a, V b) {
  return static_cast<V>(a == b);
}
template <class V>
NYTO_HD V ne(V a, V b) {
  return static_cast<V>(a != b);
}
// torch.minimum / torch.maximum: NaN if either is NaN; on a tie (0.0, -0.0)
// the second operand (x86's minps/maxps, torch's vectorized CPU kernels).
template <class V>
NYTO_HD V minimum(V a, V b) {
  return a != a ? a : (b != b ? b : (a < b ? a : b));
}
template <class V>
NYTO_HD V maximum(V a, V b) {
  return a != a ? a : (b != b ? b : (a > b ? a : b));
}
// torch.sign: -1, 0 or 1; 0 for NaN, -0.0 -> 0.0.
template <class V>
NYTO_HD V sign(V a) {
  return static_cast<V>((V(0) < a) - (a < V(0)));
}
// fuse's where(c, a, b): a where c is nonzero.
template <class V>
NYTO_HD V where(V c, V a, V b) {
  return select(c != V(0), a, b);
}

#ifdef NYTO_CPU_KERNEL
// ---- primitives: at::vec::Vectorized<T> -------------------------------------
template <class T>
using Vec = at::vec::Vectorized<T>;
template <class T>
inline Vec<T> neg(const Vec<T>& a) {
  return a.neg();
}
template <class T>
inline Vec<T> pow(const Vec<T>& a, const Vec<T>& b) {
  return a.pow(b);
}
template <class T>
inline Vec<T> sqrt(const Vec<T>& a) {
  return a.sqrt();
}
template <class T>
inline Vec<T> abs(const Vec<T>& a) {
  return a.abs();
}
template <class T>
inline Vec<T> exp(const Vec<T>& a) {
  return a.exp();
}
template <class T>
inline Vec<T> log(const Vec<T>& a) {
  return a.log();
}
template <class T>
inline Vec<T> hypot(const Vec<T>& a, const Vec<T>& b) {
  return a.hypot(b);
}
template <class T>
inline Vec<T> fma(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
#if defined(CPU_CAPABILITY_AVX2)
  return at::vec::fmadd(a, b, c);  // one rounding (vfmadd)
#else
  alignas(64) T x[Vec<T>::size()], y[Vec<T>::size()], z[Vec<T>::size()];
  a.store(x);
  b.store(y);
  c.store(z);
  for (int j = 0; j < Vec<T>::size(); ++j) x[j] = std::fma(x[j], y[j], z[j]);
  return Vec<T>::loadu(x);
#endif
}
template <class T>
inline Vec<T> torch_fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
  return at::vec::fmadd(a, b, c);
}
template <class T>
inline Vec<T> select(const Vec<T>& c, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, c);
}
template <class T>
inline Vec<T> lt(const Vec<T>& a, const Vec<T>& b) {
  return a.lt(b);
}
template <class T>
inline Vec<T> le(const Vec<T>& a, const Vec<T>& b) {
  return a.le(b);
}
template <class T>
inline Vec<T> gt(const Vec<T>& a, const Vec<T>& b) {
  return a.gt(b);
}
template <class T>
inline Vec<T> ge(const Vec<T>& a, const Vec<T>& b) {
  return a.ge(b);
}
template <class T>
inline Vec<T> eq(const Vec<T>& a, const Vec<T>& b) {
  return a.eq(b);
}
template <class T>
inline Vec<T> ne(const Vec<T>& a, const Vec<T>& b) {
  return a.ne(b);
}
template <class T>
inline Vec<T> minimum(const Vec<T>& a, const Vec<T>& b) {
  return at::vec::minimum(a, b);
}
template <class T>
inline Vec<T> maximum(const Vec<T>& a, const Vec<T>& b) {
  return at::vec::maximum(a, b);
}
template <class T>
inline Vec<T> sign(const Vec<T>& a) {
  return Vec<T>(T(0)).lt(a) - a.lt(Vec<T>(T(0)));
}
template <class T>
inline Vec<T> where(const Vec<T>& c, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, c != Vec<T>(T(0)));
}
#endif

// ---- formulas, written once ------------------------------------------------
// torch.lerp(x, e, w): the weight's size picks the better-rounding form.
template <class V>
NYTO_HD V lerp_small(V x, V e, V w) {
  return torch_fmadd(w, e - x, x);
}
template <class V>
NYTO_HD V lerp_large(V x, V e, V w) {
  return torch_fmadd(w - V(1.0), e - x, e);
}
template <class W>
NYTO_HD bool lerp_is_small(W w) {
  return abs(w) < W(0.5);
}
// Per element (fuse: the weight may vary), with one-rounding fma.
template <class V>
NYTO_HD V lerp(V x, V e, V w) {
  const V diff = e - x;
  return select(abs(w) < V(0.5), fma(w, diff, x), fma(w - V(1.0), diff, e));
}

// x ** e with torch's special cases for common exponents (what torch's pow
// kernels compute for a number exponent: exact squares, sqrt, reciprocals).
enum PowKind : int { kPowGeneral, kPowSquare, kPowCube, kPowSqrt, kPowRecip, kPowRsqrt, kPowInvSquare };
NYTO_HD int pow_kind(double e) {
  if (e == 2.0) return kPowSquare;
  if (e == 3.0) return kPowCube;
  if (e == 0.5) return kPowSqrt;
  if (e == -1.0) return kPowRecip;
  if (e == -0.5) return kPowRsqrt;
  if (e == -2.0) return kPowInvSquare;
  return kPowGeneral;
}
template <class V>
NYTO_HD V pow_special(V a, V e, int kind) {
  switch (kind) {
    case kPowSquare:
      return a * a;
    case kPowCube:
      return a * a * a;
    case kPowSqrt:
      return sqrt(a);
    case kPowRecip:
      return V(1.0) / a;
    case kPowRsqrt:
      return V(1.0) / sqrt(a);
    case kPowInvSquare:
      return V(1.0) / (a * a);
    default:
      return pow(a, e);
  }
}

// x / number: torch's CUDA kernel multiplies by the reciprocal (taken once, in
// op-math precision); its CPU kernel divides. `inv` is 1 / s.
template <class V>
NYTO_HD V div_by_number(V a, V s, V inv) {
#ifdef __CUDA_ARCH__
  (void)s;
  return a * inv;
#else
  (void)inv;
  return a / s;
#endif
}

}  // namespace nyto::math
