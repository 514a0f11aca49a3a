// The particle hot path: one C call for `a + b`, `a += b`, `a * 2`, ...
//
// fast_op(self, other, list_op, scalar_op, inplace) does what
// python/nytorch/particle.py does on its general path, for the common case
// only: both particles carry a valid cached storage State (their modules'
// versions unchanged, every parameter where the layout put it) sharing one Layout, and `other` is such
// a particle of the same species or a plain int/float/bool. Anything else
// returns None and Python takes the general path (which also raises the
// errors), so this file never decides semantics, it only skips interpreter
// work. Out-of-place results reuse the layout's pooled buffers.
#include <deque>
#include <atomic>
#include <ATen/Parallel.h>
#include "nyto.h"
#include "python_api.h"
#include <structmember.h>
#include <algorithm>
#include <string>

namespace nyto::py {
namespace {

PyObject* nyto_module_cls = nullptr;  // nytorch.NytoModule
PyObject* state_cls = nullptr;        // nytorch._storage.State
PyObject* containers = nullptr;       // nytorch._storage._CONTAINER_ATTRS

PyObject* intern(const char* s) { return PyUnicode_InternFromString(s); }

// Owned reference holder.
struct Ref {
  PyObject* p = nullptr;
  Ref() = default;
  explicit Ref(PyObject* o) : p(o) {}
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  ~Ref() { Py_XDECREF(p); }
  explicit operator bool() const { return p != nullptr; }
  PyObject* get() const { return p; }
  PyObject* release() {
    PyObject* r = p;
    p = nullptr;
    return r;
  }
};

PyObject* module_dict(PyObject* m) {
  PyObject** dp = _PyObject_GetDictPtr(m);
  return dp ? *dp : nullptr;
}

struct StateView {
  Ref layout, modules, params, buffers, flats, keys, versions, record;
};

// The structure version of module `m`: its tracked `_parameters`' version
// cell (python/nytorch/_containers.py); -1 when it has none.
int64_t module_version(PyObject* m) {
  static PyObject* s_parameters = intern("_parameters");
  PyObject* d = module_dict(m);
  return params_version(d ? PyDict_GetItem(d, s_parameters) : nullptr);  // borrowed
}

// The packed versions a State records: root's, then each of `modules`'.
PyObject* versions_of(PyObject* root, PyObject* modules) {
  const Py_ssize_t n = PyTuple_GET_SIZE(modules);
  PyObject* out = PyBytes_FromStringAndSize(nullptr, (n + 1) * sizeof(int64_t));
  if (!out) return nullptr;
  auto* v = reinterpret_cast<int64_t*>(PyBytes_AS_STRING(out));
  v[0] = module_version(root);
  for (Py_ssize_t i = 0; i < n; ++i) v[i + 1] = module_version(PyTuple_GET_ITEM(modules, i));
  return out;
}

// State's slots, in State.__init__'s order (bound to State by
// register_particle_types).
enum StateSlot { kLayout, kModules, kParams, kBuffers, kFlats, kKeys, kVersions, kRecord, kNumSlots };
SlotAccess<kNumSlots> state_slots({"layout", "modules", "params", "buffers", "flats", "keys", "versions", "record"});

// Slot i of State `st` (a new reference; nullptr when unset or not a State).
PyObject* state_slot(PyObject* st, int i) {
  if (!state_slots.is(st)) return nullptr;
  PyObject* v = state_slots.at(st, i);
  Py_XINCREF(v);
  return v;
}

// A new State from its slot values, written straight into the slots:
// State(...) runs a Python __init__, about a microsecond of a tiny `a + b`.
PyObject* new_state(PyObject* const* values) {
  PyTypeObject* tp = state_slots.type();
  if (!tp) return PyObject_Vectorcall(state_cls, values, kNumSlots, nullptr);
  PyObject* st = tp->tp_alloc(tp, 0);
  if (!st) return nullptr;
  for (int i = 0; i < kNumSlots; ++i) {
    Py_INCREF(values[i]);
    state_slots.at(st, i) = values[i];
  }
  return st;
}

// Layout's slots read on every out-of-place op (python/nytorch/_storage.py).
enum LayoutSlot { kViewSpec, kChildren, kParamSlots, kBufferSlots, kKeyTemplates, kPool };
SlotAccess<6> layout_slots({"view_spec", "children", "param_slots", "buffer_slots", "key_templates", "pool"});

bool versions_ok(PyObject* root, PyObject* modules, PyObject* versions) {
  if (!PyBytes_Check(versions) || !PyTuple_Check(modules)) return false;
  const Py_ssize_t n = PyTuple_GET_SIZE(modules);
  if (PyBytes_GET_SIZE(versions) != static_cast<Py_ssize_t>((n + 1) * sizeof(int64_t))) return false;
  const auto* v = reinterpret_cast<const int64_t*>(PyBytes_AS_STRING(versions));
  // A recorded -1 (an untracked module) never matches.
  if (v[0] < 0 || module_version(root) != v[0]) return false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (v[i + 1] < 0 || module_version(PyTuple_GET_ITEM(modules, i)) != v[i + 1]) return false;
  }
  return true;
}

bool fill_view(PyObject* st, StateView& sv);

// The per-parameter part of a State's validity check (views_match), kept
// for later: two particles' checks then run on two threads.
struct ViewCheck {
  Py_ssize_t n = 0;
  const int64_t* key = nullptr;
  const int64_t* end = nullptr;
  bool ok() const { return views_match(n, key, end); }
};

// Whether state `st` of particle `m` is still valid; fills `sv` (no Python
// error set). With `later`, the per-parameter check is left in it (run it
// while `sv` holds the State's keys).
bool state_valid(PyObject* m, PyObject* st, StateView& sv, ViewCheck* later = nullptr) {
  if (!fill_view(st, sv) || !versions_ok(m, sv.modules.get(), sv.versions.get())) {
    PyErr_Clear();
    return false;
  }
  // Parameters not made yet (a lazy result): nobody can have moved them.
  if (sv.params.get() == Py_None) return is_record(sv.record.get());
  if (!PyTuple_Check(sv.params.get()) || !PyBytes_Check(sv.keys.get())) return false;
  ViewCheck check;
  check.n = PyTuple_GET_SIZE(sv.params.get());
  check.key = reinterpret_cast<const int64_t*>(PyBytes_AS_STRING(sv.keys.get()));
  check.end = check.key + PyBytes_GET_SIZE(sv.keys.get()) / static_cast<Py_ssize_t>(sizeof(int64_t));
  if (later) {
    *later = check;
    return true;
  }
  return check.ok();
}

// All the checks: split over threads when there are enough parameters to pay
// for a parallel region (~1 us here; a check costs ~5 ns per parameter
// warm, more when the parameters' TensorImpls are out of cache).
bool views_ok_all(c10::ArrayRef<ViewCheck> checks) {
  constexpr Py_ssize_t kParallelParams = 1024;
  Py_ssize_t total = 0, busy = 0;
  for (const auto& c : checks) {
    total += c.n;
    busy += c.n > 0;
  }
  if (busy > 1 && total >= kParallelParams && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    std::atomic<bool> ok{true};
    at::parallel_for(0, static_cast<int64_t>(checks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end && ok.load(std::memory_order_relaxed); ++i) {
        if (!checks[i].ok()) ok.store(false, std::memory_order_relaxed);
      }
    });
    return ok.load();
  }
  for (const auto& c : checks) {
    if (!c.ok()) return false;
  }
  return true;
}

