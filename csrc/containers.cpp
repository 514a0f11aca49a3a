// Tracked module containers (python/nytorch/_containers.py).
//
// Every module of a particle keeps its `_parameters` as a ParamDict (a Python
// subclass of this file's ParamDictBase, so that a result's LazyParams can
// turn into one by `__class__` assignment) and its `_buffers` and `_modules`
// as ContainerDicts (this file's dict subclass). The three share one VersionCell: a counter
// that every change of any of them (set, delete, pop, popitem, clear, update,
// setdefault, |=) moves to a new value of one process-wide sequence, so a
// version names one state of one module's containers. A particle's State
// records its modules' versions and the hot path compares them
// (csrc/particle_fastpath.cpp: one dict lookup per module).
//
// Result particles get new containers for every module, so making them must
// cost about what a plain dict costs: ContainerDict keeps a free list (dict's
// own free list serves exact dicts only), and empty ones start untracked by
// the cyclic GC like empty dicts (a cell holds no reference, so no cycle can
// hide behind an untracked empty container; inserting a module or tensor
// tracks it again).
#include "python_api.h"

namespace nyto::py {

PyObject* container_dict_cls = nullptr;  // &ContainerDictType once added

namespace {

// ---------------------------------------------------------------------------
// VersionCell: an int64, no references (not a GC object).
struct VersionCell {
  PyObject_HEAD int64_t version;
};

int64_t version_counter = 0;  // guarded by the GIL

PyMemberDef cell_members[] = {{const_cast<char*>("version"), T_LONGLONG, offsetof(VersionCell, version), READONLY,
                               const_cast<char*>("The module structure version this cell holds.")},
                              {nullptr, 0, 0, 0, nullptr}};

PyTypeObject VersionCellType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "nytorch._C.VersionCell";
  t.tp_basicsize = sizeof(VersionCell);
  t.tp_flags = Py_TPFLAGS_DEFAULT;
  t.tp_doc = "A module's structure version, shared by its tracked containers (nytorch._containers).";
  t.tp_members = cell_members;
  return t;
}();

bool is_cell(PyObject* cell) { return cell && Py_TYPE(cell) == &VersionCellType; }

void bump(PyObject* cell) {
  if (is_cell(cell)) reinterpret_cast<VersionCell*>(cell)->version = ++version_counter;
}

// ---------------------------------------------------------------------------
// ContainerDict and ParamDictBase: dicts whose changes bump their cell. Both
// have this layout, so the methods below serve both.
struct ContainerDict {
  PyDictObject dict;
  PyObject* cell;
};

PyObject* cd_cell(PyObject* self) { return reinterpret_cast<ContainerDict*>(self)->cell; }

// Dict's own methods of the names below, unbound (filled by add_container_types).
enum DictMethod { kPop, kPopitem, kClear, kUpdate, kSetdefault, kNumMethods };
const char* const dict_method_names[kNumMethods] = {"pop", "popitem", "clear", "update", "setdefault"};
PyObject* dict_methods[kNumMethods] = {};

// dict.<method>(self, *args, **kwargs), then a new version.
template <DictMethod M>
PyObject* cd_changing(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  c10::SmallVector<PyObject*, 8> all;
  all.reserve(1 + nargs + nkw);
  all.push_back(self);
  for (Py_ssize_t i = 0; i < nargs + nkw; ++i) all.push_back(args[i]);
  PyObject* out = PyObject_Vectorcall(dict_methods[M], all.data(), 1 + nargs, kwnames);
  bump(cd_cell(self));
  return out;
}

int cd_ass_subscript(PyObject* self, PyObject* key, PyObject* value) {
  const int rc = PyDict_Type.tp_as_mapping->mp_ass_subscript(self, key, value);
  bump(cd_cell(self));
  return rc;
}

PyObject* cd_inplace_or(PyObject* self, PyObject* other) {
  PyObject* out = PyDict_Type.tp_as_number->nb_inplace_or(self, other);
  bump(cd_cell(self));
  return out;
}

// Pickles and copies as a plain dict (a copy is tracked on its first op).
PyObject* cd_reduce_ex(PyObject* self, PyObject*) {
  PyObject* plain = PyDict_Copy(self);
  if (!plain) return nullptr;
  return Py_BuildValue("(O(N))", reinterpret_cast<PyObject*>(&PyDict_Type), plain);
}

#define NYTO_CHANGING(M, name, doc)                                                                                  \
  {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(cd_changing<M>)), METH_FASTCALL | METH_KEYWORDS, \
   doc}
