// Lazily made parameters of result particles.
//
// An out-of-place particle op (`a + b`) computes its result into new flat
// buffers; making one nn.Parameter object per parameter is most of its cost
// on models of many small tensors, and most results (the intermediates of
// `w*v + c1*r1*(p - x)`) are never looked at parameter by parameter. So each
// result module gets, as its `_parameters`, a LazyParams (a dict subclass
// defined in python/nytorch/_lazy.py) holding the right keys with None
// values. The first look at any value of any of them (`m.weight`,
// `parameters()`, `state_dict()`, ...) calls materialize(record), which
// makes all of the particle's Parameters at once (make_params), puts them in
// every LazyParams and turns each into a plain-dict-speed ParamDict
// (`__class__` assignment: same object, so no write is lost).
//
// The record is a list shared by the particle's LazyParams and its State:
//   [done, flats, view_spec, param_slots, requires_grad bytes,
//    weakrefs to the LazyParams by module index (None where a module has no
//    _parameters), weakref to the State]
// It holds no strong reference to a module, a LazyParams or the State: no
// reference cycle, dead particles are freed by refcounting alone.
#include "python_api.h"
#include <cstring>
#include <torch/csrc/autograd/python_variable.h>

namespace nyto::py {

PyObject* lazy_params_cls = nullptr;     // nytorch._lazy.LazyParams
PyObject* param_dict_cls = nullptr;      // nytorch._containers.ParamDict
PyObject* container_dict_cls = nullptr;  // nytorch._containers.ContainerDict
namespace {
Py_ssize_t param_cell_offset = -1;       // of ParamDict's (and LazyParams') _nyto_cell slot
Py_ssize_t container_cell_offset = -1;   // of ContainerDict's

// The offset of plain __slots__ member `name` of class `tp`, or -1.
Py_ssize_t slot_offset(PyTypeObject* tp, const char* name) {
  PyObject* key = PyUnicode_InternFromString(name);
  PyObject* d = key ? _PyType_Lookup(tp, key) : nullptr;  // borrowed
  Py_XDECREF(key);
  if (!key) PyErr_Clear();
  if (!d || Py_TYPE(d) != &PyMemberDescr_Type) return -1;
  const PyMemberDef* m = reinterpret_cast<PyMemberDescrObject*>(d)->d_member;
  return (m->type == T_OBJECT_EX || m->type == T_OBJECT) ? m->offset : -1;
}
}  // namespace

namespace {
PyObject* intern(const char* s) { return PyUnicode_InternFromString(s); }
// LazyParams' slots (python/nytorch/_lazy.py).
enum LazySlot { kRecord, kTemplate };
SlotAccess<2> lazy_slots({"_nyto_record", "_nyto_template"});
}  // namespace

// Fills `dst` with the keys of `src` (a dict, read raw: a LazyParams is never
// made by it), each with the value None.
bool copy_keys(PyObject* dst, PyObject* src) {
  Py_ssize_t pos = 0;
  PyObject *k, *v;
  while (PyDict_Next(src, &pos, &k, &v)) {
    if (PyDict_SetItem(dst, k, Py_None) < 0) return false;
  }
  return true;
}

// A new LazyParams for a result module: the keys of `old` (the
// source module's _parameters, lazy or not) with None values. When `old` is
// an unmade LazyParams (its keys cannot have changed) its keys are kept as
// an exact-dict template that later results clone in one copy (an empty
// dict updated from a fresh exact dict clones the key table): chains of
// results (`w*v + c1*r1*(p - x)`) pay ~2 us for 1000 keys instead of ~40.
// Whether dicts `a` and `b` hold the same key objects in the same order.
bool same_keys(PyObject* a, PyObject* b) {
  if (PyDict_GET_SIZE(a) != PyDict_GET_SIZE(b)) return false;
  Py_ssize_t pa = 0, pb = 0;
  PyObject *ka, *kb, *v;
  while (PyDict_Next(a, &pa, &ka, &v)) {
    if (!PyDict_Next(b, &pb, &kb, &v) || ka != kb) return false;
  }
  return true;
}

PyObject* new_lazy_params(PyObject* old, PyObject* record, PyObject* cache, Py_ssize_t mi) {
  static PyObject* empty = PyTuple_New(0);
  PyObject* tmpl = nullptr;
  if (cache && PyList_Check(cache) && reinterpret_cast<PyObject*>(Py_TYPE(old)) != lazy_params_cls) {
    // A made module (a user's particle): the layout caches a template per
    // module, as (template, structure version of the module it was checked
    // against). The same version means the same keys (any change of the
    // tracked dict moves it); else the keys are compared one by one (a
    // None-valued parameter can come and go without touching the layout).
    while (PyList_GET_SIZE(cache) <= mi) {
      if (PyList_Append(cache, Py_None) < 0) return nullptr;
    }
    PyObject* c = PyList_GET_ITEM(cache, mi);
    const int64_t version = params_version(old);
    PyObject* cached = PyTuple_CheckExact(c) && PyTuple_GET_SIZE(c) == 2 ? PyTuple_GET_ITEM(c, 0) : nullptr;
    const bool same_version = cached && version >= 0 && PyLong_AsLongLong(PyTuple_GET_ITEM(c, 1)) == version;
    if (cached && (same_version || same_keys(old, cached))) {
      tmpl = cached;
      Py_INCREF(tmpl);
    } else {
      tmpl = PyDict_New();
      if (!tmpl || !copy_keys(tmpl, old)) { Py_XDECREF(tmpl); return nullptr; }
    }
    if (!same_version) {
      PyObject* entry = Py_BuildValue("(OL)", tmpl, static_cast<long long>(version));
      if (!entry) { Py_DECREF(tmpl); return nullptr; }
      PyList_SetItem(cache, mi, entry);  // steals entry
    }
  } else if (reinterpret_cast<PyObject*>(Py_TYPE(old)) == lazy_params_cls) {
    tmpl = lazy_slots.get(old, kTemplate);
    if (tmpl && !PyDict_CheckExact(tmpl)) {
      Py_DECREF(tmpl);
      tmpl = PyDict_New();
      if (!tmpl || !copy_keys(tmpl, old) || !lazy_slots.set(old, kTemplate, tmpl)) {
        Py_XDECREF(tmpl);
        return nullptr;
      }
    }
    if (!tmpl) return nullptr;
  }
  auto* tp = reinterpret_cast<PyTypeObject*>(lazy_params_cls);
  PyObject* lp = PyDict_Type.tp_new(tp, empty, nullptr);
  const bool ok = lp && (tmpl ? PyDict_Update(lp, tmpl) == 0 : copy_keys(lp, old)) &&
                  lazy_slots.set(lp, kRecord, record) && lazy_slots.set(lp, kTemplate, tmpl ? tmpl : Py_None);
  Py_XDECREF(tmpl);
  if (!ok) { Py_XDECREF(lp); return nullptr; }
  return lp;
}

// requires_grad of each parameter of a state, as bytes: from its Parameters
// when it has them, else from its (lazy) record.
PyObject* requires_grad_bytes(PyObject* params, PyObject* record) {
  if (params == Py_None) {
    PyObject* rg = PyList_GET_ITEM(record, 4);
    Py_INCREF(rg);
    return rg;
  }
  const Py_ssize_t n = PyTuple_GET_SIZE(params);
  PyObject* out = PyBytes_FromStringAndSize(nullptr, n);
  if (!out) return nullptr;
  char* b = PyBytes_AS_STRING(out);
  // Three dependent loads per parameter (object, impl, autograd meta): ask
  // for each level of all parameters before reading it, so that when other
  // work has evicted them the misses overlap instead of adding up.
  for (Py_ssize_t i = 0; i < n; ++i) __builtin_prefetch(PyTuple_GET_ITEM(params, i));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* p = PyTuple_GET_ITEM(params, i);
    if (is_tensor(p)) __builtin_prefetch(THPVariable_Unpack(p).unsafeGetTensorImpl());
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* p = PyTuple_GET_ITEM(params, i);
    if (is_tensor(p)) __builtin_prefetch(THPVariable_Unpack(p).unsafeGetTensorImpl()->autograd_meta());
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* p = PyTuple_GET_ITEM(params, i);
    b[i] = is_tensor(p) && THPVariable_Unpack(p).requires_grad();
  }
  return out;
}

