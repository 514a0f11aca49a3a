"""Generated CUDA kernels for ``nytorch.fuse`` programs (NVRTC at run time).

A traced program (the int32 bytecode of csrc/fuse/program.h) becomes
straight-line CUDA C++: one SSA local per instruction, ``VEC`` consecutive
elements per thread (16-byte vector loads and stores when every buffer of a
tensor is 16-byte aligned, a bounds-checked scalar path for the tail), all
loads of a thread's elements before any store (so ``out=`` may alias inputs,
in any permutation, exactly like the interpreter), and a multi-tensor launch:
the kernel argument holds a small table of tensors (one per group of a
particle, or a stacked ``[N, numel]`` swarm buffer; their pointers, sizes and
group ids) and each CUDA block finds its tensor and chunk from a prefix sum of
chunk counts (the idea of PyTorch's multi-tensor-apply, without its per-block
table).

The math is not spelled here: the generated code includes ``nyto_math.h`` and
instantiates one function per row of ``fuse/fops.def`` (the op table the CPU
and CUDA interpreters and the scalar instructions read), and its random
numbers call ``fuse/philox.h`` (Philox4x32-10 and the uniform conversions)
and ``fuse/normal_math.h`` (Box-Muller), with the interpreter's counter
layout: the same streams as the CPU engine, uniforms and normals.
Kernels compile with ``--fmad=false`` (only an explicit ``fma`` or ``lerp``
contracts), like the interpreter kernel.

The same per-element function also compiles as host C++ (``host_source``),
which tests compare bit for bit with the CPU interpreter.

Entry points: ``cuda_source(prog, dtype)`` (also ``Program.cuda_source()``),
``run(prog, inputs, numbers, out, seed, offset)`` for CUDA tensors, used by
``nytorch.fuse`` when the engine is "codegen" (``NYTO_FUSE_ENGINE=codegen`` or
:func:`set_engine`). ``NYTO_FUSE_PRINT_SOURCE=1`` prints each source when it
is compiled.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .program import OPS, Program
from .trace import ARITY

__all__ = [
    "cuda_source",
    "host_source",
    "kernel_headers",
    "include_dirs",
    "run",
    "compile_program",
    "set_engine",
    "engine",
    "available",
    "DTYPES",
]

# dtype -> (storage type in the generated code, op-math type, element bytes)
DTYPES: Dict[torch.dtype, Tuple[str, str, int]] = {
    torch.float32: ("float", "float", 4),
    torch.float64: ("double", "double", 8),
    torch.bfloat16: ("nyto_bf16", "float", 2),
    torch.float16: ("nyto_f16", "float", 2),
}
THREADS = 256
ITERS = 4  # vector steps per thread per chunk
ARG_BYTES = 4000  # the kernel argument stays under the classic 4 KB limit

_HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# Headers: the shared math header, the op table, Philox and the normals, read from the
# package (wheel: nytorch/_include), the source tree (editable installs) or
# NYTO_FUSE_INCLUDE (a folder laid out like csrc/).
_NEEDED = ("nyto_math.h", "fuse/fops.def", "fuse/philox.h", "fuse/normal_math.h")


def include_dirs() -> List[str]:
    """Folders searched for the shared headers, first match wins."""
    dirs = []
    env = os.environ.get("NYTO_FUSE_INCLUDE")
    if env:
        dirs.append(env)
    dirs.append(os.path.normpath(os.path.join(_HERE, "..", "_include")))  # a wheel: nytorch/_include
    dirs.append(os.path.normpath(os.path.join(_HERE, "..", "..", "..", "csrc")))  # the source tree
    return dirs


def _find_include() -> str:
    for d in include_dirs():
        if all(os.path.isfile(os.path.join(d, h)) for h in _NEEDED):
            return d
    raise FileNotFoundError(
        f"nytorch.fuse codegen: the shared headers {', '.join(_NEEDED)} are not in "
        f"{include_dirs()} (set NYTO_FUSE_INCLUDE to a folder holding them)"
    )


# NVRTC has no C++ standard library or torch headers: the shared headers'
# includes are answered by these (what they use of them).
_SHIMS = {
    "cmath": "#pragma once\n// NVRTC: the CUDA math functions are built in.\n",
    "cstdint": (
        "#pragma once\ntypedef unsigned int uint32_t; typedef int int32_t;\n"
        "typedef unsigned long long uint64_t; typedef long long int64_t;\n"
        "typedef unsigned short uint16_t; typedef unsigned long long uintptr_t;\n"
    ),
    "c10/macros/Macros.h": (
        "#pragma once\n#define C10_HOST_DEVICE __host__ __device__\n"
        "#define C10_DEVICE __device__\n#define C10_HOST __host__\n"
        "#define C10_ALWAYS_INLINE __forceinline__\n"
    ),
}


def kernel_headers() -> Dict[str, str]:
    """{include name: text} handed to NVRTC: the shared headers and the shims."""
    d = _find_include()
    out = dict(_SHIMS)
    for h in _NEEDED:
        with open(os.path.join(d, h), encoding="utf-8") as f:
            out[h] = f.read()
    return out


# ---------------------------------------------------------------------------
# The prelude: storage types, conversions, random numbers. Host and device.
_PRELUDE = r"""
#include <cstdint>
#include "nyto_math.h"
#include "fuse/philox.h"
#include "fuse/normal_math.h"
#ifdef __CUDACC__
#define NYTO_GEN_FN __device__ __forceinline__
#else
#include <cstring>
#define NYTO_GEN_FN inline
#endif

