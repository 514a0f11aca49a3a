// Random numbers of nytorch.fuse on the CPU: Philox4x32-10 (8 counters per
// AVX2 step) turned into uniform or normal values of a block, and the
// prefetching that rides on those compute-bound rounds. Included by
// cpu_interp.cpp, so compiled once per instruction set like it; everything
// here lives in that build's namespace.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include "dispatch.h"  // cpu_avx512
#include "fuse/normal_math.h"
#include "fuse/philox.h"
#include "fuse/program.h"

namespace nyto::fuse {
namespace CPU_CAPABILITY {
namespace {

// Prefetches the next block's lines a few at a time while this block draws
// its random numbers: Philox is compute-bound, so those memory fetches then
// overlap the rounds instead of following them. (Prefetching a whole block
// at once floods the miss buffers and measured slower than none.)
struct LinePrefetcher {
  static constexpr int kMax = 16;
  const char* base[kMax];
  bool write[kMax];
  int n = 0, s = 0;
  int64_t bytes = 0, off = 0, per_call = 0;
  void add(const void* p, bool w) {
    if (n < kMax) {
      base[n] = static_cast<const char*>(p);
      write[n++] = w;
    }
  }
  void step() {
    for (int64_t k = 0; k < per_call && s < n; ++k) {
      if (write[s]) {
        __builtin_prefetch(base[s] + off, 1, 3);
      } else {
        __builtin_prefetch(base[s] + off, 0, 3);
      }
      off += 64;
      if (off >= bytes) {
        off = 0;
        ++s;
      }
    }
  }
};

template <class M>
struct Random {
  using Vec = at::vec::Vectorized<M>;
  static constexpr int64_t W = Vec::size();

#if defined(CPU_CAPABILITY_AVX2)
  // Philox4x32-10 of the 8 counters c..c+7 (the low words must not wrap),
  // written as 32 words in counter order, bitwise equal to philox4x32_10.
  // Each 64-bit lane carries one counter's word in its low half: vpmuludq
  // reads only those halves, so the high product needs one shift and the
  // upper halves may hold anything until the final packing.
  static constexpr int H = 2;  // 2 groups of 4 counters (4 groups measured no faster in place)
  static void philox8(uint64_t c, uint32_t stream, uint32_t group, uint32_t k0s, uint32_t k1s, __m256i* out) {
    const __m256i lo_c = _mm256_set1_epi64x(static_cast<uint32_t>(c));
    __m256i x0[H], x1[H], x2[H], x3[H];
    for (int h = 0; h < H; ++h) {
      x0[h] = _mm256_add_epi64(lo_c, _mm256_setr_epi64x(4 * h, 4 * h + 1, 4 * h + 2, 4 * h + 3));
      x1[h] = _mm256_set1_epi64x(static_cast<uint32_t>(c >> 32));
      x2[h] = _mm256_set1_epi64x(stream);
      x3[h] = _mm256_set1_epi64x(group);
    }
    __m256i k0 = _mm256_set1_epi64x(k0s), k1 = _mm256_set1_epi64x(k1s);
    const __m256i m0 = _mm256_set1_epi64x(0xD2511F53u), m1 = _mm256_set1_epi64x(0xCD9E8D57u);
    const __m256i w0 = _mm256_set1_epi64x(0x9E3779B9u), w1 = _mm256_set1_epi64x(0xBB67AE85u);
    for (int r = 0; r < 10; ++r) {
      if (r > 0) {
        k0 = _mm256_add_epi32(k0, w0);  // 32-bit adds: the low halves wrap like uint32
        k1 = _mm256_add_epi32(k1, w1);
      }
#pragma GCC unroll 2
      for (int h = 0; h < H; ++h) {
        const __m256i p0 = _mm256_mul_epu32(x0[h], m0), p1 = _mm256_mul_epu32(x2[h], m1);
        x0[h] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), x1[h]), k0);
        x2[h] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), x3[h]), k1);
        x1[h] = p1;
        x3[h] = p0;
      }
    }
    for (int h = 0; h < H; ++h) {  // counters 4h..4h+3: [w0 w1 w2 w3] each
      const __m256i w01 = _mm256_blend_epi32(x0[h], _mm256_slli_epi64(x1[h], 32), 0xAA);
      const __m256i w23 = _mm256_blend_epi32(x2[h], _mm256_slli_epi64(x3[h], 32), 0xAA);
      const __m256i even = _mm256_unpacklo_epi64(w01, w23), odd = _mm256_unpackhi_epi64(w01, w23);
      out[2 * h] = _mm256_permute2x128_si256(even, odd, 0x20);
      out[2 * h + 1] = _mm256_permute2x128_si256(even, odd, 0x31);
    }
  }

  // The same rounds on 32 counters c..c+31 (the low word must not wrap) with
  // AVX-512: 4 independent chains of 8 counters in zmm registers (32 of
  // them: no spills) and one vpternlog per double xor. Measured 1.9x the
  // uniforms per second of philox8 on Zen 4. w: the 128 words in counter
  // order (16 per register), bitwise philox4x32_10; philox32_avx512 stores
  // them, uniform32_avx512 converts them. Called only when cpu_avx512().
  __attribute__((target("avx512f,avx512vl,avx512dq"), always_inline)) static inline void philox32_rounds(
      uint64_t c, uint32_t stream, uint32_t group, uint32_t k0s, uint32_t k1s, __m512i (&w)[8]) {
    constexpr int G = 4;
    const __m512i lo_c = _mm512_set1_epi64(static_cast<uint32_t>(c));
    __m512i x0[G], x1[G], x2[G], x3[G];
    for (int h = 0; h < G; ++h) {
      x0[h] = _mm512_add_epi64(
          lo_c, _mm512_setr_epi64(8 * h, 8 * h + 1, 8 * h + 2, 8 * h + 3, 8 * h + 4, 8 * h + 5, 8 * h + 6, 8 * h + 7));
      x1[h] = _mm512_set1_epi64(static_cast<uint32_t>(c >> 32));
      x2[h] = _mm512_set1_epi64(stream);
      x3[h] = _mm512_set1_epi64(group);
    }
    __m512i k0 = _mm512_set1_epi64(k0s), k1 = _mm512_set1_epi64(k1s);
    const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
    const __m512i w0 = _mm512_set1_epi64(0x9E3779B9u), w1 = _mm512_set1_epi64(0xBB67AE85u);
    for (int r = 0; r < 10; ++r) {
      if (r > 0) {
        k0 = _mm512_add_epi32(k0, w0);
        k1 = _mm512_add_epi32(k1, w1);
      }
#pragma GCC unroll 4
      for (int h = 0; h < G; ++h) {
        const __m512i p0 = _mm512_mul_epu32(x0[h], m0), p1 = _mm512_mul_epu32(x2[h], m1);
        x0[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), x1[h], k0, 0x96);  // a ^ b ^ c
        x2[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), x3[h], k1, 0x96);
        x1[h] = p1;
        x3[h] = p0;
      }
    }
    // lane j of chain h: counter 8h + j. w01 lanes hold (w0, w1), w23 (w2, w3);
    // unpacklo/hi give counters 8h + {0,2,4,6} / {1,3,5,7} per 128-bit lane,
    // and one two-source permute per half puts them in counter order.
    const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11),
                  second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (int h = 0; h < G; ++h) {
      const __m512i w01 = _mm512_mask_blend_epi32(0xAAAA, x0[h], _mm512_slli_epi64(x1[h], 32));
      const __m512i w23 = _mm512_mask_blend_epi32(0xAAAA, x2[h], _mm512_slli_epi64(x3[h], 32));
      const __m512i even = _mm512_unpacklo_epi64(w01, w23), odd = _mm512_unpackhi_epi64(w01, w23);
      w[2 * h] = _mm512_permutex2var_epi64(even, first, odd);
      w[2 * h + 1] = _mm512_permutex2var_epi64(even, second, odd);
    }
  }
  __attribute__((target("avx512f,avx512vl,avx512dq"))) static void philox32_avx512(uint64_t c, uint32_t stream,
                                                                                   uint32_t group, uint32_t k0s,
                                                                                   uint32_t k1s, uint32_t* out) {
    __m512i w[8];
    philox32_rounds(c, stream, group, k0s, k1s, w);
    for (int q = 0; q < 8; ++q) _mm512_store_si512(out + 16 * q, w[q]);
  }
  // The same 32 counters as 128 float uniforms (bits >> 8) * scale, scale =
  // s * 2^-24, straight from the registers to d (the AVX2 conversion's values).
  __attribute__((target("avx512f,avx512vl,avx512dq"))) static void uniform32_avx512(uint64_t c, uint32_t stream,
                                                                                    uint32_t group, uint32_t k0s,
                                                                                    uint32_t k1s, float scale,
                                                                                    float* d) {
    __m512i w[8];
    philox32_rounds(c, stream, group, k0s, k1s, w);
    const __m512 sc = _mm512_set1_ps(scale);
    for (int q = 0; q < 8; ++q) {
      _mm512_storeu_ps(d + 16 * q, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w[q], 8)), sc));
    }
  }

  // Philox words of counters c_first + j0 ... in steps of 8 counters (while
  // the low counter word does not wrap inside a step; `limit` caps the
  // counters taken), each step's 4 vectors in counter order handed to
  // emit(j0, w); j0 ends at the first counter left to the caller.
  template <class Emit>
  static void philox_steps(uint64_t c_first, int64_t limit, int64_t& j0, uint32_t stream, const GroupJob& job,
                           LinePrefetcher& pf, const Emit& emit) {
    const uint32_t k0 = static_cast<uint32_t>(job.seed), k1 = static_cast<uint32_t>(job.seed >> 32);
    __m256i w[4];
    if (cpu_avx512()) {  // 32 counters per call, handed on 8 at a time
      alignas(64) uint32_t buf[128];
      for (; j0 + 32 <= limit && static_cast<uint32_t>(c_first + j0) <= 0xFFFFFFFFu - 31; j0 += 32) {
        philox32_avx512(c_first + j0, stream, job.group, k0, k1, buf);
        for (int s = 0; s < 4; ++s) {
          for (int q = 0; q < 4; ++q) w[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + 32 * s + 8 * q));
          emit(j0 + 8 * s, w);
          pf.step();
        }
      }
    }
    for (; j0 + 8 <= limit && static_cast<uint32_t>(c_first + j0) <= 0xFFFFFFF8u; j0 += 8) {
      philox8(c_first + j0, stream, job.group, k0, k1, w);
      emit(j0, w);
      pf.step();
    }
  }