// materialize(record): make the particle's Parameters (once) and place them.
PyObject* py_materialize(PyObject*, PyObject* record) {
  static PyObject* s_params = intern("params");
  static PyObject* s_keys = intern("keys");
  static PyObject* s_class = intern("__class__");
  if (!PyList_Check(record) || PyList_GET_SIZE(record) != 7) {
    PyErr_SetString(PyExc_TypeError, "materialize(record)");
    return nullptr;
  }
  if (PyList_GET_ITEM(record, 0) == Py_True) Py_RETURN_NONE;
  PyObject* mp_args[3] = {PyList_GET_ITEM(record, 1), PyList_GET_ITEM(record, 2), PyList_GET_ITEM(record, 4)};
  PyObject* made = py_make_params(nullptr, mp_args, 3);
  if (!made) return nullptr;
  PyObject* params = PyTuple_GET_ITEM(made, 0);
  PyObject* keys = PyTuple_GET_ITEM(made, 1);
  PyObject* slots = PyList_GET_ITEM(record, 3);
  PyObject* wrs = PyList_GET_ITEM(record, 5);
  const Py_ssize_t nm = PyTuple_GET_SIZE(wrs);
  auto fail = [&]() -> PyObject* { Py_DECREF(made); return nullptr; };
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(slots); ++k) {
    PyObject* e = PyTuple_GET_ITEM(slots, k);
    const Py_ssize_t mi = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 0));
    const Py_ssize_t j = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 2));
    if (mi < 0 || mi >= nm || j < 0 || j >= PyList_GET_SIZE(params)) {
      PyErr_SetString(PyExc_IndexError, "materialize: bad slot");
      return fail();
    }
    PyObject* wr = PyTuple_GET_ITEM(wrs, mi);
    PyObject* lp = wr == Py_None ? nullptr : PyWeakref_GetObject(wr);  // borrowed
    if (lp && lp != Py_None && PyDict_SetItem(lp, PyTuple_GET_ITEM(e, 1), PyList_GET_ITEM(params, j)) < 0) {
      return fail();
    }
  }
  // The State learns its Parameters (then it is checked like any other).
  PyObject* swr = PyList_GET_ITEM(record, 6);
  PyObject* st = swr == Py_None ? nullptr : PyWeakref_GetObject(swr);
  if (st && st != Py_None) {
    PyObject* cur = PyObject_GetAttr(st, s_params);
    if (!cur) return fail();
    const bool unset = cur == Py_None;
    Py_DECREF(cur);
    PyObject* pt = unset ? PyList_AsTuple(params) : nullptr;
    if (unset && (!pt || PyObject_SetAttr(st, s_params, pt) < 0 || PyObject_SetAttr(st, s_keys, keys) < 0)) {
      Py_XDECREF(pt);
      return fail();
    }
    Py_XDECREF(pt);
  }
  Py_INCREF(Py_True);
  PyList_SetItem(record, 0, Py_True);  // steals the new reference, drops the old
  for (Py_ssize_t mi = 0; mi < nm; ++mi) {
    PyObject* wr = PyTuple_GET_ITEM(wrs, mi);
    PyObject* lp = wr == Py_None ? nullptr : PyWeakref_GetObject(wr);
    if (!lp || lp == Py_None) continue;
    Py_INCREF(lp);
    const bool ok = lazy_slots.set(lp, kRecord, Py_None) && lazy_slots.set(lp, kTemplate, Py_None) &&
                    PyObject_SetAttr(lp, s_class, param_dict_cls) == 0;
    Py_DECREF(lp);
    if (!ok) return fail();
  }
  Py_DECREF(made);
  Py_RETURN_NONE;
}