// The slots of State `st` into `sv`; false when one is missing.
bool fill_view(PyObject* st, StateView& sv) {
  Ref* fields[kNumSlots] = {&sv.layout, &sv.modules, &sv.params,   &sv.buffers,
                            &sv.flats,  &sv.keys,    &sv.versions, &sv.record};
  for (int i = 0; i < kNumSlots; ++i) {
    fields[i]->p = state_slot(st, i);
    if (!fields[i]->p) return false;
  }
  return true;
}

// The valid cached state of particle `m`, or false (no Python error set).
bool valid_state(PyObject* m, StateView& sv, ViewCheck* later = nullptr) {
  static PyObject* s_state = intern("_nyto_state");
  PyObject* d = module_dict(m);
  if (!d) return false;
  PyObject* st = PyDict_GetItem(d, s_state);  // borrowed
  if (!st || st == Py_None) return false;
  return state_valid(m, st, sv, later);
}

bool plain_number(PyObject* o) { return PyFloat_CheckExact(o) || PyLong_CheckExact(o) || PyBool_Check(o); }

// A new particle like `self` (state `sv`) whose parameters view `flats`;
// its Parameter objects are made on first use (csrc/lazy_params.cpp).
PyObject* result_from_flats(PyObject* self, StateView& sv, PyObject* flats) {
  static PyObject* s_state = intern("_nyto_state");
  PyObject* layout = sv.layout.get();
  Ref spec(layout_slots.get(layout, kViewSpec));
  Ref children(layout_slots.get(layout, kChildren));
  Ref pslots(layout_slots.get(layout, kParamSlots));
  Ref bslots(layout_slots.get(layout, kBufferSlots));
  Ref key_cache(layout_slots.get(layout, kKeyTemplates));
  if (!spec || !children || !pslots || !bslots || !key_cache) return nullptr;
  Ref rg(requires_grad_bytes(sv.params.get(), sv.record.get()));
  if (!rg) return nullptr;
  Ref record(reinterpret_cast<PyObject*>(new_record(flats, spec.get(), pslots.get(), rg.get())));
  if (!record) return nullptr;
  Ref buffers;
  if (PyTuple_GET_SIZE(sv.buffers.get()) > 0) {
    PyObject* lists[1] = {sv.buffers.get()};
    Ref copied(apply_operands(static_cast<long>(Op::Copy), false, lists, 1, nullptr, 0, Py_None));
    if (!copied) return nullptr;
    buffers.p = PyList_AsTuple(copied.get());
  } else {
    buffers.p = PyTuple_New(0);
  }
  if (!buffers) return nullptr;
  const Py_ssize_t nm = PyTuple_GET_SIZE(sv.modules.get());
  Ref olds(PyTuple_New(nm + 1));
  if (!olds) return nullptr;
  Py_INCREF(self);
  PyTuple_SET_ITEM(olds.get(), 0, self);
  for (Py_ssize_t i = 0; i < nm; ++i) {
    PyObject* m = PyTuple_GET_ITEM(sv.modules.get(), i);
    Py_INCREF(m);
    PyTuple_SET_ITEM(olds.get(), i + 1, m);
  }
  PyObject* bm_args[9] = {olds.get(),   containers,    children.get(), pslots.get(),   Py_None,
                          bslots.get(), buffers.get(), record.get(),   key_cache.get()};
  c10::SmallVector<int64_t, 8> new_versions;  // the new modules' versions, in `olds`' order: root's first
  Ref mods(build_modules(bm_args, 9, &new_versions));
  if (!mods) return nullptr;
  Ref new_modules_t(PyTuple_New(nm));
  if (!new_modules_t) return nullptr;
  for (Py_ssize_t i = 0; i < nm; ++i) {
    PyObject* m = PyList_GET_ITEM(mods.get(), i + 1);
    Py_INCREF(m);
    PyTuple_SET_ITEM(new_modules_t.get(), i, m);
  }
  PyObject* root = PyList_GET_ITEM(mods.get(), 0);
  // The new modules have new tracked containers, each with a new version.
  Ref versions(PyBytes_FromStringAndSize(reinterpret_cast<const char*>(new_versions.data()),
                                         static_cast<Py_ssize_t>(new_versions.size() * sizeof(int64_t))));
  if (!versions) return nullptr;
  PyObject* st_args[8] = {sv.layout.get(), new_modules_t.get(), Py_None,     buffers.get(), flats,
                          Py_None,         versions.get(),      record.get()};
  Ref state(new_state(st_args));
  if (!state) return nullptr;
  PyObject* swr = PyWeakref_NewRef(state.get(), nullptr);
  if (!swr) return nullptr;
  Py_XSETREF(reinterpret_cast<LazyRecord*>(record.get())->state, swr);
  PyObject* rd = module_dict(root);
  if (!rd || PyDict_SetItem(rd, s_state, state.get()) < 0) return nullptr;
  Py_INCREF(root);
  return root;
}

}  // namespace

