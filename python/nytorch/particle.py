"""``NytoModule``: a ``torch.nn.Module`` that behaves like one number.

>>> import torch, nytorch as nyto
>>> class NytoLinear(nyto.NytoModule):
...     def __init__(self, w, b):
...         super().__init__()
...         self.weight = torch.nn.Parameter(w)
...         self.bias = torch.nn.Parameter(b)
...     def forward(self, x):
...         return self.weight * x + self.bias
>>> net = NytoLinear(torch.tensor([2.]), torch.tensor([1.]))
>>> (net + 10).weight.data, (2 ** net).bias.data
(tensor([12.]), tensor([2.]))
>>> net += 0.5 * (net.clone() - net); net.weight.data
tensor([2.])
"""

from __future__ import annotations

import copy
import math
import numbers
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Union, cast

import torch
from torch import nn

from . import _C, ops
from . import _storage as S
from ._storage import build, state_of
from .errors import SpeciesError

Number = Union[int, float, bool]
Operand = Union["NytoModule", Number, torch.Tensor]  # what particle arithmetic takes

if TYPE_CHECKING:
    from typing_extensions import Self


class Species:
    """Identity of a family of particles: those derived from one constructor
    call by particle operations. Only particles of one species may meet."""

    __slots__ = ("__weakref__",)

    def __repr__(self) -> str:
        return f"<nytorch.Species at {id(self):#x}>"

    def __deepcopy__(self, memo) -> Species:  # a deep copy stays in the species
        return self

    def __copy__(self) -> Species:
        return self


def _number(x: Any) -> Optional[Number]:
    """``x`` as a Python number, or None when it is not a real number.

    Like torch parses a number: a numpy bool is a float (``int_tensor +
    np.True_`` is float32). A 0-dim tensor without a readable value (on the
    meta device, a fake tensor) raises TypeError.
    """
    t = type(x)
    if t is float or t is int or t is bool:
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() == 0 and not x.is_complex():
            try:
                return x.item()
            except RuntimeError as e:
                raise TypeError(
                    "expected a number (int, float, bool, a real 0-dim tensor with a value, or a numpy "
                    f"scalar), got a 0-dim tensor on {x.device} whose value can't be read: {e}"
                ) from None
        return None
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.bool_):
        return float(x)
    return None


def _tensor_promotes(st: S.State, t: torch.Tensor, s: Number) -> bool:
    """Whether 0-dim tensor ``t`` gives some group of state ``st`` another
    result dtype than its value ``s`` would (torch's category rule)."""
    groups = st.layout.groups
    kinds = {(groups[g][1], len(shape) == 0) for g, _, shape in st.layout.view_spec}
    # a 0-dim parameter meets the 0-dim tensor as an equal (plain promotion)
    return any(
        torch.result_type(probe, t) != torch.result_type(probe, s)
        for probe in (torch.empty(() if zero_dim else 0, dtype=dt) for dt, zero_dim in kinds)
    )


# Particle-with-number ops as torch functions of (parameter, 0-dim tensor).
_TENSOR_NUMBER_OPS: Dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    S.ADD_S: torch.add,
    S.SUB_S: torch.sub,
    S.MUL_S: torch.mul,
    S.DIV_S: torch.div,
    S.POW_S: torch.pow,
    S.RSUB_S: lambda p, t: torch.sub(t, p),
    S.RDIV_S: lambda p, t: torch.div(t, p),
    S.RPOW_S: lambda p, t: torch.pow(t, p),
    ops.OP_CODE["hypot_scalar"]: torch.hypot,
}


def _views_larger_storage(p: torch.Tensor) -> bool:
    return p.untyped_storage().nbytes() > p.numel() * p.element_size()


def _same_species(a: NytoModule, b: NytoModule) -> None:
    if a._nyto_species is not b._nyto_species:
        raise SpeciesError(
            f"particle operation between different species: {type(a).__name__} "
            f"({a._nyto_species!r}) and {type(b).__name__} ({b._nyto_species!r}); "
            "copy values across species with load_state_dict() or clone_from()"
        )


