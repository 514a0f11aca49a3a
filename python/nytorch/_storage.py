"""Particle storage: each particle keeps its parameters as views into one flat
buffer per (device, dtype) group, so a particle op is one kernel call per group.

A :class:`State` is captured lazily the first time a particle takes part in an
op and cached on the particle's root module. It stays valid while the module
tree is unchanged and every parameter still starts where the layout put it
(``_C.views_ok``: ``.to()``, ``p.data = ...`` and the like move them). Every
module of a captured particle keeps its ``_parameters``, ``_buffers`` and
``_modules`` in tracked dicts (nytorch._containers) whose every change, by any
route, moves the module's structure version; the State records the versions.
When they moved, the structure is compared with the layout (:func:`revalidate`:
``functional_call`` swaps parameters and puts them back); a changed structure
is simply captured again: parameters that still tile one storage are adopted
as they are (no copy), others are copied into a new flat buffer and re-pointed
at it with ``p.data = view``, which keeps every Parameter object (optimizers
stay valid).
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules import module as _module

from . import _C, _lazy  # noqa: F401  (_lazy registers the lazy parameter dicts)
from ._containers import touch, track
from .errors import StructureError
from .ops import OP_CODE

_C.set_parameter_class(nn.Parameter)

# Op codes of nytorch._C.apply (csrc/nyto.h enum Op).
(NEG, COPY, ADD, SUB, MUL, DIV, POW, ADD_S, SUB_S, MUL_S, DIV_S, POW_S, RSUB_S, RDIV_S, RPOW_S) = (
    OP_CODE[name]
    for name in (
        "neg",
        "copy",
        "add",
        "sub",
        "mul",
        "div",
        "pow",
        "add_scalar",
        "sub_scalar",
        "mul_scalar",
        "div_scalar",
        "pow_scalar",
        "rsub_scalar",
        "rdiv_scalar",
        "rpow_scalar",
    )
)

# A registration of a module, parameter or buffer anywhere moves that module's
# structure version (its tracked dicts' own writes do too: this also covers
# subclasses whose registration writes elsewhere first).
_module.register_module_parameter_registration_hook(touch)
_module.register_module_buffer_registration_hook(touch)
_module.register_module_module_registration_hook(touch)

# nn.Module attributes holding per-module containers: a result module gets its
# own copy of each (hooks registered on a result never reach its source).
_CONTAINER_ATTRS = (
    "_parameters",
    "_buffers",
    "_non_persistent_buffers_set",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


class Layout:
    """The structure of a particle, shared by the particles derived from it.

    ``children``: (parent, name, child or -1) module links; ``param_slots`` and
    ``buffer_slots``: (module, name, index) places of each unique tensor (tied
    parameters have several slots); ``view_spec``: (group, offset, shape) of
    each parameter in the flats; ``groups``: (device, dtype, numel) per flat;
    ``pool``: recently freed result flats per group, reused by out-of-place ops;
    ``key_templates``: per module, (its parameter names with None values,
    the structure version they were read at), the template lazy results clone
    their ``_parameters`` keys from (csrc/lazy_params.cpp); ``names``: the
    qualified parameter names (:meth:`param_names`).
    """

    __slots__ = (
        "children",
        "param_slots",
        "buffer_slots",
        "view_spec",
        "groups",
        "param_sig",
        "pool",
        "key_templates",
        "names",
        "__weakref__",
    )

    def __init__(self, children, param_slots, buffer_slots, view_spec, groups) -> None:
        self.children = children
        self.param_slots = param_slots
        self.buffer_slots = buffer_slots
        self.view_spec = view_spec
        self.groups = groups
        self.param_sig = (groups, view_spec)
        self.pool: List[List[torch.Tensor]] = [[] for _ in groups]
        # per module: (its parameter names with None values, version), filled by C
        self.key_templates: List[Optional[Tuple[dict, int]]] = []
        self.names: Optional[Tuple[str, ...]] = None  # see param_names

    def param_names(self) -> Tuple[str, ...]:
        """The qualified name of each unique parameter, in layout order (as
        ``named_parameters()`` gives them)."""
        if self.names is None:
            subs: Dict[int, List[Tuple[str, int]]] = {}
            for parent, name, child in self.children:
                subs.setdefault(parent, []).append((name, child))
            prefix: Dict[int, str] = {}
            stack = [(0, "")]
            while stack:  # named_modules()'s walk: depth first, first path wins
                mi, pre = stack.pop()
                if mi in prefix:
                    continue
                prefix[mi] = pre
                stack.extend((ci, f"{pre}{name}.") for name, ci in reversed(subs.get(mi, ())) if ci >= 0)
            names: Dict[int, str] = {}
            for mi, name, j in self.param_slots:
                names.setdefault(j, prefix[mi] + name)
            self.names = tuple(names[j] for j in range(len(names)))
        return self.names


def compatible(a: State, b: State) -> bool:
    """Whether two states' flats meet element for element: the same layout,
    or equal groups, shapes and parameter names (else they meet parameter by
    parameter, after :func:`check_structure`)."""
    return a.layout is b.layout or (
        a.layout.param_sig == b.layout.param_sig and a.layout.param_names() == b.layout.param_names()
    )


def check_structure(a: State, b: State, what: str = "particle operation") -> None:
    """Raise StructureError, before anything is written, when two particles of
    one species no longer have the same parameters (names and shapes)."""
    why = structure_mismatch(a, b)
    if why is not None:
        raise StructureError(
            f"{what} between particles of different structure: {why} (a parameter was deleted, "
            "set to None, added or replaced since they were made)"
        )


def structure_mismatch(a: State, b: State) -> Optional[str]:
    """Why particles of states ``a`` and ``b`` can't meet parameter by
    parameter (a message naming the first parameter that differs), or None.
    Dtypes may differ (torch promotes); names and shapes may not."""
    na, nb = a.layout.param_names(), b.layout.param_names()
    if na != nb:
        sa, sb = set(na), set(nb)
        only = [f"{n!r} exists only on the left" for n in na if n not in sb][:1] + [
            f"{n!r} exists only on the right" for n in nb if n not in sa
        ][:1]
        if not only:
            k = next(k for k, (x, y) in enumerate(zip(na, nb)) if x != y)
            only = [f"parameter {k} is {na[k]!r} on the left and {nb[k]!r} on the right"]
        return "parameter " + " and ".join(only) if only[0][0] == "'" else only[0]
    for name, p, q in zip(na, a.params, b.params):
        if p.shape != q.shape:
            return f"parameter {name!r} has shape {list(p.shape)} on the left and {list(q.shape)} on the right"
    return None


class State:
    """One particle's view of its storage (cached on its root module).

    ``modules`` are the particle's modules other than the root (no reference
    back to the root: no cycle), ``params``/``buffers`` its unique tensors in
    layout order, ``flats`` the storage buffers, ``keys`` the packed address
    and shape of each parameter (``_C.view_keys``): they must all still hold
    for the flats to be valid.
    """

    __slots__ = ("layout", "modules", "params", "buffers", "flats", "keys", "versions", "record", "__weakref__")

    def __init__(self, layout, modules, params, buffers, flats, keys, versions, record=None) -> None:
        self.layout = layout
        self.modules = modules
        self.params = params  # None until a lazy result's Parameters are made
        self.buffers = buffers
        self.flats = flats
        self.keys = keys
        self.versions = versions
        self.record = record  # a lazy result's record (nytorch._lazy), else None


def state_of(root: nn.Module) -> State:
    """The valid storage state of the particle rooted at ``root``."""
    st = root.__dict__.get("_nyto_state")
    if st is not None and (_C.state_ok(root, st) or revalidate(root, st)):
        if st.params is None:  # a lazy result: make its Parameters now
            _C.materialize(st.record)
        return st
    st = capture(root)
    root.__dict__["_nyto_state"] = st
    return st


def revalidate(root: nn.Module, st: State) -> bool:
    """After a structure version moved: whether ``root``'s structure is still
    exactly ``st``'s (the same modules, parameters and buffers under the same
    names, in the same order; a container replaced by a plain dict is tracked
    again). If so the State records the new versions and stays; else it must
    be captured again."""
    if st.params is None:
        return False  # a lazy result whose containers were written: capture
    tree = _walk(root)
    layout = st.layout
    return (
        tree.children == layout.children
        and tree.param_slots == layout.param_slots
        and tree.buffer_slots == layout.buffer_slots
        and _same_objects(tree.modules[1:], st.modules)
        and _same_objects(tree.params, st.params)
        and _same_objects(tree.buffers, st.buffers)
        and _refresh_versions(root, st)
    )


def _same_objects(a: Sequence, b: Sequence) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _refresh_versions(root: nn.Module, st: State) -> bool:
    """Record the modules' current versions; whether the State is valid then."""
    st.versions = _C.module_versions(root, st.modules)
    return bool(_C.state_ok(root, st))


