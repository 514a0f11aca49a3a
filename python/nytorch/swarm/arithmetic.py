"""Arithmetic and reductions of :class:`nytorch.Swarm` (the ``SwarmArithmetic``
mix-in of the assembled class).

Operands of ``swarm op other``:

- a swarm of the same species and length: row by row;
- a particle of the species: broadcast to every row;
- a number (int, float, bool, 0-dim tensor, numpy scalar): every element;
- a 1-D tensor of length N: per-particle numbers (row i uses ``t[i]``).

Each op is one torch call per (device, dtype) group on the stacked buffers
(one pass over memory); results follow torch's rules per group. Every check
(species, length, castability of in-place results) runs before anything is
written, so bad input leaves both operands unchanged.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, List, Optional, Union

import torch

from ..particle import NytoModule, _number, _strict
from ..storage import flat_storage
from .core import SwarmCore, check_species

if TYPE_CHECKING:
    from typing_extensions import Self


def _as_index(t: torch.Tensor, name: str, n: int) -> torch.Tensor:
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(
            f"{name}: expected a [N] tensor with N = {n} (one value per particle), got shape {list(t.shape)}"
        )
    return t


def _real_vector(x: Any, name: str, n: int) -> torch.Tensor:
    """``x`` (a tensor or a list of numbers) as a [n] tensor of real numbers (not bool), checked."""
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.dtype == torch.bool or t.is_complex() or isinstance(x, str):
        raise TypeError(
            f"{name}: expected a [N] tensor or list of real numbers with N = {n} (one value per "
            f"particle), got {type(x).__name__ if t is None or isinstance(x, str) else t.dtype}"
        )
    return _as_index(t, name, n)


def _one_element(t: torch.Tensor) -> torch.Tensor:
    """A [1, 1] copy of ``t``'s first element (zero when it has none)."""
    flat = t.reshape(-1)
    return (flat[:1].clone() if flat.numel() else t.new_zeros(1)).reshape(1, 1)