class NytoModule(nn.Module):
    """Base class of particles: subclass it like ``torch.nn.Module``.

    Every constructor call starts a new species. Arithmetic with numbers
    (int, float, bool, 0-dim tensors) and with particles of the same species
    applies to every parameter of the module and its submodules at once;
    out-of-place ops return a new particle of the same class, in-place ops
    update the parameters' values and return the same object.
    """

    # numpy scalars on the left (`np.float32(2) * net`) defer to our reflected
    # operators instead of numpy treating the particle as an object array.
    __array_ufunc__ = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["_nyto_species"] = Species()
        self.__dict__["_nyto_state"] = None

    if TYPE_CHECKING:  # what the loop at the end of this file installs, for type checkers

        def __add__(self, other: Operand) -> Self: ...
        def __radd__(self, other: Number) -> Self: ...
        def __iadd__(self, other: Operand) -> Self: ...
        def __sub__(self, other: Operand) -> Self: ...
        def __rsub__(self, other: Number) -> Self: ...
        def __isub__(self, other: Operand) -> Self: ...
        def __mul__(self, other: Operand) -> Self: ...
        def __rmul__(self, other: Number) -> Self: ...
        def __imul__(self, other: Operand) -> Self: ...
        def __truediv__(self, other: Operand) -> Self: ...
        def __rtruediv__(self, other: Number) -> Self: ...
        def __itruediv__(self, other: Operand) -> Self: ...
        def __pow__(self, other: Operand) -> Self: ...
        def __rpow__(self, other: Number) -> Self: ...
        def __ipow__(self, other: Operand) -> Self: ...
        def __neg__(self) -> Self: ...
        def __pos__(self) -> Self: ...
        def add(self, other: Operand) -> Self: ...
        def radd(self, other: Number) -> Self: ...
        def add_(self, other: Operand) -> Self: ...
        def sub(self, other: Operand) -> Self: ...
        def rsub(self, other: Number) -> Self: ...
        def sub_(self, other: Operand) -> Self: ...
        def mul(self, other: Operand) -> Self: ...
        def rmul(self, other: Number) -> Self: ...
        def mul_(self, other: Operand) -> Self: ...
        def div(self, other: Operand) -> Self: ...
        def rdiv(self, other: Number) -> Self: ...
        def div_(self, other: Operand) -> Self: ...
        def pow(self, other: Operand) -> Self: ...
        def rpow(self, other: Number) -> Self: ...
        def pow_(self, other: Operand) -> Self: ...
        def hypot(self, other: Operand) -> Self: ...
        def rhypot(self, other: Number) -> Self: ...
        def hypot_(self, other: Operand) -> Self: ...
        def neg(self) -> Self: ...
        def pos(self) -> Self: ...

    # -- results ---------------------------------------------------------
    def _from_flats(self, st: S.State, flats) -> NytoModule:
        flats = list(flats)
        groups = st.layout.groups
        if any(f.dtype != g[1] for f, g in zip(flats, groups)):
            # promoted (an int particle / 2, + 0.5): the layout's dtypes no longer
            # hold, so the result gets Parameters now and its own layout later
            tensors = [flats[g][off : off + math.prod(shape)].view(shape) for g, off, shape in st.layout.view_spec]
            return self._from_tensors(st, tensors)
        return _C.lazy_result(self, st, flats)

    def _from_tensors(self, st: S.State, tensors) -> NytoModule:
        params = [nn.Parameter(t, requires_grad=p.requires_grad) for t, p in zip(tensors, st.params)]
        return cast("NytoModule", build(self, st, params))

    def _unary(self, op: int) -> NytoModule:
        out = _C.fast_unary(self, op)
        if out is not None:
            return out
        st = state_of(self)
        return self._from_flats(st, _C.apply(op, False, (st.flats,), (), st.layout.pool))

    def _binary(self, other: Any, list_op: int, scalar_op: int) -> NytoModule:
        if isinstance(other, NytoModule):
            _same_species(self, other)
            a, b = state_of(self), state_of(other)
            if S.compatible(a, b):
                return self._from_flats(a, _C.apply(list_op, False, (a.flats, b.flats), (), a.layout.pool))
            S.check_structure(a, b)
            return self._from_tensors(a, _C.apply(list_op, False, (a.params, b.params), ()))
        return self._with_number(other, scalar_op)

    def _reflected(self, other: Any, scalar_op: int, list_name: str) -> NytoModule:
        if isinstance(other, NytoModule):
            return getattr(other, list_name)(self)
        return self._with_number(other, scalar_op)

    def _with_number(self, other: Any, scalar_op: int) -> NytoModule:
        s = _number(other)
        if s is None:
            return NotImplemented
        st = state_of(self)
        if isinstance(other, torch.Tensor) and _tensor_promotes(st, other, s):
            # torch's rule for a 0-dim tensor of a higher category (an int particle
            # + a float64 0-dim tensor is float64, not the default float dtype)
            fn = _TENSOR_NUMBER_OPS[scalar_op]
            with torch.no_grad():
                return self._from_tensors(st, [fn(p.detach(), other.detach()) for p in st.params])
        return self._from_flats(st, _C.apply(scalar_op, False, (st.flats,), (s,), st.layout.pool))

    def _inplace(self, other: Any, list_op: int, scalar_op: int) -> NytoModule:
        a = state_of(self)
        if isinstance(other, NytoModule):
            _same_species(self, other)
            b = state_of(other)
            if S.compatible(a, b):
                _C.apply(list_op, True, (a.flats, b.flats), ())
            else:
                S.check_structure(a, b)
                _C.apply(list_op, True, (a.params, b.params), ())
        else:
            s = _number(other)
            if s is None:
                return NotImplemented
            _C.apply(scalar_op, True, (a.flats,), (s,))
        return self  # the flats share their version counter with the parameters

    # -- copies and random particles --------------------------------------
    def clone(self) -> NytoModule:
        """A new particle of this species with new Parameters holding equal values.

        >>> c = net.clone(); c.weight is net.weight, torch.equal(c.weight, net.weight)
        (False, True)
        """
        return self._unary(S.COPY)

    def detach(self) -> NytoModule:
        """A new particle of a NEW species whose Parameters are this particle's
        own objects (buffers are copied).

        >>> d = net.detach(); d.weight is net.weight
        True
        """
        st = state_of(self)
        return cast("NytoModule", build(self, st, st.params, st.flats, st.keys, species=Species))

    def clone_from(self, other: nn.Module) -> NytoModule:
        """A new particle of this species holding ``other``'s values (any species
        with the same state_dict keys and shapes): ``clone()`` + ``load_state_dict``.
        """
        if not isinstance(other, nn.Module):
            raise TypeError(
                f"clone_from(other): other must be an nn.Module (any species, same state_dict "
                f"keys and shapes), got {type(other).__name__}"
            )
        out = self.clone()
        out.load_state_dict(other.state_dict())
        return out

    def randn(self, *, generator: Optional[torch.Generator] = None) -> NytoModule:
        """A particle of this species with standard normal parameters (honours
        ``torch.manual_seed``).

        >>> _ = torch.manual_seed(0); r = net.randn(); r.weight.shape == net.weight.shape
        True
        """
        return self._random(0, generator)

    def rand(self, *, generator: Optional[torch.Generator] = None) -> NytoModule:
        """A particle of this species with parameters uniform in [0, 1)."""
        return self._random(1, generator)

    def _random(self, dist: int, generator: Optional[torch.Generator]) -> NytoModule:
        """dist 0: standard normal, 1: uniform in [0, 1)."""
        if generator is None:
            out = _C.fast_random(self, dist, 0.0, 1.0)  # C hot path (valid cached state)
            if out is not None:
                return out
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"{'rand' if dist else 'randn'}(generator=...): generator must be a torch.Generator "
                f"or None, got {type(generator).__name__}"
            )
        st = state_of(self)
        flats = _C.pooled_like(st.flats, st.layout.pool)
        (ops.uniform_ if dist else ops.normal_)(flats, generator=generator)
        return self._from_flats(st, flats)

    # -- nn.Module integration ---------------------------------------------
    def register_parameter(self, name: str, param: Optional[nn.Parameter]) -> None:
        _register_shadowing(self, "_parameters", name, super().register_parameter, param)

    def register_buffer(self, name: str, tensor: Optional[torch.Tensor], persistent: bool = True) -> None:
        _register_shadowing(
            self, "_buffers", name, lambda n, t: super(NytoModule, self).register_buffer(n, t, persistent), tensor
        )

    def add_module(self, name: str, module: Optional[nn.Module]) -> None:
        _register_shadowing(self, "_modules", name, super().add_module, module)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        S.touch(self)  # parameters may be new objects now (their dict writes also move versions)
        return out

    def __getstate__(self):
        # pickle / torch.save. Plain pickle does not share storages, so a
        # parameter viewing a particle's flat would write the whole flat: give
        # such parameters compact storage first (the same Parameter objects, so
        # references to them pickled alongside stay theirs; the next op
        # re-adopts them into a flat). Storage views are rebuilt on first use.
        with torch.no_grad():
            for p in self.parameters():
                if _views_larger_storage(p):
                    p.data = p.data.clone()
        d = self.__dict__.copy()
        d["_nyto_state"] = None
        return d

    def __deepcopy__(self, memo):
        # copy.deepcopy: like the default, minus the cached storage state
        # (deep-copied Parameters own compact storage), and the species is kept.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = None if key == "_nyto_state" else copy.deepcopy(value, memo)
        return new

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_nyto_state", None)
        self.__dict__.setdefault("_nyto_species", Species())


