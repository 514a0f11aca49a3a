// nytorch._C: importing it registers the ops (static TORCH_LIBRARY blocks in
// this shared object). It also exposes a small CPython fast path used by the
// particle layer, which calls the same front end without the dispatcher's
// argument parsing (see docs/design.md, "call overhead").
#include <Python.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/ops/empty.h>
#include <algorithm>
#include "dispatch.h"  // cpu_kernel_isa, cpu_avx512
#include "nyto.h"

#include "python_api.h"

namespace nyto {
const char* cpu_kernel_isa();
}

namespace nyto::py {

[[noreturn]] void raise_type(const char* msg) { throw std::invalid_argument(msg); }

PyObject* parameter_class = nullptr;

at::Tensor unpack(PyObject* obj) {
  if (!is_tensor(obj)) raise_type("nytorch._C: expected a torch.Tensor");
  return THPVariable_Unpack(obj);
}

TensorRefs::TensorRefs(PyObject* seq) {
  fast_ = PySequence_Fast(seq, "nytorch._C: expected a list of tensors");
  if (!fast_) throw std::runtime_error("");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast_);
  PyObject** items = PySequence_Fast_ITEMS(fast_);
  tensors.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!is_tensor(items[i])) {
      release();
      raise_type("nytorch._C: expected a list of tensors");
    }
    tensors.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(THPVariable_Unpack(items[i])));
  }
}

void TensorRefs::release() {
  for (auto& t : tensors) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
  tensors.clear();
  Py_CLEAR(fast_);
}

TensorRefs::TensorRefs(TensorRefs&& other) noexcept : tensors(std::move(other.tensors)), fast_(other.fast_) {
  other.tensors.clear();
  other.fast_ = nullptr;
}

TensorRefs::~TensorRefs() { release(); }

std::vector<at::Tensor> unpack_list(PyObject* seq) {
  TensorRefs refs(seq);
  return std::vector<at::Tensor>(refs.tensors.begin(), refs.tensors.end());  // owning copies
}

c10::Scalar to_scalar(PyObject* obj) {
  if (PyBool_Check(obj)) return c10::Scalar(obj == Py_True);
  if (PyLong_Check(obj)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (!overflow) return c10::Scalar(static_cast<int64_t>(v));
    // Beyond int64, as torch parses a Python int: [2**63, 2**64) is a uint64
    // scalar; anything else raises CPython's OverflowError ("int too big to
    // convert", "can't convert negative int to unsigned"), kept by guarded().
    const unsigned long long u = PyLong_AsUnsignedLongLong(obj);
    if (u == static_cast<unsigned long long>(-1) && PyErr_Occurred())
      throw std::overflow_error("int too big to convert");
    return c10::Scalar(static_cast<uint64_t>(u));
  }
  if (PyFloat_Check(obj)) return c10::Scalar(PyFloat_AS_DOUBLE(obj));
  raise_type("nytorch._C: expected a real number (bool, int or float)");
}

// A pooled output buffer is free when nothing but the pool holds it: one
// Python reference (the pool list), one owner of the TensorImpl, and no view
// of its storage left (the particle whose parameters viewed it is gone).
bool pooled_free(PyObject* obj, const at::Tensor& t) {
  return Py_REFCNT(obj) == 1 && t.use_count() == 1 && t.storage().use_count() == 1;
}

// Buffers kept per output slot: the pool grows only while that many results
// are alive at once (a PSO step written as particle arithmetic holds ~6).
constexpr Py_ssize_t kPoolDepth = 8;

// Output i of an out-of-place op on the fast route, taken from pool[i] when a
// free buffer of the right kind is there, else allocated (and pooled).
std::vector<at::Tensor> pooled_outputs(PyObject* pool, c10::ArrayRef<at::TensorList> lists) {
  const size_t n = lists[0].size();
  std::vector<at::Tensor> outs(n);
  if (!PyList_Check(pool) || PyList_GET_SIZE(pool) != static_cast<Py_ssize_t>(n))
    raise_type("nytorch._C.apply: pool must be a list with one list per output");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& like = lists[0][i];
    PyObject* slot = PyList_GET_ITEM(pool, i);
    if (!PyList_Check(slot)) raise_type("nytorch._C.apply: pool entries must be lists");
    const Py_ssize_t depth = PyList_GET_SIZE(slot);
    for (Py_ssize_t k = 0; k < depth; ++k) {
      PyObject* obj = PyList_GET_ITEM(slot, k);
      const at::Tensor& t = THPVariable_Unpack(obj);
      if (pooled_free(obj, t) && t.numel() == like.numel() && t.scalar_type() == like.scalar_type() &&
          t.device() == like.device()) {
        outs[i] = t;
        break;
      }
    }
    if (!outs[i].defined()) {
      outs[i] = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
      // Full: forget the oldest entry (a long-lived particle keeps its buffer;
      // it just won't come back here), so the pool follows the temporaries.
      if (depth >= kPoolDepth && PySequence_DelItem(slot, 0) < 0) throw std::runtime_error("");
      PyObject* w = THPVariable_Wrap(outs[i]);
      if (!w) throw std::runtime_error("");
      const int rc = PyList_Append(slot, w);
      Py_DECREF(w);
      if (rc < 0) throw std::runtime_error("");
    }
  }
  return outs;
}