namespace nyto {
namespace gen {
// One function per row of the op table (csrc/fuse/fops.def): the math of
// every engine, from csrc/nyto_math.h.
#define NYTO_FOP(E, name, n, expr) \
  template <class V> NYTO_GEN_FN V op_##name(V a, V b, V c) { (void)b; (void)c; return expr; }
#define NYTO_FOP_IO(...)
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO

struct nyto_bf16 { unsigned short x; };
struct nyto_f16 { unsigned short x; };

NYTO_GEN_FN float bits_to_float(unsigned int u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}
NYTO_GEN_FN unsigned int float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  unsigned int u; std::memcpy(&u, &f, 4); return u;
#endif
}
template <class M> NYTO_GEN_FN M to_m(float v) { return static_cast<M>(v); }
template <class M> NYTO_GEN_FN M to_m(double v) { return static_cast<M>(v); }
// bfloat16: the high half of a float; rounding to nearest even, NaN -> 0x7FC0 (c10::BFloat16)
template <class M> NYTO_GEN_FN M to_m(nyto_bf16 v) { return bits_to_float(static_cast<unsigned int>(v.x) << 16); }
template <class T> NYTO_GEN_FN T from_m(float v);
template <class T> NYTO_GEN_FN T from_m(double v);
template <> NYTO_GEN_FN float from_m<float>(float v) { return v; }
template <> NYTO_GEN_FN double from_m<double>(double v) { return v; }
template <> NYTO_GEN_FN nyto_bf16 from_m<nyto_bf16>(float v) {
  if (v != v) return nyto_bf16{0x7FC0};
  const unsigned int u = float_to_bits(v);
  return nyto_bf16{static_cast<unsigned short>((u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16)};
}
#ifdef __CUDA_ARCH__
template <class M> NYTO_GEN_FN M to_m(nyto_f16 v) {
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x)); return f;
}
template <> NYTO_GEN_FN nyto_f16 from_m<nyto_f16>(float v) {
  unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); return nyto_f16{h};
}
#endif

template <class T, int N> struct alignas(16) Pack { T v[N]; };
// One 16-byte access where the pack is 16 bytes (a struct copy may split).
template <class T, int N> NYTO_GEN_FN Pack<T, N> load_pack(const T* p) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(Pack<T, N>) == 16) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    Pack<T, N> q;
    *reinterpret_cast<uint4*>(&q) = u;
    return q;
  }
#endif
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
template <class T, int N> NYTO_GEN_FN void store_pack(T* p, const Pack<T, N>& q) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(Pack<T, N>) == 16) {  // NVVM splits a struct or uint4 store: one st.v4
    union { Pack<T, N> p; unsigned int w[4]; } u;
    u.p = q;
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(u.w[0]), "r"(u.w[1]), "r"(u.w[2]),
                 "r"(u.w[3]) : "memory");
    return;
  }
#endif
  *reinterpret_cast<Pack<T, N>*>(p) = q;
}

// Uniforms of elements e0 .. e0 + N - 1 of a stream, times `scale`: the
// counter layout of csrc/fuse/philox.h (as the interpreters draw them).
template <class M, int N>
NYTO_GEN_FN void uniform(M* dst, uint64_t e0, uint32_t stream, uint32_t group, uint64_t seed, M scale) {
  constexpr int shift = nyto::fuse::RandShift<M>::value;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint64_t cur = ~uint64_t(0);
  nyto::fuse::Philox4 w{};
#pragma unroll
  for (int l = 0; l < N; ++l) {
    const uint64_t e = e0 + l;
    const uint64_t c = e >> shift;
    if (c != cur) {
      w = nyto::fuse::philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), stream, group, k0, k1);
      cur = c;
    }
    const int k = static_cast<int>(e - (c << shift));
    if constexpr (sizeof(M) == 8) {  // (bits * 2^-53) * scale == bits * (2^-53 * scale) exactly
      dst[l] = static_cast<M>(((static_cast<uint64_t>(w.w[2 * k]) << 32) | w.w[2 * k + 1]) >> 11) *
               (scale * M(1.1102230246251565e-16));
    } else {
      dst[l] = static_cast<M>(w.w[k] >> 8) * (scale * M(5.9604644775390625e-08));
    }
  }
}