PyMethodDef cd_methods[] = {NYTO_CHANGING(kPop, "pop", "dict.pop, then a new structure version."),
                            NYTO_CHANGING(kPopitem, "popitem", "dict.popitem, then a new structure version."),
                            NYTO_CHANGING(kClear, "clear", "dict.clear, then a new structure version."),
                            NYTO_CHANGING(kUpdate, "update", "dict.update, then a new structure version."),
                            NYTO_CHANGING(kSetdefault, "setdefault", "dict.setdefault, then a new structure version."),
                            {"__reduce_ex__", cd_reduce_ex, METH_O, "Pickles as a plain dict."},
                            {nullptr, nullptr, 0, nullptr}};
#undef NYTO_CHANGING

PyMemberDef cd_members[] = {{const_cast<char*>("_nyto_cell"), T_OBJECT, offsetof(ContainerDict, cell), 0,
                             const_cast<char*>("The module's version cell, shared with its _parameters.")},
                            {nullptr, 0, 0, 0, nullptr}};

// The free list: dead ContainerDicts, emptied, untracked, cell cleared.
constexpr int kMaxFree = 256;
PyObject* free_list[kMaxFree];
int num_free = 0;

// The C base of nytorch._containers.ParamDict (a Python class, so that a
// result's LazyParams can turn into one by __class__ assignment): the same
// methods and cell, subclassable, no free list.
PyTypeObject ParamDictBaseType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "nytorch._C.ParamDictBase";
  t.tp_basicsize = sizeof(ContainerDict);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE;
  t.tp_doc = "Base of a particle module's _parameters: a dict whose changes move its structure version.";
  t.tp_methods = cd_methods;
  t.tp_members = cd_members;
  return t;
}();

PyTypeObject ContainerDictType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "nytorch._C.ContainerDict";
  t.tp_basicsize = sizeof(ContainerDict);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;  // no subclasses: the free list holds this type only
  t.tp_doc = "A particle module's _buffers or _modules: a dict whose changes move its structure version.";
  t.tp_methods = cd_methods;
  t.tp_members = cd_members;
  return t;
}();

PyObject* cd_alloc(PyTypeObject* tp, Py_ssize_t nitems) {
  if (tp == &ContainerDictType && num_free > 0) {
    PyObject* obj = free_list[--num_free];
    return PyObject_Init(obj, tp);  // dict_new sets the dict fields
  }
  return PyType_GenericAlloc(tp, nitems);
}

void cd_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  Py_TRASHCAN_BEGIN(self, cd_dealloc) Py_CLEAR(reinterpret_cast<ContainerDict*>(self)->cell);
  // Drop the entries first: freeing them can free (and list) other
  // ContainerDicts, so the room on the list is known only afterwards.
  PyDict_Clear(self);  // the keys table becomes the shared empty one
  if (num_free < kMaxFree) {
    free_list[num_free++] = self;
  } else {
    PyDict_Type.tp_dealloc(self);  // frees the (empty) tables, then tp_free
  }
  Py_TRASHCAN_END
}

// ParamDictBase: drop the cell, then dict's own deallocation.
void pd_dealloc(PyObject* self) {
  Py_CLEAR(reinterpret_cast<ContainerDict*>(self)->cell);
  PyDict_Type.tp_dealloc(self);
}

PyMappingMethods cd_mapping = {};
PyNumberMethods cd_number = {};

// The cell's offset in a ParamDict or LazyParams (ParamDictBase's field), once bound.
Py_ssize_t param_cell_offset = -1;

PyObject*& param_cell(PyObject* params) {
  return *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(params) + param_cell_offset);
}

bool is_param_dict(PyObject* d) {
  PyObject* tp = reinterpret_cast<PyObject*>(Py_TYPE(d));
  return param_cell_offset >= 0 && (tp == param_dict_cls || tp == lazy_params_cls);
}

}  // namespace