// Runs f, without the GIL when the tensors hold enough elements to be worth
// it: releasing and taking the GIL back costs more than a small op itself.
template <class F>
void without_gil_if_big(at::TensorList tensors, F&& f) {
  int64_t work = 0;
  for (const auto& t : tensors) work += t.numel();
  std::optional<pybind11::gil_scoped_release> no_gil;
  if (work > (1 << 16)) no_gil.emplace();
  f();
}

// apply(op: int, inplace: bool, lists: tuple[list[Tensor], ...], scalars: tuple[number, ...],
//       pool: list[list[Tensor]] | None = None)
//   -> list[Tensor] (out-of-place) or None (in-place)
// Runs with grad mode off (nyto::apply's slow route): particle ops are not
// differentiable updates.
PyObject* py_apply(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 && nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "nytorch._C.apply(op, inplace, lists, scalars, pool=None)");
    return nullptr;
  }
  const long op = PyLong_AsLong(args[0]);
  if (op == -1 && PyErr_Occurred()) return nullptr;
  const int inplace = PyObject_IsTrue(args[1]);
  if (inplace < 0) return nullptr;
  if (!PyTuple_Check(args[2]) || !PyTuple_Check(args[3])) {
    PyErr_SetString(PyExc_TypeError, "nytorch._C.apply: lists and scalars must be tuples");
    return nullptr;
  }
  return apply_operands(op, inplace != 0, &PyTuple_GET_ITEM(args[2], 0), PyTuple_GET_SIZE(args[2]),
                        &PyTuple_GET_ITEM(args[3], 0), PyTuple_GET_SIZE(args[3]), nargs == 5 ? args[4] : Py_None);
}

PyObject* apply_operands(long op, bool inplace, PyObject* const* list_objs, Py_ssize_t nl, PyObject* const* scalar_objs,
                         Py_ssize_t ns, PyObject* pool) {
  return guarded([&]() -> PyObject* {
    if (op < 0 || op >= static_cast<long>(Op::NumOps)) raise_type("nytorch._C.apply: bad op code");
    c10::SmallVector<TensorRefs, 4> owned;  // small vectors: no heap allocation per call
    owned.reserve(nl);
    for (Py_ssize_t k = 0; k < nl; ++k) owned.emplace_back(list_objs[k]);
    c10::SmallVector<at::TensorList, 4> lists;
    for (const auto& refs : owned) lists.emplace_back(refs.tensors);
    c10::SmallVector<c10::Scalar, 4> scalars;
    for (Py_ssize_t k = 0; k < ns; ++k) scalars.push_back(to_scalar(scalar_objs[k]));
    const auto& info = nyto::op_info(static_cast<Op>(op));
    const int want_lists = inplace ? info.n_lists_inplace : info.n_lists;
    if (nl != want_lists || ns != info.n_scalars) raise_type("nytorch._C.apply: wrong operand count");
    std::vector<at::Tensor> preset;
    if (pool != Py_None && !inplace) preset = pooled_outputs(pool, lists);
    std::vector<at::Tensor> out;
    without_gil_if_big(lists[0], [&] {
      out = nyto::apply(static_cast<Op>(op), inplace, lists, scalars, preset.empty() ? nullptr : &preset);
    });
    if (inplace) Py_RETURN_NONE;
    return wrap_list(std::move(out));
  });
}

// A parameter's "view key": its data address, rank and sizes, packed as
// int64s. A particle's State keeps the keys of its parameters; they must all
// still match (and the parameters be contiguous) for its flats to be valid.
// A view key: [TensorImpl*, StorageImpl*, storage offset, rank | dtype << 32, sizes...].
// A Python tensor keeps its TensorImpl for life (`p.data = x` rewrites that
// impl in place), so views_ok reads the impls straight from the keys, never
// the Python objects: a few cache lines per parameter fewer.
namespace {
constexpr int64_t kRankMask = 0xffffffff;
int64_t pack_rank_dtype(const c10::TensorImpl* t) {
  return t->dim() | (static_cast<int64_t>(t->dtype().toScalarType()) << 32);
}
}  // namespace