def capture(root: nn.Module) -> State:
    """Walk the module tree once, fix the layout and adopt the parameters."""
    tree = _walk(root)
    modules, children, param_slots, buffer_slots = tree.modules, tree.children, tree.param_slots, tree.buffer_slots
    params, buffers = tree.params, tree.buffers
    keys: Dict[Tuple[torch.device, torch.dtype], int] = {}
    sizes: List[int] = []
    view_spec = []
    for p in params:
        g = keys.setdefault((p.device, p.dtype), len(keys))
        if g == len(sizes):
            sizes.append(0)
        view_spec.append((g, sizes[g], tuple(p.shape)))
        sizes[g] += p.numel()
    groups = tuple((dev, dt, n) for (dev, dt), n in zip(keys, sizes))
    spec = tuple(view_spec)
    flats = [_adopt(params, spec, g, grp) for g, grp in enumerate(groups)]
    old = root.__dict__.get("_nyto_state")
    layout = None
    if (
        old is not None
        and old.layout.param_sig == (groups, spec)
        and old.layout.children == children
        and old.layout.param_slots == param_slots
        and old.layout.buffer_slots == buffer_slots
    ):
        layout = old.layout  # same structure: keep the shared layout (and its pool)
    if layout is None:
        layout = Layout(children, param_slots, buffer_slots, spec, groups)
    return State(
        layout,
        tuple(modules[1:]),
        tuple(params),
        tuple(buffers),
        flats,
        _C.view_keys(params),
        _C.module_versions(root, tuple(modules[1:])),
    )


