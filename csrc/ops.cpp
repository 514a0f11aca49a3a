// The op library: one schema block, one front end (nyto::apply) that checks
// operands, runs the fast route per (device, dtype) group and the slow route
// per tensor, and the device registrations (CPU always, CUDA when built; the
// CUDA kernels live in csrc/cuda/ and install themselves as the job runner).
#include <ATen/ExpandUtils.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/GradMode.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include "dispatch.h"
#include "nyto.h"

namespace nyto {

const OpInfo& op_info(Op op) {
  static const OpInfo table[] = {
#define NYTO_OP(E, name, nl, nli, ns, args, extra, fuse, ...) {#name, nl, nli, ns, args, extra, fuse},
#include "ops.def"
#undef NYTO_OP
  };
  static_assert(sizeof(table) / sizeof(table[0]) == static_cast<size_t>(Op::NumOps));
  return table[static_cast<int>(op)];
}

namespace {

// An op's registered name, for error messages: streamed only when a
// TORCH_CHECK fails (its message arguments are evaluated on failure only).
struct OpName {
  Op op;
  bool inplace;
};
std::ostream& operator<<(std::ostream& os, const OpName& n) {
  return os << "nytorch." << op_info(n.op).name << (n.inplace ? "_" : "");
}

// Result dtype of the op at one index, by torch's promotion rules.
at::ScalarType result_dtype(Op op, c10::ArrayRef<at::Tensor> xs, c10::ArrayRef<c10::Scalar> s) {
  at::ScalarType rt = xs[0].scalar_type();
  for (size_t k = 1; k < xs.size(); ++k) rt = c10::promoteTypes(rt, xs[k].scalar_type());
  const bool int_like = c10::isIntegralType(rt, /*includeBool=*/true);
  for (const auto& sc : s) {
    if (sc.isFloatingPoint() && int_like)
      rt = c10::typeMetaToScalarType(c10::get_default_dtype());
    else if (sc.isIntegral(false) && rt == at::kBool) {
      // a Python int in [2**63, 2**64) is a uint64 scalar, which torch won't promote with bool
      TORCH_CHECK(sc.type() != at::kUInt64,
                  "Promotion for uint16, uint32, uint64 types is not supported, "
                  "attempted to promote Bool and UInt64");
      rt = at::kLong;
    }
  }
  if ((op == Op::Div || op == Op::DivS || op == Op::RDivS) && c10::isIntegralType(rt, true))
    rt = c10::typeMetaToScalarType(c10::get_default_dtype());
  return rt;
}

// Whether the contiguous tensors a and b use disjoint bytes (the common case:
// two particles' flats), decided without ATen's overlap machinery.
bool disjoint_dense(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_contiguous() || !b.is_contiguous() || !a.has_storage() || !b.has_storage()) return false;
  const auto* pa = static_cast<const char*>(a.unsafeGetTensorImpl()->data());
  const auto* pb = static_cast<const char*>(b.unsafeGetTensorImpl()->data());
  return pa + a.numel() * a.itemsize() <= pb || pb + b.numel() * b.itemsize() <= pa;
}

// Everything that could make the op fail is checked here, before any write.
void check_operands(Op op, bool inplace, c10::ArrayRef<at::TensorList> lists, c10::ArrayRef<c10::Scalar> scalars) {
  const OpName name{op, inplace};
  const size_t n = lists[0].size();
  for (size_t k = 1; k < lists.size(); ++k) {
    TORCH_CHECK(lists[k].size() == n, name,
                ": tensor list arguments must have the same length, "
                "but argument 0 has ",
                n, " tensors and argument ", k, " has ", lists[k].size());
  }
  for (size_t k = 0; k < scalars.size(); ++k) {
    TORCH_CHECK(!scalars[k].isComplex(), name, ": scalar argument ", k, " is complex (", scalars[k],
                "); only real numbers are supported");
  }
  // torch refuses subtraction with a bool on either side (its wording).
  constexpr const char* kBoolSub =
      "Subtraction, the `-` operator, with a bool tensor is not supported. "
      "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead.";
  const bool sub = op == Op::Sub || op == Op::SubS || op == Op::RSubS;
  TORCH_CHECK(!(sub && op != Op::Sub && scalars[0].isBoolean()), name, ": scalar argument 0 is a bool: ", kBoolSub);
  c10::SmallVector<at::Tensor, 4> xs(lists.size());
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& self = lists[0][i];
    TORCH_CHECK(!(sub && (self.scalar_type() == at::kBool ||
                          (lists.size() > 1 && lists[1][i].defined() && lists[1][i].scalar_type() == at::kBool))),
                name, ": a bool tensor at index ", i, ": ", kBoolSub);
    TORCH_CHECK(self.defined(), name, ": tensor ", i, " of argument 0 is undefined");
    // torch converts a pow exponent to self's dtype, with an overflow check:
    // float16 ** 70000 raises (the fast route would compute in float).
    if (op == Op::PowS && self.scalar_type() == at::kHalf) (void)scalars[0].to<c10::Half>();
    if (op == Op::PowS && self.scalar_type() == at::kBFloat16) (void)scalars[0].to<c10::BFloat16>();
    for (size_t k = 1; k < lists.size(); ++k) {
      const at::Tensor& t = lists[k][i];
      TORCH_CHECK(t.defined(), name, ": tensor ", i, " of argument ", k, " is undefined");
      TORCH_CHECK(t.sizes().equals(self.sizes()), name, ": shape mismatch at index ", i, ": argument 0 has shape ",
                  self.sizes(), " but argument ", k, " has shape ", t.sizes());
      TORCH_CHECK(t.device() == self.device(), name, ": device mismatch at index ", i, ": argument 0 is on ",
                  self.device(), " but argument ", k, " is on ", t.device());
    }
    if (!inplace) continue;
    // Memory overlap: torch refuses it only while writing this index, after
    // earlier indices were written. fill_ may write an expanded tensor.
    TORCH_CHECK(op == Op::Fill || self.is_contiguous() || at::has_internal_overlap(self) != at::MemOverlap::Yes, name,
                ": internal overlap at index ", i,
                ": more than one element of argument 0 refers to a "
                "single memory location (e.g. an expanded view); clone it first");
    for (size_t k = 1; k < lists.size(); ++k) {
      TORCH_CHECK(disjoint_dense(self, lists[k][i]) ||
                      at::get_overlap_status(self, lists[k][i]) != at::MemOverlapStatus::Partial,
                  name, ": partial overlap at index ", i, ": argument ", k,
                  " and argument 0 share some, "
                  "but not all, memory locations");
    }
    if (op == Op::Copy || op == Op::Fill) continue;  // copy_/fill_ cast like torch
    // One floating dtype with real scalars: the result type is self's, and
    // none of the dtype rules below can fail (the common, fast-route case).
    bool one_float_dtype = is_fast_dtype(self.scalar_type());
    for (size_t k = 1; k < lists.size() && one_float_dtype; ++k)
      one_float_dtype = lists[k][i].scalar_type() == self.scalar_type();
    if (one_float_dtype) continue;
    for (size_t k = 0; k < lists.size(); ++k) xs[k] = lists[k][i];
    if (op == Op::Lerp) {
      TORCH_CHECK(c10::isFloatingType(self.scalar_type()) && lists[1][i].scalar_type() == self.scalar_type(), name,
                  ": dtype mismatch at index ", i, ": lerp needs floating tensors of one dtype, got ",
                  self.scalar_type(), " and ", lists[1][i].scalar_type());
    }
    const at::ScalarType rt = result_dtype(op, xs, scalars);
    TORCH_CHECK(c10::canCast(rt, self.scalar_type()), name, ": dtype mismatch at index ", i, ": the result type ", rt,
                " can't be cast to the in-place output's dtype ", self.scalar_type());
    if (op == Op::PowS && c10::isIntegralType(self.scalar_type(), true) && scalars[0].isIntegral(false)) {
      TORCH_CHECK(scalars[0].toLong() >= 0, name, ": integers to negative integer powers are not allowed (index ", i,
                  ")");
    }
    if (op == Op::Hypot || op == Op::HypotS) {  // torch has no integer hypot
      TORCH_CHECK(c10::isFloatingType(rt), name, ": dtype mismatch at index ", i,
                  ": hypot needs a floating "
                  "result, got ",
                  rt);
    }
    if (op == Op::Addcmul && c10::isIntegralType(rt, true)) {
      TORCH_CHECK(!scalars[0].isFloatingPoint(), name,
                  ": for integral input tensors, value must not be a floating point number (index ", i, ")");
    }
    // bool arithmetic torch refuses (again only while writing): subtraction
    // with a bool tensor, and neg/pow/addcmul computed in bool. (A bool scalar
    // subtracts as 0/1 on both routes, see slow.cpp.)
    bool bad_bool = rt == at::kBool && (op == Op::Neg || op == Op::Pow || op == Op::RPowS || op == Op::Addcmul);
    if (op == Op::Sub) bad_bool |= self.scalar_type() == at::kBool || lists[1][i].scalar_type() == at::kBool;
    if (op == Op::SubS || op == Op::RSubS) bad_bool |= self.scalar_type() == at::kBool;
    if (op == Op::PsoVelocity) {
      for (int k = 1; k <= 3; ++k) bad_bool |= lists[k][i].scalar_type() == at::kBool;  // p - x, g - x
    }
    TORCH_CHECK(!bad_bool, name, ": dtype mismatch at index ", i, ": ", op_info(op).name,
                " is not supported for these bool operands");
  }
}