void append_view_key(const c10::TensorImpl* t, std::string& out) {
  // [3] packs the dtype above the rank: `p.data = p.data.view(torch.int32)`
  // and `.double()` of an empty parameter keep storage, offset and sizes.
  const int64_t head[4] = {
      static_cast<int64_t>(reinterpret_cast<uintptr_t>(t)),
      static_cast<int64_t>(reinterpret_cast<uintptr_t>(t->unsafe_storage().unsafeGetStorageImpl())),
      t->storage_offset(), pack_rank_dtype(t)};
  out.append(reinterpret_cast<const char*>(head), sizeof(head));
  const auto sizes = t->sizes();
  out.append(reinterpret_cast<const char*>(sizes.data()), sizes.size() * sizeof(int64_t));
}

PyObject* bytes_of(const std::string& s) { return PyBytes_FromStringAndSize(s.data(), s.size()); }

// pooled_like(tensors, pool) -> list[Tensor]: an uninitialized buffer like
// each tensor, taken from the pool like apply's outputs (random particles).
std::vector<at::Tensor> pooled_like(PyObject* tensors, PyObject* pool) {
  TensorRefs like(tensors);
  return pooled_outputs(pool, {at::TensorList(like.tensors)});
}

PyObject* py_pooled_like(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs != 2) raise_type("pooled_like(tensors, pool)");
    return wrap_list(pooled_like(args[0], args[1]));
  });
}

PyObject* random_flats(PyObject* flats, PyObject* pool, int dist, double a, double b) {
  return guarded([&]() -> PyObject* {
    std::vector<at::Tensor> outs = pooled_like(flats, pool);
    without_gil_if_big(outs, [&] { random_fill_(outs, dist == 0 ? Dist::Normal : Dist::Uniform, a, b, std::nullopt); });
    return wrap_list(std::move(outs));
  });
}

// apply_eager(op, inplace, lists, scalars): `nytorch.ops`' fast entry. Like
// apply, but returns NotImplemented (and the wrapper goes through the
// dispatcher: torch.ops.nytorch.*) for anything the dispatcher must see:
// tensor subclasses (FakeTensor, ...), active torch function / dispatch
// modes, tensors requiring grad under grad mode, non-plain scalars.
PyObject* py_apply_eager(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3])) Py_RETURN_NOTIMPLEMENTED;
  if (at::impl::PythonTorchFunctionTLS::stack_len() > 0 || c10::impl::TorchDispatchModeTLS::stack_len() > 0)
    Py_RETURN_NOTIMPLEMENTED;
  const bool grad = c10::GradMode::is_enabled();
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(args[2]); ++k) {
    PyObject* seq = PyTuple_GET_ITEM(args[2], k);
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) Py_RETURN_NOTIMPLEMENTED;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject** items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!THPVariable_CheckExact(items[i])) Py_RETURN_NOTIMPLEMENTED;
      if (grad && THPVariable_Unpack(items[i]).requires_grad()) Py_RETURN_NOTIMPLEMENTED;
    }
  }
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(args[3]); ++k) {
    PyObject* sc = PyTuple_GET_ITEM(args[3], k);
    if (!(PyFloat_CheckExact(sc) || PyLong_CheckExact(sc) || PyBool_Check(sc))) Py_RETURN_NOTIMPLEMENTED;
  }
  return py_apply(nullptr, args, 4);
}

namespace {
bool views_match_impl(Py_ssize_t n, const int64_t* key, const int64_t* end) {
  // Ask for the impl lines kAhead parameters ahead of the one checked (the
  // fields read: storage at 16, sizes from 56, storage offset and policy
  // bits at 144-168): when the impls are out of cache their misses overlap,
  // and nothing is fetched so early that it is evicted before its check.
  constexpr int kAhead = 12;
  const int64_t* ahead = key;
  auto prefetch_next = [&]() {
    if (ahead + 4 > end) return;
    const char* impl = reinterpret_cast<const char*>(static_cast<uintptr_t>(ahead[0]));
    __builtin_prefetch(impl + 16);
    __builtin_prefetch(impl + 88);
    __builtin_prefetch(impl + 160);
    ahead += 4 + (ahead[3] & kRankMask);
  };
  for (int k = 0; k < kAhead; ++k) prefetch_next();
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (key + 4 > end) return false;
    prefetch_next();
    const auto* t = reinterpret_cast<const c10::TensorImpl*>(static_cast<uintptr_t>(key[0]));
    const int64_t nd = key[3] & kRankMask;
    if (pack_rank_dtype(t) != key[3] || key + 4 + nd > end || !t->is_contiguous()) return false;
    const auto sizes = t->sizes();
    bool empty = false;
    for (int64_t d = 0; d < nd; ++d) {
      if (sizes[d] != key[4 + d]) return false;
      empty = empty || sizes[d] == 0;
    }
    // an empty parameter has nothing to read or write: its place is free
    if (!empty &&
        (reinterpret_cast<uintptr_t>(t->unsafe_storage().unsafeGetStorageImpl()) != static_cast<uintptr_t>(key[1]) ||
         t->storage_offset() != key[2])) {
      return false;
    }
    key += 4 + nd;
  }
  return key == end;
}
}  // namespace