#endif

  // Random values for elements [e0, e0 + n) of stream `stream` (e0 includes
  // the call's offset); words: scratch for the Philox outputs.
  static void fill(M* d, uint64_t e0, int64_t n, bool normal, uint32_t stream, const GroupJob& job, uint32_t* words,
                   M* scratch, LinePrefetcher& pf, M scale = M(1)) {
    constexpr int shift = RandShift<M>::value;
    const uint64_t c_first = e0 >> shift, c_last = (e0 + n - 1) >> shift;
    const int64_t nc = static_cast<int64_t>(c_last - c_first) + 1;
    const uint32_t k0 = static_cast<uint32_t>(job.seed), k1 = static_cast<uint32_t>(job.seed >> 32);
    const int64_t skip = static_cast<int64_t>(e0 - (c_first << shift));  // elements before e0 in the first counter
    if (normal) return normals(d, e0, n, stream, job, pf);
    int64_t j0 = 0;
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (sizeof(M) == 4) {
      if (skip == 0) {  // float uniforms straight from the registers
        const float scf = scale * 5.9604644775390625e-08f;
        const __m256 sc = _mm256_set1_ps(scf);
        if (cpu_avx512()) {  // 32 counters (128 uniforms) a call
          const int64_t lim = std::min<int64_t>(nc, n / 4);
          for (; j0 + 32 <= lim && static_cast<uint32_t>(c_first + j0) <= 0xFFFFFFFFu - 31; j0 += 32) {
            uniform32_avx512(c_first + j0, stream, job.group, k0, k1, scf, reinterpret_cast<float*>(d) + 4 * j0);
            for (int s = 0; s < 4; ++s) pf.step();
          }
          // the tail (under 32 counters: a job's last block) from one more call, through a buffer
          if (j0 < nc && static_cast<uint32_t>(c_first + j0) <= 0xFFFFFFFFu - 31) {
            alignas(64) float tail[128];
            uniform32_avx512(c_first + j0, stream, job.group, k0, k1, scf, tail);
            std::memcpy(reinterpret_cast<float*>(d) + 4 * j0, tail, (n - 4 * j0) * sizeof(float));
            return;
          }
        }
        philox_steps(c_first, std::min<int64_t>(nc, n / 4), j0, stream, job, pf, [&](int64_t j, const __m256i* w) {
          for (int q = 0; q < 4; ++q) {
            const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w[q], 8)), sc);
            _mm256_storeu_ps(reinterpret_cast<float*>(d) + 4 * j + 8 * q, u);
          }
        });
        if (j0 > 0) {  // the rest (under 32 elements, or past a low-word wrap) below
          if (4 * j0 < n) fill(d + 4 * j0, e0 + 4 * j0, n - 4 * j0, normal, stream, job, words, scratch, pf, scale);
          return;
        }
      }
    }
    philox_steps(c_first, nc, j0, stream, job, pf, [&](int64_t j, const __m256i* w) {
      for (int q = 0; q < 4; ++q) _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + 4 * j + 8 * q), w[q]);
    });
