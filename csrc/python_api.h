// The CPython entry points of nytorch._C (csrc/python_module.cpp,
// csrc/particle_fastpath.cpp). Each follows the CPython calling convention:
// a new reference, or nullptr with a Python exception set.
#pragma once
#include <Python.h>
#include <structmember.h>
#include <algorithm>
#include <array>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>
#include <c10/util/SmallVector.h>
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
  c10::SmallVector<at::Tensor, 4> tensors;  // a particle's flats: no heap allocation

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
  } catch (const c10::NotImplementedError& e) {  // torch's own mapping
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_NotImplementedError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::invalid_argument& e) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, e.what());
  } catch (const std::exception& e) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}
// The __slots__ of one Python class, read and written at their offsets: a
// slot descriptor lookup costs ~20-30 ns per attribute, and a particle op
// touches a dozen. Offsets are taken from the first object's class; an
// object of another class (or a class where a name is not a plain slot) is
// served by getattr/setattr instead.
template <int N>
class SlotAccess {
 public:
  explicit SlotAccess(const std::array<const char*, N>& names) : names_(names) {}
  // Slot i of `obj`: a new reference, or nullptr with an error set.
  PyObject* get(PyObject* obj, int i) {
    if (bound(obj)) {
      PyObject* v = at(obj, i);
      if (v) {
        Py_INCREF(v);
        return v;
      }
    }
    return PyObject_GetAttrString(obj, names_[i]);
  }
  // obj.<slot i> = v; false with an error set.
  bool set(PyObject* obj, int i, PyObject* v) {
    if (!bound(obj)) return PyObject_SetAttrString(obj, names_[i], v) == 0;
    Py_INCREF(v);
    Py_XSETREF(at(obj, i), v);
    return true;
  }
  // Whether obj's class is the one whose offsets are known (binding to it on first use).
  bool bound(PyObject* obj) { return Py_TYPE(obj) == type_ || (!type_ && bind(Py_TYPE(obj))); }
  // Whether obj is of the bound class (never binds).
  bool is(PyObject* obj) const { return type_ && Py_TYPE(obj) == type_; }
  PyTypeObject* type() const { return type_; }
  // Takes the offsets from class `tp` (once); false if a name is not a plain slot of it.
  bool bind(PyTypeObject* tp) {
    if (type_) return tp == type_;
    Py_ssize_t found[N];
    for (int i = 0; i < N; ++i) {
      PyObject* name = PyUnicode_InternFromString(names_[i]);
      PyObject* d = name ? _PyType_Lookup(tp, name) : nullptr;  // borrowed
      Py_XDECREF(name);
      if (!name) PyErr_Clear();
      if (!d || Py_TYPE(d) != &PyMemberDescr_Type) return false;
      const PyMemberDef* m = reinterpret_cast<PyMemberDescrObject*>(d)->d_member;
      if (m->type != T_OBJECT_EX && m->type != T_OBJECT) return false;
      found[i] = m->offset;
    }
    std::copy(found, found + N, offsets_);
    type_ = tp;
    Py_INCREF(tp);  // kept for life: its offsets are cached
    return true;
  }
  PyObject*& at(PyObject* obj, int i) {
    return *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(obj) + offsets_[i]);
  }

 private:
  std::array<const char*, N> names_;
  PyTypeObject* type_ = nullptr;
  Py_ssize_t offsets_[N] = {};
};

PyObject* py_apply(PyObject*, PyObject* const* args, Py_ssize_t nargs);
// New buffers like `flats` (taken from `pool` like apply's outputs) filled
// from the default generator: dist 0 = normal(a, b), 1 = uniform(a, b).
PyObject* random_flats(PyObject* flats, PyObject* pool, int dist, double a, double b);
// apply's body, on operand arrays: op code, in place or not, the tensor lists
// (sequences of tensors), the numbers, the output pool (or Py_None).
PyObject* apply_operands(long op, bool inplace, PyObject* const* lists, Py_ssize_t nl, PyObject* const* scalars,
                         Py_ssize_t ns, PyObject* pool);