// fast_op(self, other, list_op: int, scalar_op: int, inplace: bool)
//   -> the result (self for in-place), or None to take the general path.
PyObject* py_fast_op(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  static PyObject* s_species = intern("_nyto_species");
  if (nargs != 5 || !state_cls) {
    PyErr_SetString(PyExc_TypeError, "fast_op(self, other, list_op, scalar_op, inplace)");
    return nullptr;
  }
  PyObject* self = args[0];
  PyObject* other = args[1];
  const bool inplace = args[4] == Py_True;
  StateView a;
  ViewCheck a_views, b_views;
  if (!valid_state(self, a, &a_views)) Py_RETURN_NONE;
  PyObject* lists[2] = {a.flats.get(), nullptr};
  Py_ssize_t nl = 1, ns = 0;
  PyObject* op;
  StateView b;  // keeps other's flats alive through the call
  if (plain_number(other)) {
    if (!a_views.ok()) Py_RETURN_NONE;
    op = args[3];
    ns = 1;
  } else {
    if (args[2] == Py_None) Py_RETURN_NONE;  // reflected ops take numbers only
    if (!PyObject_TypeCheck(other, reinterpret_cast<PyTypeObject*>(nyto_module_cls))) Py_RETURN_NONE;
    PyObject* da = module_dict(self);
    PyObject* db = module_dict(other);
    if (!da || !db || PyDict_GetItem(da, s_species) != PyDict_GetItem(db, s_species)) Py_RETURN_NONE;
    if (!valid_state(other, b, &b_views) || a.layout.get() != b.layout.get()) Py_RETURN_NONE;
    if (!views_ok_all({a_views, b_views})) Py_RETURN_NONE;
    op = args[2];
    lists[1] = b.flats.get();
    nl = 2;
  }
  const long code = PyLong_AsLong(op);
  if (code == -1 && PyErr_Occurred()) return nullptr;
  if (inplace) {
    // bumps the flats' (shared) version counters
    Ref done(apply_operands(code, true, lists, nl, &other, ns, Py_None));
    if (!done) return nullptr;
    Py_INCREF(self);
    return self;
  }
  Ref pool(layout_slots.get(a.layout.get(), kPool));
  if (!pool) return nullptr;
  Ref flats(apply_operands(code, false, lists, nl, &other, ns, pool.get()));
  if (!flats) return nullptr;
  // A promoted result (int particle / 2, + 0.5) no longer fits the layout's
  // dtypes: the Python path makes it (rare: a steady loop keeps its dtypes).
  const Py_ssize_t ng = PyList_GET_SIZE(flats.get());
  PyObject* in_flats = a.flats.get();
  for (Py_ssize_t g = 0; g < ng; ++g) {
    PyObject* in = PySequence_Fast_GET_ITEM(in_flats, g);
    if (THPVariable_Unpack(PyList_GET_ITEM(flats.get(), g)).scalar_type() != THPVariable_Unpack(in).scalar_type())
      Py_RETURN_NONE;
  }
  return result_from_flats(self, a, flats.get());
}