def _register_shadowing(module: nn.Module, container: str, name: str, register, value) -> None:
    """nn.Module refuses to register a name that is already an attribute; our
    named particle methods (``pos``, ``sub``, ...) must not count as one."""
    slots = module.__dict__.get(container)
    if slots is None or name not in _PARTICLE_METHOD_NAMES or name in slots:
        return register(name, value)
    slots[name] = None  # placeholder: passes nn.Module's "already exists" check
    try:
        register(name, value)
    except BaseException:
        slots.pop(name, None)
        raise


class _ParticleMethod:
    """A named particle method that yields to a parameter, buffer or submodule
    of the same name (``self.pos = nn.Parameter(...)``, ``self.sub = nn.Linear(...)``
    stay reachable as attributes). Operators look up the dunders on the type
    and never pay for this check."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self.fn
        d = obj.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            found = d.get(key)
            if found is not None and self.name in found:
                return found[self.name]
        return self.fn.__get__(obj, cls)


# The arithmetic: each operator is a dunder and a named method. Each first
# tries the C hot path (_C.fast_op: valid cached storage, same layout, plain
# number or same-species particle), which returns None whenever the general
# Python path has to decide. The dunder returns NotImplemented for an operand
# it does not take (Python then tries the reflected op); the named method
# raises TypeError there, as the operator would.
def _arith_method(name: str, list_op: Optional[int], scalar_op: int, inplace: bool, general, doc: str):
    """``method(self, other)``: the C hot path (``_C.fast_op``), else ``general``.

    Built in C (``_C.op_method``, a method descriptor: no Python frame per
    call).
    """
    return _C.op_method(name, list_op, scalar_op, inplace, general, doc)


def _unsupported(sym: str, left: Any, right: Any) -> TypeError:
    """Python's TypeError for ``left sym right``."""
    sym = "** or pow()" if sym == "**" else sym
    return TypeError(f"unsupported operand type(s) for {sym}: '{type(left).__name__}' and '{type(right).__name__}'")