// The fast route takes an index when all its operands share one floating
// dtype and one device with a kernel, and are contiguous.
bool fast_index(c10::ArrayRef<at::TensorList> lists, size_t i) {
  const at::Tensor& self = lists[0][i];
  const auto dt = self.scalar_type();
  if (!is_fast_dtype(dt)) return false;
  const auto dev = self.device().type();
  if (dev != at::kCPU && !(dev == at::kCUDA && cuda_runners().job)) return false;
  for (const auto& l : lists) {
    const at::Tensor& t = l[i];
    if (t.scalar_type() != dt || !t.is_contiguous() || t.is_neg() || t.is_conj()) return false;
  }
  return true;
}

void run_job(const Job& job, at::DeviceType dev) {
  if (job.total == 0) return;
  if (dev == at::kCPU)
    run_cpu_job(job);
  else
    cuda_runners().job(job);
}

}  // namespace

std::vector<at::Tensor> apply(Op op, bool inplace, c10::ArrayRef<at::TensorList> lists,
                              c10::ArrayRef<c10::Scalar> scalars, const std::vector<at::Tensor>* preset) {
  check_operands(op, inplace, lists, scalars);
  const size_t n = lists[0].size();
  // Which lists feed the functor: fill only takes its shape from self, and
  // copy_ writes self from src.
  const int first_in = (op == Op::Fill || (op == Op::Copy && inplace)) ? 1 : 0;
  const int nin = static_cast<int>(lists.size()) - first_in;
  std::vector<at::Tensor> out;
  if (!inplace) out.resize(n);

  // (device, dtype) -> job; a model usually has one or two groups.
  c10::SmallVector<std::pair<std::pair<c10::Device, at::ScalarType>, Job>, 2> jobs;
  // The slow route runs ATen ops with grad mode off: particle ops are not
  // differentiable updates (the fast route's kernels never see autograd).
  std::optional<c10::AutoGradMode> no_grad;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& self = lists[0][i];
    if (!fast_index(lists, i)) {
      if (!no_grad) no_grad.emplace(false);
      std::vector<at::Tensor> xs(lists.size());
      for (size_t k = 0; k < lists.size(); ++k) xs[k] = lists[k][i];
      if (inplace) {
        slow_inplace(op, self, std::vector<at::Tensor>(xs.begin() + 1, xs.end()), scalars.vec());
      } else {
        // Contiguous like the fast route's results and the fake kernels' ones.
        out[i] = slow_out(op, xs, scalars.vec()).contiguous();
      }
      continue;
    }
    if (!inplace) {
      const bool use_preset = preset && i < preset->size() && (*preset)[i].defined() && (*preset)[i].is_contiguous() &&
                              (*preset)[i].scalar_type() == self.scalar_type() &&
                              (*preset)[i].device() == self.device() && (*preset)[i].sizes().equals(self.sizes());
      out[i] = use_preset ? (*preset)[i] : at::empty_like(self, at::MemoryFormat::Contiguous);
    }
    const int64_t numel = self.numel();
    if (numel == 0) continue;
    const auto key = std::make_pair(self.device(), self.scalar_type());
    Job* job = nullptr;
    for (auto& kv : jobs)
      if (kv.first == key) job = &kv.second;
    if (!job) {
      jobs.emplace_back(key, Job{});
      job = &jobs.back().second;
      job->op = op;
      job->dtype = self.scalar_type();
      job->nin = nin;
      job->device_index = self.device().index();
      for (size_t k = 0; k < scalars.size() && k < kMaxScalars; ++k) job->s[k] = scalars[k].toDouble();
      job->ptrs.reserve((n - i) * (nin + 1));
      job->numels.reserve(n - i);
    }
    job->ptrs.push_back(inplace ? self.data_ptr() : out[i].data_ptr());
    for (size_t k = first_in; k < lists.size(); ++k) job->ptrs.push_back(lists[k][i].data_ptr());
    job->numels.push_back(numel);
    job->total += numel;
  }
  for (auto& kv : jobs) run_job(kv.second, kv.first.first.type());
  if (inplace) {
    for (const auto& t : lists[0]) {
      if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
    }
  }
  return out;
}

}  // namespace nyto