#endif
    for (int64_t j = j0; j < nc; ++j) {
      const uint64_t c = c_first + j;
      const Philox4 r =
          philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), stream, job.group, k0, k1);
      words[4 * j] = r.w[0];
      words[4 * j + 1] = r.w[1];
      words[4 * j + 2] = r.w[2];
      words[4 * j + 3] = r.w[3];
      if (j % 8 == 7) pf.step();
    }
    // (bits * 2^-24) * scale == bits * (2^-24 * scale): a power of two is exact
    if constexpr (sizeof(M) == 8) {
      const M sc = scale * M(1.1102230246251565e-16);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = skip + i;
        d[i] = static_cast<M>(((static_cast<uint64_t>(words[2 * k]) << 32) | words[2 * k + 1]) >> 11) * sc;
      }
    } else {
      const M sc = scale * M(5.9604644775390625e-08);
      for (int64_t i = 0; i < n; ++i) d[i] = static_cast<M>(words[skip + i] >> 8) * sc;
    }
  }

  // ---- Normals: Box-Muller, one (u1, u2) pair of uniforms feeds two
  // neighbouring elements (docs/fuse.md), the even one r*cos(2 pi u2),
  // the odd one r*sin(2 pi u2), r = sqrt(-2 log u1). One log, one sqrt and
  // one sincos per pair, computed on whole vectors of pairs: 8 counters (one
  // philox8) give 32 float / 16 double normals, written straight to d when
  // the step lies inside it (else through a small buffer: a ragged head or
  // tail). The value of an element depends only on its counter's words.
  static constexpr int64_t E = int64_t(1) << RandShift<M>::value;  // elements per counter
  static constexpr int64_t kStep = 8 * E;                          // elements per 8 counters

  // Normals of the 8 counters' words (32 words in counter order) into out:
  // the DEFAULT build, normal_math.h's scalar form.
  static void normals_of_words_scalar(const uint32_t* w, M* out) {
    for (int64_t p = 0; p < kStep / 2; ++p) {
      if constexpr (sizeof(M) == 8) {
        normal::box_muller(w[4 * p], w[4 * p + 1], w[4 * p + 2], w[4 * p + 3], out[2 * p], out[2 * p + 1]);
      } else {
        normal::box_muller(w[2 * p], w[2 * p + 1], out[2 * p], out[2 * p + 1]);
      }
    }
  }

