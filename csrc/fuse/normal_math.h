// The normals of nytorch.fuse (randn_like), stated once for every engine: the
// CPU interpreter (fuse/cpu_random.h: this scalar code in the DEFAULT build;
// its AVX2 vectors repeat these operations lane for lane), the CUDA
// interpreter (fuse/fuse_cuda.cu) and the generated kernels
// (python/nytorch/_fuse/codegen.py: NVRTC, and the host build of the tests).
//
// Box-Muller (docs/fuse.md): a pair of uniforms, u1 in (0, 1] and u2 in
// [0, 1), gives the pair's even element r cos(2 pi u2) and its odd element
// r sin(2 pi u2), r = sqrt(-2 log u1). Engines agree bit for bit because no
// step is left to a library: log and sin/cos are polynomials written out here
// and every step is one IEEE operation with one rounding (+, -, *, /, sqrt, an
// explicit fma, or an exact integer or conversion step). The float forms are
// the AVX2 code's since it was written (today's streams); the double ones are
// fdlibm's log and minimax polynomials of our own.
//
// Device code calls the _rn intrinsics, so no --fmad setting can contract a
// product into a sum; host files must be compiled without contraction
// (-ffp-contract=off, as the CPU kernels and the test's host build are). Only
// the float forms use fma (the AVX2 code's, which defined today's streams);
// the double forms use none, so no engine needs hardware or library fma.
#pragma once
#include <c10/macros/Macros.h>

#include <cstdint>

#include "fuse/philox.h"

#define NYTO_NM C10_HOST_DEVICE C10_ALWAYS_INLINE