// ---------------------------------------------------------------------------
// Registration: the schema block (the only one) and the CPU implementations.
TORCH_LIBRARY(nytorch, m) {
  for (int i = 0; i < static_cast<int>(nyto::Op::NumOps); ++i) {
    const nyto::OpInfo& info = nyto::op_info(static_cast<nyto::Op>(i));
    const std::string args = info.args;
    const std::string list = "Tensor[]";
    TORCH_INTERNAL_ASSERT(args.compare(0, list.size(), list) == 0, "ops.def: ", info.name, " starts with a list");
    m.def((std::string(info.name) + "(" + args + ") -> Tensor[]").c_str());
    m.def((std::string(info.name) + "_(Tensor(a!)[]" + args.substr(list.size()) + info.inplace_extra + ") -> ()")
              .c_str());
  }
  m.def("normal(Tensor[] self, float mean=0., float std=1., *, Generator? generator=None) -> Tensor[]");
  m.def("normal_(Tensor(a!)[] self, float mean=0., float std=1., *, Generator? generator=None) -> ()");
  m.def("uniform(Tensor[] self, float low=0., float high=1., *, Generator? generator=None) -> Tensor[]");
  m.def("uniform_(Tensor(a!)[] self, float low=0., float high=1., *, Generator? generator=None) -> ()");
  // nytorch.fuse (csrc/fuse/): run an expression program; tensors group-major.
  m.def("fused(int[] program, float[] numbers, Tensor[] inputs, int seed, int offset=0) -> Tensor[]");
  m.def("fused_(int[] program, float[] numbers, Tensor[] inputs, Tensor(a!)[] out, int seed, int offset=0) -> ()");
}

