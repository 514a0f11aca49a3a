// nytorch.fuse: the expression program (bytecode) and the per-group job that
// the CPU block interpreter (cpu_interp.cpp, per ISA) and the CUDA kernel
// (fuse_cuda.cu) execute. python/nytorch/_fuse/program.py writes programs.
//
// Program layout (int32 words): a header {kMagic, n_in, n_out, n_vreg, n_sreg,
// n_instr} and n_instr instructions of 5 words {op, dst, a, b, c}.
// Operands: r >= 0 is vector register r (one value per element), r < 0 is
// scalar slot -1-r (one value per call). Scalar slots [0, n_consts) hold the
// call's numbers; an instruction with dst < 0 is a scalar instruction, run
// once per call in double precision (Python number semantics) before the
// element loop. Vector instructions compute in op-math precision M (float for
// float32/bfloat16/float16, double for float64). All STOREs come last.
#pragma once
#include <ATen/core/Tensor.h>
#include <cstdint>
#include <c10/util/SmallVector.h>
#include <vector>

namespace nyto::fuse {

constexpr int32_t kMagic = 0x4E590001;  // "NY", program format 1
constexpr int kHeader = 6;
constexpr int kWords = 5;

// The instructions, in the order of csrc/fuse/fops.def (append only).
enum class FOp : int32_t {
#define NYTO_FOP(E, ...) E,
#define NYTO_FOP_IO(E, ...) E,
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO
  NumOps
};

// Small per-call arrays: a program's handful of instructions, registers
// and buffers without a heap allocation each (small calls are ~10 of them).
template <class T>
using Small = c10::SmallVector<T, 16>;

struct Instr {
  int32_t op, dst, a, b, c;
};

int arity(FOp op);            // operands read (Load/Rand: 0 registers)
const char* op_name(FOp op);  // its name in fops.def ("?" for a bad code)
// The value of a math op on numbers, in double (scalar instructions, and
// nytorch._C.fuse_scalar for Python's number-only calls).
double scalar_op(FOp op, double a, double b, double c);

// A checked program with its scalar slots evaluated for one call.
struct Program {
  int n_in = 0, n_out = 0, n_vreg = 0, n_sreg = 0;
  Small<Instr> vec;    // vector instructions (loads, math, rand, stores)
  Small<double> sval;  // every scalar slot's value
  Small<char> s_used;  // scalar slots vector instructions read as a broadcast block
  bool has_rand = false;
};

// Checks `words` (raising a clear error) and evaluates the scalar slots.
Program decode(const int32_t* words, size_t n_words, const std::vector<double>& consts);

// One (device, dtype) group: every operand is a contiguous range of n elements.
struct GroupJob {
  at::ScalarType dtype;
  int64_t n = 0;
  Small<const void*> in;
  // CPU row mode only: input k is one row of period[k] elements that element
  // e reads at e % period[k] (a run of consecutive rows as one job); empty or
  // 0: a whole buffer. Such an input never overlaps an output.
  Small<int64_t> period;
  Small<void*> out;
  Small<char> in_is_out;  // input k is also an output: never read it in place
  Small<char> out_is_in;  // output j is also an input (else: written only, may bypass the caches)
  uint64_t seed = 0;      // Philox key
  uint64_t offset = 0;    // added to the element index (random counters)
  // A random-state tensor's memory {seed, offset} (int64, on the group's
  // device), or null. CUDA kernels read it at run time: the key is state[0],
  // state[1] is added to `offset` (a CUDA graph replay reads the current
  // value). CPU groups never see it: the front end reads it into seed/offset.
  const int64_t* state = nullptr;
  uint32_t group = 0;  // group index (random counters)
  c10::DeviceIndex device_index = -1;
};

// Weighted sums of the rows of a stored [h, n] buffer (the noise of the
// Gaussian strategies, nytorch/algorithms/_sampling.py), CPU, float32 or
// float64: acc1 = w_r * row_r + acc1 (and acc2 = v_r * row_r**2 + acc2),
// r = 0 .. h-1 in order, each product and sum rounded in the dtype: bitwise
// what a fuse program of muladds over the same rows gives, in one call.
struct RowSumJob {
  at::ScalarType dtype;
  const void* rows = nullptr;  // row r at rows + r * stride elements
  int64_t h = 0, n = 0, stride = 0;
  const double* w = nullptr;  // h weights
  const double* v = nullptr;  // h weights of the squares (with acc2)
  void* acc1 = nullptr;
  void* acc2 = nullptr;  // null: no squares
};
void row_sums(const RowSumJob& job);  // the per-ISA kernel (operands checked by the caller)

// The CUDA kernel takes the program by value in its launch arguments.
constexpr int kCudaMaxInstr = 160, kCudaMaxVreg = 24, kCudaMaxSreg = 48, kCudaMaxIn = 16, kCudaMaxOut = 16;

using Runner = void (*)(const Program&, const GroupJob&);  // CUDA's: cuda_runners().fuse (csrc/dispatch.h)

// Row mode (nytorch.fuse.run_rows): every group's input 0 is a stacked
// [n_rows, ...] buffer of n_rows rows of D elements; an input is either
// stacked like it or ONE row of D elements, read by every row (it may not
// overlap an output); outputs are stacked. Only the rows listed (ascending,
// no repeats) run, row r of group g with the random counters of elements
// r * D + e of group g: bitwise what run() draws and computes over whole
// stacked buffers (one rows expanded). On the CPU a run of consecutive listed
// rows is one job (the one rows read cyclically, GroupJob::period); on CUDA
// each row is its own job (launch).
struct RowSplit {
  int64_t n_rows = 0;
  std::vector<int64_t> rows;  // empty: every row
  bool all = true;
};

// The front end: checks every operand (raising before anything is written),
// allocates missing outputs, draws the seed (seed < 0: from torch's default
// CPU generator), runs each group. ins[k][g]: input k of group g;
// outs[j][g]: output j of group g (empty: allocated like ins[0][g]).
// `state` (optional): a random-state tensor, int64 [2] = (seed, offset) on
// the operands' device, used instead of `seed` (its offset added to
// `offset`); a program that draws random numbers advances state[1] by
// random_span(ins) after its launches (same stream, no host sync).
std::vector<std::vector<at::Tensor>> run(const int32_t* words, size_t n_words, const std::vector<double>& consts,
                                         const std::vector<std::vector<at::Tensor>>& ins,
                                         std::vector<std::vector<at::Tensor>> outs, int64_t seed, int64_t offset,
                                         const at::Tensor& state = at::Tensor(), const RowSplit* split = nullptr);

// How far a call over `ins` moves a random state: the largest group's numel
// rounded up to whole Philox counters (4 elements), so the next call's
// counters never repeat this one's.
int64_t random_span(const std::vector<std::vector<at::Tensor>>& ins);

}  // namespace nyto::fuse
