"""The core of :class:`nytorch.Swarm`: stacked storage, construction, rows,
particles, indexing, copies and checkpoints (``SwarmCore``).

``nytorch.swarm.Swarm`` is ``SwarmCore`` extended by
:mod:`nytorch.swarm.arithmetic`, :mod:`nytorch.swarm.forward` and
:mod:`nytorch.swarm.fused`, assembled in ``nytorch/swarm/__init__.py``;
nothing here imports them (a result of ``type(self)`` is a whole swarm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Union, cast

import torch
from torch import nn

from .. import _C, _checks, ops
from .. import _storage as S
from .._storage import state_of
from ..errors import SpeciesError, StructureError
from ..particle import NytoModule, Species, _same_species

if TYPE_CHECKING:
    from typing_extensions import Self

Init = Union[str, Callable[[int], nn.Module], None]
Index = Union[int, slice, torch.Tensor, Sequence[int]]


def check_species(swarm: SwarmCore, other: Any) -> None:
    """Raise SpeciesError unless ``other`` (a swarm or a particle) is of ``swarm``'s species."""
    species = other.species if isinstance(other, SwarmCore) else other._nyto_species
    if species is not swarm.species:
        raise SpeciesError(
            f"swarm operation between different species: {swarm!r} and {type(other).__name__} "
            f"({species!r}); copy values across species with load_state_dict()"
        )


_INITS = ("clone", "randn", "rand", "perturb", "zeros", None)


