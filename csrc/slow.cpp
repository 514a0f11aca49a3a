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
}  // namespace

at::Tensor slow_out(Op op, const std::vector<at::Tensor>& x, const std::vector<c10::Scalar>& s) {
  switch (op) {
    case Op::Neg: return at::neg(x[0]);
    case Op::Copy: return x[0].clone(at::MemoryFormat::Contiguous);
    case Op::Add: return at::add(x[0], x[1]);
    case Op::Sub: return at::sub(x[0], x[1]);
    case Op::Mul: return at::mul(x[0], x[1]);
    case Op::Div: return at::div(x[0], x[1]);
    case Op::Pow: return at::pow(x[0], x[1]);
    case Op::AddS: return at::add(x[0], s[0]);
    case Op::SubS: return at::sub(x[0], sub_operand(s[0]));
    case Op::MulS: return at::mul(x[0], s[0]);
    case Op::DivS: return at::div(x[0], s[0]);
    case Op::PowS: return at::pow(x[0], s[0]);
    case Op::RSubS: return at::sub(wrapped(sub_operand(s[0]), x[0]), x[0]);
    case Op::RDivS: return at::div(wrapped(s[0], x[0]), x[0]);
    case Op::RPowS: return at::pow(s[0], x[0]);
    case Op::Axpby: return at::add(at::mul(x[0], s[0]), at::mul(x[1], s[1]));
    case Op::Lerp: return at::lerp(x[0], x[1], s[0]);
    case Op::Addcmul: return at::addcmul(x[0], x[1], x[2], s[0]);
    case Op::PsoVelocity: {
      // w*v + c1*r1*(p - x) + c2*r2*(g - x), as Python evaluates it
      const auto& v = x[0]; const auto& pos = x[1]; const auto& p = x[2];
      const auto& g = x[3]; const auto& r1 = x[4]; const auto& r2 = x[5];
      return at::add(at::add(at::mul(v, s[0]), at::mul(at::mul(r1, s[1]), at::sub(p, pos))),
                     at::mul(at::mul(r2, s[2]), at::sub(g, pos)));
    }
    case Op::Fill: return at::full_like(x[0], s[0], at::MemoryFormat::Contiguous);
    default: TORCH_INTERNAL_ASSERT(false, "nytorch: unknown op");
  }
}

void slow_inplace(Op op, const at::Tensor& self, const std::vector<at::Tensor>& o,
                  const std::vector<c10::Scalar>& s) {
  switch (op) {
    case Op::Neg: self.neg_(); return;
    case Op::Copy: self.copy_(o[0]); return;
    case Op::Add: self.add_(o[0]); return;
    case Op::Sub: self.sub_(o[0]); return;
    case Op::Mul: self.mul_(o[0]); return;
    case Op::Div: self.div_(o[0]); return;
    case Op::Pow: self.pow_(o[0]); return;
    case Op::AddS: self.add_(s[0]); return;
    case Op::SubS: self.sub_(sub_operand(s[0])); return;
    case Op::MulS: self.mul_(s[0]); return;
    case Op::DivS: self.div_(s[0]); return;
    case Op::PowS: self.pow_(s[0]); return;
    case Op::Fill: self.fill_(s[0]); return;
    default: {
      // Ops without an ATen in-place form: compute, then write back.
      std::vector<at::Tensor> xs{self};
      xs.insert(xs.end(), o.begin(), o.end());
      self.copy_(slow_out(op, xs, s));
    }
  }
}

namespace {
void fill_one(const at::Tensor& t, Dist dist, double a, double b, const std::optional<at::Generator>& gen) {
  if (dist == Dist::Normal) t.normal_(a, b, gen);
  else t.uniform_(a, b, gen);
}
void check_random(at::TensorList self, Dist dist, double a, double b) {
  const char* name = dist == Dist::Normal ? "nytorch.normal" : "nytorch.uniform";
  for (size_t i = 0; i < self.size(); ++i) {
    TORCH_CHECK(self[i].defined(), name, ": tensor ", i, " is undefined");
    TORCH_CHECK(c10::isFloatingType(self[i].scalar_type()), name, ": tensor ", i,
                " has dtype ", self[i].scalar_type(), "; random fills need floating tensors");
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
void random_fill_(at::TensorList self, Dist dist, double a, double b,
                  const std::optional<at::Generator>& gen) {
  check_random(self, dist, a, b);
  std::vector<std::pair<at::Tensor, std::vector<at::Tensor>>> groups;
  for (const auto& t : self) {
    if (t.numel() == 0) continue;
    if (!t.is_contiguous()) { fill_one(t, dist, a, b, gen); continue; }
    bool found = false;
    for (auto& g : groups) {
      if (g.first.device() == t.device() && g.first.scalar_type() == t.scalar_type()) {
        g.second.push_back(t); found = true; break;
      }
    }
    if (!found) groups.push_back({t, {t}});
  }
  for (auto& g : groups) {
    if (g.second.size() == 1) { fill_one(g.second[0], dist, a, b, gen); continue; }
    int64_t total = 0;
    for (const auto& t : g.second) total += t.numel();
    at::Tensor flat = at::empty({total}, g.first.options());
    fill_one(flat, dist, a, b, gen);
    std::vector<at::Tensor> pieces;
    int64_t off = 0;
    for (const auto& t : g.second) { pieces.push_back(flat.narrow(0, off, t.numel()).view(t.sizes())); off += t.numel(); }
    apply(Op::Copy, true, {at::TensorList(g.second), at::TensorList(pieces)}, {});
  }
  for (const auto& t : self) if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
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
