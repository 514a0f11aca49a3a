// nytorch._C.fuse_run: the eager entry of nytorch.fuse, without the
// dispatcher's argument handling (about 5 us a call): the per-call cost of a
// fused step on a small model is a few microseconds.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <stdexcept>
#include <string>
#include "fuse/program.h"
#include "python_api.h"

namespace nyto::fuse {
namespace {

std::vector<std::vector<at::Tensor>> unpack_groups(PyObject* seq, const char* what) {
  PyObject* fast = PySequence_Fast(seq, what);
  if (!fast) throw std::runtime_error("");
  std::vector<std::vector<at::Tensor>> out;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  out.reserve(n);
  try {
    for (Py_ssize_t i = 0; i < n; ++i) out.push_back(py::unpack_list(PySequence_Fast_GET_ITEM(fast, i)));
  } catch (...) {
    Py_DECREF(fast);
    throw;
  }
  Py_DECREF(fast);
  return out;
}

std::vector<double> unpack_numbers(PyObject* seq) {
  PyObject* fast = PySequence_Fast(seq, "nytorch._C.fuse_run: numbers must be a sequence");
  if (!fast) throw std::runtime_error("");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  std::vector<double> out(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* o = PySequence_Fast_GET_ITEM(fast, i);
    out[i] = PyFloat_Check(o) ? PyFloat_AS_DOUBLE(o) : PyFloat_AsDouble(o);
    if (out[i] == -1.0 && PyErr_Occurred()) {
      Py_DECREF(fast);
      throw std::runtime_error("");
    }
  }
  Py_DECREF(fast);
  return out;
}

PyObject* wrap(std::vector<std::vector<at::Tensor>>&& outs) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(outs.size()));
  if (!list) return nullptr;
  for (size_t j = 0; j < outs.size(); ++j) {
    PyObject* inner = py::wrap_list(std::move(outs[j]));
    if (!inner) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, j, inner);
  }
  return list;
}

}  // namespace
}  // namespace nyto::fuse

namespace nyto::py {
// fuse_run(program: bytes, numbers: sequence[float], inputs: [[Tensor per group] per input],
//          outs: [[Tensor per group] per output] | None, seed: int | Tensor, offset: int
//          [, n_rows: int, rows: sequence[int] | int64 CPU tensor | None])
// seed: a key (< 0: drawn), or a random-state tensor (int64 [2], see fuse::run);
// n_rows (row mode, fuse::RowSplit): the stacked buffers' rows, `rows` the
// ones to run (None: all)
// -> None (outs given) | the new outputs, [[Tensor per group] per output]
PyObject* py_fuse_run(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs != 6 && nargs != 8) throw std::invalid_argument("nytorch._C.fuse_run: expected 6 or 8 arguments");
    if (!PyBytes_Check(args[0])) throw std::invalid_argument("nytorch._C.fuse_run: program must be bytes");
    const auto* words = reinterpret_cast<const int32_t*>(PyBytes_AS_STRING(args[0]));
    const size_t n_words = static_cast<size_t>(PyBytes_GET_SIZE(args[0])) / sizeof(int32_t);
    const auto consts = fuse::unpack_numbers(args[1]);
    const auto ins = fuse::unpack_groups(args[2], "nytorch._C.fuse_run: inputs must be a sequence of lists");
    std::vector<std::vector<at::Tensor>> outs;
    const bool given = args[3] != Py_None;
    if (given) outs = fuse::unpack_groups(args[3], "nytorch._C.fuse_run: outs must be a sequence of lists");
    at::Tensor state;
    long long seed = 0;
    if (THPVariable_Check(args[4])) {
      state = THPVariable_Unpack(args[4]);
    } else {
      seed = PyLong_AsLongLong(args[4]);
    }
    const long long offset = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return nullptr;
    fuse::RowSplit split;
    if (nargs == 8) {
      split.n_rows = PyLong_AsLongLong(args[6]);
      if (PyErr_Occurred()) return nullptr;
      split.all = args[7] == Py_None;
      if (!split.all && THPVariable_Check(args[7])) {  // a 1-D int64 CPU tensor
        const at::Tensor r = THPVariable_Unpack(args[7]);
        TORCH_CHECK(r.dim() == 1 && r.scalar_type() == at::kLong && r.device().is_cpu(),
                    "nytorch.fuse.run_rows: rows as a tensor must be 1-D int64 on the CPU, got ", r.scalar_type(),
                    " of shape ", r.sizes(), " on ", r.device());
        const at::Tensor rc = r.contiguous();
        const int64_t* rp = rc.const_data_ptr<int64_t>();
        split.rows.assign(rp, rp + rc.numel());
      } else if (!split.all) {
        PyObject* fast = PySequence_Fast(args[7], "nytorch._C.fuse_run: rows must be a sequence of ints or None");
        if (!fast) return nullptr;
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
        split.rows.resize(n);
        for (Py_ssize_t i = 0; i < n; ++i) split.rows[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        Py_DECREF(fast);
        if (PyErr_Occurred()) return nullptr;
      }
    }
    auto res =
        fuse::run(words, n_words, consts, ins, std::move(outs), seed, offset, state, nargs == 8 ? &split : nullptr);
    if (given) Py_RETURN_NONE;
    return fuse::wrap(std::move(res));
  });
}