def _strict(general, sym: str, reflected: bool):
    """``general``, raising the operator's TypeError instead of returning NotImplemented."""

    def strict(self, other):
        out = general(self, other)
        if out is NotImplemented:
            raise _unsupported(sym, other, self) if reflected else _unsupported(sym, self, other)
        return out

    return strict


def _arith_methods(name: str, list_op: int, scalar_op: int, rname: str, rscalar_op: int, sym: str):
    """``((dunder, named method), ...)`` of the out-of-place, reflected and in-place forms of one operator."""
    if sym.isidentifier():  # a function without an operator (hypot): named methods only
        expr, rexpr, iexpr = f"{sym}(self, other)", f"{sym}(other, self)", f"self = {sym}(self, other)"
        ex, rex, iex = f"net.{name}(2)", f"net.{rname}(2)", f"_ = net.{name}_(1)"
    else:
        expr, rexpr, iexpr = f"self {sym} other", f"other {sym} self", f"self {sym}= other"
        ex, rex, iex = f"(net {sym} 2)", f"(2 {sym} net)", f"net {sym}= 1"
    rows = (
        (
            name,
            list_op,
            scalar_op,
            False,
            lambda self, other: self._binary(other, list_op, scalar_op),
            f"``{expr}`` for every parameter: other is a particle of this "
            f"species or a number.\n\n>>> {ex}.bias.shape == net.bias.shape\nTrue\n",
            sym,
            False,
        ),
        (
            rname,
            None,
            rscalar_op,
            False,
            lambda self, other: self._reflected(other, rscalar_op, name),
            f"``{rexpr}`` for every parameter (other: a number).\n\n>>> {rex}.bias.shape == net.bias.shape\nTrue\n",
            sym,
            True,
        ),
        (
            name + "_",
            list_op,
            scalar_op,
            True,
            lambda self, other: self._inplace(other, list_op, scalar_op),
            f"``{iexpr}`` in place: same object, same Parameter objects.\n\n"
            f">>> w = net.weight; {iex}; net.weight is w\nTrue\n",
            sym if sym.isidentifier() else sym + "=",
            False,
        ),
    )
    return tuple(
        (
            _arith_method(n, lo, so, inp, general, doc),
            _arith_method(n, lo, so, inp, _strict(general, op_sym, reflected), doc),
        )
        for n, lo, so, inp, general, doc, op_sym, reflected in rows
    )