// Whether n parameters still match their packed view keys [key, end): the
// address, shape and contiguity the particle's layout recorded. Reads only
// C++ objects (no Python API): safe on a worker thread while the caller
// holds the keys and the parameters alive.
bool views_match(Py_ssize_t n, const int64_t* key, const int64_t* end) noexcept {
  try {
    return views_match_impl(n, key, end);
  } catch (...) {  // symbolic sizes and the like: not a layout we made
    return false;
  }
}

// views_ok(params: tuple[Tensor], keys: bytes) -> bool: every parameter still
// has the address, shape and contiguity the particle's layout recorded.
PyObject* py_views_ok(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyTuple_Check(args[0]) || !PyBytes_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "views_ok(params, keys)");
    return nullptr;
  }
  // The keys were taken from these params (held alive by the caller's State).
  const auto* key = reinterpret_cast<const int64_t*>(PyBytes_AS_STRING(args[1]));
  const auto* end = key + PyBytes_GET_SIZE(args[1]) / static_cast<Py_ssize_t>(sizeof(int64_t));
  return PyBool_FromLong(views_match(PyTuple_GET_SIZE(args[0]), key, end));
}

// make_params(flats: list[Tensor], spec: tuple[(group, offset, sizes)], like: tuple[Tensor] | bytes)
//   -> (list[Parameter], bytes): new leaves viewing the flats, requires_grad
//   copied from `like` (tensors, or one flag byte each), and their packed
//   view keys (for views_ok).
PyObject* py_make_params(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs != 3 || !PyTuple_Check(args[1]) || !(PyTuple_Check(args[2]) || PyBytes_Check(args[2])))
      raise_type("make_params(flats, spec, like)");
    if (!parameter_class) raise_type("nytorch._C.make_params: call set_parameter_class first");
    const auto flats = unpack_list(args[0]);
    const Py_ssize_t n = PyTuple_GET_SIZE(args[1]);
    const bool rg_bytes = PyBytes_Check(args[2]);
    if ((rg_bytes ? PyBytes_GET_SIZE(args[2]) : PyTuple_GET_SIZE(args[2])) != n)
      raise_type("make_params: spec and like differ in length");
    PyObject* params = PyList_New(n);
    if (!params) return nullptr;
    std::string keys;
    keys.reserve(n * 4 * sizeof(int64_t));
    try {
      for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* e = PyTuple_GET_ITEM(args[1], i);
        const long g = PyLong_AsLong(PyTuple_GET_ITEM(e, 0));
        const int64_t off = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 1));
        PyObject* sz = PyTuple_GET_ITEM(e, 2);
        const Py_ssize_t nd = PyTuple_GET_SIZE(sz);
        c10::SmallVector<int64_t, 6> sizes(nd), strides(nd);
        int64_t st = 1;
        for (Py_ssize_t d = nd - 1; d >= 0; --d) {
          sizes[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(sz, d));
          strides[d] = st;
          st *= std::max<int64_t>(sizes[d], 1);
        }
        bool rg;
        if (rg_bytes) {
          rg = PyBytes_AS_STRING(args[2])[i] != 0;
        } else {
          PyObject* like = PyTuple_GET_ITEM(args[2], i);
          rg = is_tensor(like) ? THPVariable_Unpack(like).requires_grad() : true;
        }
        // A fresh TensorImpl on the flat's storage, built without the
        // dispatcher (as_strided + detach cost ~1 us each per parameter).
        const at::Tensor& flat = flats.at(g);
        at::Tensor v =
            at::detail::make_tensor<c10::TensorImpl>(c10::Storage(flat.storage()), flat.key_set(), flat.dtype());
        v.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, flat.storage_offset() + off);
        v.unsafeGetTensorImpl()->set_allow_tensor_metadata_change(true);
        // One version counter per flat, as for views: an in-place op on the
        // flat is seen by autograd on every parameter without a per-param bump.
        v.unsafeGetTensorImpl()->set_version_counter(flat.unsafeGetTensorImpl()->version_counter());
        v.set_requires_grad(rg);
        append_view_key(v.unsafeGetTensorImpl(), keys);
        PyObject* w = THPVariable_Wrap(std::move(v), reinterpret_cast<PyTypeObject*>(parameter_class));
        if (!w) throw std::runtime_error("");
        PyList_SET_ITEM(params, i, w);
      }
    } catch (...) {
      Py_DECREF(params);
      throw;
    }
    PyObject* ptrs = bytes_of(keys);
    PyObject* res = ptrs ? PyTuple_Pack(2, params, ptrs) : nullptr;
    Py_DECREF(params);
    Py_XDECREF(ptrs);
    return res;
  });
}

