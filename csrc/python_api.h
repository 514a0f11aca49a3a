// The CPython entry points of nytorch._C (csrc/python_module.cpp,
// csrc/particle_fastpath.cpp). Each follows the CPython calling convention:
// a new reference, or nullptr with a Python exception set.
#pragma once
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>
#include <stdexcept>
#include <vector>

namespace nyto::py {
extern PyObject* parameter_class;  // torch.nn.Parameter (set_parameter_class)

// THPVariable_Check with the common exact types first: torch's check is an
// isinstance call (a walk of the type's MRO), tens of ns per parameter.
inline bool is_tensor(PyObject* obj) {
  PyObject* t = reinterpret_cast<PyObject*>(Py_TYPE(obj));
  return t == parameter_class || THPVariable_CheckExact(obj) || THPVariable_Check(obj);
}

// The tensors of a Python sequence, borrowed: no refcount traffic (each
// at::Tensor copy of a Python-owned tensor costs a GIL-guarded PyObject
// incref/decref pair). Valid while the object lives; hold the GIL to destroy.
class TensorRefs {
 public:
  explicit TensorRefs(PyObject* seq);
  TensorRefs(TensorRefs&& other) noexcept;
  TensorRefs(const TensorRefs&) = delete;
  TensorRefs& operator=(const TensorRefs&) = delete;
  ~TensorRefs();
  std::vector<at::Tensor> tensors;

 private:
  void release();
  PyObject* fast_ = nullptr;
};
std::vector<at::Tensor> unpack_list(PyObject* seq);  // owning copies

// A new Python list of the tensors (moved out).
inline PyObject* wrap_list(std::vector<at::Tensor>&& ts) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(ts.size()));
  if (!list) return nullptr;
  for (size_t i = 0; i < ts.size(); ++i) PyList_SET_ITEM(list, i, THPVariable_Wrap(std::move(ts[i])));
  return list;
}

// Runs f, translating C++ exceptions into Python ones (RuntimeError /
// TypeError); nullptr with the Python error set on failure.
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
PyObject* py_apply(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_views_ok(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_make_params(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_build_modules(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_fast_op(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_fast_unary(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_register_particle_types(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_module_versions(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_state_ok(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_op_method(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_lazy_result(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_fuse_run(PyObject*, PyObject* const* args, Py_ssize_t nargs);   // csrc/fuse/python_fuse.cpp
PyObject* py_fuse_call(PyObject*, PyObject* const* args, Py_ssize_t nargs);  // csrc/particle_fastpath.cpp
// Lazily made parameters of result particles (csrc/lazy_params.cpp).
PyObject* new_lazy_params(PyObject* old, PyObject* owner, PyObject* record, PyObject* cache, Py_ssize_t mi);
PyObject* requires_grad_bytes(PyObject* params, PyObject* record);
PyObject* py_materialize(PyObject*, PyObject* record);
PyObject* py_register_lazy_types(PyObject*, PyObject* const* args, Py_ssize_t nargs);
}  // namespace nyto::py
