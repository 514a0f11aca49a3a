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
// The record (a LazyRecord, below) is shared by the particle's LazyParams
// and its State. It holds no strong reference to a module, a LazyParams or
// the State (weak references only): no reference cycle, dead particles are
// freed by refcounting alone.
#include "python_api.h"
#include <torch/csrc/autograd/python_variable.h>

namespace nyto::py {

PyObject* lazy_params_cls = nullptr;  // nytorch._lazy.LazyParams
PyObject* param_dict_cls = nullptr;   // nytorch._containers.ParamDict

namespace {
PyObject* intern(const char* s) { return PyUnicode_InternFromString(s); }
// LazyParams' slots (python/nytorch/_lazy.py).
enum LazySlot { kRecord, kTemplate };
SlotAccess<2> lazy_slots({"_nyto_record", "_nyto_template"});
}  // namespace

// ---------------------------------------------------------------------------
// LazyRecord: what a lazy result needs to make its Parameters.
namespace {
PyMemberDef record_members[] = {
    {const_cast<char*>("done"), T_BOOL, offsetof(LazyRecord, done), READONLY,
     const_cast<char*>("Whether the Parameters were made.")},
    {const_cast<char*>("flats"), T_OBJECT, offsetof(LazyRecord, flats), READONLY,
     const_cast<char*>("The result's flat buffers (list of tensors).")},
    {const_cast<char*>("view_spec"), T_OBJECT, offsetof(LazyRecord, view_spec), READONLY,
     const_cast<char*>("Layout.view_spec: (group, offset, shape) per parameter.")},
    {const_cast<char*>("param_slots"), T_OBJECT, offsetof(LazyRecord, param_slots), READONLY,
     const_cast<char*>("Layout.param_slots: (module index, name, parameter index).")},
    {const_cast<char*>("requires_grad"), T_OBJECT, offsetof(LazyRecord, requires_grad), READONLY,
     const_cast<char*>("One byte per parameter.")},
    {const_cast<char*>("lazy_params"), T_OBJECT, offsetof(LazyRecord, lazy_params), READONLY,
     const_cast<char*>("Weak references to the LazyParams, by module index (None: no _parameters).")},
    {const_cast<char*>("state"), T_OBJECT, offsetof(LazyRecord, state), READONLY,
     const_cast<char*>("A weak reference to the State (None until set).")},
    {nullptr, 0, 0, 0, nullptr}};

PyObject** record_fields(LazyRecord* r) {
  return &r->flats;  // flats .. state: consecutive PyObject* fields (see LazyRecord)
}
constexpr int kRecordFields = 6;

int record_traverse(PyObject* self, visitproc visit, void* arg) {
  PyObject** f = record_fields(reinterpret_cast<LazyRecord*>(self));
  for (int i = 0; i < kRecordFields; ++i) Py_VISIT(f[i]);
  return 0;
}

int record_clear(PyObject* self) {
  PyObject** f = record_fields(reinterpret_cast<LazyRecord*>(self));
  for (int i = 0; i < kRecordFields; ++i) Py_CLEAR(f[i]);
  return 0;
}

void record_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  record_clear(self);
  Py_TYPE(self)->tp_free(self);
}
}  // namespace

PyTypeObject LazyRecordType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "nytorch._C.LazyRecord";
  t.tp_basicsize = sizeof(LazyRecord);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
  t.tp_doc = "What a lazy result particle needs to make its Parameters (csrc/lazy_params.cpp); read-only.";
  t.tp_members = record_members;
  t.tp_traverse = record_traverse;
  t.tp_clear = record_clear;
  t.tp_dealloc = record_dealloc;
  return t;
}();

LazyRecord* new_record(PyObject* flats, PyObject* view_spec, PyObject* param_slots, PyObject* requires_grad) {
  auto* r = PyObject_GC_New(LazyRecord, &LazyRecordType);
  if (!r) return nullptr;
  r->done = false;
  PyObject* values[kRecordFields] = {flats, view_spec, param_slots, requires_grad, Py_None, Py_None};
  PyObject** f = record_fields(r);
  for (int i = 0; i < kRecordFields; ++i) {
    Py_INCREF(values[i]);
    f[i] = values[i];
  }
  PyObject_GC_Track(r);
  return r;
}

bool is_record(PyObject* o) { return Py_TYPE(o) == &LazyRecordType; }

bool add_record_type(PyObject* module) {
  if (PyType_Ready(&LazyRecordType) < 0) return false;
  Py_INCREF(&LazyRecordType);
  return PyModule_AddObject(module, "LazyRecord", reinterpret_cast<PyObject*>(&LazyRecordType)) == 0;
}

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
      if (!tmpl || !copy_keys(tmpl, old)) {
        Py_XDECREF(tmpl);
        return nullptr;
      }
    }
    if (!same_version) {
      PyObject* entry = Py_BuildValue("(OL)", tmpl, static_cast<long long>(version));
      if (!entry) {
        Py_DECREF(tmpl);
        return nullptr;
      }
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
  if (!ok) {
    Py_XDECREF(lp);
    return nullptr;
  }
  return lp;
}

// requires_grad of each parameter of a state, as bytes: from its Parameters
// when it has them, else from its (lazy) record.
PyObject* requires_grad_bytes(PyObject* params, PyObject* record) {
  if (params == Py_None) {
    PyObject* rg = reinterpret_cast<LazyRecord*>(record)->requires_grad;
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
  if (!is_record(record)) {
    PyErr_SetString(PyExc_TypeError, "materialize(record): record must be a nytorch._C.LazyRecord");
    return nullptr;
  }
  auto* rec = reinterpret_cast<LazyRecord*>(record);
  if (rec->done) Py_RETURN_NONE;
  PyObject* mp_args[3] = {rec->flats, rec->view_spec, rec->requires_grad};
  PyObject* made = py_make_params(nullptr, mp_args, 3);
  if (!made) return nullptr;
  PyObject* params = PyTuple_GET_ITEM(made, 0);
  PyObject* keys = PyTuple_GET_ITEM(made, 1);
  PyObject* slots = rec->param_slots;
  PyObject* wrs = rec->lazy_params;
  if (!PyTuple_Check(wrs)) {
    PyErr_SetString(PyExc_TypeError, "materialize: the record has no LazyParams");
    Py_DECREF(made);
    return nullptr;
  }
  const Py_ssize_t nm = PyTuple_GET_SIZE(wrs);
  auto fail = [&]() -> PyObject* {
    Py_DECREF(made);
    return nullptr;
  };
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
  PyObject* swr = rec->state;
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
  rec->done = true;
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

// register_lazy_types(LazyParams, ParamDict)
PyObject* py_register_lazy_types(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyType_Check(args[0]) || !PyType_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "register_lazy_types(LazyParams, ParamDict)");
    return nullptr;
  }
  PyObject** slots[2] = {&lazy_params_cls, &param_dict_cls};
  for (int i = 0; i < 2; ++i) {
    Py_INCREF(args[i]);
    Py_XSETREF(*slots[i], args[i]);
  }
  // The version cell slot (csrc/containers.cpp): LazyParams adds no slot to
  // ParamDict, so one offset serves both.
  if (!bind_param_cell(reinterpret_cast<PyTypeObject*>(param_dict_cls),
                       reinterpret_cast<PyTypeObject*>(lazy_params_cls)))
    return nullptr;
  Py_RETURN_NONE;
}

}  // namespace nyto::py