// Normals: Box-Muller of the stream's pairs (fuse/normal_math.h, the math of
// every engine), one log, sqrt and sincos per pair, with the interpreters'
// counters and pairing. Host and device.
template <class M, int N>
NYTO_GEN_FN void normal(M* dst, uint64_t e0, uint32_t stream, uint32_t group, uint64_t seed) {
  constexpr int shift = nyto::fuse::RandShift<M>::value;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint64_t cur = ~uint64_t(0), cur_pair = ~uint64_t(0);
  nyto::fuse::Philox4 w{};
  M even = M(0), odd = M(0);
#pragma unroll
  for (int l = 0; l < N; ++l) {
    const uint64_t e = e0 + l;
    const uint64_t c = e >> shift;
    if (c != cur) {
      w = nyto::fuse::philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), stream, group, k0, k1);
      cur = c;
    }
    const int k = static_cast<int>(e - (c << shift));
    if ((e >> 1) != cur_pair) {
      if constexpr (sizeof(M) == 8) {
        nyto::fuse::normal::box_muller(w.w[0], w.w[1], w.w[2], w.w[3], even, odd);
      } else {
        nyto::fuse::normal::box_muller(w.w[2 * (k >> 1)], w.w[2 * (k >> 1) + 1], even, odd);
      }
      cur_pair = e >> 1;
    }
    dst[l] = (k & 1) ? odd : even;
  }
}
}  // namespace gen
}  // namespace nyto
"""


def _op_names() -> Tuple[str, ...]:
    return tuple(OPS)


def _scalar_slots(prog: Any, consts: Sequence[float]) -> List[float]:
    """Every scalar slot's value for one call: ``consts`` (the numbers, then
    the program's constants ``prog.lits``), then the scalar instructions in
    double, as csrc/fuse/fuse.cpp's decode evaluates them."""
    vals = [float(x) for x in consts]
    scalar = _SCALAR_INSTR.get(prog.words)
    if scalar is None:
        scalar = _SCALAR_INSTR[prog.words] = [i for i in prog.instr if i[1] < 0]
    if not scalar:
        return vals
    ops = _op_names()
    n_s = max([len(vals)] + [-i[1] for i in scalar])
    vals += [0.0] * (n_s - len(vals))
    for op, d, a, b, c in scalar:
        name = ops[op]
        args = [vals[-1 - o] for o in (a, b, c)[: ARITY[name]]]
        vals[-1 - d] = _scalar(op, name, args)
    return vals


_SCALAR_INSTR: Dict[bytes, List[Any]] = {}


def _scalar(code: int, name: str, args: List[float]) -> float:
    from .. import _C

    f = getattr(_C, "fuse_scalar", None)
    if f is not None:  # the C evaluation of csrc/fuse/fuse.cpp (csrc/nyto_math.h in double)
        return float(f(code, *args))
    from .trace import scalar_eval

    try:
        return float(scalar_eval(name, *args))
    except KeyError:
        a, b = args[0], args[1] if len(args) > 1 else 0.0
        return {
            "add": lambda: a + b,
            "sub": lambda: a - b,
            "mul": lambda: a * b,
            "div": lambda: a / b if b else math.copysign(math.inf, a) * math.copysign(1.0, b) if a else math.nan,
            "pow": lambda: math.pow(a, b),
            "lt": lambda: float(a < b),
            "le": lambda: float(a <= b),
            "gt": lambda: float(a > b),
            "ge": lambda: float(a >= b),
            "eq": lambda: float(a == b),
            "ne": lambda: float(a != b),
            "muladd": lambda: a * b + args[2],
        }[name]()