bool bind_param_cell(PyTypeObject* param_dict, PyTypeObject* lazy_params) {
  if (!PyType_IsSubtype(param_dict, &ParamDictBaseType) || !PyType_IsSubtype(lazy_params, param_dict)) {
    PyErr_SetString(PyExc_TypeError, "ParamDict must subclass nytorch._C.ParamDictBase, LazyParams ParamDict");
    return false;
  }
  param_cell_offset = offsetof(ContainerDict, cell);
  return true;
}

bool add_container_types(PyObject* module) {
  for (int i = 0; i < kNumMethods; ++i) {
    dict_methods[i] = PyObject_GetAttrString(reinterpret_cast<PyObject*>(&PyDict_Type), dict_method_names[i]);
    if (!dict_methods[i]) return false;
  }
  cd_mapping.mp_ass_subscript = cd_ass_subscript;  // length and subscript: inherited from dict
  cd_number.nb_inplace_or = cd_inplace_or;
  ContainerDictType.tp_base = &PyDict_Type;
  ContainerDictType.tp_as_mapping = &cd_mapping;
  ContainerDictType.tp_as_number = &cd_number;
  ContainerDictType.tp_alloc = cd_alloc;
  ContainerDictType.tp_dealloc = cd_dealloc;
  ContainerDictType.tp_traverse = PyDict_Type.tp_traverse;  // the cell is no GC object
  ContainerDictType.tp_clear = PyDict_Type.tp_clear;
  ParamDictBaseType.tp_base = &PyDict_Type;
  ParamDictBaseType.tp_as_mapping = &cd_mapping;
  ParamDictBaseType.tp_as_number = &cd_number;
  ParamDictBaseType.tp_dealloc = pd_dealloc;
  ParamDictBaseType.tp_traverse = PyDict_Type.tp_traverse;
  ParamDictBaseType.tp_clear = PyDict_Type.tp_clear;
  if (PyType_Ready(&VersionCellType) < 0 || PyType_Ready(&ContainerDictType) < 0 ||
      PyType_Ready(&ParamDictBaseType) < 0)
    return false;
  container_dict_cls = reinterpret_cast<PyObject*>(&ContainerDictType);
  PyTypeObject* types[3] = {&VersionCellType, &ContainerDictType, &ParamDictBaseType};
  const char* names[3] = {"VersionCell", "ContainerDict", "ParamDictBase"};
  for (int i = 0; i < 3; ++i) {
    Py_INCREF(types[i]);
    if (PyModule_AddObject(module, names[i], reinterpret_cast<PyObject*>(types[i])) < 0) return false;
  }
  return true;
}

PyObject* new_cell() {
  auto* cell = PyObject_New(VersionCell, &VersionCellType);
  if (cell) cell->version = ++version_counter;
  return reinterpret_cast<PyObject*>(cell);
}

int64_t cell_version(PyObject* cell) { return is_cell(cell) ? reinterpret_cast<VersionCell*>(cell)->version : -1; }

int64_t params_version(PyObject* params) {
  if (!params || !is_param_dict(params)) return -1;
  return cell_version(param_cell(params));
}

bool set_cell(PyObject* d, PyObject* cell) {
  PyObject** slot = nullptr;
  if (Py_TYPE(d) == &ContainerDictType)
    slot = &reinterpret_cast<ContainerDict*>(d)->cell;
  else if (is_param_dict(d))
    slot = &param_cell(d);
  if (!slot) {
    PyErr_SetString(PyExc_TypeError, "set_cell: not a nytorch tracked dict");
    return false;
  }
  Py_INCREF(cell);
  Py_XSETREF(*slot, cell);
  return true;
}

PyObject* new_tracked(PyObject* tp, PyObject* src, PyObject* cell) {
  static PyObject* empty = PyTuple_New(0);
  PyObject* d = PyDict_Type.tp_new(reinterpret_cast<PyTypeObject*>(tp), empty, nullptr);
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

PyObject* py_new_cell(PyObject*, PyObject*) { return new_cell(); }

// bump(cell): a new version in `cell` (None: nothing to do).
PyObject* py_bump(PyObject*, PyObject* cell) {
  if (cell != Py_None) {
    if (!is_cell(cell)) {
      PyErr_SetString(PyExc_TypeError, "bump(cell): not a nytorch VersionCell");
      return nullptr;
    }
    bump(cell);
  }
  Py_RETURN_NONE;
}

}  // namespace nyto::py
