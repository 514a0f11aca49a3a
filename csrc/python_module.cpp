// nytorch._C: importing it registers the ops (static TORCH_LIBRARY blocks in
// this shared object). It also exposes a small CPython fast path used by the
// particle layer, which calls the same front end without the dispatcher's
// argument parsing (see docs/design.md, "call overhead").
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include "nyto.h"

namespace nyto { const char* cpu_kernel_isa(); }

namespace {

using nyto::Op;

[[noreturn]] void raise_type(const char* msg) { throw std::invalid_argument(msg); }

at::Tensor unpack(PyObject* obj) {
  if (!THPVariable_Check(obj)) raise_type("nytorch._C: expected a torch.Tensor");
  return THPVariable_Unpack(obj);
}

std::vector<at::Tensor> unpack_list(PyObject* seq) {
  PyObject* fast = PySequence_Fast(seq, "nytorch._C: expected a list of tensors");
  if (!fast) throw std::runtime_error("");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  PyObject** items = PySequence_Fast_ITEMS(fast);
  std::vector<at::Tensor> out;
  out.reserve(n);
  try {
    for (Py_ssize_t i = 0; i < n; ++i) out.push_back(unpack(items[i]));
  } catch (...) { Py_DECREF(fast); throw; }
  Py_DECREF(fast);
  return out;
}

c10::Scalar to_scalar(PyObject* obj) {
  if (PyBool_Check(obj)) return c10::Scalar(obj == Py_True);
  if (PyLong_Check(obj)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow) return c10::Scalar(PyLong_AsDouble(obj));
    return c10::Scalar(static_cast<int64_t>(v));
  }
  if (PyFloat_Check(obj)) return c10::Scalar(PyFloat_AS_DOUBLE(obj));
  raise_type("nytorch._C: expected a real number (bool, int or float)");
}

PyObject* wrap_list(std::vector<at::Tensor>&& ts) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(ts.size()));
  if (!list) return nullptr;
  for (size_t i = 0; i < ts.size(); ++i) PyList_SET_ITEM(list, i, THPVariable_Wrap(std::move(ts[i])));
  return list;
}

// Translates C++ exceptions into Python ones (RuntimeError / TypeError).
template <class F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::invalid_argument& e) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, e.what());
  } catch (const std::exception& e) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

// apply(op: int, inplace: bool, lists: tuple[list[Tensor], ...], scalars: tuple[number, ...])
//   -> list[Tensor] (out-of-place) or None (in-place)
PyObject* py_apply(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs != 4) raise_type("nytorch._C.apply(op, inplace, lists, scalars)");
    const long op = PyLong_AsLong(args[0]);
    if (op < 0 || op >= static_cast<long>(Op::NumOps)) raise_type("nytorch._C.apply: bad op code");
    const bool inplace = PyObject_IsTrue(args[1]);
    std::vector<std::vector<at::Tensor>> owned;
    const Py_ssize_t nl = PyTuple_GET_SIZE(args[2]);
    owned.reserve(nl);
    for (Py_ssize_t k = 0; k < nl; ++k) owned.push_back(unpack_list(PyTuple_GET_ITEM(args[2], k)));
    std::vector<at::TensorList> lists(owned.begin(), owned.end());
    std::vector<c10::Scalar> scalars;
    const Py_ssize_t ns = PyTuple_GET_SIZE(args[3]);
    for (Py_ssize_t k = 0; k < ns; ++k) scalars.push_back(to_scalar(PyTuple_GET_ITEM(args[3], k)));
    const auto& info = nyto::op_info(static_cast<Op>(op));
    const int want_lists = info.n_lists + ((static_cast<Op>(op) == Op::Copy && inplace) ? 1 : 0);
    if (nl != want_lists || ns != info.n_scalars) raise_type("nytorch._C.apply: wrong operand count");
    std::vector<at::Tensor> out;
    {
      // The particle layer calls this on plain (non-grad) storage tensors.
      pybind11::gil_scoped_release no_gil;
      out = nyto::apply(static_cast<Op>(op), inplace, lists, scalars);
    }
    if (inplace) Py_RETURN_NONE;
    return wrap_list(std::move(out));
  });
}

PyObject* py_torch_version(PyObject*, PyObject*) { return PyUnicode_FromString(NYTO_TORCH_VERSION); }
PyObject* py_cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(nyto::cpu_kernel_isa()); }
PyObject* py_has_cuda(PyObject*, PyObject*) {
#ifdef NYTO_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"apply", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_apply)), METH_FASTCALL,
     "apply(op, inplace, lists, scalars): run one op of the library on lists of tensors."},
    {"torch_version", py_torch_version, METH_NOARGS, "The torch version this extension was built against."},
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The CPU kernel build chosen at load time (DEFAULT or AVX2)."},
    {"has_cuda", py_has_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "nytorch._C", "nytorch's compiled core.", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
