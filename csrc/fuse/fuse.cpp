// nytorch.fuse front end: program decoding and checks, operand checks, seed,
// dispatch per (device, dtype) group, and the torch.ops.nytorch.fused /
// fused_ kernels (schemas in csrc/ops.cpp's TORCH_LIBRARY block).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include "dispatch.h"
#include "fuse/program.h"

namespace nyto::fuse {
namespace DEFAULT {
void run_groups(const Program& p, const GroupJob* const* jobs, int64_t n);
void row_sums(const RowSumJob& job);
double scalar_math(FOp op, double a, double b, double c);
}  // namespace DEFAULT
namespace AVX2 {
void run_groups(const Program& p, const GroupJob* const* jobs, int64_t n);
void row_sums(const RowSumJob& job);
double scalar_math(FOp op, double a, double b, double c);
}  // namespace AVX2

namespace {
// The op library's instruction-set choice (csrc/dispatch.h), made on first use.
// The CPU kernel takes all of a call's CPU groups at once (one pool of workers).
using CpuRunner = void (*)(const Program&, const GroupJob* const*, int64_t);
CpuRunner cpu_runner() {
  static const CpuRunner r = by_isa<CpuRunner>(&DEFAULT::run_groups, &AVX2::run_groups);
  return r;
}

constexpr const char* kNames[] = {
#define NYTO_FOP(E, name, ...) #name,
#define NYTO_FOP_IO(E, name, ...) #name,
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO
};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(FOp::NumOps));

}  // namespace

int arity(FOp op) {
  switch (op) {
#define NYTO_FOP(E, name, n, ...) \
  case FOp::E:                    \
    return n;
#define NYTO_FOP_IO NYTO_FOP
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO
    default:
      return 0;
  }
}

const char* op_name(FOp op) {
  const int i = static_cast<int>(op);
  return i >= 0 && i < static_cast<int>(FOp::NumOps) ? kNames[i] : "?";
}

// A math op on numbers, in double: the CPU kernel's float64 math itself
// (FMath of fops.def over at::vec vectors, one lane, in the chosen
// instruction set; csrc/fuse/cpu_interp.cpp), so a scalar instruction, and
// Python's number-only calls (nytorch._C.fuse_scalar), give exactly what a
// float64 vector instruction gives: fma rounds once, lerp takes torch's two
// branches, hypot/exp/log are the same SLEEF functions.
double scalar_op(FOp op, double a, double b, double c) {
  using Fn = double (*)(FOp, double, double, double);
  static const Fn fn = by_isa<Fn>(&DEFAULT::scalar_math, &AVX2::scalar_math);
  const int i = static_cast<int>(op);
  TORCH_CHECK(i >= 0 && i < static_cast<int>(FOp::NumOps) && arity(op) > 0 && op != FOp::Store,
              "nytorch.fuse: ", op_name(op), " has no scalar form");
  return fn(op, a, b, c);
}

void row_sums(const RowSumJob& job) {
  using Fn = void (*)(const RowSumJob&);
  static const Fn fn = by_isa<Fn>(&DEFAULT::row_sums, &AVX2::row_sums);
  fn(job);
}