#if defined(CPU_CAPABILITY_AVX2)
  // The AVX2 forms of normal_math.h: the same operations lane for lane (so
  // the same bits as the DEFAULT build, CUDA and generated kernels); the
  // comments there say why each step is what it is.
  // -2 log(k 2^-24) for integers k in [1, 2^24] (normal::neg2log_k24).
  static __m256 neg2log_ps(__m256i k) {
    using namespace normal;
    const __m256i ui = _mm256_castps_si256(_mm256_cvtepi32_ps(k));  // exact
    const __m256i e = _mm256_srai_epi32(_mm256_sub_epi32(ui, _mm256_set1_epi32(kSqrtHalfF)), 23);
    const __m256 f = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_sub_epi32(ui, _mm256_slli_epi32(e, 23))),
                                   _mm256_set1_ps(1.0f));  // m - 1, exact
    const __m256 ef = _mm256_cvtepi32_ps(_mm256_sub_epi32(e, _mm256_set1_epi32(24)));
    const __m256 s = _mm256_div_ps(f, _mm256_add_ps(f, _mm256_set1_ps(2.0f)));
    const __m256 t = _mm256_mul_ps(s, s);
    __m256 p = _mm256_fmadd_ps(t, _mm256_set1_ps(kL3), _mm256_set1_ps(kL2));
    p = _mm256_fmadd_ps(t, p, _mm256_set1_ps(kL1));
    const __m256 half_log_m = _mm256_fmadd_ps(_mm256_mul_ps(s, t), p, s);
    const __m256 b = _mm256_fmadd_ps(half_log_m, _mm256_set1_ps(-4.0f), _mm256_mul_ps(ef, _mm256_set1_ps(-2 * kLn2Lo)));
    return _mm256_fmadd_ps(ef, _mm256_set1_ps(-2 * kLn2Hi), b);
  }
  // sin, cos of 2 pi u for u in [0, 1) (normal::sincospi2; rounding 4u < 4
  // with roundps equals adding and taking away 2^23)
  static void sincospi2_ps(__m256 u, __m256& s, __m256& c) {
    using namespace normal;
    const __m256 y = _mm256_add_ps(u, u);
    const __m256 q = _mm256_round_ps(_mm256_add_ps(y, y), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 x = _mm256_fnmadd_ps(q, _mm256_set1_ps(0.5f), y);  // exact
    const __m256 t = _mm256_mul_ps(x, x);
    __m256 S = _mm256_fmadd_ps(t, _mm256_set1_ps(kS3), _mm256_set1_ps(kS2));
    S = _mm256_fmadd_ps(t, S, _mm256_set1_ps(kS1));
    S = _mm256_mul_ps(x, _mm256_fmadd_ps(t, S, _mm256_set1_ps(kS0)));
    __m256 C = _mm256_fmadd_ps(t, _mm256_set1_ps(kC4), _mm256_set1_ps(kC3));
    C = _mm256_fmadd_ps(t, C, _mm256_set1_ps(kC2));
    C = _mm256_fmadd_ps(t, C, _mm256_set1_ps(kC1));
    C = _mm256_fmadd_ps(t, C, _mm256_set1_ps(1.0f));
    const __m256i qi = _mm256_cvtps_epi32(q);
    const __m256 swap = _mm256_castsi256_ps(_mm256_slli_epi32(qi, 31));  // sign bit = q & 1
    const __m256 ss = _mm256_blendv_ps(S, C, swap), cc = _mm256_blendv_ps(C, S, swap);
    s = _mm256_xor_ps(ss, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(qi, 1), 31)));
    c = _mm256_xor_ps(cc, _mm256_castsi256_ps(
                              _mm256_slli_epi32(_mm256_srli_epi32(_mm256_add_epi32(qi, _mm256_set1_epi32(1)), 1), 31)));
  }
  // 16 float normals of 4 counters (two vectors of their words) into out
  // (normal::box_muller of each word pair).
  static void normals16_ps(__m256i a, __m256i b, float* out) {
    const __m256 af = _mm256_castsi256_ps(a), bf = _mm256_castsi256_ps(b);
    const __m256i w1 = _mm256_castps_si256(_mm256_shuffle_ps(af, bf, _MM_SHUFFLE(2, 0, 2, 0)));  // u1 words
    const __m256i w2 = _mm256_castps_si256(_mm256_shuffle_ps(af, bf, _MM_SHUFFLE(3, 1, 3, 1)));  // u2 words
    const __m256 k24 = _mm256_set1_ps(5.9604644775390625e-08f);
    const __m256 u2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w2, 8)), k24);
    const __m256 r = _mm256_sqrt_ps(neg2log_ps(_mm256_add_epi32(_mm256_srli_epi32(w1, 8), _mm256_set1_epi32(1))));
    __m256 s, c;
    sincospi2_ps(u2, s, c);
    const __m256 ev = _mm256_mul_ps(r, c), od = _mm256_mul_ps(r, s);
    _mm256_storeu_ps(out, _mm256_unpacklo_ps(ev, od));  // a's elements
    _mm256_storeu_ps(out + 8, _mm256_unpackhi_ps(ev, od));
  }
  // The 53-bit integers (hi << 32 | lo) >> 11 of 4 (hi, lo) word pairs held as
  // 64-bit lanes (lo word in the upper half), as exact doubles.
  static __m256d k53_pd(__m256i lanes) {
    const __m256i x = _mm256_srli_epi64(_mm256_shuffle_epi32(lanes, 0xB1), 11);  // (hi << 32 | lo) >> 11
    const __m256i magic = _mm256_set1_epi64x(0x4330000000000000LL);              // 2^52
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
    const __m256d hi = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(x, 32), magic)), two52);
    const __m256d lo = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(x, _mm256_set1_epi64x(0xFFFFFFFFLL)), magic)), two52);
    return _mm256_fmadd_pd(hi, _mm256_set1_pd(4294967296.0), lo);  // exact: below 2^53
  }
  // -2 log(k 2^-53) for integers k in [1, 2^53] held as doubles
  // (normal::neg2log_k53; e in [0, 53] turns into a double through 2^52).
  static __m256d neg2log_pd(__m256d k) {
    using namespace normal;
    const __m256i ui = _mm256_castpd_si256(k);
    const __m256i e = _mm256_srli_epi64(_mm256_sub_epi64(ui, _mm256_set1_epi64x(kSqrtHalfD)), 52);
    const __m256d f = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_sub_epi64(ui, _mm256_slli_epi64(e, 52))),
                                    _mm256_set1_pd(1.0));  // m - 1, exact
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
    const __m256d ef =
        _mm256_sub_pd(_mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(e, _mm256_castpd_si256(two52))), two52),
                      _mm256_set1_pd(53.0));  // exact
    const __m256d s = _mm256_div_pd(f, _mm256_add_pd(f, _mm256_set1_pd(2.0)));
    const __m256d z = _mm256_mul_pd(s, s), w = _mm256_mul_pd(z, z);
    auto mad = [](__m256d x, __m256d y, double c) {  // c + x * y, two roundings (no fma in the double forms)
      return _mm256_add_pd(_mm256_set1_pd(c), _mm256_mul_pd(x, y));
    };
    const __m256d t1 = _mm256_mul_pd(w, mad(w, mad(w, _mm256_set1_pd(kLg6), kLg4), kLg2));
    const __m256d t2 = _mm256_mul_pd(z, mad(w, mad(w, mad(w, _mm256_set1_pd(kLg7), kLg5), kLg3), kLg1));
    const __m256d hfsq = _mm256_mul_pd(_mm256_mul_pd(_mm256_set1_pd(0.5), f), f);
    const __m256d a = _mm256_add_pd(_mm256_mul_pd(s, _mm256_add_pd(hfsq, _mm256_add_pd(t2, t1))),
                                    _mm256_mul_pd(ef, _mm256_set1_pd(kLn2LoD)));
    const __m256d log_u =
        _mm256_sub_pd(_mm256_mul_pd(ef, _mm256_set1_pd(kLn2HiD)), _mm256_sub_pd(_mm256_sub_pd(hfsq, a), f));
    return _mm256_mul_pd(_mm256_set1_pd(-2.0), log_u);
  }
  // sin, cos of 2 pi u for u in [0, 1) (normal::sincospi2): 4u + 2^52 holds
  // the quadrant q in its low bits.
  static void sincospi2_pd(__m256d u, __m256d& s, __m256d& c) {
    using namespace normal;
    const __m256d y = _mm256_add_pd(u, u);
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
    const __m256d n = _mm256_add_pd(_mm256_add_pd(y, y), two52);
    const __m256d q = _mm256_sub_pd(n, two52);
    const __m256d x = _mm256_sub_pd(y, _mm256_mul_pd(q, _mm256_set1_pd(0.5)));  // exact
    const __m256d t = _mm256_mul_pd(x, x);
    auto mad = [&t](__m256d p, double c) { return _mm256_add_pd(_mm256_set1_pd(c), _mm256_mul_pd(t, p)); };
    __m256d S = mad(_mm256_set1_pd(kSd6), kSd5);
    S = mad(mad(mad(mad(mad(S, kSd4), kSd3), kSd2), kSd1), kSd0);
    S = _mm256_mul_pd(x, mad(S, kPi));
    __m256d C = mad(_mm256_set1_pd(kCd6), kCd5);
    C = mad(mad(mad(mad(mad(mad(C, kCd4), kCd3), kCd2), kCd1), kCd0), 1.0);
    const __m256i qi = _mm256_castpd_si256(n);
    const __m256d swap = _mm256_castsi256_pd(_mm256_slli_epi64(qi, 63));  // sign bit = q & 1
    const __m256d ss = _mm256_blendv_pd(S, C, swap), cc = _mm256_blendv_pd(C, S, swap);
    s = _mm256_xor_pd(ss, _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_srli_epi64(qi, 1), 63)));
    c = _mm256_xor_pd(cc, _mm256_castsi256_pd(_mm256_slli_epi64(
                              _mm256_srli_epi64(_mm256_add_epi64(qi, _mm256_set1_epi64x(1)), 1), 63)));
  }
  // 8 double normals of 4 counters (two vectors of their words) into out
  // (normal::box_muller of each counter).
  static void normals8_pd(__m256i a, __m256i b, double* out) {
    // 64-bit lanes: (w0, w1) (w2, w3) of each counter
    const __m256d k1 = _mm256_add_pd(k53_pd(_mm256_unpacklo_epi64(a, b)), _mm256_set1_pd(1.0));  // exact
    const __m256d u2 = _mm256_mul_pd(k53_pd(_mm256_unpackhi_epi64(a, b)), _mm256_set1_pd(1.1102230246251565e-16));
    const __m256d r = _mm256_sqrt_pd(neg2log_pd(k1));
    __m256d s, c;
    sincospi2_pd(u2, s, c);
    const __m256d ev = _mm256_mul_pd(r, c), od = _mm256_mul_pd(r, s);
    _mm256_storeu_pd(out, _mm256_unpacklo_pd(ev, od));
    _mm256_storeu_pd(out + 4, _mm256_unpackhi_pd(ev, od));
  }
  static void normals_of_words(const __m256i* w, M* out) {
    for (int q = 0; q < 4; q += 2) {
      if constexpr (sizeof(M) == 8) {
        normals8_pd(w[q], w[q + 1], out + 8 * q / 2);
      } else {
        normals16_ps(w[q], w[q + 1], out + 16 * q / 2);
      }
    }
  }