class SwarmArithmetic(SwarmCore):
    """Particle arithmetic, reductions and row statistics on stacked buffers."""

    # -- operands ---------------------------------------------------------------
    def _operands(self, other: Any, what: str) -> Optional[List[Any]]:
        """``other`` as one operand per group (broadcastable against ``[N, numel]``),
        or None for an unsupported type."""
        n = len(self)
        if isinstance(other, SwarmCore):
            check_species(self, other)
            if len(other) != n:
                raise ValueError(f"swarm {what}: swarms of different lengths ({n} and {len(other)})")
            return list(other.flats)
        if isinstance(other, NytoModule):
            check_species(self, other)
            return self._particle_flats(other)
        if isinstance(other, torch.Tensor) and other.dim() >= 1:
            _as_index(other, f"swarm {what}", n)
            out = []
            for f in self.flats:
                t = other.to(f.device)
                if t.dtype.is_floating_point and f.dtype.is_floating_point:
                    t = t.to(f.dtype)  # per-particle numbers act like numbers: no promotion
                out.append(t.unsqueeze(1))
            return out
        s = _number(other)
        if s is None:
            return None
        return [s] * len(self.flats)

    def _binary(self, other: Any, fn, what: str) -> Any:
        ops_ = self._operands(other, what)
        if ops_ is None:
            return NotImplemented
        with torch.no_grad():
            flats = [fn(f, o) for f, o in zip(self.flats, ops_)]
        return self._new(flats, [b.clone() for b in self.buffers])

    def _inplace(self, other: Any, fn, what: str) -> Any:
        ops_ = self._operands(other, what)
        if ops_ is None:
            return NotImplemented
        for g, (f, o) in enumerate(zip(self.flats, ops_)):
            rt = torch.result_type(f, o)
            if what in ("/=",) and not (rt.is_floating_point or rt.is_complex):
                rt = torch.get_default_dtype()
            if not torch.can_cast(rt, f.dtype):
                raise RuntimeError(
                    f"swarm {what}: the result type {rt} can't be cast to group {g}'s dtype "
                    f"{f.dtype}; nothing was changed"
                )
        with torch.no_grad():
            # torch's own refusals (int ** -1, a bool in a subtraction) on one
            # element of every group first: no group is written before one fails
            for f, o in zip(self.flats, ops_):
                fn(_one_element(f), _one_element(o) if isinstance(o, torch.Tensor) else o)
            for f, o in zip(self.flats, ops_):
                fn(f, o)
        return self

    def __neg__(self) -> Self:
        return self._new([torch.neg(f) for f in self.flats], [b.clone() for b in self.buffers])

    def __pos__(self) -> Self:
        return self.clone()

    def neg(self) -> Self:
        """``-swarm``."""
        return -self

    # -- reductions -----------------------------------------------------------
    def _weights(self, weights, name: str) -> Optional[torch.Tensor]:
        if weights is None:
            return None
        return _real_vector(weights, name, len(self))

    def mean(self, weights: Optional[Union[torch.Tensor, List[float]]] = None) -> NytoModule:
        """The average particle (a new particle of the species); with ``weights``
        (a [N] tensor), ``sum(w_i * x_i) / sum(w_i)``. Floating buffers
        (BatchNorm statistics) are averaged alike; other buffers come from row 0.

        >>> s = nyto.Swarm(Net(), 2, init="zeros"); s[1] = s[1] + 2
        >>> s.mean().lin.bias.tolist(), s.mean(weights=torch.tensor([3., 1.])).lin.bias.tolist()
        ([1.0, 1.0], [0.5, 0.5])
        """
        n = len(self)
        if n == 0:
            raise ValueError("mean of an empty swarm")
        w = self._weights(weights, "Swarm.mean(weights)")
        if w is not None:
            total = float(w.sum())
            if total == 0:
                raise ValueError("Swarm.mean: the weights sum to 0")
        out = self.template.clone()
        st = flat_storage(out)
        with torch.no_grad():
            for src, dst in zip(self.flats, st.flats):
                if w is None:
                    torch.mean(src, 0, out=dst) if src.dtype.is_floating_point else dst.copy_(src[0])
                else:
                    ww = w.to(device=src.device, dtype=src.dtype) / total
                    dst.copy_(ww @ src)
            for src, dst in zip(self.buffers, st.buffers):
                if not src.dtype.is_floating_point:
                    dst.copy_(src[0])
                elif w is None:
                    dst.copy_(src.mean(0))
                else:
                    ww = w.to(device=src.device, dtype=src.dtype) / total
                    dst.copy_(torch.tensordot(ww, src, dims=1))
        return out

    def norm(self, p: float = 2.0) -> torch.Tensor:
        """Per-particle norm over all parameters: a [N] tensor.

        >>> s = nyto.Swarm(Net(), 3, init="zeros"); (s + 1).norm().tolist()  # 8 params: sqrt(8)
        [2.8284270763397217, 2.8284270763397217, 2.8284270763397217]
        """
        parts = [torch.linalg.vector_norm(f, p, dim=1) for f in self.flats]
        if len(parts) == 1:
            return parts[0]
        dev = parts[0].device
        stacked = torch.stack([q.to(dev, torch.float64) for q in parts])
        if p == float("inf"):
            res = stacked.max(0).values
        elif p == 0:
            res = stacked.sum(0)
        else:
            res = stacked.pow(p).sum(0).pow(1.0 / p)
        return res.to(self.flats[0].dtype)

    def dot(self, other: Union[SwarmCore, NytoModule]) -> torch.Tensor:
        """Per-particle dot product with another swarm (row by row) or a particle: [N].

        >>> s = nyto.Swarm(Net(), 2, init="zeros") + 1; s.dot(s).tolist()
        [8.0, 8.0]
        """
        if not isinstance(other, (SwarmCore, NytoModule)):
            raise TypeError(f"Swarm.dot: other must be a Swarm or a particle, got {type(other).__name__}")
        ops_ = self._operands(other, "dot")
        assert ops_ is not None  # a swarm or a particle: one operand per group
        total: Optional[torch.Tensor] = None
        for f, o in zip(self.flats, ops_):
            d = (f * o).sum(1) if o.dim() == 2 else f @ o
            total = d if total is None else total + d.to(total.device)
        assert total is not None  # a swarm has at least one group
        return total

    def _fitness(self, fitness: Any, name: str) -> torch.Tensor:
        f = _real_vector(fitness, name, len(self))
        if len(self) == 0:
            raise ValueError(f"{name}: the swarm is empty, there is no best particle")
        return f

    def argmin(self, fitness: Any) -> int:
        """Index of the smallest fitness value ([N] tensor or list)."""
        return int(torch.argmin(self._fitness(fitness, "Swarm.argmin(fitness)")))

    def argmax(self, fitness: Any) -> int:
        """Index of the largest fitness value."""
        return int(torch.argmax(self._fitness(fitness, "Swarm.argmax(fitness)")))

    def best(self, fitness: Any, *, maximize: bool = False) -> NytoModule:
        """A copy of the particle with the best fitness (smallest unless ``maximize``)."""
        i = self.argmax(fitness) if maximize else self.argmin(fitness)
        return self.particle(i).clone()

    def diversity(self) -> float:
        """Mean Euclidean distance of the particles to their centroid."""
        if len(self) == 0:
            return 0.0
        sq: Optional[torch.Tensor] = None
        for f in self.flats:
            d = (f - f.mean(0, keepdim=True)).pow(2).sum(1)
            sq = d if sq is None else sq + d.to(sq.device)
        assert sq is not None  # a swarm has at least one group
        return float(sq.sqrt().mean())