// register_lazy_types(LazyParams, ParamDict, ContainerDict)
PyObject* py_register_lazy_types(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2])) {
    PyErr_SetString(PyExc_TypeError, "register_lazy_types(LazyParams, ParamDict, ContainerDict)");
    return nullptr;
  }
  PyObject** slots[3] = {&lazy_params_cls, &param_dict_cls, &container_dict_cls};
  for (int i = 0; i < 3; ++i) {
    Py_INCREF(args[i]);
    Py_XSETREF(*slots[i], args[i]);
  }
  param_cell_offset = slot_offset(reinterpret_cast<PyTypeObject*>(param_dict_cls), "_nyto_cell");
  container_cell_offset = slot_offset(reinterpret_cast<PyTypeObject*>(container_dict_cls), "_nyto_cell");
  // LazyParams adds no slot to ParamDict: the same offset serves both.
  if (param_cell_offset < 0 || container_cell_offset < 0 ||
      slot_offset(reinterpret_cast<PyTypeObject*>(lazy_params_cls), "_nyto_cell") != param_cell_offset) {
    PyErr_SetString(PyExc_TypeError, "register_lazy_types: _nyto_cell must be a plain slot of each class");
    return nullptr;
  }
  Py_RETURN_NONE;
}

// ---------------------------------------------------------------------------
// Version cells (python/nytorch/_containers.py): every module of a particle
// keeps its _parameters, _buffers and _modules as tracked dicts sharing one
// cell, an 8-byte bytearray holding the module's structure version. Any
// change moves it to a new value of one process-wide counter, so a version
// names one state of one module's containers: a State records them and the
// hot path compares them.
namespace {
int64_t version_counter = 0;  // guarded by the GIL
}  // namespace