// fast_unary(self, op: int) -> a new particle (clone, neg, pos), or None.
PyObject* py_fast_unary(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !state_cls) {
    PyErr_SetString(PyExc_TypeError, "fast_unary(self, op)");
    return nullptr;
  }
  StateView a;
  if (!valid_state(args[0], a)) Py_RETURN_NONE;
  const long code = PyLong_AsLong(args[1]);
  if (code == -1 && PyErr_Occurred()) return nullptr;
  Ref pool(layout_slots.get(a.layout.get(), kPool));
  if (!pool) return nullptr;
  PyObject* lists[1] = {a.flats.get()};
  Ref flats(apply_operands(code, false, lists, 1, nullptr, 0, pool.get()));
  if (!flats) return nullptr;
  return result_from_flats(args[0], a, flats.get());
}

// fast_random(self, dist: int, a: float, b: float) -> a new particle of
// random values from the default generator (randn: dist 0, normal(a, b);
// rand: dist 1, uniform(a, b)), or None.
PyObject* py_fast_random(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !state_cls || !PyLong_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "fast_random(self, dist, a, b)");
    return nullptr;
  }
  StateView s;
  if (!valid_state(args[0], s)) Py_RETURN_NONE;
  const double lo = PyFloat_AsDouble(args[2]);
  const double hi = PyFloat_AsDouble(args[3]);
  if (PyErr_Occurred()) return nullptr;
  Ref pool(layout_slots.get(s.layout.get(), kPool));
  if (!pool) return nullptr;
  Ref flats(random_flats(s.flats.get(), pool.get(), PyLong_AsLong(args[1]) == 0 ? 0 : 1, lo, hi));
  if (!flats) return nullptr;
  return result_from_flats(args[0], s, flats.get());
}

