// The math of fuse's instructions: FMath<op>::f(a, b, c) is the expr column
// of csrc/fuse/fops.def, for every value type of csrc/nyto_math.h (double in the
// scalar instructions, op-math M on CUDA, at::vec vectors on the CPU). Unused
// operands (b, c of a unary op) are ignored.
#pragma once
#include "fuse/program.h"
#include "nyto_math.h"

namespace nyto::fuse {

template <FOp op>
struct FMath {
  static constexpr int nin = -1;  // not math: loads, stores, random streams
};
#define NYTO_FOP(E, name, n, expr)                           \
  template <>                                                \
  struct FMath<FOp::E> {                                     \
    static constexpr int nin = n;                            \
    template <class V>                                       \
    static NYTO_HD V f(const V& a, const V& b, const V& c) { \
      (void)b;                                               \
      (void)c;                                               \
      return expr;                                           \
    }                                                        \
  };
#define NYTO_FOP_IO(...)
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO

}  // namespace nyto::fuse