// fuse_row_sums(rows, w, v, acc1, acc2) -> None: acc1 += sum_r w[r] * rows[r]
// and, when v is not None, acc2 += sum_r v[r] * rows[r]**2, over the rows of
// a contiguous [h, n] CPU float32/float64 tensor, in row order with each
// product and sum rounded (fuse::row_sums): what a fuse program of muladds
// over chunks of the rows gives, bitwise, in one call. acc1 / acc2: contiguous
// [n]-element tensors of the rows' dtype (updated in place).
PyObject* py_fuse_row_sums(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs != 5) throw std::invalid_argument("nytorch._C.fuse_row_sums: expected 5 arguments");
    auto tensor = [&](int i, const char* name) -> at::Tensor {
      if (!THPVariable_Check(args[i])) {
        throw std::invalid_argument(std::string("nytorch._C.fuse_row_sums: ") + name + " must be a tensor");
      }
      return THPVariable_Unpack(args[i]);
    };
    const at::Tensor rows = tensor(0, "rows");
    at::Tensor acc1 = tensor(3, "acc1");
    const bool sq = args[2] != Py_None;
    if (sq != (args[4] != Py_None)) {
      throw std::invalid_argument("nytorch._C.fuse_row_sums: v and acc2 are both given or both None");
    }
    at::Tensor acc2;
    if (sq) acc2 = tensor(4, "acc2");
    TORCH_CHECK(rows.dim() == 2 && rows.is_contiguous() && rows.device().is_cpu() &&
                    (rows.scalar_type() == at::kFloat || rows.scalar_type() == at::kDouble),
                "nytorch._C.fuse_row_sums: rows must be a contiguous 2-D float32/float64 CPU tensor");
    const int64_t h = rows.size(0), n = rows.size(1);
    const auto w = fuse::unpack_numbers(args[1]);
    std::vector<double> v;
    if (sq) v = fuse::unpack_numbers(args[2]);
    TORCH_CHECK(static_cast<int64_t>(w.size()) == h && (!sq || static_cast<int64_t>(v.size()) == h),
                "nytorch._C.fuse_row_sums: one weight per row (", h, " rows)");
    const char* rb = static_cast<const char*>(rows.const_data_ptr());
    const int64_t rbytes = rows.numel() * rows.element_size();
    for (const at::Tensor* a : {&acc1, &acc2}) {
      if (!a->defined()) continue;
      TORCH_CHECK(
          a->is_contiguous() && a->device().is_cpu() && a->scalar_type() == rows.scalar_type() && a->numel() == n,
          "nytorch._C.fuse_row_sums: the accumulators must be contiguous CPU tensors of the rows' dtype "
          "with one element per column (",
          n, ")");
      const char* ab = static_cast<const char*>(a->const_data_ptr());
      const int64_t abytes = n * a->element_size();
      TORCH_CHECK(n == 0 || ab + abytes <= rb || rb + rbytes <= ab,
                  "nytorch._C.fuse_row_sums: an accumulator overlaps the rows");
    }
    if (sq && n > 0) {
      const char* p1 = static_cast<const char*>(acc1.const_data_ptr());
      const char* p2 = static_cast<const char*>(acc2.const_data_ptr());
      const int64_t ab = n * acc1.element_size();
      TORCH_CHECK(p1 + ab <= p2 || p2 + ab <= p1, "nytorch._C.fuse_row_sums: acc1 and acc2 overlap");
    }
    fuse::RowSumJob job;
    job.dtype = rows.scalar_type();
    job.rows = rows.const_data_ptr();
    job.h = h;
    job.n = n;
    job.stride = n;
    job.w = w.data();
    job.v = sq ? v.data() : nullptr;
    job.acc1 = acc1.data_ptr();
    job.acc2 = sq ? acc2.data_ptr() : nullptr;
    fuse::row_sums(job);
    for (const at::Tensor* a : {&acc1, &acc2}) {
      if (a->defined() && !a->is_inference()) a->unsafeGetTensorImpl()->bump_version();
    }
    Py_RETURN_NONE;
  });
}

