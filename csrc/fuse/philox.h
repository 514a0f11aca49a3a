// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11), the counter-based generator of torch's CUDA random ops. Host and
// device share this code, so CPU and CUDA draw the same uniforms.
#pragma once
#include <c10/macros/Macros.h>

#include <cstdint>

namespace nyto::fuse {

struct Philox4 {
  uint32_t w[4];
};

C10_HOST_DEVICE C10_ALWAYS_INLINE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                                        uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += W0;
      k1 += W1;
    }
    const uint64_t p0 = static_cast<uint64_t>(M0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(M1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) from 24 bits (float) or 53 bits (double).
C10_HOST_DEVICE C10_ALWAYS_INLINE float u24(uint32_t w) { return static_cast<float>(w >> 8) * 5.9604644775390625e-08f; }
C10_HOST_DEVICE C10_ALWAYS_INLINE double u53(uint32_t hi, uint32_t lo) {
  return static_cast<double>(((static_cast<uint64_t>(hi) << 32) | lo) >> 11) * 1.1102230246251565e-16;
}

// Which Philox counter feeds element e (index + offset): float streams take 4
// elements per counter, double streams 2. The counter is (e >> shift) in words
// 0-1, the stream id in word 2 and the group index in word 3; the key is the seed.
template <class M>
struct RandShift {
  static constexpr int value = sizeof(M) == 8 ? 1 : 2;
};

}  // namespace nyto::fuse