// lazy_result(self, state, flats) -> a new particle like `self` (valid
// State `state`) whose parameters will view `flats` (made on first use).
PyObject* py_lazy_result(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !state_cls || !PyList_Check(args[2])) {
    PyErr_SetString(PyExc_TypeError, "lazy_result(self, state, flats: list)");
    return nullptr;
  }
  StateView sv;
  if (!fill_view(args[1], sv)) {
    PyErr_SetString(PyExc_TypeError, "lazy_result: not a complete nytorch State");
    return nullptr;
  }
  return result_from_flats(args[0], sv, args[2]);
}

// module_versions(root, modules: tuple) -> bytes: the versions a State records.
PyObject* py_module_versions(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyTuple_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "module_versions(root, modules)");
    return nullptr;
  }
  return versions_of(args[0], args[1]);
}

// state_ok(root, state) -> bool: the cached State of particle `root` is valid.
PyObject* py_state_ok(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "state_ok(root, state)");
    return nullptr;
  }
  StateView sv;
  if (state_valid(args[0], args[1], sv)) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

// register_particle_types(NytoModule, State, containers)
PyObject* py_register_particle_types(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyTuple_Check(args[2])) {
    PyErr_SetString(PyExc_TypeError, "register_particle_types(NytoModule, State, containers)");
    return nullptr;
  }
  PyObject** slots[3] = {&nyto_module_cls, &state_cls, &containers};
  for (int i = 0; i < 3; ++i) {
    Py_INCREF(args[i]);
    Py_XSETREF(*slots[i], args[i]);
  }
  if (PyType_Check(state_cls)) state_slots.bind(reinterpret_cast<PyTypeObject*>(state_cls));
  Py_RETURN_NONE;
}

}  // namespace nyto::py

// The particle dunders (`__add__`, `__radd__`, `__iadd__`, ...) as a C
// method descriptor: `a + b` goes from the type slot straight into fast_op,
// without a Python frame; when fast_op declines, the Python `general(self,
// other)` decides and raises (python/nytorch/particle.py, _arith_method).
namespace nyto::py {
namespace {

struct OpMethod {
  PyObject_HEAD vectorcallfunc vectorcall;
  PyObject* list_op;    // int, or None for reflected ops
  PyObject* scalar_op;  // int
  PyObject* inplace;    // bool
  PyObject* general;    // general(self, other)
  PyObject* name;
  PyObject* doc;
};

PyObject* op_method_call(PyObject* callable, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* m = reinterpret_cast<OpMethod*>(callable);
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs != 2 || (kwnames && PyTuple_GET_SIZE(kwnames) > 0)) {
    PyErr_Format(PyExc_TypeError, "%U(self, other) takes 2 positional arguments", m->name);
    return nullptr;
  }
  PyObject* fa[5] = {args[0], args[1], m->list_op, m->scalar_op, m->inplace};
  PyObject* out = py_fast_op(nullptr, fa, 5);
  if (out != Py_None) return out;  // a result, or an error
  Py_DECREF(out);
  return PyObject_Vectorcall(m->general, args, 2, nullptr);
}

PyObject* op_method_get(PyObject* self, PyObject* obj, PyObject*) {
  if (obj == nullptr || obj == Py_None) {
    Py_INCREF(self);
    return self;
  }
  return PyMethod_New(self, obj);
}

void op_method_dealloc(PyObject* self) {
  auto* m = reinterpret_cast<OpMethod*>(self);
  PyObject_GC_UnTrack(self);
  Py_CLEAR(m->list_op);
  Py_CLEAR(m->scalar_op);
  Py_CLEAR(m->inplace);
  Py_CLEAR(m->general);
  Py_CLEAR(m->name);
  Py_CLEAR(m->doc);
  PyObject_GC_Del(self);
}

int op_method_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* m = reinterpret_cast<OpMethod*>(self);
  Py_VISIT(m->general);
  return 0;
}