namespace nyto::fuse::normal {

// ---- one rounding each -----------------------------------------------------
#ifdef __CUDA_ARCH__
NYTO_NM float add(float a, float b) { return __fadd_rn(a, b); }
NYTO_NM float sub(float a, float b) { return __fsub_rn(a, b); }
NYTO_NM float mul(float a, float b) { return __fmul_rn(a, b); }
NYTO_NM float div(float a, float b) { return __fdiv_rn(a, b); }
NYTO_NM float sqrt(float a) { return __fsqrt_rn(a); }
NYTO_NM float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
NYTO_NM double add(double a, double b) { return __dadd_rn(a, b); }
NYTO_NM double sub(double a, double b) { return __dsub_rn(a, b); }
NYTO_NM double mul(double a, double b) { return __dmul_rn(a, b); }
NYTO_NM double div(double a, double b) { return __ddiv_rn(a, b); }
NYTO_NM double sqrt(double a) { return __dsqrt_rn(a); }
NYTO_NM uint32_t bits(float a) { return __float_as_uint(a); }
NYTO_NM float from_bits(uint32_t a) { return __uint_as_float(a); }
NYTO_NM uint64_t bits(double a) { return static_cast<uint64_t>(__double_as_longlong(a)); }
NYTO_NM double from_bits(uint64_t a) { return __longlong_as_double(static_cast<long long>(a)); }
#else
NYTO_NM float add(float a, float b) { return a + b; }
NYTO_NM float sub(float a, float b) { return a - b; }
NYTO_NM float mul(float a, float b) { return a * b; }
NYTO_NM float div(float a, float b) { return a / b; }
NYTO_NM float sqrt(float a) { return __builtin_sqrtf(a); }
#if defined(__FP_FAST_FMAF)  // a hardware fma (the AVX2 build, aarch64)
NYTO_NM float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
#else
// fmaf without one (the DEFAULT x86 build; libm's software fmaf switches
// rounding modes per call): a * b is exact in double, so s = a * b + c rounds
// once, to double; rounding s to float gives the correctly rounded result
// unless s is a float midpoint (rounding to double is monotonic and cannot
// cross one: float midpoints are doubles) or below float's normal range.
// Those rare cases (2^-29 of sums) take the sum rounded to odd (truncated
// toward zero, last bit set when inexact, from TwoSum's exact error), which
// rounds to float like the exact sum as 53 >= 2 * 24 + 2 bits (Boldo and
// Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms
// using rounding to odd").
NYTO_NM float fma(float a, float b, float c) {
  const double p = static_cast<double>(a) * b, cd = c;
  double s = p + cd;
  uint64_t u;
  __builtin_memcpy(&u, &s, 8);
  if (__builtin_expect((u & 0x1FFFFFFFu) != 0x10000000u && (u & ~(uint64_t(1) << 63)) >= 0x3820000000000000u, 1)) {
    return static_cast<float>(s);  // |s| >= 2^-125 and no float midpoint
  }
  const double bv = s - p, err = (p - (s - bv)) + (cd - bv);         // p + cd == s + err exactly
  const uint64_t inexact = err != 0, beyond = (err > 0) != (s > 0);  // |s| > |p + cd| (when inexact)
  u = (u - (inexact & beyond)) | inexact;  // s != 0 when inexact: a nonzero sum rounds to nonzero
  __builtin_memcpy(&s, &u, 8);
  return static_cast<float>(s);
}
#endif
NYTO_NM double add(double a, double b) { return a + b; }
NYTO_NM double sub(double a, double b) { return a - b; }
NYTO_NM double mul(double a, double b) { return a * b; }
NYTO_NM double div(double a, double b) { return a / b; }
NYTO_NM double sqrt(double a) { return __builtin_sqrt(a); }
NYTO_NM uint32_t bits(float a) {
  uint32_t u;
  __builtin_memcpy(&u, &a, 4);
  return u;
}
NYTO_NM float from_bits(uint32_t a) {
  float f;
  __builtin_memcpy(&f, &a, 4);
  return f;
}
NYTO_NM uint64_t bits(double a) {
  uint64_t u;
  __builtin_memcpy(&u, &a, 8);
  return u;
}
NYTO_NM double from_bits(uint64_t a) {
  double f;
  __builtin_memcpy(&f, &a, 8);
  return f;
}
#endif

// ---- float -------------------------------------------------------------------
// log: 2 atanh(s) = 2 (s + s^3 (kL1 + kL2 s^2 + kL3 s^4)), a minimax
// polynomial (relative error 8e-10 before rounding); log 2 in two parts.
constexpr float kL1 = 0.3333338797092438f, kL2 = 0.19988854229450226f, kL3 = 0.14934006333351135f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
// sin(pi x) = x (kS0 + kS1 t + kS2 t^2 + kS3 t^3), cos(pi x) = 1 + kC1 t + ...
// + kC4 t^4, t = x^2, |x| <= 1/4 (minimax, relative error < 1e-10 before rounding).
constexpr float kS0 = 3.14159274101257324f, kS1 = -5.16770792007446289f, kS2 = 2.54976105690002441f,
                kS3 = -0.58901214599609375f;
constexpr float kC1 = -4.93480205535888672f, kC2 = 4.05870676040649414f, kC3 = -1.33503592014312744f,
                kC4 = 0.231260910630226135f;
constexpr uint32_t kSqrtHalfF = 0x3f3504f3u;  // the bits of sqrt(1/2) (float)

// -2 log(k 2^-24) for integers k in [1, 2^24] (u1 of a pair, no special
// cases): k = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| < 0.172. About 1 ulp; one division and a short
// dependency chain (a degree-8 polynomial in m - 1 measured 15% slower).
NYTO_NM float neg2log_k24(uint32_t k) {
  const uint32_t ui = bits(static_cast<float>(k));                    // exact
  const uint32_t e = (ui - kSqrtHalfF) >> 23;                         // ui >= 1.0f's bits: no borrow
  const float f = sub(from_bits(ui - (e << 23)), 1.0f);               // m - 1, exact
  const float ef = static_cast<float>(static_cast<int32_t>(e) - 24);  // exact
  const float s = div(f, add(f, 2.0f));
  const float t = mul(s, s);
  float p = fma(t, kL3, kL2);
  p = fma(t, p, kL1);
  const float half_log_m = fma(mul(s, t), p, s);
  const float b = fma(half_log_m, -4.0f, mul(ef, -2 * kLn2Lo));  // -2 * kLn2*: exact constants
  return fma(ef, -2 * kLn2Hi, b);
}

// sin and cos of 2 pi u for u in [0, 1): 2u = q/2 + x exactly, q = round(4u)
// (to nearest even: adding and taking away 2^23 rounds 4u < 4 to an integer),
// |x| <= 1/4; the polynomials in x, then the quadrant q by a swap and signs.
NYTO_NM void sincospi2(float u, float& s, float& c) {
  const float y = add(u, u);
  const float q = sub(add(add(y, y), 8388608.0f), 8388608.0f);
  const float x = fma(-q, 0.5f, y);  // exact
  const float t = mul(x, x);
  float S = fma(t, kS3, kS2);
  S = fma(t, S, kS1);
  S = mul(x, fma(t, S, kS0));
  float C = fma(t, kC4, kC3);
  C = fma(t, C, kC2);
  C = fma(t, C, kC1);
  C = fma(t, C, 1.0f);
  const int qi = static_cast<int>(q);  // 0 ... 4
  const float sw_s = (qi & 1) ? C : S, sw_c = (qi & 1) ? S : C;
  s = (qi & 2) ? -sw_s : sw_s;
  c = ((qi + 1) & 2) ? -sw_c : sw_c;
}

// The pair of float normals of two Philox words: u1 = ((w1 >> 8) + 1) 2^-24
// in (0, 1] (log never sees 0), u2 = (w2 >> 8) 2^-24 (philox.h u24).
NYTO_NM void box_muller(uint32_t w1, uint32_t w2, float& even, float& odd) {
  const float r = sqrt(neg2log_k24((w1 >> 8) + 1));
  float s, c;
  sincospi2(u24(w2), s, c);
  even = mul(r, c);
  odd = mul(r, s);
}

// ---- double ------------------------------------------------------------------
// log: fdlibm's e_log.c as written (k ln2_hi - ((hfsq - (s (hfsq + R) + k
// ln2_lo)) - f), R a polynomial in s^2, error < 1 ulp).
constexpr double kLg1 = 6.666666666666735130e-01, kLg2 = 3.999999999940941908e-01, kLg3 = 2.857142874366239149e-01,
                 kLg4 = 2.222219843214978396e-01, kLg5 = 1.818357216161805012e-01, kLg6 = 1.531383769920937332e-01,
                 kLg7 = 1.479819860511658591e-01;
constexpr double kLn2HiD = 6.93147180369123816490e-01, kLn2LoD = 1.90821492927058770002e-10;  // hi: 21 zero bits
// sin(pi x) = x (pi + t (kSd0 + ... + kSd6 t^6)), cos(pi x) = 1 + t (kCd0 +
// ... + kCd6 t^6), t = x^2, |x| <= 1/4: Chebyshev fits of (sin(pi x) / x -
// pi) / t and (cos(pi x) - 1) / t (mpmath; errors 7e-21 and 1.2e-19 before
// rounding), so sin keeps a relative error near 1 ulp down to x = 0. (Scalars,
// not arrays: CUDA device code may read namespace-scope constexpr scalars.)
constexpr double kPi = 3.141592653589793116;
constexpr double kSd0 = -5.16771278004997, kSd1 = 2.550164039877345, kSd2 = -0.5992645293206478,
                 kSd3 = 0.08214588659727676, kSd4 = -0.0073704303122948235, kSd5 = 0.0004662879326147481,
                 kSd6 = -2.1742067342478005e-05;
constexpr double kCd0 = -4.934802200544679, kCd1 = 4.058712126416765, kCd2 = -1.3352627688538095,
                 kCd3 = 0.23533063028399223, kCd4 = -0.025806887964701878, kCd5 = 0.001929493874894941,
                 kCd6 = -0.00010370082971594627;
constexpr uint64_t kSqrtHalfD = 0x3fe6a09e667f3bcdull;  // the bits of sqrt(1/2) (double)

// -2 log(k 2^-53) for integers k in [1, 2^53] (u1 of a pair): k = m 2^e with
// m in [sqrt(1/2), sqrt(2)) as in the float form, then fdlibm's log(1 + f).
NYTO_NM double neg2log_k53(uint64_t k) {
  const uint64_t ui = bits(static_cast<double>(k));                     // exact
  const uint64_t e = (ui - kSqrtHalfD) >> 52;                           // ui >= 1.0's bits: no borrow
  const double f = sub(from_bits(ui - (e << 52)), 1.0);                 // m - 1, exact
  const double ef = static_cast<double>(static_cast<int32_t>(e) - 53);  // exact
  const double s = div(f, add(f, 2.0));
  const double z = mul(s, s), w = mul(z, z);
  const double t1 = mul(w, add(kLg2, mul(w, add(kLg4, mul(w, kLg6)))));
  const double t2 = mul(z, add(kLg1, mul(w, add(kLg3, mul(w, add(kLg5, mul(w, kLg7)))))));
  const double hfsq = mul(mul(0.5, f), f);
  const double a = add(mul(s, add(hfsq, add(t2, t1))), mul(ef, kLn2LoD));
  const double log_u = sub(mul(ef, kLn2HiD), sub(sub(hfsq, a), f));
  return mul(-2.0, log_u);  // exact
}

// sin and cos of 2 pi u for u in [0, 1), as the float form (2^52 rounds 4u).
NYTO_NM void sincospi2(double u, double& s, double& c) {
  const double y = add(u, u);
  const double q = sub(add(add(y, y), 4503599627370496.0), 4503599627370496.0);
  const double x = sub(y, mul(q, 0.5));  // exact
  const double t = mul(x, x);
  double S = add(kSd5, mul(t, kSd6));
  S = add(kSd4, mul(t, S));
  S = add(kSd3, mul(t, S));
  S = add(kSd2, mul(t, S));
  S = add(kSd1, mul(t, S));
  S = add(kSd0, mul(t, S));
  S = mul(x, add(kPi, mul(t, S)));
  double C = add(kCd5, mul(t, kCd6));
  C = add(kCd4, mul(t, C));
  C = add(kCd3, mul(t, C));
  C = add(kCd2, mul(t, C));
  C = add(kCd1, mul(t, C));
  C = add(kCd0, mul(t, C));
  C = add(1.0, mul(t, C));
  const int qi = static_cast<int>(q);
  const double sw_s = (qi & 1) ? C : S, sw_c = (qi & 1) ? S : C;
  s = (qi & 2) ? -sw_s : sw_s;
  c = ((qi + 1) & 2) ? -sw_c : sw_c;
}

// The pair of double normals of one counter's 4 words: u1 = (((w0 << 32 |
// w1) >> 11) + 1) 2^-53 in (0, 1], u2 from (w2, w3) in [0, 1) (philox.h u53).
NYTO_NM void box_muller(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3, double& even, double& odd) {
  const double r = sqrt(neg2log_k53((((static_cast<uint64_t>(w0) << 32) | w1) >> 11) + 1));
  double s, c;
  sincospi2(u53(w2, w3), s, c);
  even = mul(r, c);
  odd = mul(r, s);
}

}  // namespace nyto::fuse::normal

#undef NYTO_NM