// ---------------------------------------------------------------------------
// Adapters from the registered schemas to the front end.
namespace nyto {
namespace {
using TL = at::TensorList;
using S = const c10::Scalar&;
// One adapter pair per op, typed from its table row: n tensor lists, then
// m scalars (the registered schema's C++ signature).
template <Op op, class Lists, class Scalars, class InLists>
struct Adapter;
template <size_t>
using ListArg = TL;
template <size_t>
using ScalarArg = S;
template <Op op, size_t... L, size_t... K, size_t... LI>
struct Adapter<op, std::index_sequence<L...>, std::index_sequence<K...>, std::index_sequence<LI...>> {
  static std::vector<at::Tensor> out(ListArg<L>... l, ScalarArg<K>... s) { return apply(op, false, {l...}, {s...}); }
  static void in(ListArg<LI>... l, ScalarArg<K>... s) { apply(op, true, {l...}, {s...}); }
};
#define NYTO_OP(E, name, nl, nli, ns, ...) \
  using name##_adapter =                   \
      Adapter<Op::E, std::make_index_sequence<nl>, std::make_index_sequence<ns>, std::make_index_sequence<nli>>;
#include "ops.def"
#undef NYTO_OP

using OptGen = const std::optional<at::Generator>&;
std::vector<at::Tensor> normal(TL a, double mean, double std, OptGen g) {
  return random_like(a, Dist::Normal, mean, std, g);
}
void normal_(TL a, double mean, double std, OptGen g) { random_fill_(a, Dist::Normal, mean, std, g); }
std::vector<at::Tensor> uniform(TL a, double lo, double hi, OptGen g) {
  return random_like(a, Dist::Uniform, lo, hi, g);
}
void uniform_(TL a, double lo, double hi, OptGen g) { random_fill_(a, Dist::Uniform, lo, hi, g); }
}  // namespace

void register_kernels(torch::Library& m) {
#define NYTO_OP(E, name, ...)          \
  m.impl(#name, &name##_adapter::out); \
  m.impl(#name "_", &name##_adapter::in);
#include "ops.def"
#undef NYTO_OP
  m.impl("normal", &normal);
  m.impl("normal_", &normal_);
  m.impl("uniform", &uniform);
  m.impl("uniform_", &uniform_);
}
}  // namespace nyto

TORCH_LIBRARY_IMPL(nytorch, CPU, m) { nyto::register_kernels(m); }
#ifdef NYTO_WITH_CUDA
TORCH_LIBRARY_IMPL(nytorch, CUDA, m) { nyto::register_kernels(m); }
#endif
