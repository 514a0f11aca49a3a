// Random numbers of nytorch.fuse on the CPU: Philox4x32-10 (8 counters per
// AVX2 step) turned into uniform or normal values of a block, and the
// prefetching that rides on those compute-bound rounds. Included by
// cpu_interp.cpp, so compiled once per instruction set like it; everything
// here lives in that build's namespace.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cstdint>
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
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

  // Philox words of counters c_first + j0 ... in steps of 8 counters (while
  // the low counter word does not wrap inside a step; `limit` caps the
  // counters taken), each step's 4 vectors in counter order handed to
  // emit(j0, w); j0 ends at the first counter left to the caller.
  template <class Emit>
  static void philox_steps(uint64_t c_first, int64_t limit, int64_t& j0, uint32_t stream, const GroupJob& job,
                           LinePrefetcher& pf, const Emit& emit) {
    const uint32_t k0 = static_cast<uint32_t>(job.seed), k1 = static_cast<uint32_t>(job.seed >> 32);
    __m256i w[4];
    for (; j0 + 8 <= limit && static_cast<uint32_t>(c_first + j0) <= 0xFFFFFFF8u; j0 += 8) {
      philox8(c_first + j0, stream, job.group, k0, k1, w);
      emit(j0, w);
      pf.step();
    }
  }
#endif

  // Random values for elements [e0, e0 + n) of stream `stream` (e0 includes
  // the call's offset); words: scratch for the Philox outputs.
  static void fill(M* d, uint64_t e0, int64_t n, bool normal, uint32_t stream, const GroupJob& job,
                     uint32_t* words, M* scratch, LinePrefetcher& pf, M scale = M(1)) {
    constexpr int shift = RandShift<M>::value;
    const uint64_t c_first = e0 >> shift, c_last = (e0 + n - 1) >> shift;
    const int64_t nc = static_cast<int64_t>(c_last - c_first) + 1;
    const uint32_t k0 = static_cast<uint32_t>(job.seed), k1 = static_cast<uint32_t>(job.seed >> 32);
    const int64_t skip = static_cast<int64_t>(e0 - (c_first << shift));  // elements before e0 in the first counter
    int64_t j0 = 0;
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (sizeof(M) == 4) {
      if (!normal && skip == 0) {  // float uniforms straight from the registers
        const __m256 sc = _mm256_set1_ps(scale * 5.9604644775390625e-08f);
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
      const Philox4 r = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), stream, job.group, k0, k1);
      words[4 * j] = r.w[0];
      words[4 * j + 1] = r.w[1];
      words[4 * j + 2] = r.w[2];
      words[4 * j + 3] = r.w[3];
      if (j % 8 == 7) pf.step();
    }
    if (!normal) {
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
      return;
    }
    // Box-Muller: one (u1, u2) pair feeds two neighbouring elements, the even
    // one takes r*cos(2 pi u2), the odd one r*sin(2 pi u2).
    M* u1 = scratch;
    // scratch holds 3 blocks of n (rounded up to whole vectors) elements
    const int64_t sn = (n + W - 1) / W * W;
    M* u2 = scratch + sn;
    M* odd = scratch + 2 * sn;
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

};

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace nyto::fuse