Program decode(const int32_t* w, size_t n_words, const std::vector<double>& consts) {
  TORCH_CHECK(n_words >= static_cast<size_t>(kHeader) && w[0] == kMagic,
              "nytorch.fuse: not a fuse program (bad header); build programs with nytorch.fuse");
  Program p;
  p.n_in = w[1];
  p.n_out = w[2];
  p.n_vreg = w[3];
  p.n_sreg = w[4];
  const int n_instr = w[5];
  TORCH_CHECK(p.n_in >= 1 && p.n_out >= 1 && p.n_vreg >= 0 && p.n_sreg >= 0 && n_instr >= 0 &&
                  n_words == static_cast<size_t>(kHeader) + static_cast<size_t>(n_instr) * kWords,
              "nytorch.fuse: malformed program header (", p.n_in, " inputs, ", p.n_out, " outputs, ", n_instr,
              " instructions in ", n_words, " words)");
  const int n_consts = static_cast<int>(consts.size());
  TORCH_CHECK(n_consts <= p.n_sreg, "nytorch.fuse: ", n_consts, " numbers given, the program has ", p.n_sreg,
              " scalar slots");
  p.sval.assign(p.n_sreg, 0.0);
  p.s_used.assign(p.n_sreg, 0);
  Small<char> s_def(p.n_sreg, 0), v_def(p.n_vreg, 0), stored(p.n_out, 0);
  for (int s = 0; s < n_consts; ++s) {
    p.sval[s] = consts[s];
    s_def[s] = 1;
  }
  bool storing = false;
  for (int i = 0; i < n_instr; ++i) {
    Instr ins;
    std::memcpy(&ins, w + kHeader + i * kWords, sizeof(Instr));
    TORCH_CHECK(ins.op >= 0 && ins.op < static_cast<int>(FOp::NumOps), "nytorch.fuse: instruction ", i,
                ": unknown op code ", ins.op);
    const FOp op = static_cast<FOp>(ins.op);
    const int na = arity(op);
    const int32_t opnd[3] = {ins.a, ins.b, ins.c};
    bool all_scalar = true;
    for (int k = 0; k < na; ++k) {
      const int32_t o = opnd[k];
      if (o >= 0) {
        TORCH_CHECK(o < p.n_vreg && v_def[o], "nytorch.fuse: instruction ", i, " (", kNames[ins.op],
                    ") reads undefined register ", o);
        all_scalar = false;
      } else {
        TORCH_CHECK(-1 - o < p.n_sreg && s_def[-1 - o], "nytorch.fuse: instruction ", i, " (", kNames[ins.op],
                    ") reads undefined scalar slot ", -1 - o);
      }
    }
    if (op == FOp::Store) {
      TORCH_CHECK(ins.dst >= 0 && ins.dst < p.n_out && !stored[ins.dst], "nytorch.fuse: instruction ", i, ": output ",
                  ins.dst, " out of range or stored twice");
      stored[ins.dst] = 1;
      storing = true;
      if (ins.a < 0) p.s_used[-1 - ins.a] = 1;
      p.vec.push_back(ins);
      continue;
    }
    TORCH_CHECK(!storing, "nytorch.fuse: instruction ", i, " (", kNames[ins.op], ") follows a store");
    if (ins.dst < 0) {  // scalar instruction
      const int s = -1 - ins.dst;
      TORCH_CHECK(na > 0 && all_scalar && s >= n_consts && s < p.n_sreg, "nytorch.fuse: instruction ", i, " (",
                  kNames[ins.op], ") is not a valid scalar instruction");
      double v[3] = {0, 0, 0};
      for (int k = 0; k < na; ++k) v[k] = p.sval[-1 - opnd[k]];
      p.sval[s] = scalar_op(op, v[0], v[1], v[2]);
      s_def[s] = 1;
      continue;
    }
    TORCH_CHECK(ins.dst < p.n_vreg, "nytorch.fuse: instruction ", i, ": register ", ins.dst, " out of range");
    if (op == FOp::Load) {
      TORCH_CHECK(ins.a >= 0 && ins.a < p.n_in, "nytorch.fuse: instruction ", i, ": input ", ins.a, " out of range");
    } else if (op == FOp::Rand || op == FOp::Randn || op == FOp::Rands) {
      TORCH_CHECK(ins.a >= 0, "nytorch.fuse: instruction ", i, ": bad random stream ", ins.a);
      TORCH_CHECK(op != FOp::Rands || (ins.b < 0 && -1 - ins.b < p.n_sreg && s_def[-1 - ins.b]),
                  "nytorch.fuse: instruction ", i, " (rands) needs a defined scalar scale");
      p.has_rand = true;
    } else {
      for (int k = 0; k < na; ++k) {
        // Binary ops, muladd's scalar factor and clamp's number bounds keep a
        // scalar in a register; other scalar operands are read from a broadcast block.
        const bool in_register = na == 2 || (op == FOp::MulAdd && k == 0 && opnd[1] >= 0 && opnd[2] >= 0) ||
                                 (op == FOp::Clamp && k > 0 && opnd[0] >= 0 && opnd[1] < 0 && opnd[2] < 0);
        if (opnd[k] < 0 && !in_register) p.s_used[-1 - opnd[k]] = 1;
      }
    }
    v_def[ins.dst] = 1;
    p.vec.push_back(ins);
  }
  for (int j = 0; j < p.n_out; ++j) {
    TORCH_CHECK(stored[j], "nytorch.fuse: output ", j, " is never stored");
  }
  return p;
}