// view_keys(tensors) -> bytes: the packed view keys views_ok compares with.
PyObject* py_view_keys(PyObject*, PyObject* arg) {
  return guarded([&]() -> PyObject* {
    std::string keys;
    for (const auto& t : unpack_list(arg)) append_view_key(t.unsafeGetTensorImpl(), keys);
    return bytes_of(keys);
  });
}

// A copy of one of nn.Module's container attributes. The common case, an
// empty hook OrderedDict, is made with PyODict_New: it is ~10x cheaper than
// OrderedDict.copy(), and a result module has a dozen of them. An empty one
// is left untracked by the cyclic GC, as CPython leaves an empty dict: it
// holds nothing, and the first hook put in tracks it again (dict insertion
// does). A result then adds 13 objects to the GC's generations, not 24: the
// collections a population of live particles triggers cost half as much.
PyObject* copy_container(PyObject* v, PyObject* s_copy) {
  if (PyDict_CheckExact(v)) return PyDict_Copy(v);
  if (PyODict_CheckExact(v)) {
    PyObject* c = PyODict_New();
    if (c && PyDict_GET_SIZE(v) == 0) PyObject_GC_UnTrack(c);
    if (!c || PyDict_GET_SIZE(v) == 0) return c;
    PyObject* items = PyObject_CallMethod(v, "items", nullptr);  // in the odict's order
    PyObject* it = items ? PyObject_GetIter(items) : nullptr;
    Py_XDECREF(items);
    if (!it) {
      Py_DECREF(c);
      return nullptr;
    }
    while (PyObject* kv = PyIter_Next(it)) {
      const int rc = PyODict_SetItem(c, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1));
      Py_DECREF(kv);
      if (rc < 0) {
        Py_DECREF(it);
        Py_DECREF(c);
        return nullptr;
      }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
      Py_DECREF(c);
      return nullptr;
    }
    return c;
  }
  if (PyAnySet_CheckExact(v)) return PySet_New(v);
  return PyObject_CallMethodNoArgs(v, s_copy);
}

// build_modules(olds, containers, children, param_slots, params, buffer_slots, buffers)
//   -> list of new modules: for each old module a new instance of its class
//   whose __dict__ is a shallow copy of the old one, with its own copy of each
//   container attribute named in `containers` (hook dicts, _parameters, ...),
//   a fresh `_modules` linked per `children` ((parent, name, child | -1)),
//   `_nyto_state` (where present) set to None, and the given parameters and
//   buffers placed per their slots ((module, name, index)).
// Whether interned-or-not strings `a` and `b` are equal: identity decides
// when both are interned (the container names always are), without a compare.
bool same_name(PyObject* a, PyObject* b) {
  if (a == b) return true;
  if (PyUnicode_CHECK_INTERNED(a) && PyUnicode_CHECK_INTERNED(b)) return false;
  return PyUnicode_Compare(a, b) == 0;
}