class Tree(NamedTuple):
    """A particle's module tree as a Layout records it (see :func:`_walk`)."""

    modules: List[nn.Module]  # root first, in root.modules() order
    children: Tuple[Tuple[int, str, int], ...]
    param_slots: Tuple[Tuple[int, str, int], ...]
    buffer_slots: Tuple[Tuple[int, str, int], ...]
    params: List[torch.Tensor]  # unique, in slot order
    buffers: List[torch.Tensor]


def _walk(root: nn.Module) -> Tree:
    """The module tree under ``root``, every module given tracked containers
    (from now on every change of them moves its version)."""
    modules: List[nn.Module] = []
    index: Dict[int, int] = {}
    for m in root.modules():
        track(m)
        index[id(m)] = len(modules)
        modules.append(m)
    children, param_slots, buffer_slots = [], [], []
    params: List[torch.Tensor] = []
    buffers: List[torch.Tensor] = []
    pids: Dict[int, int] = {}
    bids: Dict[int, int] = {}
    for mi, m in enumerate(modules):
        for name, child in m._modules.items():
            children.append((mi, name, -1 if child is None else index[id(child)]))
        for name, p in m._parameters.items():
            if p is not None:
                param_slots.append((mi, name, _unique(p, pids, params)))
        for name, b in m._buffers.items():
            if b is not None:
                buffer_slots.append((mi, name, _unique(b, bids, buffers)))
    return Tree(modules, tuple(children), tuple(param_slots), tuple(buffer_slots), params, buffers)


def _unique(t: torch.Tensor, ids: Dict[int, int], out: List[torch.Tensor]) -> int:
    j = ids.get(id(t))
    if j is None:
        j = ids[id(t)] = len(out)
        out.append(t)
    return j


def _adopt(params: Sequence[torch.Tensor], view_spec, g: int, group) -> torch.Tensor:
    """The flat buffer of group ``g``: the parameters' own storage when they
    already tile it in layout order, else a new buffer they are moved into."""
    device, dtype, numel = group
    members = [(p, spec) for p, spec in zip(params, view_spec) if spec[0] == g]
    flat = _tiled(members, device, dtype, numel)
    if flat is None:
        flat = torch.empty(numel, dtype=dtype, device=device)
        with torch.no_grad():
            for p, (_, off, shape) in members:
                view = flat[off : off + p.numel()].view(shape)
                view.copy_(p)
                p.data = view
    # In-place ops write the flat: let autograd see them on every parameter.
    _C.share_versions([p for p, _ in members], flat)
    return flat


def _tiled(members, device, dtype, numel) -> Optional[torch.Tensor]:
    base = 0
    storage = None
    for p, (_, off, _) in members:
        if p.numel() == 0:
            continue
        if not p.is_contiguous():
            return None
        if storage is None:
            storage = p.untyped_storage()
            base = p.storage_offset() - off
            if base < 0:
                return None
        elif p.untyped_storage().data_ptr() != storage.data_ptr() or p.storage_offset() != base + off:
            return None
    if storage is None:  # only empty parameters
        return None
    itemsize = torch.empty((), dtype=dtype).element_size()
    if storage.nbytes() < (base + numel) * itemsize:
        return None
    return torch.empty(0, dtype=dtype, device=device).set_(storage, base, (numel,), (1,))


def build(
    root: nn.Module,
    st: State,
    params: Sequence[torch.Tensor],
    flats: Optional[List[torch.Tensor]] = None,
    keys=None,
    species=None,
) -> nn.Module:
    """A new particle shaped like ``root`` holding ``params``.

    Every module is a new instance of its class whose attributes are a
    shallow copy of the source's (like ``copy.copy``), with its own hook
    dicts, children, the given parameters and copies of the buffers. When
    ``flats`` are given, ``params`` view them and the result's storage state
    is set directly.
    """
    layout = st.layout
    buffers = _C.apply(COPY, False, (st.buffers,), ()) if st.buffers else ()
    new = _C.build_modules(
        (root,) + st.modules,
        _CONTAINER_ATTRS,
        layout.children,
        layout.param_slots,
        params,
        layout.buffer_slots,
        buffers,
    )
    if species is not None:
        for m in new:
            if "_nyto_species" in m.__dict__:
                m.__dict__["_nyto_species"] = species()
    out = new[0]
    if flats is not None:
        modules = tuple(new[1:])
        out.__dict__["_nyto_state"] = State(
            layout, modules, tuple(params), tuple(buffers), flats, keys, _C.module_versions(out, modules)
        )
    return out