def _neg(self) -> NytoModule:
    """``-self``: a new particle with every parameter negated."""
    return self._unary(S.NEG)


def _pos(self) -> NytoModule:
    """``+self``: a new particle with equal values (like ``clone()``)."""
    return self._unary(S.COPY)


#        name     list op  scalar op  reflected name, scalar op   symbol
_ARITHMETIC = (
    ("add", S.ADD, S.ADD_S, "radd", S.ADD_S, "+"),
    ("sub", S.SUB, S.SUB_S, "rsub", S.RSUB_S, "-"),
    ("mul", S.MUL, S.MUL_S, "rmul", S.MUL_S, "*"),
    ("div", S.DIV, S.DIV_S, "rdiv", S.RDIV_S, "/"),
    ("pow", S.POW, S.POW_S, "rpow", S.RPOW_S, "**"),
    # functions without an operator: named methods only (hypot is symmetric)
    ("hypot", ops.OP_CODE["hypot"], ops.OP_CODE["hypot_scalar"], "rhypot", ops.OP_CODE["hypot_scalar"], "hypot"),
)
_DUNDER = {"add": "add", "sub": "sub", "mul": "mul", "div": "truediv", "pow": "pow"}

for _row in _ARITHMETIC:
    _d = _DUNDER.get(_row[0])
    for (_method, _named), _dunder in zip(_arith_methods(*_row), (f"__{_d}__", f"__r{_d}__", f"__i{_d}__")):
        setattr(NytoModule, _named.__name__, _ParticleMethod(_named))
        if _d is not None:
            setattr(NytoModule, _dunder, _method)
for _method, _dunder in ((_neg, "__neg__"), (_pos, "__pos__")):
    _method.__name__ = _method.__name__.lstrip("_")
    setattr(NytoModule, _method.__name__, _ParticleMethod(_method))
    setattr(NytoModule, _dunder, _method)
_PARTICLE_METHOD_NAMES = frozenset(
    name for name, value in vars(NytoModule).items() if isinstance(value, _ParticleMethod)
)
_C.register_particle_types(NytoModule, S.State, S._CONTAINER_ATTRS)
del _row, _d, _method, _named, _dunder