PyObject* build_modules(PyObject* const* args, Py_ssize_t nargs, c10::SmallVectorImpl<int64_t>* versions_out) {
  return guarded([&]() -> PyObject* {
    if (nargs < 7 || nargs > 9)
      raise_type(
          "build_modules(olds, containers, children, param_slots, params, buffer_slots, buffers[, record[, "
          "key_templates]])");
    PyObject* key_cache = nargs == 9 ? args[8] : nullptr;  // Layout.key_templates
    // With a lazy record, each module gets a LazyParams (keys only) and the
    // record learns weak references to them; `params` is not read.
    PyObject* record = nargs >= 8 && args[7] != Py_None ? args[7] : nullptr;
    if (record && !is_record(record)) raise_type("build_modules: record must be a nytorch._C.LazyRecord");
    static PyObject* s_modules = PyUnicode_InternFromString("_modules");
    static PyObject* s_parameters = PyUnicode_InternFromString("_parameters");
    static PyObject* s_buffers = PyUnicode_InternFromString("_buffers");
    static PyObject* s_state = PyUnicode_InternFromString("_nyto_state");
    static PyObject* s_copy = PyUnicode_InternFromString("copy");
    static PyObject* empty = PyTuple_New(0);
    PyObject* olds = args[0];
    PyObject* containers = args[1];
    const Py_ssize_t n = PyTuple_GET_SIZE(olds);
    PyObject* out = PyList_New(n);
    if (!out) return nullptr;
    std::vector<PyObject*> dicts(n, nullptr);  // borrowed from the new modules
    // Each new module's version cell: its _parameters, _buffers and _modules
    // are tracked dicts sharing it (python/nytorch/_containers.py).
    std::vector<PyObject*> cells(n, nullptr);
    struct CellsRelease {
      std::vector<PyObject*>& c;
      ~CellsRelease() {
        for (PyObject* x : c) Py_XDECREF(x);
      }
    } cells_release{cells};
    auto fail = [&]() -> PyObject* {
      Py_DECREF(out);
      return nullptr;
    };
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* old = PyTuple_GET_ITEM(olds, i);
      PyObject** od = _PyObject_GetDictPtr(old);
      if (!od || !*od) {
        PyErr_SetString(PyExc_TypeError, "build_modules: module without __dict__");
        return fail();
      }
      PyObject* d = PyDict_Copy(*od);
      if (!d) return fail();
      PyObject* cell = cells[i] = new_cell();
      if (!cell) {
        Py_DECREF(d);
        return fail();
      }
      for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(containers); ++k) {
        PyObject* name = PyTuple_GET_ITEM(containers, k);
        PyObject* v = PyDict_GetItemWithError(d, name);
        if (!v) {
          if (PyErr_Occurred()) {
            Py_DECREF(d);
            return fail();
          }
          continue;
        }
        if (v == Py_None) continue;
        const bool is_params = same_name(name, s_parameters);
        if (record && is_params) continue;  // made lazy below
        const bool is_buffers = !is_params && same_name(name, s_buffers);
        PyObject* c = (is_params || is_buffers) && PyDict_Check(v)
                          ? new_tracked(is_params ? param_dict_cls : container_dict_cls, v, cell)
                          : copy_container(v, s_copy);
        if (!c || PyDict_SetItem(d, name, c) < 0) {
          Py_XDECREF(c);
          Py_DECREF(d);
          return fail();
        }
        Py_DECREF(c);
      }
      PyObject* mods = new_tracked(container_dict_cls, nullptr, cell);
      if (!mods || PyDict_SetItem(d, s_modules, mods) < 0) {
        Py_XDECREF(mods);
        Py_DECREF(d);
        return fail();
      }
      Py_DECREF(mods);
      const int has_state = PyDict_Contains(d, s_state);
      if (has_state > 0 && PyDict_SetItem(d, s_state, Py_None) < 0) {
        Py_DECREF(d);
        return fail();
      }
      PyTypeObject* tp = Py_TYPE(old);
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
      // 3.11/3.12: object.__new__ would give the new module a values array
      // that the dict pointer below then turns into a dict, both dropped at
      // once for `d`; a bare allocation has neither (its managed dict slot
      // is empty until set below).
      PyObject* m =
          (tp->tp_flags & Py_TPFLAGS_MANAGED_DICT) ? tp->tp_alloc(tp, 0) : PyBaseObject_Type.tp_new(tp, empty, nullptr);
#else
      PyObject* m = PyBaseObject_Type.tp_new(tp, empty, nullptr);
#endif
      if (!m) {
        Py_DECREF(d);
        return fail();
      }
      PyObject** nd = _PyObject_GetDictPtr(m);
      if (!nd) {
        Py_DECREF(d);
        Py_DECREF(m);
        PyErr_SetString(PyExc_TypeError, "build_modules: no __dict__ slot");
        return fail();
      }
      Py_XSETREF(*nd, d);
      dicts[i] = d;
      PyList_SET_ITEM(out, i, m);
    }
    if (record) {
      PyObject* wrs = PyTuple_New(n);
      if (!wrs) return fail();
      for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* oldp = PyDict_GetItemWithError(dicts[i], s_parameters);  // the source's (shallow-copied) dict
        PyObject* wr = Py_None;
        if (oldp && PyDict_Check(oldp)) {
          PyObject* lp = new_lazy_params(oldp, record, key_cache, i);
          if (lp && !set_cell(lp, cells[i])) Py_CLEAR(lp);
          wr = lp ? PyWeakref_NewRef(lp, nullptr) : nullptr;
          const bool ok = wr && PyDict_SetItem(dicts[i], s_parameters, lp) == 0;
          Py_XDECREF(lp);
          if (!ok) {
            Py_XDECREF(wr);
            Py_DECREF(wrs);
            return fail();
          }
        } else {
          if (PyErr_Occurred()) {
            Py_DECREF(wrs);
            return fail();
          }
          Py_INCREF(wr);
        }
        PyTuple_SET_ITEM(wrs, i, wr);
      }
      Py_XSETREF(reinterpret_cast<LazyRecord*>(record)->lazy_params, wrs);
    }
    auto place = [&](PyObject* slots, PyObject* key, PyObject* values, bool modules) -> bool {
      const Py_ssize_t ns = PyTuple_GET_SIZE(slots);
      for (Py_ssize_t k = 0; k < ns; ++k) {
        PyObject* e = PyTuple_GET_ITEM(slots, k);
        const Py_ssize_t mi = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 0));
        const Py_ssize_t j = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 2));
        if (mi < 0 || mi >= n) {
          PyErr_SetString(PyExc_IndexError, "build_modules: bad slot");
          return false;
        }
        PyObject* v;
        if (modules)
          v = j >= 0 ? PyList_GET_ITEM(out, j) : Py_None;
        else
          v = PySequence_Fast_GET_ITEM(values, j);
        PyObject* target = PyDict_GetItemWithError(dicts[mi], key);
        // Our tracked dicts (and plain ones) are filled raw: building is no change of structure.
        PyObject* tt = target ? reinterpret_cast<PyObject*>(Py_TYPE(target)) : nullptr;
        const bool raw = target && (PyDict_CheckExact(target) || tt == param_dict_cls || tt == container_dict_cls ||
                                    tt == lazy_params_cls);
        if (!target || (raw ? PyDict_SetItem(target, PyTuple_GET_ITEM(e, 1), v)
                            : PyObject_SetItem(target, PyTuple_GET_ITEM(e, 1), v)) < 0) {
          if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "build_modules: missing container");
          return false;
        }
      }
      return true;
    };
    PyObject* params = PySequence_Fast(record ? empty : args[4], "params must be a sequence");
    PyObject* buffers = PySequence_Fast(args[6], "buffers must be a sequence");
    const bool ok = params && buffers && place(args[2], s_modules, nullptr, true) &&
                    (record || place(args[3], s_parameters, params, false)) &&
                    place(args[5], s_buffers, buffers, false);
    Py_XDECREF(params);
    Py_XDECREF(buffers);
    if (!ok) return fail();
    if (versions_out) {
      // The new modules' structure versions, read from their cells (what
      // a State records), without looking `_parameters` up again.
      versions_out->resize(n);
      for (Py_ssize_t i = 0; i < n; ++i) (*versions_out)[i] = cell_version(cells[i]);
    }
    return out;
  });
}