# ---------------------------------------------------------------------------
# The per-element function
def _body(prog: Any) -> Tuple[List[str], List[int], List[int]]:
    """Lines of the element function's body; the inputs it loads; the scalar
    slots it reads."""
    ops = _op_names()
    reg: Dict[int, str] = {}  # bytecode register -> SSA local currently in it
    lines: List[str] = []
    loads: List[int] = []
    slots: List[int] = []
    pre: List[str] = []  # per-block arrays (random streams), before the lane loop

    def s_of(o: int) -> str:
        k = -1 - o
        if k not in slots:
            slots.append(k)
        return f"s{k}"

    def val(o: int) -> str:
        return reg[o] if o >= 0 else s_of(o)

    for i, (op, d, a, b, c) in enumerate(prog.instr):
        name = ops[op]
        if d < 0 and name != "store":
            continue  # scalar instruction: evaluated per call on the host
        v = f"v{i}"
        if name == "load":
            if a not in loads:
                loads.append(a)
            lines.append(f"const M {v} = x{a}[l];")
        elif name == "store":
            lines.append(f"y{d}[l] = {val(a)};")
            continue
        elif name in ("rand", "rands"):
            scale = s_of(b) if name == "rands" else "M(1)"
            pre.append(f"M r{i}[VEC]; uniform<M, VEC>(r{i}, e0, {a}u, group, seed, {scale});")
            lines.append(f"const M {v} = r{i}[l];")
        elif name == "randn":
            pre.append(f"M r{i}[VEC]; normal<M, VEC>(r{i}, e0, {a}u, group, seed);")
            lines.append(f"const M {v} = r{i}[l];")
        elif name == "div" and b < 0 and a >= 0:
            # x / number: torch's CUDA kernel multiplies by the reciprocal (nyto_math.h)
            k = -1 - b
            s_of(b)
            lines.append(f"const M {v} = nyto::math::div_by_number({val(a)}, s{k}, inv{k});")
        elif name == "pow" and b < 0 and a >= 0:
            # x ** number: torch's special exponents (nyto_math.h pow_kind / pow_special)
            k = -1 - b
            s_of(b)
            lines.append(f"const M {v} = nyto::math::pow_special({val(a)}, s{k}, kind{k});")
        else:
            n = ARITY[name]
            opnd = [val(o) for o in (a, b, c)[:n]] + ["M(0)"] * (3 - n)
            lines.append(f"const M {v} = op_{name}<M>({', '.join(opnd)});")
        reg[d] = v
    return pre + ["#pragma unroll", "for (int l = 0; l < VEC; ++l) {"] + ["  " + x for x in lines] + ["}"], loads, slots


def _elements_fn(prog: Any) -> str:
    """``elements<T, M, VEC>(...)``: the program on VEC consecutive elements
    (loads, math, stores). ``vec_ok``: full and 16-byte aligned (one vector
    access per buffer), else per-element accesses of the first ``cnt``."""
    body, loads, slots = _body(prog)
    used_in = sorted(loads)
    out = [
        "template <class T, class M, int VEC>",
        "NYTO_GEN_FN void elements(const uint64_t* in, const uint64_t* out, const double* sv, int64_t i, int cnt,",
        "                          bool vec_ok, uint64_t e0, uint32_t group, uint64_t seed) {",
        "  (void)e0; (void)group; (void)seed; (void)sv;",
    ]
    for k in sorted(slots):
        out.append(f"  const M s{k} = static_cast<M>(sv[{k}]);")
        out.append(f"  const M inv{k} = M(1) / s{k}; (void)inv{k};")
        out.append(f"  const int kind{k} = nyto::math::pow_kind(sv[{k}]); (void)kind{k};")
    for k in used_in:
        out.append(f"  M x{k}[VEC];")
        out.append(f"  {{ const T* p = reinterpret_cast<const T*>(in[{k}]) + i;")
        out.append("    if (vec_ok) { const Pack<T, VEC> q = load_pack<T, VEC>(p);")
        out.append(f"#pragma unroll\n      for (int l = 0; l < VEC; ++l) x{k}[l] = to_m<M>(q.v[l]); }}")
        out.append("    else {\n#pragma unroll")
        out.append(f"      for (int l = 0; l < VEC; ++l) x{k}[l] = l < cnt ? to_m<M>(p[l]) : M(0); }} }}")
    for j in range(prog.n_out):
        out.append(f"  M y{j}[VEC];")
    out += ["  " + x for x in body]
    # all loads happened above: the stores may write any input's memory
    for j in range(prog.n_out):
        out.append(f"  {{ T* p = reinterpret_cast<T*>(out[{j}]) + i;")
        out.append("    if (vec_ok) { Pack<T, VEC> q;\n#pragma unroll")
        out.append(f"      for (int l = 0; l < VEC; ++l) q.v[l] = from_m<T>(y{j}[l]);")
        out.append("      store_pack<T, VEC>(p, q); }")
        out.append("    else {\n#pragma unroll")
        out.append(f"      for (int l = 0; l < VEC; ++l) if (l < cnt) p[l] = from_m<T>(y{j}[l]); }} }}")
    out.append("}")
    return "\n".join(out)