class SwarmCore:
    """Stacked storage of N particles of one species (see :class:`nytorch.Swarm`)."""

    def __init__(
        self,
        net: NytoModule,
        n: int,
        init: Init = "clone",
        *,
        scale: float = 1.0,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if not isinstance(net, NytoModule):
            raise TypeError(f"Swarm(net, n): net must be a nytorch.NytoModule, got {type(net).__name__}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"Swarm(net, n): n must be a non-negative int, got {n!r}")
        if not (init is None or callable(init) or (isinstance(init, str) and init in _INITS)):
            raise ValueError(
                f"Swarm: unknown init {init!r}; use 'clone', 'randn', 'rand', 'perturb', "
                "'zeros', None or a callable i -> module"
            )
        scale = _checks.real(scale, "SwarmCore", "scale")
        _checks.generator(generator, "SwarmCore")
        template = net.clone()
        st = state_of(template)
        if not st.layout.groups:
            raise ValueError(f"Swarm(net, n): {type(net).__name__} has no parameters (nothing to stack)")
        flats = [torch.empty((n, numel), dtype=dt, device=dev) for dev, dt, numel in st.layout.groups]
        buffers = [b.detach().unsqueeze(0).repeat((n,) + (1,) * b.dim()) for b in st.buffers]
        self._setup(template, flats, buffers)
        self._initialize(init, scale, generator)

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_flats(
        cls, template: NytoModule, flats: Sequence[torch.Tensor], buffers: Optional[Sequence[torch.Tensor]] = None
    ) -> Self:
        """A swarm around the given stacked buffers (no copy).

        ``template``: a particle of the species. ``flats[g]``: ``[n, numel_g]``
        with group g's dtype and device and contiguous rows. ``buffers``: one
        ``[n, *shape]`` tensor per buffer of the template (default: copies of
        the template's).

        >>> t = Net(); f = torch.zeros(2, 8)
        >>> s = nyto.Swarm.from_flats(t, [f]); s.flats[0] is f
        True
        """
        if not isinstance(template, NytoModule):
            raise TypeError(f"Swarm.from_flats: template must be a nytorch.NytoModule, got {type(template).__name__}")
        if not isinstance(flats, (list, tuple)) or not all(isinstance(f, torch.Tensor) for f in flats):
            raise TypeError(
                "Swarm.from_flats: flats must be a list of [n, numel] tensors, one per (device, dtype) "
                f"group, got {type(flats).__name__}"
            )
        self = cls.__new__(cls)
        template = template.clone()
        st = state_of(template)
        groups = st.layout.groups
        flats = list(flats)
        if len(flats) != len(groups):
            raise ValueError(f"Swarm.from_flats: the species has {len(groups)} flat group(s), got {len(flats)}")
        n = flats[0].shape[0] if flats else 0
        for g, (f, (dev, dt, numel)) in enumerate(zip(flats, groups)):
            if f.dim() != 2 or f.shape[1] != numel or f.shape[0] != n:
                raise ValueError(f"Swarm.from_flats: flats[{g}] must have shape [{n}, {numel}], got {list(f.shape)}")
            if f.dtype != dt or f.device != dev:
                raise ValueError(f"Swarm.from_flats: flats[{g}] must be {dt} on {dev}, got {f.dtype} on {f.device}")
            if numel > 1 and f.stride(1) != 1:
                raise ValueError(f"Swarm.from_flats: flats[{g}] must have contiguous rows (stride(1) == 1)")
        if buffers is None:
            buffers = [b.detach().unsqueeze(0).repeat((n,) + (1,) * b.dim()) for b in st.buffers]
        buffers = list(buffers)
        if len(buffers) != len(st.buffers) or any(
            b.shape != (n,) + tuple(t.shape) or b.dtype != t.dtype for b, t in zip(buffers, st.buffers)
        ):
            raise ValueError(
                "Swarm.from_flats: buffers must be one [n, *shape] tensor per template buffer, "
                f"shapes {[[n] + list(t.shape) for t in st.buffers]}"
            )
        self._setup(template, flats, buffers)
        return self

    @classmethod
    def stack(cls, particles: Sequence[NytoModule]) -> Self:
        """A swarm holding copies of ``particles`` (all of one species), in order.

        >>> a = Net(); s = nyto.Swarm.stack([a, a + 1, a * 2]); len(s)
        3
        >>> torch.equal(s[1].lin.weight, (a + 1).lin.weight)
        True
        """
        if isinstance(particles, NytoModule) or not hasattr(particles, "__iter__"):
            raise TypeError(f"Swarm.stack: particles must be a sequence of particles, got {type(particles).__name__}")
        particles = list(particles)
        if not particles:
            raise ValueError("Swarm.stack: need at least one particle")
        first = particles[0]
        if not isinstance(first, NytoModule):
            raise TypeError(f"Swarm.stack: particles must be NytoModules, got {type(first).__name__}")
        for p in particles[1:]:
            if not isinstance(p, NytoModule):
                raise TypeError(f"Swarm.stack: particles must be NytoModules, got {type(p).__name__}")
            _same_species(first, p)
        out = cls(first, len(particles), init=None)
        for i, p in enumerate(particles):
            out._copy_row(i, p)
        return out

    def _setup(self, template: NytoModule, flats: List[torch.Tensor], buffers: List[torch.Tensor]) -> None:
        st = state_of(template)
        self.template = template
        self.flats = flats
        self.buffers = buffers
        self.chunk_size: Optional[int] = None
        names = {id(p): name for name, p in template.named_parameters()}
        self.param_names = [names[id(p)] for p in st.params]
        bnames = {id(b): name for name, b in template.named_buffers()}
        self.buffer_names = [bnames[id(b)] for b in st.buffers]

    def _initialize(self, init: Init, scale: float, generator: Optional[torch.Generator]) -> None:
        st = state_of(self.template)
        with torch.no_grad():
            if init is None:
                return
            if callable(init):
                for i in range(len(self)):
                    self._load_row(i, init(i))
            elif init in ("clone", "perturb"):
                for f, src in zip(self.flats, st.flats):
                    f.copy_(src.unsqueeze(0).expand_as(f))
                if init == "perturb":
                    noise = ops.normal(self.flats, 0.0, float(scale), generator=generator)
                    ops.add_(self.flats, noise)
            elif init == "randn":
                ops.normal_(self.flats, generator=generator)
            elif init == "rand":
                ops.uniform_(self.flats, generator=generator)
            elif init == "zeros":
                for f in self.flats:
                    f.zero_()
            else:
                raise ValueError(
                    f"Swarm: unknown init {init!r}; use 'clone', 'randn', 'rand', 'perturb', "
                    "'zeros', None or a callable i -> module"
                )

    def _load_row(self, i: int, module: nn.Module) -> None:
        ps = dict(module.named_parameters())
        bs = dict(module.named_buffers())
        st = state_of(self.template)
        for name, (g, off, shape), like in zip(self.param_names, st.layout.view_spec, st.params):
            p = ps.get(name)
            if p is None or tuple(p.shape) != shape:
                raise ValueError(f"Swarm init: module {i} has no parameter {name!r} of shape {list(shape)}")
            self.flats[g][i, off : off + like.numel()].copy_(p.detach().reshape(-1))
        for name, stack in zip(self.buffer_names, self.buffers):
            b = bs.get(name)
            if b is not None:
                stack[i].copy_(b.detach())

    # -- basic properties -----------------------------------------------------
    def __len__(self) -> int:
        return self.flats[0].shape[0] if self.flats else (self.buffers[0].shape[0] if self.buffers else 0)

    @property
    def n(self) -> int:
        """The number of particles."""
        return len(self)

    @property
    def species(self) -> Species:
        return cast(Species, self.template._nyto_species)

    @property
    def layout(self) -> S.Layout:
        return state_of(self.template).layout

    @property
    def groups(self):
        """``(device, dtype, numel)`` of each flat group."""
        return self.layout.groups

    @property
    def numel(self) -> int:
        """Parameters per particle."""
        return sum(g[2] for g in self.groups)

    @property
    def training(self) -> bool:
        return self.template.training

    def train(self, mode: bool = True) -> Self:
        """Train mode for the vectorized forward (BatchNorm updates per-particle stats)."""
        self.template.train(mode)
        return self

    def eval(self) -> Self:
        return self.train(False)

    def __repr__(self) -> str:
        return (
            f"Swarm({type(self.template).__name__} x {len(self)}, {self.numel:,} parameters each, "
            f"groups={[(str(d), str(t).replace('torch.', '')) for d, t, _ in self.groups]})"
        )

    # -- particles and rows ---------------------------------------------------
    def particle(self, i: Union[int, torch.Tensor]) -> NytoModule:
        """Particle ``i`` (same as ``swarm[i]``): its parameters and buffers are
        views of row ``i``, so writes go both ways."""
        n = len(self)
        if isinstance(i, torch.Tensor):
            i = int(i)
        if not -n <= i < n:
            raise IndexError(f"particle index {i} out of range for a swarm of {n}")
        i %= n
        t = self.template
        st = state_of(t)
        layout = st.layout
        rows = [f[i] for f in self.flats]
        params, keys = _C.make_params(rows, layout.view_spec, st.params)
        bufs = tuple(b[i] for b in self.buffers)
        new = _C.build_modules(
            (t,) + st.modules,
            S._CONTAINER_ATTRS,
            layout.children,
            layout.param_slots,
            params,
            layout.buffer_slots,
            bufs,
        )
        out = new[0]
        modules = tuple(new[1:])
        out.__dict__["_nyto_state"] = S.State(
            layout, modules, tuple(params), bufs, rows, keys, _C.module_versions(out, modules)
        )
        return out

    def __iter__(self) -> Iterator[NytoModule]:
        for i in range(len(self)):
            yield self.particle(i)

    def __getitem__(self, index: Index) -> Union[NytoModule, Self]:
        """``swarm[i]``: a particle viewing row i. ``swarm[a:b:c]``: a sub-swarm
        viewing those rows (no copy). ``swarm[index_tensor_or_list]``: a new swarm
        holding copies of those rows (like torch advanced indexing; see ``gather``)."""
        if isinstance(index, int) or (
            isinstance(index, torch.Tensor) and index.dim() == 0 and not index.dtype.is_floating_point
        ):
            return self.particle(index)
        if isinstance(index, slice):
            return self._new([f[index] for f in self.flats], [b[index] for b in self.buffers])
        return self.gather(index)

    def __setitem__(self, index: Index, value: Union[NytoModule, SwarmCore]) -> None:
        """Copy a particle's values into rows (broadcast), or a swarm's rows into rows."""
        if (
            isinstance(index, (int, torch.Tensor))
            and not isinstance(index, bool)
            and (not isinstance(index, torch.Tensor) or index.dim() == 0)
        ):
            n = len(self)
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"particle index {i} out of range for a swarm of {n}")
            if not isinstance(value, NytoModule):
                raise TypeError(f"swarm[i] = value: value must be a particle, got {type(value).__name__}")
            self._copy_row(i, value)
            return
        rows = self._index(index)
        self.scatter_(rows, value)

    def _copy_row(self, i: int, p: NytoModule) -> None:
        check_species(self, p)
        flats = self._particle_flats(p)
        srcs = self._particle_buffers(p, f"swarm[{i}] = particle")
        with torch.no_grad():
            for f, src in zip(self.flats, flats):
                f[i].copy_(src)
            for b, src in zip(self.buffers, srcs):
                b[i].copy_(src)

    def _index(self, index) -> torch.Tensor:
        """Row indices as a 1-D int64 tensor on the CPU, checked."""
        n = len(self)
        if isinstance(index, slice):
            return torch.arange(n)[index]
        try:
            t = torch.as_tensor(index)
        except (TypeError, ValueError, RuntimeError):
            raise IndexError(
                "row index must be an int, a slice, a 1-D integer tensor/list or a bool mask, "
                f"got {type(index).__name__}"
            ) from None
        if t.dtype == torch.bool:
            if t.shape != (n,):
                raise IndexError(f"boolean row mask must have shape [{n}], got {list(t.shape)}")
            return t.cpu().nonzero().flatten()
        if t.dtype.is_floating_point or t.dim() != 1:
            raise IndexError(f"row index must be an int, a slice, or a 1-D integer tensor/list, got {index!r}")
        t = t.cpu().long()
        if t.numel() and (t.min() < -n or t.max() >= n):
            raise IndexError(f"row index out of range for a swarm of {n}: {t.tolist()}")
        return t % max(n, 1)

    def gather(self, index: Union[torch.Tensor, Sequence[int]]) -> Self:
        """A new swarm holding copies of rows ``index`` (repeats allowed).

        >>> s = nyto.Swarm(Net(), 4, init="randn"); t = s.gather([3, 3, 0]); len(t)
        3
        >>> torch.equal(t.flats[0][0], s.flats[0][3])
        True
        """
        idx = self._index(index)
        return self._new(
            [f.index_select(0, idx.to(f.device)) for f in self.flats],
            [b.index_select(0, idx.to(b.device)) for b in self.buffers],
        )

    def scatter_(self, index: Union[torch.Tensor, Sequence[int], slice], src: Union[SwarmCore, NytoModule]) -> Self:
        """Copy ``src`` (a swarm with one row per index, or a particle for all of
        them) into rows ``index``, in place.

        >>> net = Net(); s = nyto.Swarm(net, 4, init="zeros"); _ = s.scatter_([1, 2], net + 1)
        >>> (s.flats[0].abs().sum(1) > 0).tolist()
        [False, True, True, False]
        """
        if not isinstance(src, (SwarmCore, NytoModule)):
            raise TypeError(f"scatter_: src must be a Swarm or a particle, got {type(src).__name__}")
        idx = self._index(index)
        check_species(self, src)
        if isinstance(src, SwarmCore):
            if len(src) != len(idx):
                raise ValueError(f"scatter_: {len(idx)} rows but a source swarm of {len(src)}")
            flats, bufs = src.flats, src.buffers
        elif isinstance(src, NytoModule):
            k = len(idx)
            flats = [f.unsqueeze(0).expand(k, -1) for f in self._particle_flats(src)]
            bufs = [b.unsqueeze(0).expand((k,) + tuple(b.shape)) for b in self._particle_buffers(src, "scatter_")]
        else:
            raise TypeError(f"scatter_: src must be a Swarm or a particle, got {type(src).__name__}")
        with torch.no_grad():
            for f, s in zip(self.flats, flats):
                f.index_copy_(0, idx.to(f.device), s.to(f.dtype))
            for b, s in zip(self.buffers, bufs):
                b.index_copy_(0, idx.to(b.device), s.to(b.dtype))
        return self

    def _new(self, flats: List[torch.Tensor], buffers: List[torch.Tensor]) -> Self:
        """A swarm of this species around ``flats``/``buffers`` (sharing the template)."""
        cls = type(self)
        out = cls.__new__(cls)
        out.template = self.template
        out.flats = flats
        out.buffers = buffers
        out.chunk_size = self.chunk_size
        out.param_names = self.param_names
        out.buffer_names = self.buffer_names
        return out

    def _particle_buffers(self, p: NytoModule, what: str) -> List[torch.Tensor]:
        """A particle's buffers in this swarm's order, by name, all checked
        (before anything is written)."""
        theirs = dict(p.named_buffers())
        out = []
        for name, b in zip(self.buffer_names, self.buffers):
            src = theirs.get(name)
            if src is None or src.shape != b.shape[1:]:
                why = "is missing" if src is None else f"has shape {list(src.shape)}, not {list(b.shape[1:])}"
                raise StructureError(
                    f"{what}: its buffer {name!r} {why} (a buffer was deleted, "
                    "set to None or replaced since the swarm was made)"
                )
            out.append(src)
        return out

    def _particle_flats(self, p: NytoModule) -> List[torch.Tensor]:
        """A particle's values as one 1-D tensor per group of this swarm's layout."""
        st = state_of(p)
        mine = state_of(self.template)
        layout = mine.layout
        if S.compatible(mine, st):
            return list(st.flats)
        S.check_structure(mine, st, "swarm operation")
        out = []
        for g, (dev, _, _) in enumerate(layout.groups):
            dt = self.flats[g].dtype  # a promoted swarm (bool swarm + 1) keeps the template's layout, not its dtypes
            parts = [
                q.detach().reshape(-1).to(device=dev, dtype=dt)
                for q, (gg, _, _) in zip(st.params, layout.view_spec)
                if gg == g
            ]
            out.append(torch.cat(parts) if parts else torch.empty(0, dtype=dt, device=dev))
        return out

    # -- copies ---------------------------------------------------------------
    def clone(self) -> Self:
        """A new swarm of this species with copies of the rows (contiguous)."""
        return self._new(
            [f.clone(memory_format=torch.contiguous_format) for f in self.flats], [b.clone() for b in self.buffers]
        )

    def particles(self) -> List[NytoModule]:
        """Every particle (views of the rows), as a list."""
        return list(self)

    def to_particles(self) -> List[NytoModule]:
        """Independent copies of every particle (``[p.clone() for p in swarm]``)."""
        return [p.clone() for p in self]

    def randn(self, *, generator: Optional[torch.Generator] = None) -> Self:
        """A swarm of this species with standard normal parameters (buffers copied)."""
        out = self._new(
            [torch.empty_like(f, memory_format=torch.contiguous_format) for f in self.flats],
            [b.clone() for b in self.buffers],
        )
        ops.normal_(out.flats, generator=generator)
        return out

    def rand(self, *, generator: Optional[torch.Generator] = None) -> Self:
        """A swarm of this species with parameters uniform in [0, 1)."""
        out = self._new(
            [torch.empty_like(f, memory_format=torch.contiguous_format) for f in self.flats],
            [b.clone() for b in self.buffers],
        )
        ops.uniform_(out.flats, generator=generator)
        return out

    # -- stacked views ------------------------------------------------------
    def stacked_parameters(self) -> Dict[str, torch.Tensor]:
        """``{name: [N, *shape] view}`` of every (unique) parameter, zero-copy."""
        st = state_of(self.template)
        n = len(self)
        return {
            name: self.flats[g][:, off : off + p.numel()].view((n,) + shape)
            for name, (g, off, shape), p in zip(self.param_names, st.layout.view_spec, st.params)
        }

    def stacked_buffers(self) -> Dict[str, torch.Tensor]:
        """``{name: [N, *shape]}`` of every buffer (the swarm's own tensors)."""
        return dict(zip(self.buffer_names, self.buffers))

    # -- checkpoints ----------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The swarm's values: ``{"flats": [...], "buffers": [...]}`` (tensors, not copies)."""
        return {"flats": list(self.flats), "buffers": list(self.buffers), "n": len(self)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Copy values from ``state_dict()`` output in place (shapes and dtypes
        must match; checked before anything is written)."""
        _checks.state_keys(state, "Swarm.load_state_dict", ("flats", "buffers"), ("n",))
        flats, bufs = list(state["flats"]), list(state["buffers"])
        if len(flats) != len(self.flats) or len(bufs) != len(self.buffers):
            raise ValueError("Swarm.load_state_dict: the state has a different number of groups or buffers")
        for what, mine, theirs in (("flats", self.flats, flats), ("buffers", self.buffers, bufs)):
            for k, (a, b) in enumerate(zip(mine, theirs)):
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise ValueError(
                        f"Swarm.load_state_dict: {what}[{k}] is {b.dtype}{list(b.shape)}, "
                        f"expected {a.dtype}{list(a.shape)}"
                    )
        with torch.no_grad():
            for a, b in zip(self.flats + self.buffers, flats + bufs):
                a.copy_(b)


__all__ = ["SwarmCore", "check_species"]