PyObject* py_views_ok(PyObject*, PyObject* const* args, Py_ssize_t nargs);
// views_ok's check on packed keys, without the Python API (any thread).
bool views_match(Py_ssize_t n, const int64_t* key, const int64_t* end) noexcept;
PyObject* py_make_params(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_build_modules(PyObject*, PyObject* const* args, Py_ssize_t nargs);
// build_modules, also giving the new modules' structure versions (packed int64s) when versions_out is set.
PyObject* build_modules(PyObject* const* args, Py_ssize_t nargs, c10::SmallVectorImpl<int64_t>* versions_out);
PyObject* py_fast_op(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_fast_unary(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_fast_random(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_register_particle_types(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_module_versions(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_state_ok(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_op_method(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_lazy_result(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_fuse_run(PyObject*, PyObject* const* args, Py_ssize_t nargs);     // csrc/fuse/python_fuse.cpp
PyObject* py_fuse_call(PyObject*, PyObject* const* args, Py_ssize_t nargs);    // csrc/particle_fastpath.cpp
PyObject* py_fuse_op_table(PyObject*, PyObject*);                              // csrc/fuse/python_fuse.cpp
PyObject* py_fuse_scalar(PyObject*, PyObject* const* args, Py_ssize_t nargs);  // csrc/fuse/python_fuse.cpp
// The stored noise rows' weighted sums (csrc/fuse/python_fuse.cpp).
PyObject* py_fuse_row_sums(PyObject*, PyObject* const* args, Py_ssize_t nargs);
// Lazily made parameters of result particles (csrc/lazy_params.cpp).
// A lazy result's record, shared by its LazyParams and its State.
struct LazyRecord {
  PyObject_HEAD bool done;  // the Parameters were made
  PyObject* flats;          // list of the result's flat buffers
  PyObject* view_spec;      // Layout.view_spec
  PyObject* param_slots;    // Layout.param_slots
  PyObject* requires_grad;  // bytes, one per parameter
  PyObject* lazy_params;    // tuple of weakrefs to the LazyParams by module index (None: none), or None
  PyObject* state;          // weakref to the State, or None
};
LazyRecord* new_record(PyObject* flats, PyObject* view_spec, PyObject* param_slots, PyObject* requires_grad);
bool is_record(PyObject* o);
bool add_record_type(PyObject* module);  // nytorch._C.LazyRecord
PyObject* new_lazy_params(PyObject* old, PyObject* record, PyObject* cache, Py_ssize_t mi);
PyObject* requires_grad_bytes(PyObject* params, PyObject* record);
PyObject* py_materialize(PyObject*, PyObject* record);
PyObject* py_register_lazy_types(PyObject*, PyObject* const* args, Py_ssize_t nargs);
// Tracked module containers and their version cells (csrc/containers.cpp,
// python/nytorch/_containers.py).
extern PyObject* lazy_params_cls;     // nytorch._lazy.LazyParams
extern PyObject* param_dict_cls;      // nytorch._containers.ParamDict
extern PyObject* container_dict_cls;  // nytorch._C.ContainerDict
bool bind_param_cell(PyTypeObject* param_dict, PyTypeObject* lazy_params);
PyObject* new_cell();
int64_t cell_version(PyObject* cell);      // -1: not a VersionCell
int64_t params_version(PyObject* params);  // -1: not a tracked _parameters
PyObject* new_tracked(PyObject* tp, PyObject* src, PyObject* cell);
bool set_cell(PyObject* d, PyObject* cell);
bool add_container_types(PyObject* module);  // nytorch._C.ContainerDict, VersionCell
PyObject* py_new_cell(PyObject*, PyObject*);
PyObject* py_bump(PyObject*, PyObject* cell);
}  // namespace nyto::py