PyObject* py_build_modules(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return build_modules(args, nargs, nullptr);
}

// share_versions(tensors, flat): make each tensor use the flat's version
// counter (parameters adopted into a flat with `p.data = view`).
PyObject* py_share_versions(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    if (nargs != 2) raise_type("share_versions(tensors, flat)");
    const at::Tensor& flat = unpack(args[1]);
    if (flat.is_inference()) Py_RETURN_NONE;
    std::vector<at::Tensor> members = unpack_list(args[0]);
    // The shared counter is the one that reads highest, a member's on a tie
    // (then a particle captured again keeps its parameters' counter, which a
    // detach() twin's flats still bump): no member's _version ever goes back
    // or stops moving when its values are written, so autograd sees every
    // in-place op on a tensor it saved.
    c10::VariableVersion shared = flat.unsafeGetTensorImpl()->version_counter();
    bool from_member = false;
    for (const auto& t : members) {
      if (t.is_inference()) continue;
      const auto v = static_cast<int64_t>(shared.current_version());
      if (t._version() > v || (!from_member && t._version() == v)) {
        shared = t.unsafeGetTensorImpl()->version_counter();
        from_member = true;
      }
    }
    flat.unsafeGetTensorImpl()->set_version_counter(shared);
    for (const auto& t : members) {
      if (!t.is_inference()) t.unsafeGetTensorImpl()->set_version_counter(shared);
    }
    Py_RETURN_NONE;
  });
}

PyObject* py_set_parameter_class(PyObject*, PyObject* cls) {
  Py_XINCREF(cls);
  Py_XDECREF(parameter_class);
  parameter_class = cls;
  Py_RETURN_NONE;
}

// op_table() -> ((name, code, n_lists, n_lists_inplace, n_scalars, args, fuse), ...):
// csrc/ops.def, which python/nytorch/ops.py reads.
PyObject* py_op_table(PyObject*, PyObject*) {
  const Py_ssize_t n = static_cast<Py_ssize_t>(Op::NumOps);
  PyObject* out = PyTuple_New(n);
  if (!out) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    const auto& info = nyto::op_info(static_cast<Op>(i));
    PyObject* row = Py_BuildValue("(sniiiss)", info.name, i, info.n_lists, info.n_lists_inplace, info.n_scalars,
                                  info.args, info.fuse);
    if (!row) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, i, row);
  }
  return out;
}

PyObject* py_torch_version(PyObject*, PyObject*) { return PyUnicode_FromString(NYTO_TORCH_VERSION); }
PyObject* py_cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(nyto::cpu_kernel_isa()); }
PyObject* py_cpu_avx512(PyObject*, PyObject*) { return PyBool_FromLong(nyto::cpu_avx512()); }
PyObject* py_has_cuda(PyObject*, PyObject*) {
#ifdef NYTO_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

}  // namespace nyto::py

