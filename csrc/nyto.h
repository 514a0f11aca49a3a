// nytorch core: the op table and the device-independent job description that
// every kernel (CPU per-ISA, CUDA multi-tensor-apply) executes.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/SmallVector.h>
#include <array>
#include <cstdint>
#include <vector>

namespace nyto {

// Every elementwise op of the library, in the order of csrc/ops.def (the op
// table; the code is part of the Python fast path ABI: append only).
enum class Op : int {
#define NYTO_OP(E, ...) E,
#include "ops.def"
#undef NYTO_OP
  NumOps
};

struct OpInfo {
  const char* name;     // registered name (in-place twin has a trailing '_')
  int n_lists;          // tensor-list operands, self included
  int n_lists_inplace;  // ... of the in-place twin
  int n_scalars;        // scalar operands
  const char* args;     // the schema's arguments (ops.def)
  const char* inplace_extra;
  const char* fuse;  // the nytorch.fuse expression of the same value, or ""
};
const OpInfo& op_info(Op op);

constexpr int kMaxLists = 6;  // pso_velocity: v, x, p, g, r1, r2
constexpr int kMaxScalars = 3;

// One fast-route job: `n` tensors of one dtype on one device, all contiguous.
// For tensor i, ptrs[i * (nin + 1)] is the output and the next nin entries are
// the inputs (an in-place op passes self as both output and input 0).
struct Job {
  Job() {}  // user-provided: `Job{}` then skips zero-filling the ~200 bytes of inline buffers
  Op op;
  at::ScalarType dtype;
  int nin;
  c10::SmallVector<void*, 12> ptrs;  // small ops (a particle's flats) need no heap allocation
  c10::SmallVector<int64_t, 4> numels;
  std::array<double, kMaxScalars> s{};
  int64_t total = 0;
  c10::DeviceIndex device_index = -1;
};

// Kernels. The CPU one is chosen by instruction set at load time; the CUDA
// one is installed by csrc/cuda/kernels.cu in cuda_runners() (csrc/dispatch.h).
void run_cpu_job(const Job& job);
using JobRunner = void (*)(const Job&);

// The front end every registered op and the Python fast path call: checks the
// operands (raising before anything is written), groups tensors by
// (device, dtype) for the fast route, runs the rest per tensor with ATen.
// Out-of-place: returns the results (into `preset` outputs where given: the
// particle layer's reused buffers). In-place: writes lists[0], returns {}.
std::vector<at::Tensor> apply(Op op, bool inplace, c10::ArrayRef<at::TensorList> lists,
                              c10::ArrayRef<c10::Scalar> scalars, const std::vector<at::Tensor>* preset = nullptr);

// The slow route for one tensor index: plain ATen, identical to torch.
at::Tensor slow_out(Op op, const std::vector<at::Tensor>& xs, const std::vector<c10::Scalar>& s);
void slow_inplace(Op op, const at::Tensor& self, const std::vector<at::Tensor>& xs, const std::vector<c10::Scalar>& s);

// Random fills (not elementwise functors: they draw from torch's generators).
enum class Dist : int { Normal, Uniform };
void random_fill_(at::TensorList self, Dist dist, double a, double b, const std::optional<at::Generator>& gen);
std::vector<at::Tensor> random_like(at::TensorList self, Dist dist, double a, double b,
                                    const std::optional<at::Generator>& gen);

}  // namespace nyto