std::vector<std::vector<at::Tensor>> run(const int32_t* words, size_t n_words, const std::vector<double>& consts,
                                         const std::vector<std::vector<at::Tensor>>& ins,
                                         std::vector<std::vector<at::Tensor>> outs, int64_t seed, int64_t offset,
                                         const at::Tensor& state, const RowSplit* split) {
  const Program p = decode(words, n_words, consts);
  TORCH_CHECK(static_cast<int>(ins.size()) == p.n_in, "nytorch.fuse: the program takes ", p.n_in, " inputs, got ",
              ins.size());
  const size_t ng = ins[0].size();
  TORCH_CHECK(ng >= 1, "nytorch.fuse: inputs have no buffers");
  for (size_t k = 0; k < ins.size(); ++k) {
    TORCH_CHECK(ins[k].size() == ng, "nytorch.fuse: input ", k, " has ", ins[k].size(),
                " buffers (groups), input 0 has ", ng);
  }
  const bool alloc = outs.empty();
  if (!alloc) {
    TORCH_CHECK(static_cast<int>(outs.size()) == p.n_out, "nytorch.fuse: the program has ", p.n_out, " outputs, got ",
                outs.size(), " output lists");
    for (size_t j = 0; j < outs.size(); ++j) {
      TORCH_CHECK(outs[j].size() == ng, "nytorch.fuse: output ", j, " has ", outs[j].size(),
                  " buffers (groups), the inputs have ", ng);
    }
  }
  TORCH_CHECK(offset >= 0, "nytorch.fuse: offset must be >= 0, got ", offset);
  if (state.defined()) {
    TORCH_CHECK(state.scalar_type() == at::kLong && state.dim() == 1 && state.size(0) == 2 && state.is_contiguous(),
                "nytorch.fuse: a random state is a contiguous int64 tensor of shape [2] (seed, offset), as "
                "nytorch.fuse.random_state makes; got ",
                state.scalar_type(), " of shape ", state.sizes());
  }
  if (split) {
    TORCH_CHECK(split->n_rows >= 0, "nytorch.fuse.run_rows: the number of rows must be >= 0");
    for (size_t i = 0; i < split->rows.size(); ++i) {
      const int64_t r = split->rows[i];
      TORCH_CHECK(r >= 0 && r < split->n_rows, "nytorch.fuse.run_rows: row ", r, " is out of range for ", split->n_rows,
                  " rows");
      TORCH_CHECK(i == 0 || r > split->rows[i - 1],
                  "nytorch.fuse.run_rows: rows must be ascending without repeats, got ", split->rows[i - 1], " before ",
                  r);
    }
  }
  // Row mode: which inputs of which group are one row read by every row.
  std::vector<std::vector<char>> one_row(split ? ins.size() : 0, std::vector<char>(ng, 0));
  // Check everything before writing anything.
  for (size_t g = 0; g < ng; ++g) {
    const at::Tensor& ref = ins[0][g];
    int64_t row_numel = ref.numel();  // row mode: the elements of one row
    if (split) {
      TORCH_CHECK(ref.dim() >= 1 && ref.size(0) == split->n_rows, "nytorch.fuse.run_rows: input 0 of group ", g,
                  " has shape ", ref.sizes(), "; it must be a stacked buffer of ", split->n_rows, " rows (dim 0)");
      row_numel = split->n_rows ? ref.numel() / split->n_rows : 0;
    }
    // input: an input (in row mode it may be one row); else an output
    auto check = [&](const at::Tensor& t, bool input, size_t k) {
      const char* what = input ? "input" : "output";
      TORCH_CHECK(t.defined(), "nytorch.fuse: ", what, " ", k, " of group ", g, " is undefined");
      TORCH_CHECK(is_fast_dtype(t.scalar_type()), "nytorch.fuse: ", what, " ", k, " of group ", g, " has dtype ",
                  t.scalar_type(), "; fuse supports float32, float64, bfloat16 and float16");
      TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "nytorch.fuse: dtype mismatch in group ", g, ": ", what, " ", k,
                  " is ", t.scalar_type(), ", input 0 is ", ref.scalar_type());
      TORCH_CHECK(t.device() == ref.device(), "nytorch.fuse: device mismatch in group ", g, ": ", what, " ", k,
                  " is on ", t.device(), ", input 0 is on ", ref.device());
      const bool row = split && input && t.numel() != ref.numel() && t.numel() == row_numel;
      TORCH_CHECK(t.numel() == ref.numel() || row, "nytorch.fuse: size mismatch in group ", g, ": ", what, " ", k,
                  " has ", t.numel(), " elements, input 0 has ", ref.numel(),
                  split && input ? " (and one row of it " + std::to_string(row_numel) + ")" : std::string());
      if (row) one_row[k][g] = 1;
      TORCH_CHECK(t.is_contiguous() && !t.is_neg() && !t.is_conj(), "nytorch.fuse: ", what, " ", k, " of group ", g,
                  " is not contiguous");
    };
    for (size_t k = 0; k < ins.size(); ++k) check(ins[k][g], true, k);
    TORCH_CHECK(!state.defined() || ref.numel() == 0 || state.device() == ref.device(),
                "nytorch.fuse: the random state is on ", state.device(), ", group ", g, " on ", ref.device(),
                " (it must be on the operands' device)");
    const auto dev = ref.device().type();
    TORCH_CHECK(dev == at::kCPU || (dev == at::kCUDA && cuda_runners().fuse), "nytorch.fuse: no kernel for device ",
                ref.device(), dev == at::kCUDA ? " (nytorch was built without CUDA)" : "");
    if (dev == at::kCUDA) {
      TORCH_CHECK(p.vec.size() <= static_cast<size_t>(kCudaMaxInstr) && p.n_vreg <= kCudaMaxVreg &&
                      p.n_sreg <= kCudaMaxSreg && p.n_in <= kCudaMaxIn && p.n_out <= kCudaMaxOut,
                  "nytorch.fuse: expression too large for the CUDA kernel (", p.vec.size(), " instructions, ", p.n_vreg,
                  " registers, ", p.n_sreg, " numbers, ", p.n_in, " inputs, ", p.n_out, " outputs; at most ",
                  kCudaMaxInstr, ", ", kCudaMaxVreg, ", ", kCudaMaxSreg, ", ", kCudaMaxIn, ", ", kCudaMaxOut, ")");
    }
    if (alloc) continue;
    // Every operand is contiguous (checked above) with the same numel and
    // dtype, so overlap is a comparison of byte ranges (at::get_overlap_status's
    // answer for such tensors, without its cost: a call checks outputs x
    // (inputs + outputs) pairs per group, and a population's rows are many groups).
    const int64_t nbytes = ref.numel() * static_cast<int64_t>(ref.element_size());
    Small<const char*> in_at(ins.size()), out_at(outs.size());
    for (size_t k = 0; k < ins.size(); ++k) in_at[k] = static_cast<const char*>(ins[k][g].const_data_ptr());
    auto overlap = [&](const char* pa, const at::Tensor& a, const char* pb, const at::Tensor& b) {
      if (nbytes == 0) return at::MemOverlapStatus::No;
      if (pa == pb) return a.strides() == b.strides() ? at::MemOverlapStatus::Full : at::MemOverlapStatus::Partial;
      return pa < pb + nbytes && pb < pa + nbytes ? at::MemOverlapStatus::Partial : at::MemOverlapStatus::No;
    };
    for (size_t j = 0; j < outs.size(); ++j) {
      const at::Tensor& o = outs[j][g];
      check(o, false, j);
      out_at[j] = static_cast<const char*>(o.const_data_ptr());
      for (size_t k = 0; k < ins.size(); ++k) {
        if (split && one_row[k][g]) {  // read by every row: never written by the call
          const int64_t rb = row_numel * static_cast<int64_t>(ref.element_size());
          TORCH_CHECK(nbytes == 0 || rb == 0 || !(out_at[j] < in_at[k] + rb && in_at[k] < out_at[j] + nbytes),
                      "nytorch.fuse.run_rows: input ", k, " of group ", g,
                      " is one row read by every row; it may not overlap output ", j);
          continue;
        }
        TORCH_CHECK(overlap(out_at[j], o, in_at[k], ins[k][g]) != at::MemOverlapStatus::Partial,
                    "nytorch.fuse: output ", j, " and input ", k, " of group ", g,
                    " partially overlap (an output may only be an input itself)");
      }
      for (size_t j2 = 0; j2 < j; ++j2) {
        TORCH_CHECK(overlap(out_at[j], o, out_at[j2], outs[j2][g]) == at::MemOverlapStatus::No,
                    "nytorch.fuse: outputs ", j2, " and ", j, " of group ", g, " overlap");
      }
    }
  }
  if (alloc) {
    outs.assign(p.n_out, std::vector<at::Tensor>(ng));
    for (int j = 0; j < p.n_out; ++j) {
      for (size_t g = 0; g < ng; ++g) outs[j][g] = at::empty_like(ins[0][g], at::MemoryFormat::Contiguous);
    }
  }
  uint64_t key = static_cast<uint64_t>(seed);
  uint64_t off = static_cast<uint64_t>(offset);
  const int64_t* state_ptr = nullptr;  // CUDA: the kernels read it
  if (state.defined() && state.is_cpu()) {
    const int64_t* s = state.const_data_ptr<int64_t>();
    key = static_cast<uint64_t>(s[0]);
    off += static_cast<uint64_t>(s[1]);
  } else if (state.defined()) {
    state_ptr = state.const_data_ptr<int64_t>();
  } else if (p.has_rand && seed < 0) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    key = gen.get<at::CPUGeneratorImpl>()->random64();
  }
  // One job per group, or (row mode) per run of consecutive listed rows of
  // each group on the CPU (per listed row on CUDA).
  const int64_t n_rows = split ? split->n_rows : 1;
  std::vector<std::pair<int64_t, int64_t>> runs;  // [first row, end row)
  if (!split || split->all) {
    if (n_rows > 0) runs.emplace_back(0, n_rows);
  } else {
    for (int64_t r : split->rows) {
      if (!runs.empty() && runs.back().second == r) {
        ++runs.back().second;
      } else {
        runs.emplace_back(r, r + 1);
      }
    }
  }
  std::vector<std::pair<int64_t, int64_t>> cuda_rows;  // row mode on CUDA: one row a job (built only there)
  bool any_cuda = false;
  for (size_t g = 0; g < ng; ++g) any_cuda |= !ins[0][g].device().is_cpu();
  if (split && any_cuda) {
    for (const auto& [r0, r1] : runs) {
      for (int64_t r = r0; r < r1; ++r) cuda_rows.emplace_back(r, r + 1);
    }
  }
  size_t n_jobs = 0;
  for (size_t g = 0; g < ng; ++g) n_jobs += ins[0][g].device().is_cpu() || !split ? runs.size() : cuda_rows.size();
  std::vector<GroupJob> jobs(n_jobs);
  std::vector<const GroupJob*> cpu_jobs;
  size_t next_job = 0;
  for (size_t g = 0; g < ng; ++g) {
    const at::Tensor& ref = ins[0][g];
    const bool cpu = ref.device().is_cpu();
    const int64_t row_n = ref.numel() / std::max<int64_t>(n_rows, 1);
    if (row_n == 0) continue;
    const int64_t esize = static_cast<int64_t>(ref.element_size());
    for (const auto& [r0, r1] : cpu || !split ? runs : cuda_rows) {
      GroupJob& job = jobs[next_job++];
      job.dtype = ref.scalar_type();
      job.n = (r1 - r0) * row_n;
      const int64_t at_byte = r0 * row_n * esize;
      job.seed = key;
      job.offset = off + static_cast<uint64_t>(r0 * row_n);
      job.state = state_ptr;
      job.group = static_cast<uint32_t>(g);
      job.device_index = ref.device().index();
      job.in.resize(p.n_in);
      job.in_is_out.assign(p.n_in, 0);
      job.out_is_in.assign(p.n_out, 0);
      job.out.resize(p.n_out);
      for (int j = 0; j < p.n_out; ++j) job.out[j] = static_cast<char*>(outs[j][g].data_ptr()) + at_byte;
      for (int k = 0; k < p.n_in; ++k) {
        const bool shared_row = split && one_row[k][g];
        job.in[k] = static_cast<const char*>(ins[k][g].const_data_ptr()) + (shared_row ? 0 : at_byte);
        if (shared_row && r1 - r0 > 1) {  // (CPU: a run of rows reads it cyclically)
          if (job.period.empty()) job.period.assign(p.n_in, 0);
          job.period[k] = row_n;
        }
        for (int j = 0; j < p.n_out; ++j) {
          const bool same = job.out[j] == job.in[k];
          job.in_is_out[k] |= same;
          job.out_is_in[j] |= same;
        }
      }
      if (cpu)
        cpu_jobs.push_back(&job);
      else
        cuda_runners().fuse(p, job);
    }
  }
  if (!cpu_jobs.empty()) cpu_runner()(p, cpu_jobs.data(), static_cast<int64_t>(cpu_jobs.size()));
  if (state.defined() && p.has_rand) {  // the next call draws fresh numbers
    const int64_t span = random_span(ins);
    if (state.is_cpu()) {
      state.mutable_data_ptr<int64_t>()[1] += span;
      if (!state.is_inference()) state.unsafeGetTensorImpl()->bump_version();
    } else {
      state.narrow(0, 1, 1).add_(span);  // enqueued on the current stream: capturable, no host sync
    }
  }
  if (!alloc) {
    for (const auto& l : outs) {
      for (const auto& t : l) {
        if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
      }
    }
  }
  return outs;
}