def _scalar_tensor(o: Any, f: torch.Tensor) -> Any:
    """A number on the left as a 0-dim tensor of f's floating dtype, so that
    ``s / x`` divides (torch's ``__rtruediv__`` multiplies by the reciprocal)
    and rounds like the particle kernels."""
    if isinstance(o, (torch.Tensor, bool)) or not f.dtype.is_floating_point:
        return o  # a bool stays one: torch refuses `True - x`
    return torch.tensor(o, dtype=f.dtype, device=f.device)


def _install() -> None:
    """Dunders and named methods, from one table (like particle.py's)."""
    table = (  # name, symbol, out-of-place, in-place
        ("add", "+", operator.add, operator.iadd),
        ("sub", "-", operator.sub, operator.isub),
        ("mul", "*", operator.mul, operator.imul),
        ("truediv", "/", operator.truediv, operator.itruediv),
        ("pow", "**", operator.pow, operator.ipow),
    )
    for name, sym, fwd, inp in table:

        def out_of_place(self, other, _fn=fwd, _sym=sym):
            return self._binary(other, _fn, _sym)

        def reflected(self, other, _fn=fwd, _sym=sym):
            return self._binary(other, lambda f, o: _fn(_scalar_tensor(o, f), f), _sym)

        def in_place(self, other, _fn=inp, _sym=sym + "="):
            return self._inplace(other, _fn, _sym)

        short = "div" if name == "truediv" else name
        for fn, dunder, method, op_sym, refl in (
            (out_of_place, f"__{name}__", short, sym, False),
            (reflected, f"__r{name}__", "r" + short, sym, True),
            (in_place, f"__i{name}__", short + "_", sym + "=", False),
        ):
            fn.__name__ = method
            fn.__doc__ = {
                short: f"``swarm {sym} other`` (a new swarm).",
                "r" + short: f"``other {sym} swarm`` (a new swarm).",
                short + "_": f"``swarm {sym}= other`` in place (returns the swarm).",
            }[method]
            setattr(SwarmArithmetic, dunder, fn)
            # the named method raises the operator's TypeError where the dunder returns NotImplemented
            named = _strict(fn, op_sym, refl)
            named.__name__, named.__doc__ = method, fn.__doc__
            setattr(SwarmArithmetic, method, named)


_install()