int64_t next_version() { return ++version_counter; }

PyObject* new_cell() {
  PyObject* cell = PyByteArray_FromStringAndSize(nullptr, sizeof(int64_t));
  if (!cell) return nullptr;
  const int64_t v = next_version();
  std::memcpy(PyByteArray_AS_STRING(cell), &v, sizeof v);
  return cell;
}

bool is_cell(PyObject* cell) {
  return cell && PyByteArray_CheckExact(cell) && PyByteArray_GET_SIZE(cell) == static_cast<Py_ssize_t>(sizeof(int64_t));
}

// The structure version of a module whose `_parameters` is `params` (borrowed),
// or -1 when it is not a tracked dict with a cell (such a module is in no valid State).
int64_t params_version(PyObject* params) {
  if (!params || param_cell_offset < 0) return -1;
  PyObject* tp = reinterpret_cast<PyObject*>(Py_TYPE(params));
  if (tp != param_dict_cls && tp != lazy_params_cls) return -1;
  PyObject* cell = *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(params) + param_cell_offset);
  if (!is_cell(cell)) return -1;
  int64_t v;
  std::memcpy(&v, PyByteArray_AS_STRING(cell), sizeof v);
  return v;
}

// A new tracked dict of class `tp` (ParamDict, LazyParams or ContainerDict)
// holding `src`'s items (when given) and version cell `cell`. An empty one
// starts untracked by the cyclic GC, like an empty dict: it holds only the
// cell, which can't be part of a cycle; the first insertion of a tracked
// object (a module, a tensor) tracks it again.
PyObject* new_tracked(PyObject* tp, PyObject* src, PyObject* cell) {
  static PyObject* empty = PyTuple_New(0);
  auto* type = reinterpret_cast<PyTypeObject*>(tp);
  PyObject* d = PyDict_Type.tp_new(type, empty, nullptr);
  if (!d) return nullptr;
  if (src && PyDict_GET_SIZE(src) > 0 && PyDict_Update(d, src) < 0) {
    Py_DECREF(d);
    return nullptr;
  }
  if (!set_cell(d, cell)) {
    Py_DECREF(d);
    return nullptr;
  }
  if (PyDict_GET_SIZE(d) == 0 && PyObject_GC_IsTracked(d)) PyObject_GC_UnTrack(d);
  return d;
}

// d._nyto_cell = cell for a tracked dict `d` of one of the three classes.
bool set_cell(PyObject* d, PyObject* cell) {
  PyObject* tp = reinterpret_cast<PyObject*>(Py_TYPE(d));
  Py_ssize_t off = tp == container_dict_cls ? container_cell_offset
                   : (tp == param_dict_cls || tp == lazy_params_cls) ? param_cell_offset : -1;
  if (off < 0) {
    PyErr_SetString(PyExc_TypeError, "set_cell: not a nytorch tracked dict");
    return false;
  }
  Py_INCREF(cell);
  Py_XSETREF(*reinterpret_cast<PyObject**>(reinterpret_cast<char*>(d) + off), cell);
  return true;
}

PyObject* py_new_cell(PyObject*, PyObject*) { return new_cell(); }

// bump(cell): a new version in `cell` (None: nothing to do).
PyObject* py_bump(PyObject*, PyObject* cell) {
  if (cell != Py_None) {
    if (!is_cell(cell)) {
      PyErr_SetString(PyExc_TypeError, "bump(cell): not a nytorch version cell");
      return nullptr;
    }
    const int64_t v = next_version();
    std::memcpy(PyByteArray_AS_STRING(cell), &v, sizeof v);
  }
  Py_RETURN_NONE;
}

}  // namespace nyto::py
