// The slow route: one tensor index at a time with plain ATen ops, so results
// (promotion, integer types, strides) are exactly torch's. Also the random
// fills, which draw from torch's generators.
#include <ATen/ATen.h>
#include <ATen/ScalarOps.h>
#include "nyto.h"

namespace nyto {
namespace {
// A Python number as torch sees it in `number op tensor`.
at::Tensor wrapped(const c10::Scalar& s, const at::Tensor& like) {
  at::Tensor t = c10::scalar_to_tensor(s, like.device());
  t.unsafeGetTensorImpl()->set_wrapped_number(true);
  return t;
}
// A bool scalar subtracts as 0/1, as on the fast route (torch itself refuses
// `tensor - True`; the particle layer's `module - True` relies on it).
c10::Scalar sub_operand(const c10::Scalar& s) {
  return s.isBoolean() ? c10::Scalar(static_cast<int64_t>(s.toBool())) : s;
}
// w*v + c1*r1*(p - x) + c2*r2*(g - x), as Python evaluates it
at::Tensor pso_velocity_slow(const std::vector<at::Tensor>& x, const std::vector<c10::Scalar>& s) {
  const auto& v = x[0];
  const auto& pos = x[1];
  const auto& p = x[2];
  const auto& g = x[3];
  const auto& r1 = x[4];
  const auto& r2 = x[5];
  return at::add(at::add(at::mul(v, s[0]), at::mul(at::mul(r1, s[1]), at::sub(p, pos))),
                 at::mul(at::mul(r2, s[2]), at::sub(g, pos)));
}
}  // namespace

// The slow column of csrc/ops.def.
at::Tensor slow_out(Op op, const std::vector<at::Tensor>& x, const std::vector<c10::Scalar>& s) {
  switch (op) {
#define NYTO_OP(E, name, nl, nli, ns, args, extra, fuse, functor, slow, ...) \
  case Op::E:                                                                \
    return slow;
#include "ops.def"
#undef NYTO_OP
    default:
      TORCH_INTERNAL_ASSERT(false, "nytorch: unknown op");
  }
}

// The slow_ column of csrc/ops.def; ops without an ATen in-place form
// (NYTO_COPY_BACK) compute, then write back.
void slow_inplace(Op op, const at::Tensor& self, const std::vector<at::Tensor>& o, const std::vector<c10::Scalar>& s) {
  auto copy_back = [&] {
    std::vector<at::Tensor> xs{self};
    xs.insert(xs.end(), o.begin(), o.end());
    self.copy_(slow_out(op, xs, s));
  };
#define NYTO_COPY_BACK copy_back()
  switch (op) {
#define NYTO_OP(E, name, nl, nli, ns, args, extra, fuse, functor, slow, slow_) \
  case Op::E:                                                                  \
    slow_;                                                                     \
    return;
#include "ops.def"
#undef NYTO_OP
    default:
      TORCH_INTERNAL_ASSERT(false, "nytorch: unknown op");
  }
#undef NYTO_COPY_BACK
}

namespace {
void fill_one(const at::Tensor& t, Dist dist, double a, double b, const std::optional<at::Generator>& gen) {
  if (dist == Dist::Normal)
    t.normal_(a, b, gen);
  else
    t.uniform_(a, b, gen);
}
void check_random(at::TensorList self, Dist dist, double a, double b) {
  const char* name = dist == Dist::Normal ? "nytorch.normal" : "nytorch.uniform";
  for (size_t i = 0; i < self.size(); ++i) {
    TORCH_CHECK(self[i].defined(), name, ": tensor ", i, " is undefined");
    TORCH_CHECK(c10::isFloatingType(self[i].scalar_type()), name, ": tensor ", i, " has dtype ", self[i].scalar_type(),
                "; random fills need floating tensors");
  }
  if (dist == Dist::Normal) {
    TORCH_CHECK(b >= 0.0, name, ": std must be >= 0, got ", b);
  } else {
    TORCH_CHECK(a <= b, name, ": low must be <= high, got ", a, " > ", b);
  }
}
}  // namespace

// All same-(device, dtype) contiguous tensors are filled from one draw of
// their total size, so a 1000-tensor list costs one generator call.
void random_fill_(at::TensorList self, Dist dist, double a, double b, const std::optional<at::Generator>& gen) {
  check_random(self, dist, a, b);
  std::vector<std::pair<at::Tensor, std::vector<at::Tensor>>> groups;
  for (const auto& t : self) {
    if (t.numel() == 0) continue;
    if (!t.is_contiguous()) {
      fill_one(t, dist, a, b, gen);
      continue;
    }
    bool found = false;
    for (auto& g : groups) {
      if (g.first.device() == t.device() && g.first.scalar_type() == t.scalar_type()) {
        g.second.push_back(t);
        found = true;
        break;
      }
    }
    if (!found) groups.push_back({t, {t}});
  }
  for (auto& g : groups) {
    if (g.second.size() == 1) {
      fill_one(g.second[0], dist, a, b, gen);
      continue;
    }
    int64_t total = 0;
    for (const auto& t : g.second) total += t.numel();
    at::Tensor flat = at::empty({total}, g.first.options());
    fill_one(flat, dist, a, b, gen);
    std::vector<at::Tensor> pieces;
    int64_t off = 0;
    for (const auto& t : g.second) {
      pieces.push_back(flat.narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
    apply(Op::Copy, true, {at::TensorList(g.second), at::TensorList(pieces)}, {});
  }
  for (const auto& t : self)
    if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

std::vector<at::Tensor> random_like(at::TensorList self, Dist dist, double a, double b,
                                    const std::optional<at::Generator>& gen) {
  check_random(self, dist, a, b);
  std::vector<at::Tensor> out;
  out.reserve(self.size());
  for (const auto& t : self) out.push_back(at::empty_like(t, at::MemoryFormat::Contiguous));
  random_fill_(out, dist, a, b, gen);
  return out;
}

}  // namespace nyto