int64_t random_span(const std::vector<std::vector<at::Tensor>>& ins) {
  int64_t n = 0;
  if (!ins.empty()) {
    for (const auto& t : ins[0]) n = std::max<int64_t>(n, t.numel());
  }
  return (n + 3) / 4 * 4;
}

namespace {
// torch.ops.nytorch.fused / fused_: inputs and outputs are flattened
// group-major (inputs[g * n_in + k]); the seed is explicit (functional op).
std::vector<std::vector<at::Tensor>> split(at::TensorList flat, int per, const char* what) {
  TORCH_CHECK(per > 0 && flat.size() % per == 0, "nytorch.fused: ", flat.size(), " ", what,
              " tensors are not a whole number of groups of ", per);
  const size_t ng = flat.size() / per;
  std::vector<std::vector<at::Tensor>> out(per, std::vector<at::Tensor>(ng));
  for (size_t g = 0; g < ng; ++g) {
    for (int k = 0; k < per; ++k) out[k][g] = flat[g * per + k];
  }
  return out;
}

std::vector<int32_t> words_of(c10::IntArrayRef program) {
  std::vector<int32_t> w(program.begin(), program.end());
  return w;
}

int header(const std::vector<int32_t>& w, int i) {
  TORCH_CHECK(w.size() >= static_cast<size_t>(kHeader) && w[0] == kMagic, "nytorch.fused: not a fuse program");
  return w[i];
}

std::vector<at::Tensor> fused(c10::IntArrayRef program, c10::ArrayRef<double> consts, at::TensorList inputs,
                              int64_t seed, int64_t offset) {
  const auto w = words_of(program);
  auto outs = run(w.data(), w.size(), std::vector<double>(consts.begin(), consts.end()),
                  split(inputs, header(w, 1), "input"), {}, seed, offset);
  std::vector<at::Tensor> flat;
  const size_t ng = outs.empty() ? 0 : outs[0].size();
  for (size_t g = 0; g < ng; ++g) {
    for (auto& o : outs) flat.push_back(o[g]);
  }
  return flat;
}

void fused_(c10::IntArrayRef program, c10::ArrayRef<double> consts, at::TensorList inputs, at::TensorList out,
            int64_t seed, int64_t offset) {
  const auto w = words_of(program);
  run(w.data(), w.size(), std::vector<double>(consts.begin(), consts.end()), split(inputs, header(w, 1), "input"),
      split(out, header(w, 2), "output"), seed, offset);
}
}  // namespace

}  // namespace nyto::fuse

TORCH_LIBRARY_IMPL(nytorch, CPU, m) {
  m.impl("fused", &nyto::fuse::fused);
  m.impl("fused_", &nyto::fuse::fused_);
}
#ifdef NYTO_WITH_CUDA
TORCH_LIBRARY_IMPL(nytorch, CUDA, m) {
  m.impl("fused", &nyto::fuse::fused);
  m.impl("fused_", &nyto::fuse::fused_);
}
#endif