namespace {
using namespace nyto::py;

PyMethodDef methods[] = {
    {"fuse_run", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_fuse_run)), METH_FASTCALL,
     "fuse_run(program, numbers, inputs, outs, seed, offset): run a nytorch.fuse program."},
    {"fuse_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_fuse_call)), METH_FASTCALL,
     "fuse_call(programs, args, out): nytorch.fuse's in-place hot path, or None (the Python front end decides)."},
    {"apply", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_apply)), METH_FASTCALL,
     "apply(op, inplace, lists, scalars): run one op of the library on lists of tensors."},
    {"apply_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_apply_eager)), METH_FASTCALL,
     "apply_eager(op, inplace, lists, scalars): apply, or NotImplemented where the dispatcher must run."},
    {"views_ok", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_views_ok)), METH_FASTCALL,
     "views_ok(params, keys): whether each parameter keeps its recorded address and shape."},
    {"make_params", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_make_params)), METH_FASTCALL,
     "make_params(flats, spec, like): new Parameters viewing the flat buffers."},
    {"view_keys", py_view_keys, METH_O, "view_keys(tensors): packed address and shape of each, for views_ok."},
    {"build_modules", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_build_modules)), METH_FASTCALL,
     "build_modules(...): the module tree of a result particle (see _storage.build)."},
    {"share_versions", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_share_versions)), METH_FASTCALL,
     "share_versions(tensors, flat): one version counter for the flat and each tensor (the highest)."},
    {"pooled_like", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_pooled_like)), METH_FASTCALL,
     "pooled_like(tensors, pool): uninitialized buffers like tensors, reused from the pool."},
    {"set_parameter_class", py_set_parameter_class, METH_O, "Register torch.nn.Parameter."},
    {"op_method", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_op_method)), METH_FASTCALL,
     "op_method(name, list_op, scalar_op, inplace, general, doc): a particle dunder in C."},
    {"lazy_result", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_lazy_result)), METH_FASTCALL,
     "lazy_result(self, state, flats): a result particle viewing flats (Parameters made on first use)."},
    {"materialize", py_materialize, METH_O, "materialize(record): make a lazy result particle's Parameters."},
    {"register_lazy_types", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_register_lazy_types)),
     METH_FASTCALL, "register_lazy_types(LazyParams, ParamDict)."},
    {"new_cell", py_new_cell, METH_NOARGS, "new_cell(): a module structure version cell with a new version."},
    {"bump", py_bump, METH_O, "bump(cell): move a version cell to a new version (None: no-op)."},
    {"fast_op", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_fast_op)), METH_FASTCALL,
     "fast_op(self, other, list_op, scalar_op, inplace): the particle hot path, or None."},
    {"fast_random", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_fast_random)), METH_FASTCALL,
     "fast_random(self, dist, a, b): the particle hot path of randn/rand (default generator), or None."},
    {"fast_unary", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_fast_unary)), METH_FASTCALL,
     "fast_unary(self, op): the particle hot path of clone/neg/pos, or None."},
    {"register_particle_types", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_register_particle_types)),
     METH_FASTCALL, "register_particle_types(NytoModule, State, containers)."},
    {"module_versions", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_module_versions)), METH_FASTCALL,
     "module_versions(root, modules): the packed module versions a particle State records."},
    {"state_ok", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_state_ok)), METH_FASTCALL,
     "state_ok(root, state): whether a particle's cached storage State is still valid."},
    {"op_table", py_op_table, METH_NOARGS,
     "op_table(): ((name, code, n_lists, n_lists_inplace, n_scalars, schema args, fuse expr), ...) of csrc/ops.def."},
    {"fuse_op_table", py_fuse_op_table, METH_NOARGS,
     "fuse_op_table(): ((name, code, arity, is_math), ...) of csrc/fuse/fops.def."},
    {"fuse_scalar", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_fuse_scalar)), METH_FASTCALL,
     "fuse_scalar(code, *numbers): a fuse math op on numbers, in double (as in a fused program)."},
    {"fuse_row_sums", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_fuse_row_sums)), METH_FASTCALL,
     "fuse_row_sums(rows, w, v, acc1, acc2): weighted sums of a [h, n] buffer's rows (and squares), in row order."},
    {"torch_version", py_torch_version, METH_NOARGS, "The torch version this extension was built against."},
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The CPU kernel build chosen at load time (DEFAULT or AVX2)."},
    {"cpu_avx512", py_cpu_avx512, METH_NOARGS, "Whether the AVX2 build runs its Philox rounds with AVX-512."},
    {"has_cuda", py_has_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "nytorch._C", "nytorch's compiled core.", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() {
  PyObject* m = PyModule_Create(&module_def);
  if (m && !nyto::py::add_container_types(m)) Py_CLEAR(m);  // csrc/containers.cpp
  if (m && !nyto::py::add_record_type(m)) Py_CLEAR(m);      // csrc/lazy_params.cpp
  return m;
}