def _max_tensors(prog: Any, n_slots: int) -> int:
    per = 8 * (prog.n_in + prog.n_out) + 8 + 8 + 4 + 4
    fixed = 8 * max(1, n_slots) + 8 + 8 + 8 + 8 + 8 + 8
    return max(1, min(64, (ARG_BYTES - fixed) // per))


_LAYOUT: Dict[bytes, Tuple[int, int]] = {}


def _layout(prog: Any) -> Tuple[int, int]:
    """(scalar slots, tensors per launch) of ``prog``'s launch argument."""
    lay = _LAYOUT.get(prog.words)
    if lay is None:
        n_slots = max([prog.n_num + len(prog.lits)] + [-d for (_, d, *_r) in prog.instr if d < 0])
        lay = _LAYOUT[prog.words] = (n_slots, _max_tensors(prog, n_slots))
    return lay


def _args_size(prog: Any) -> int:
    n_slots, maxt = _layout(prog)
    return 8 * max(1, n_slots) + 24 + 8 * maxt * (prog.n_in + prog.n_out) + 16 * maxt + 8 * maxt + 8


def default_vec(dtype: torch.dtype) -> int:
    return 16 // DTYPES[dtype][2]


def _kernel_parts(prog: Any, dtype: torch.dtype, vec: int) -> List[str]:
    """The element function, the launch argument and ``block<T, M>(a, b, tid)``
    (what CUDA thread ``tid`` of block ``b`` does), inside namespace nyto::gen."""
    n_slots, maxt = _layout(prog)
    nio = prog.n_in + prog.n_out
    chunk = THREADS * vec * ITERS
    return [
        _elements_fn(prog),
        "",
        f"constexpr int kIO = {nio}, kSlots = {max(1, n_slots)}, kMaxT = {maxt};",
        f"constexpr int kVec = {vec}, kThreads = {THREADS};",
        f"constexpr int64_t kChunk = {chunk};",
        "// The launch argument (by value): numbers, key, and the tensors of this",
        "// launch; chunk_start: prefix sum of their chunk counts (block -> tensor).",
        "struct Args {",
        "  double s[kSlots];",
        "  uint64_t seed;",
        "  uint64_t offset;",
        "  uint64_t state;  // a random-state tensor's address {seed, offset} (int64), or 0",
        "  uint64_t ptr[kMaxT][kIO];",
        "  int64_t numel[kMaxT];",
        "  int64_t chunk_start[kMaxT];",
        "  uint32_t group[kMaxT];",
        "  uint32_t aligned[kMaxT];",
        "  int64_t n_tensors;",
        "};",
        f'static_assert(sizeof(Args) == {_args_size(prog)}, "Args must match _pack");',
        "",
        "template <class T, class M>",
        "NYTO_GEN_FN void block(const Args& a, int64_t b, int64_t tid) {",
        "  int lo = 0, hi = static_cast<int>(a.n_tensors) - 1;",
        "  while (lo < hi) {  // the last tensor whose first chunk is <= b",
        "    const int mid = (lo + hi + 1) >> 1;",
        "    if (a.chunk_start[mid] <= b) lo = mid; else hi = mid - 1;",
        "  }",
        "  const int t = lo;",
        "  const int64_t n = a.numel[t];",
        "  const int64_t start = (b - a.chunk_start[t]) * kChunk;",
        "  const int64_t end = start + kChunk < n ? start + kChunk : n;",
        "  const uint64_t* io = a.ptr[t];",
        "  uint64_t seed = a.seed, offset = a.offset;",
        "  if (a.state) {  // read at run time: a CUDA graph replay sees the current state",
        "    const int64_t* st = reinterpret_cast<const int64_t*>(a.state);",
        "    seed = static_cast<uint64_t>(st[0]);",
        "    offset += static_cast<uint64_t>(st[1]);",
        "  }",
        "  for (int64_t i = start + tid * kVec; i < end; i += kThreads * kVec) {",
        "    const int cnt = end - i < kVec ? static_cast<int>(end - i) : kVec;",
        f"    elements<T, M, kVec>(io, io + {prog.n_in}, a.s, i, cnt, a.aligned[t] && cnt == kVec,",
        "                         static_cast<uint64_t>(i) + offset, a.group[t], seed);",
        "  }",
        "}",
    ]


def _check_vec(dtype: torch.dtype, vec: Optional[int]) -> int:
    if dtype not in DTYPES:
        raise TypeError(f"nytorch.fuse codegen: no kernel for {dtype} (float32, float64, bfloat16, float16)")
    size = DTYPES[dtype][2]
    vec = vec or default_vec(dtype)
    if vec < 1 or (vec * size > 16 and (vec * size) % 16):
        raise ValueError(f"nytorch.fuse codegen: vector width {vec} of {dtype}")
    return vec


def cuda_source(prog: Any, dtype: torch.dtype = torch.float32, vec: Optional[int] = None) -> str:
    """The generated CUDA C++ of ``prog`` for buffers of ``dtype``, ``vec``
    elements per thread step (default: one 16-byte vector)."""
    vec = _check_vec(dtype, vec)
    T, M, _ = DTYPES[dtype]
    return "\n".join(
        [
            "// Generated by nytorch.fuse (python/nytorch/_fuse/codegen.py): do not edit.",
            f"// {prog.n_in} inputs, {prog.n_num} numbers, {prog.n_out} outputs; {dtype}, {vec} elements per step.",
            "// Program:",
            *["//   " + line for line in repr(prog).splitlines()[1:]],
            _PRELUDE,
            "namespace nyto {\nnamespace gen {",
            *_kernel_parts(prog, dtype, vec),
            "}  // namespace gen\n}  // namespace nyto",
            "",
            'extern "C" __global__ void __launch_bounds__(256) nyto_fused(const __grid_constant__ nyto::gen::Args a) {',
            f"  nyto::gen::block<nyto::gen::{T}, {M}>(a, blockIdx.x, threadIdx.x);"
            if T.startswith("nyto")
            else f"  nyto::gen::block<{T}, {M}>(a, blockIdx.x, threadIdx.x);",
            "}",
            "",
        ]
    )


def _program_cuda_source(self: Any, dtype: Optional[torch.dtype] = None, vec: Optional[int] = None) -> str:
    """The CUDA C++ that the code generator (nytorch/_fuse/codegen.py) emits
    for this program on buffers of ``dtype`` (default float32), ``vec``
    elements per thread step (default: one 16-byte vector)."""
    return cuda_source(self, torch.float32 if dtype is None else dtype, vec)


# Program.cuda_source(): set from here (the program module does not import the generator).
setattr(Program, "cuda_source", _program_cuda_source)  # noqa: B010


def host_source(progs: Sequence[Tuple[Any, torch.dtype]], vec: Optional[int] = None) -> str:
    """The programs' kernels compiled as host C++ (tests): one translation
    unit with, per (program, dtype) i, ``extern "C" nyto_host_launch_<i>(args,
    blocks)`` running every thread of every block of a launch in turn (the
    same element and block functions, the same packed argument as a CUDA
    launch) and ``nyto_host_run_<i>(n, in, out, s, seed, offset, group)``,
    the per-element (unaligned) path over one group."""
    parts = ["// nytorch.fuse generated kernels, host build (tests).", _PRELUDE]
    for i, (prog, dtype) in enumerate(progs):
        if dtype not in DTYPES or dtype == torch.float16:
            raise TypeError(f"nytorch.fuse codegen: no host form for {dtype}")
        v = _check_vec(dtype, vec)
        T, M, _ = DTYPES[dtype]
        TT = "nyto::gen::" + T if T.startswith("nyto") else T
        parts += [
            f"namespace nyto {{\nnamespace gen {{\nnamespace p{i} {{",
            *_kernel_parts(prog, dtype, v),
            "}  // namespace p" + str(i) + "\n}  // namespace gen\n}  // namespace nyto",
            f'extern "C" void nyto_host_launch_{i}(const void* args, int64_t blocks) {{',
            f"  const auto& a = *static_cast<const nyto::gen::p{i}::Args*>(args);",
            "  for (int64_t b = 0; b < blocks; ++b)",
            f"    for (int64_t t = 0; t < nyto::gen::p{i}::kThreads; ++t) nyto::gen::p{i}::block<{TT}, {M}>(a, b, t);",
            "}",
            f'extern "C" void nyto_host_run_{i}(int64_t n, const uint64_t* in, const uint64_t* out, const double* s,',
            "                              uint64_t seed, uint64_t offset, uint32_t group) {",
            f"  constexpr int V = {v};",
            "  for (int64_t i = 0; i < n; i += V) {",
            "    const int cnt = n - i < V ? static_cast<int>(n - i) : V;",
            f"    nyto::gen::p{i}::elements<{TT}, {M}, V>(in, out, s, i, cnt, false, "
            "static_cast<uint64_t>(i) + offset, group, seed);",
            "  }",
            "}",
            "",
        ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# Compiling and launching
_COMPILED: Dict[Tuple[bytes, torch.dtype, int, int], Tuple[str, bytes, str]] = {}
_OPTIONS = ("--std=c++17", "--fmad=false", "-default-device", "-DNYTO_NVRTC=1")


def _arch(device: Optional[int] = None) -> int:
    env = os.environ.get("NYTO_FUSE_ARCH")
    if env:
        return int(env.replace("sm_", "").replace(".", ""))
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return major * 10 + minor
    return 90


def compile_program(
    prog: Any, dtype: torch.dtype, arch: Optional[int] = None, vec: Optional[int] = None
) -> Tuple[str, bytes, str]:
    """(cache key, CUBIN, kernel name) of ``prog`` for ``dtype`` on ``sm_<arch>``
    (default: the current device's, else ``NYTO_FUSE_ARCH`` or 90)."""
    from . import nvrtc as _nvrtc

    arch = arch or _arch()
    vec = vec or default_vec(dtype)
    k = (prog.words, dtype, arch, vec)
    hit = _COMPILED.get(k)
    if hit is not None:
        return hit
    src = cuda_source(prog, dtype, vec)
    if os.environ.get("NYTO_FUSE_PRINT_SOURCE", "") not in ("", "0"):
        print(f"// ---- nytorch.fuse generated kernel (sm_{arch}) ----\n{src}", file=sys.stderr)
    cubin, _, key = _nvrtc.compile_cuda(src, "nyto_fused.cu", arch, kernel_headers(), _OPTIONS)
    res = _COMPILED[k] = (key, cubin, "nyto_fused")
    return res


# Engine choice for CUDA tensors: "interp" (the interpreter kernel) or "codegen".
_ENGINE = os.environ.get("NYTO_FUSE_ENGINE", "interp").strip().lower() or "interp"
_WARNED: Dict[str, bool] = {}


def set_engine(name: str) -> str:
    """Pick the engine of CUDA fuse calls: "codegen" (generated kernels, NVRTC)
    or "interp" (the interpreter kernel). Returns the previous one."""
    global _ENGINE
    if name not in ("codegen", "interp"):
        raise ValueError(f"nytorch.fuse: engine is 'codegen' or 'interp', got {name!r}")
    prev, _ENGINE = _ENGINE, name
    return prev


def engine() -> str:
    return _ENGINE


def available() -> Optional[str]:
    """None when generated kernels can be compiled here, else the reason."""
    from . import nvrtc as _nvrtc

    try:
        _nvrtc.nvrtc()
        _find_include()
    except (_nvrtc.NvrtcError, FileNotFoundError) as e:
        return str(e)
    return None


def _warn_once(reason: str) -> None:
    if not _WARNED.get(reason):
        _WARNED[reason] = True
        warnings.warn(
            f"nytorch.fuse: generated CUDA kernels unavailable, using the interpreter kernel: {reason}",
            RuntimeWarning,
            stacklevel=4,
        )


def _pack(
    prog: Any,
    n_slots: int,
    maxt: int,
    svals: List[float],
    seed: int,
    offset: int,
    tensors: List[Tuple[List[int], int, int, bool]],
    chunk: int,
    state: int = 0,
) -> Tuple[bytes, int]:
    nio = prog.n_in + prog.n_out
    s = list(svals[:n_slots]) + [0.0] * (max(1, n_slots) - min(len(svals), n_slots))
    ptr = [0] * (maxt * nio)
    numel = [0] * maxt
    cstart = [0] * maxt
    group = [0] * maxt
    aligned = [0] * maxt
    total = 0
    for t, (ptrs, n, g, al) in enumerate(tensors):
        ptr[t * nio : (t + 1) * nio] = ptrs
        numel[t] = n
        cstart[t] = total
        total += (n + chunk - 1) // chunk
        group[t] = g
        aligned[t] = int(al)
    for t in range(len(tensors), maxt):
        cstart[t] = total
    st = _STRUCTS.get(prog.words)
    if st is None:
        st = struct.Struct(f"<{max(1, n_slots)}dQQQ{maxt * nio}Q{maxt}q{maxt}q{maxt}I{maxt}Iq")
        assert st.size == _args_size(prog)
        _STRUCTS[prog.words] = st
    return st.pack(*s, seed & (2**64 - 1), offset, state, *ptr, *numel, *cstart, *group, *aligned, len(tensors)), total


_STRUCTS: Dict[bytes, struct.Struct] = {}


class Fallback(Exception):
    """Generated kernels can't run this call here (the message says why)."""


_FAILED: Dict[Tuple[bytes, torch.dtype], str] = {}


def launches(
    prog: Any,
    inputs,
    out,
    groups: Sequence[int],
    dtype: torch.dtype,
    svals: List[float],
    seed: int,
    offset: int,
    vec: Optional[int] = None,
    state: int = 0,
):
    """(packed kernel argument, blocks) of each launch over ``groups`` (all of
    ``dtype``, none empty): up to the table's size of tensors per launch.
    ``state``: the address of a random-state tensor (int64 {seed, offset},
    read by the kernel instead of ``seed`` and added to ``offset``), or 0."""
    n_slots, maxt = _layout(prog)
    vec = _check_vec(dtype, vec)
    chunk = THREADS * vec * ITERS
    vbytes = vec * DTYPES[dtype][2]
    res = []
    for c0 in range(0, len(groups), maxt):
        tensors = []
        for g in groups[c0 : c0 + maxt]:
            ptrs = [inputs[k][g].data_ptr() for k in range(prog.n_in)] + [
                out[j][g].data_ptr() for j in range(prog.n_out)
            ]
            al = vbytes % 16 == 0 and all(p % 16 == 0 for p in ptrs)
            tensors.append((ptrs, inputs[0][g].numel(), g, al))
        res.append(_pack(prog, n_slots, maxt, svals, seed, offset, tensors, chunk, state))
    return res


def run(
    prog: Any,
    inputs: Sequence[Sequence[torch.Tensor]],
    consts: Sequence[float],
    out: Optional[Sequence[Sequence[torch.Tensor]]],
    seed: Union[int, torch.Tensor],
    offset: int,
):
    """Run ``prog`` with generated kernels on CUDA buffers (the contract of
    ``nytorch.fuse.run_flat``; ``consts``: the numbers then ``prog.lits``;
    ``seed``: a key, < 0 to draw one, or a checked random-state tensor).
    Returns the outputs (``outs[j][g]``) or None when ``out`` was given.
    Raises :class:`Fallback` (before writing anything) when generated kernels
    can't be used here: NVRTC or the headers missing, a compile error."""
    from . import nvrtc as _nvrtc

    reason = available()
    if reason is not None:
        raise Fallback(reason)
    ng = len(inputs[0])
    given = out is not None
    if out is None:
        out = [
            [torch.empty_like(inputs[0][g], memory_format=torch.contiguous_format) for g in range(ng)]
            for _ in range(prog.n_out)
        ]
    _check(prog, inputs, out)
    for g in range(ng):  # compile everything before writing anything
        fkey = (prog.words, inputs[0][g].dtype)
        if fkey in _FAILED:
            raise Fallback(_FAILED[fkey])
        if inputs[0][g].numel():
            try:
                compile_program(prog, inputs[0][g].dtype, _arch(inputs[0][g].device.index))
            except (_nvrtc.NvrtcError, OSError) as e:
                _FAILED[fkey] = f"compile error: {e}"
                raise Fallback(_FAILED[fkey]) from None
    state = seed if isinstance(seed, torch.Tensor) else None
    st_ptr = state.data_ptr() if state is not None and prog.has_rand else 0
    if state is not None:
        seed = 0
    elif prog.has_rand and seed < 0:
        seed = int(torch.randint(0, 2**62, ()).item())
    seed = max(int(seed), 0)
    svals = _scalar_slots(prog, consts)
    by_key: Dict[Tuple[torch.dtype, int], List[int]] = {}
    for g in range(ng):
        t0 = inputs[0][g]
        if t0.numel():
            by_key.setdefault((t0.dtype, t0.device.index or 0), []).append(g)
    drv = _nvrtc.driver()
    for (dtype, dev), groups in by_key.items():
        with torch.cuda.device(dev):
            key, cubin, name = compile_program(prog, dtype, _arch(dev))
            fn = drv.function(key, dev, cubin, name)
            stream = torch.cuda.current_stream(dev).cuda_stream
            for args, blocks in launches(prog, inputs, out, groups, dtype, svals, seed, offset, state=st_ptr):
                drv.launch(fn, blocks, THREADS, stream, args)
    if st_ptr:  # the next call draws fresh numbers: on the stream, no host sync
        assert state is not None
        state.narrow(0, 1, 1).add_(random_span(inputs))
    if given:
        _bump(out)
        return None
    return [list(x) for x in out]


def random_span(inputs: Sequence[Sequence[torch.Tensor]]) -> int:
    """How far a call over ``inputs`` advances a random state: the largest
    group's numel rounded up to whole Philox counters (4 elements), as
    csrc/fuse/fuse.cpp's ``random_span``."""
    n = max((t.numel() for t in inputs[0]), default=0) if inputs else 0
    return (n + 3) // 4 * 4


def _bump(out) -> None:
    # in-place writes through raw pointers: tell autograd's version counters
    for lst in out:
        for t in lst:
            if not t.is_inference():
                torch.autograd.graph.increment_version(t)


def _check(prog: Any, inputs, out) -> None:
    ng = len(inputs[0])
    for g in range(ng):
        ref = inputs[0][g]
        if ref.numel() and not ref.is_cuda:
            raise Fallback("a call mixing CPU and CUDA groups")
        for what, lst in (("input", inputs), ("output", out)):
            for k, ts in enumerate(lst):
                if len(ts) != ng:
                    raise RuntimeError(f"nytorch.fuse: {what} {k} has {len(ts)} buffers (groups), input 0 has {ng}")
                t = ts[g]
                if (
                    t.dtype not in DTYPES
                    or t.dtype != ref.dtype
                    or t.device != ref.device
                    or t.numel() != ref.numel()
                    or not t.is_contiguous()
                ):
                    raise RuntimeError(
                        f"nytorch.fuse: {what} {k} of group {g} does not match input 0 "
                        f"(dtype, device, numel, contiguity)"
                    )
        for j in range(prog.n_out):
            o = out[j][g]
            lo, hi = o.data_ptr(), o.data_ptr() + o.numel() * o.element_size()
            for k in range(prog.n_in):
                i = inputs[k][g]
                ilo, ihi = i.data_ptr(), i.data_ptr() + i.numel() * i.element_size()
                if ilo < hi and lo < ihi and ilo != lo:
                    raise RuntimeError(f"nytorch.fuse: output {j} and input {k} of group {g} partially overlap")