PyObject* op_method_name(PyObject* self, void*) {
  PyObject* n = reinterpret_cast<OpMethod*>(self)->name;
  Py_INCREF(n);
  return n;
}

PyObject* op_method_doc(PyObject* self, void*) {
  PyObject* d = reinterpret_cast<OpMethod*>(self)->doc;
  Py_INCREF(d);
  return d;
}

PyGetSetDef op_method_getset[] = {
    {"__name__", op_method_name, nullptr, nullptr, nullptr},
    {"__qualname__", op_method_name, nullptr, nullptr, nullptr},
    {"__doc__", op_method_doc, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyTypeObject op_method_type = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "nytorch._C.OpMethod";
  t.tp_basicsize = sizeof(OpMethod);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR;
  t.tp_vectorcall_offset = offsetof(OpMethod, vectorcall);
  t.tp_call = PyVectorcall_Call;
  t.tp_descr_get = op_method_get;
  t.tp_dealloc = op_method_dealloc;
  t.tp_traverse = op_method_traverse;
  t.tp_getset = op_method_getset;
  t.tp_doc = "A particle operator method (nytorch._C.op_method).";
  return t;
}();

}  // namespace

// op_method(name, list_op, scalar_op, inplace, general, doc) -> a method descriptor.
PyObject* py_op_method(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 6 || !PyUnicode_Check(args[0]) || !PyBool_Check(args[3]) || !PyCallable_Check(args[4])) {
    PyErr_SetString(PyExc_TypeError, "op_method(name, list_op, scalar_op, inplace, general, doc)");
    return nullptr;
  }
  if (!(op_method_type.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&op_method_type) < 0) return nullptr;
  auto* m = PyObject_GC_New(OpMethod, &op_method_type);
  if (!m) return nullptr;
  m->vectorcall = op_method_call;
  PyObject** fields[6] = {&m->name, &m->list_op, &m->scalar_op, &m->inplace, &m->general, &m->doc};
  for (int i = 0; i < 6; ++i) {
    Py_INCREF(args[i]);
    *fields[i] = args[i];
  }
  PyObject_GC_Track(m);
  return reinterpret_cast<PyObject*>(m);
}

}  // namespace nyto::py