// fuse_op_table() -> ((name, code, arity, is_math), ...): csrc/fuse/fops.def.
PyObject* py_fuse_op_table(PyObject*, PyObject*) {
  static const struct {
    const char* name;
    int arity;
    bool math;
  } rows[] = {
#define NYTO_FOP(E, name, n, ...) {#name, n, true},
#define NYTO_FOP_IO(E, name, n) {#name, n, false},
#include "fuse/fops.def"
#undef NYTO_FOP
#undef NYTO_FOP_IO
  };
  constexpr Py_ssize_t n = static_cast<Py_ssize_t>(sizeof(rows) / sizeof(rows[0]));
  static_assert(n == static_cast<Py_ssize_t>(fuse::FOp::NumOps));
  PyObject* out = PyTuple_New(n);
  if (!out) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* row = Py_BuildValue("(sniO)", rows[i].name, i, rows[i].arity, rows[i].math ? Py_True : Py_False);
    if (!row) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, i, row);
  }
  return out;
}

// fuse_scalar(code, a, b=0, c=0) -> float: a math op of fops.def on numbers,
// in double, as a fused program's scalar instructions compute it.
PyObject* py_fuse_scalar(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs < 2 || nargs > 4) throw std::invalid_argument("nytorch._C.fuse_scalar: expected 2 to 4 arguments");
    const long code = PyLong_AsLong(args[0]);
    if (code == -1 && PyErr_Occurred()) return nullptr;
    if (code < 0 || code >= static_cast<long>(fuse::FOp::NumOps)) {
      throw std::invalid_argument("nytorch._C.fuse_scalar: bad op code");
    }
    double v[3] = {0, 0, 0};
    for (Py_ssize_t k = 1; k < nargs; ++k) {
      v[k - 1] = PyFloat_AsDouble(args[k]);
      if (v[k - 1] == -1.0 && PyErr_Occurred()) return nullptr;
    }
    const auto op = static_cast<fuse::FOp>(code);
    const int na = fuse::arity(op);
    if (nargs - 1 != na) {
      throw std::invalid_argument(std::string("nytorch._C.fuse_scalar: ") + fuse::op_name(op) + " takes " +
                                  std::to_string(na) + " numbers");
    }
    return PyFloat_FromDouble(fuse::scalar_op(op, v[0], v[1], v[2]));
  });
}
}  // namespace nyto::py