#endif

  // Normals for elements [e0, e0 + n) of stream `stream` (e0 includes the
  // call's offset), in steps of 8 counters.
  static void normals(M* d, uint64_t e0, int64_t n, uint32_t stream, const GroupJob& job, LinePrefetcher& pf) {
    constexpr int shift = RandShift<M>::value;
    const uint64_t c_first = e0 >> shift;
    const int64_t skip = static_cast<int64_t>(e0 - (c_first << shift));
    const int64_t nc = static_cast<int64_t>(((e0 + n - 1) >> shift) - c_first) + 1;
    const uint32_t k0 = static_cast<uint32_t>(job.seed), k1 = static_cast<uint32_t>(job.seed >> 32);
    alignas(32) uint32_t wb[32];
    alignas(32) M tmp[kStep];
#if defined(CPU_CAPABILITY_AVX2)
    const bool avx512 = cpu_avx512();  // Philox words of 32 counters at a time
    alignas(64) uint32_t big[128];
    int64_t big_from = -32;
#endif
    for (int64_t j = 0; j < nc; j += 8) {
      const uint64_t c = c_first + j;
      const int64_t lo = j * E - skip;  // d's index of the step's first element
      M* out = lo >= 0 && lo + kStep <= n ? d + lo : tmp;
#if defined(CPU_CAPABILITY_AVX2)
      __m256i w[4];
      if (avx512 && j >= big_from + 32 && j + 32 <= nc && static_cast<uint32_t>(c) <= 0xFFFFFFFFu - 31) {
        philox32_avx512(c, stream, job.group, k0, k1, big);  // this step and the next three
        big_from = j;
      }
      if (j < big_from + 32) {
        for (int q = 0; q < 4; ++q)
          w[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(big + 4 * (j - big_from) + 8 * q));
      } else if (static_cast<uint32_t>(c) <= 0xFFFFFFF8u) {
        philox8(c, stream, job.group, k0, k1, w);
      } else {  // the low counter word wraps inside the step
        for (int i = 0; i < 8; ++i) {
          const Philox4 r = philox4x32_10(static_cast<uint32_t>(c + i), static_cast<uint32_t>((c + i) >> 32), stream,
                                          job.group, k0, k1);
          for (int k = 0; k < 4; ++k) wb[4 * i + k] = r.w[k];
        }
        for (int q = 0; q < 4; ++q) w[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + 8 * q));
      }
      normals_of_words(w, out);
#else
      for (int i = 0; i < 8; ++i) {
        const Philox4 r = philox4x32_10(static_cast<uint32_t>(c + i), static_cast<uint32_t>((c + i) >> 32), stream,
                                        job.group, k0, k1);
        for (int k = 0; k < 4; ++k) wb[4 * i + k] = r.w[k];
      }
      normals_of_words_scalar(wb, out);
#endif
      if (out == tmp) {
        const int64_t a = std::max<int64_t>(lo, 0), b = std::min<int64_t>(lo + kStep, n);
        std::copy(tmp + (a - lo), tmp + (b - lo), d + a);
      }
      pf.step();
    }
  }
};

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace nyto::fuse