// nytorch.fuse's hot path: an in-place call (out= given) of a traced program
// with every particle's cached state valid, in C: no Python frame between
// the call and the kernel. Anything else (a new argument pattern or species,
// out-of-place results, another layout, bad input) returns None and the
// Python front end (python/nytorch/_fuse/api.py, Fused.__call__) decides.
namespace nyto::py {
// fuse_call(programs: dict, args: tuple, out) -> out, or None to fall back.
PyObject* py_fuse_call(PyObject*, PyObject* const* a, Py_ssize_t nargs) {
  if (nargs != 3 || !PyDict_Check(a[0]) || !PyTuple_Check(a[1]) || a[2] == Py_None || !nyto_module_cls) Py_RETURN_NONE;
  static PyObject* s_species = intern("_nyto_species");
  static PyObject* s_words = intern("words");
  static PyObject* s_lits = intern("lits");
  static PyObject* s_n_out = intern("n_out");
  PyObject* args = a[1];
  const Py_ssize_t n = PyTuple_GET_SIZE(args);
  auto* cls = reinterpret_cast<PyTypeObject*>(nyto_module_cls);
  auto species_of = [&](PyObject* m) -> PyObject* {  // borrowed, or nullptr
    PyObject* d = module_dict(m);
    return d ? PyDict_GetItem(d, s_species) : nullptr;
  };
  std::string kinds(static_cast<size_t>(n), 'n');
  Ref nums(PyList_New(0));
  std::vector<PyObject*> parts;  // borrowed from args
  if (!nums) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* x = PyTuple_GET_ITEM(args, i);
    if (PyFloat_CheckExact(x) || PyLong_CheckExact(x)) {
      if (PyList_Append(nums.get(), x) < 0) return nullptr;
    } else if (PyObject_TypeCheck(x, cls)) {
      kinds[i] = 'p';
      parts.push_back(x);
    } else {
      Py_RETURN_NONE;
    }
  }
  if (parts.empty()) Py_RETURN_NONE;
  PyObject* species = species_of(parts[0]);
  if (!species) Py_RETURN_NONE;
  Ref kinds_str(PyUnicode_FromStringAndSize(kinds.data(), static_cast<Py_ssize_t>(kinds.size())));
  Ref key(kinds_str ? PyTuple_Pack(2, kinds_str.get(), species) : nullptr);
  if (!key) return nullptr;
  PyObject* prog = PyDict_GetItemWithError(a[0], key.get());  // borrowed
  if (!prog) {
    if (PyErr_Occurred()) return nullptr;
    Py_RETURN_NONE;
  }
  // The flats of particle m: same species and layout as the first, valid state.
  PyObject* layout = nullptr;
  std::deque<StateView> views;                     // keeps each state's references while the kernel runs
  c10::SmallVector<ViewCheck, 8> checks;           // their per-parameter checks, run together below
  auto flats_of = [&](PyObject* m) -> PyObject* {  // borrowed from a StateView kept in `views`
    if (species_of(m) != species) return nullptr;
    views.emplace_back();
    StateView& sv = views.back();
    checks.emplace_back();
    if (!valid_state(m, sv, &checks.back())) return nullptr;
    if (!layout) layout = sv.layout.get();
    return sv.layout.get() == layout ? sv.flats.get() : nullptr;
  };
  Ref inputs(PyList_New(0));
  if (!inputs) return nullptr;
  for (PyObject* m : parts) {
    PyObject* f = flats_of(m);
    if (!f) Py_RETURN_NONE;
    if (PyList_Append(inputs.get(), f) < 0) return nullptr;
  }
  const bool single = PyObject_TypeCheck(a[2], cls);
  Ref targets(single ? PyTuple_Pack(1, a[2]) : PySequence_Tuple(a[2]));
  if (!targets) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  Ref n_out(PyObject_GetAttr(prog, s_n_out));
  if (!n_out || PyLong_AsSsize_t(n_out.get()) != PyTuple_GET_SIZE(targets.get())) {
    PyErr_Clear();
    Py_RETURN_NONE;  // Python raises the error
  }
  Ref outs(PyList_New(0));
  if (!outs) return nullptr;
  for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(targets.get()); ++j) {
    PyObject* o = PyTuple_GET_ITEM(targets.get(), j);
    PyObject* f = nullptr;
    for (size_t k = 0; k < parts.size() && !f; ++k) {
      if (parts[k] == o) f = PyList_GET_ITEM(inputs.get(), static_cast<Py_ssize_t>(k));
    }
    if (!f) f = PyObject_TypeCheck(o, cls) ? flats_of(o) : nullptr;
    if (!f) Py_RETURN_NONE;
    if (PyList_Append(outs.get(), f) < 0) return nullptr;
  }
  if (!views_ok_all(checks)) Py_RETURN_NONE;
  // a particle without parameters has no buffers to run over: Python's route
  PyObject* first_flats = PyList_GET_SIZE(inputs.get()) > 0 ? PyList_GET_ITEM(inputs.get(), 0) : nullptr;
  if (!first_flats || !PySequence_Check(first_flats) || PySequence_Size(first_flats) == 0) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  Ref words(PyObject_GetAttr(prog, s_words));
  Ref lits(PyObject_GetAttr(prog, s_lits));
  if (!words || !lits) return nullptr;
  if (!PyTuple_Check(lits.get())) Py_RETURN_NONE;
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(lits.get()); ++k) {  // the traced constants follow the numbers
    if (PyList_Append(nums.get(), PyTuple_GET_ITEM(lits.get(), k)) < 0) return nullptr;
  }
  Ref seed(PyLong_FromLong(-1));
  Ref offset(PyLong_FromLong(0));
  if (!seed || !offset) return nullptr;
  PyObject* run_args[6] = {words.get(), nums.get(), inputs.get(), outs.get(), seed.get(), offset.get()};
  Ref done(py_fuse_run(nullptr, run_args, 6));
  if (!done) return nullptr;
  Py_INCREF(a[2]);
  return a[2];
}
}  // namespace nyto::py
