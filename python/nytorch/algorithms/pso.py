"""Particle swarm optimization on a :class:`nytorch.Swarm`.

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import PSO
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.zeros(5))
>>> _ = torch.manual_seed(0)
>>> swarm = nyto.Swarm(Point(), 32, init="randn") * 3
>>> pso = PSO(swarm, seed=0)
>>> hist = pso.run(lambda s: s.dot(s), 150, progress_bar=False)   # sphere
>>> pso.best_fitness < 1e-3
True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .. import _checks, ops
from ..particle import NytoModule
from ..swarm import Swarm
from ._base import SwarmOptimizer
from ._graph import diversity as _graph_diversity
from ._graph import graph_mode

try:  # the functions of nytorch.fuse (nytorch._fuse.api)
    from .._fuse import api as _fuse
except ImportError:  # pragma: no cover - nytorch.fuse not built
    _fuse = None  # type: ignore[assignment]

Schedule = Union[float, Callable[[int], float]]


def _pso_step(x, v, p, g, w, c1, c2):
    """The PSO update as a fused program (x, v, pbest, neighbourhood best)."""
    rand_like = _fuse.rand_like
    v = w * v + c1 * rand_like(x) * (p - x) + c2 * rand_like(x) * (g - x)
    return x + v, v


def _pso_step_clamped(x, v, p, g, w, c1, c2, lo, hi):
    clamp, rand_like = _fuse.clamp, _fuse.rand_like
    v = clamp(w * v + c1 * rand_like(x) * (p - x) + c2 * rand_like(x) * (g - x), lo, hi)
    return x + v, v


def _pso_step_new_best(x, v, g, w, c1, c2):
    """The update of a particle whose position is its new personal best
    (``p == x``: the cognitive term is 0), which also writes ``p = x``.
    Bitwise ``_pso_step`` with ``p = x`` for finite values: stream 0 (r1) is
    left undrawn, r2 keeps its stream (1), ``w*v + 0 + t == w*v + t``."""
    rand_like = _fuse.rand_like
    rand_like(x)  # r1: numbered (stream 0), never drawn
    v = w * v + c2 * rand_like(x) * (g - x)
    return x + v, v, x


def _pso_step_new_best_clamped(x, v, g, w, c1, c2, lo, hi):
    clamp, rand_like = _fuse.clamp, _fuse.rand_like
    rand_like(x)
    v = clamp(w * v + c2 * rand_like(x) * (g - x), lo, hi)
    return x + v, v, x


_PROGRAMS: Dict[Tuple[bool, bool], Any] = {}
_STEPS: Dict[Tuple[bool, bool], Tuple[Callable[..., Any], str]] = {
    (False, False): (_pso_step, "ppppnnn"),
    (True, False): (_pso_step_clamped, "ppppnnnnn"),
    (False, True): (_pso_step_new_best, "pppnnn"),
    (True, True): (_pso_step_new_best_clamped, "pppnnnnn"),
}


def _program(clamped: bool, new_best: bool = False):
    """The fused update (``new_best``: for particles at their new personal best)."""
    prog = _PROGRAMS.get((clamped, new_best))
    if prog is None:
        if _fuse is None:
            raise RuntimeError("PSO(backend='fuse') needs nytorch.fuse; use backend='ops'")
        prog = _PROGRAMS[clamped, new_best] = _fuse.program(*_STEPS[clamped, new_best])
    return prog


_WORKS: Dict[Any, bool] = {}
_FUSE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _fuse_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused PSO program runs on this device and dtype.

    The CPU kernels are always built: on the CPU (for fuse's dtypes) the answer
    is yes without a probe, so a broken fused step raises there instead of
    falling back. Elsewhere the program is run once on a small buffer (probed
    once per device and dtype); only "no kernel" (nytorch built without CUDA,
    a CUDA build without kernels for this GPU or dtype, a device fuse has no
    kernels for) makes ``backend="auto"`` fall back to ``"ops"``; any other
    error is raised.
    """
    device = torch.device(device)
    if _fuse is None or dtype not in _FUSE_DTYPES:
        return False
    if device.type == "cpu":
        return True
    key = (str(device), dtype)
    ok = _WORKS.get(key)
    if ok is None:
        try:
            t = torch.zeros(2, 4, device=device, dtype=dtype)
            _fuse.run_flat(_program(True), [[t]] * 4, [0.5, 1.0, 1.0, -1.0, 1.0], out=[[t], [t.clone()]], seed=0)
            ok = True
        except RuntimeError as e:  # not built for this device / dtype: the ops backend
            if "no kernel" not in str(e) and "no CUDA kernel" not in str(e):
                raise
            ok = False
        _WORKS[key] = ok
    return ok


def run_flat(prog, inputs, numbers, *, out, seed):
    _fuse.run_flat(prog, inputs, numbers, out=out, seed=seed)


def _value(s: Schedule, step: int) -> float:
    return float(s(step)) if callable(s) else float(s)


class PSO(SwarmOptimizer):
    """Particle swarm optimization (minimizes fitness unless ``maximize``).

    Per step, for every particle i and element d (``r1``, ``r2`` uniform in [0, 1)):

        v = w*v + c1*r1*(pbest_i - x) + c2*r2*(best of i's neighbourhood - x)
        v = clamp(v, -vmax, vmax);  x = x + v

    ``inertia`` (w), ``cognitive`` (c1), ``social`` (c2): numbers or functions of
    the step. ``topology``: ``"global"`` (every particle follows the swarm's best)
    or ``"ring"`` (the best of the ``neighbors`` particles on each side).
    ``velocity_scale``: initial velocities N(0, scale^2) (0: start at rest).
    ``seed`` / ``generator``: the optimizer's own random stream (saved in
    ``state_dict``, so a resumed run is bitwise the same).

    The swarm is updated in place: ``ask()`` returns it, ``tell(fitness)``
    (a [N] tensor for the positions ``ask`` returned) moves it.

    ``backend``: ``"auto"`` (default) picks ``"fuse"`` where nytorch.fuse runs
    on the swarm's devices and dtypes, else ``"ops"``. ``"fuse"``: velocity, clamp and position update in
    ONE pass of :mod:`nytorch.fuse` over the stacked buffers, random numbers
    generated in the kernel (Philox, seeded per step from the optimizer's
    generator). Global topology on the CPU: two ``nytorch.fuse.run_rows``
    calls that read the global-best row against every row, one over the
    particles at a new personal best (the call writes ``pbest = x`` and
    draws no r1: their cognitive term is 0), one over the others; bitwise
    the single-pass update. Otherwise the neighbourhood best is read from a
    ``[N, numel]`` buffer kept up to date row by row (only rows whose best
    changed are copied).
    ``"ops"``: ``nytorch.ops.uniform_`` for r1, r2, the fused
    ``nytorch.ops.pso_velocity_`` over row views (bests passed as views, no
    copies), then clamp and ``x += v``: four passes.

    ``cuda_graph=True`` (CUDA, ``backend="fuse"``, constant ``inertia``,
    ``cognitive``, ``social``): ``step``/``run`` replay one CUDA graph per
    step (fitness, bests, the fused update, the records), with the random
    numbers drawn from a device random state; ``tell`` runs the same update
    eagerly. See ``nytorch.algorithms._graph`` and docs/swarm.md.
    ``cuda_graph="eager"``: that step without a graph, on any device.
    """

    def __init__(
        self,
        swarm: Swarm,
        *,
        inertia: Schedule = 0.7298,
        cognitive: Schedule = 1.49618,
        social: Schedule = 1.49618,
        vmax: Optional[float] = None,
        topology: str = "global",
        neighbors: int = 1,
        velocity_scale: float = 0.0,
        maximize: bool = False,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        track_diversity: bool = True,
        backend: str = "auto",
        cuda_graph: Union[bool, str] = False,
    ) -> None:
        if not isinstance(swarm, Swarm):
            raise TypeError(f"PSO: swarm must be a nytorch.Swarm, got {type(swarm).__name__}")
        if topology not in ("global", "ring"):
            raise ValueError(f"PSO: topology must be 'global' or 'ring', got {topology!r}")
        if len(swarm) == 0:
            raise ValueError("PSO: the swarm is empty; PSO needs at least one particle")
        for name, sched in (("inertia", inertia), ("cognitive", cognitive), ("social", social)):
            _checks.schedule(sched, "PSO", name)
        neighbors = _checks.integer(neighbors, "PSO", "neighbors", minimum=1)
        if vmax is not None:
            _checks.real(vmax, "PSO", "vmax")
        if _checks.real(velocity_scale, "PSO", "velocity_scale") < 0:
            raise ValueError(f"PSO: velocity_scale must be >= 0, got {velocity_scale}")
        self._setup(maximize=maximize, track_diversity=track_diversity, seed=seed, generator=generator)
        if backend not in ("auto", "fuse", "ops"):
            raise ValueError(f"PSO: backend must be 'auto', 'fuse' or 'ops', got {backend!r}")
        if vmax is not None and not vmax > 0:
            raise ValueError("PSO: vmax must be positive")
        if any(not f.is_contiguous() for f in swarm.flats):
            raise ValueError("PSO: the swarm's flats must be contiguous (use swarm.clone())")
        self.swarm = swarm
        self.inertia, self.cognitive, self.social = inertia, cognitive, social
        self.vmax = vmax
        self.topology = topology
        self.neighbors = neighbors
        dev = swarm.flats[0].device if swarm.flats else torch.device("cpu")
        self.device = dev
        if generator is None:
            generator = self._new_generator(seed, dev)
        self.generator = generator
        if backend == "auto":
            backend = "fuse" if all(_fuse_works(f.device, f.dtype) for f in swarm.flats) else "ops"
        self.backend = backend
        self.seed_generator = self._seed_generator_from(generator, dev)  # the fused kernel's Philox seeds
        n = len(swarm)
        self.velocity = [torch.zeros_like(f) for f in swarm.flats]
        if velocity_scale:
            ops.normal_(self.velocity, 0.0, float(velocity_scale), generator=generator)
        self.pbest = [f.clone() for f in swarm.flats]
        self.pbest_fitness = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        self.gbest = [f[0].clone() for f in swarm.flats]
        self.gbest_fitness = torch.full((), float("inf"), dtype=torch.float64, device=dev)
        self._r = [[torch.empty_like(f) for f in swarm.flats] for _ in range(2)] if backend == "ops" else None
        self._rows_cache: Optional[List] = None
        if cuda_graph not in (False, None) and any(callable(x) for x in (inertia, cognitive, social)):
            raise ValueError(
                "PSO(cuda_graph=...): inertia, cognitive and social must be numbers (a graph replays the "
                "numbers it captured); use cuda_graph=False for schedules"
            )
        self._graph = graph_mode(self, cuda_graph, dev, fused=backend == "fuse")
        # fuse, global topology, CPU: the global best row is read by every row
        # (nytorch.fuse.run_rows) and new personal bests are written by the move;
        # not for a subclass with its own _update_bests / _move (ShardedPSO)
        self._by_rows = (
            backend == "fuse"
            and topology == "global"
            and self._graph is None
            and all(f.device.type == "cpu" for f in swarm.flats)
            and type(self)._update_bests is PSO._update_bests
            and type(self)._move is PSO._move
        )
        # else (fuse): each particle's neighbourhood best, one row per particle
        self._best_rows = (
            [torch.empty_like(f) for f in swarm.flats] if backend == "fuse" and not self._by_rows else None
        )
        self._row_src = torch.full((n,), -1, dtype=torch.long, device=dev)  # pbest row each best row holds
        if self._graph is not None:  # the kernels' random state: read and advanced on the device
            self._rng_state = _fuse.random_state(int(torch.randint(0, 2**62, (), generator=self.seed_generator)), dev)
            self._state_keys = PSO._state_keys + ("rng_state",)

    # -- results ----------------------------------------------------------------
    _saves_best_fitness = False  # the global best's fitness is gbest_fitness (a device tensor: no sync per step)
    generator: torch.Generator  # always one (SwarmOptimizer's may be None)

    def _best_value(self) -> float:
        return float(self.gbest_fitness)

    @property
    def best(self) -> NytoModule:
        """A new particle holding the best position seen so far."""
        p = self.swarm.template.clone()
        from ..storage import flat_storage

        with torch.no_grad():
            for dst, src in zip(flat_storage(p).flats, self.gbest):
                dst.copy_(src)
        return p

    # -- ask / tell ---------------------------------------------------------------
    def ask(self) -> Swarm:
        """The positions to evaluate next (the swarm itself)."""
        return self.swarm

    def tell(self, fitness: Any) -> None:
        """Update personal/neighbourhood bests with ``fitness`` of the current
        positions, then velocities and positions."""
        if self._graph is not None:
            return self._graph.tell(fitness)
        f = self._fitness(fitness, len(self.swarm))
        step = self.steps_done
        w, c1, c2 = _value(self.inertia, step), _value(self.cognitive, step), _value(self.social, step)
        if self._by_rows:
            self._tell_by_rows(f, w, c1, c2)
        else:
            self._update_bests(f)
            self._move(w, c1, c2)
        self._end_step(f, self.swarm)

    def _tell_by_rows(self, f: torch.Tensor, w: float, c1: float, c2: float) -> None:
        """Bests and move in two fused calls over row subsets (CPU, global
        topology): particles at a new personal best (p = x, written by the
        call, no r1 drawn) and the others; every row reads the global best
        row. Bitwise the update of ``_update_bests`` + ``_move``."""
        pf = self.pbest_fitness
        improved = f < pf
        torch.where(improved, f, pf, out=pf)
        i = int(torch.argmin(pf))
        best = float(pf[i])
        if best < float(self.gbest_fitness):
            for g, src in zip(self.gbest, self.swarm.flats if bool(improved[i]) else self.pbest):
                g.copy_(src[i])
            self.gbest_fitness = pf[i].clone()
        seed = int(torch.randint(0, 2**62, (), generator=self.seed_generator))
        clamp = [] if self.vmax is None else [-self.vmax, self.vmax]
        flats, clamped = self.swarm.flats, self.vmax is not None
        at_best = improved.nonzero()[:, 0]  # rows as an int64 tensor (no Python list per step)
        n_best, n = at_best.numel(), len(self.swarm)
        if n_best:
            _fuse.run_rows(
                _program(clamped, True),
                [flats, self.velocity, self.gbest],
                [w, c1, c2, *clamp],
                out=[flats, self.velocity, self.pbest],
                seed=seed,
                rows=at_best,
            )
        if n_best < n:
            _fuse.run_rows(
                _program(clamped),
                [flats, self.velocity, self.pbest, self.gbest],
                [w, c1, c2, *clamp],
                out=[flats, self.velocity],
                seed=seed,
                rows=improved.logical_not().nonzero()[:, 0] if n_best else None,
            )

    def _update_bests(self, f: torch.Tensor) -> None:
        improved = f < self.pbest_fitness
        idx = improved.nonzero().squeeze(1)
        if idx.numel():
            for p, x in zip(self.pbest, self.swarm.flats):
                p.index_copy_(0, idx, x.index_select(0, idx))
            self.pbest_fitness = torch.where(improved, f, self.pbest_fitness)
        i = torch.argmin(self.pbest_fitness)
        better = self.pbest_fitness[i] < self.gbest_fitness
        for g, p in zip(self.gbest, self.pbest):
            torch.where(better, p[i], g, out=g)
        self.gbest_fitness = torch.where(better, self.pbest_fitness[i], self.gbest_fitness)
        if self._best_rows is not None:
            self._refresh_best_rows(improved)

    def _graph_tell(self, f: torch.Tensor):
        """The graph mode's update: bests, neighbourhood-best rows and the fused
        move on the device (every row rewritten, no ``nonzero``, no host sync).
        Returns (best, mean, diversity or None) as device tensors."""
        pf = self.pbest_fitness
        improved = f < pf
        for p, x in zip(self.pbest, self.swarm.flats):
            torch.where(improved[:, None], x, p, out=p)
        torch.where(improved, f, pf, out=pf)
        i = torch.argmin(pf, 0, keepdim=True)  # [1]: indexing with a 0-dim tensor would sync
        best = pf.index_select(0, i)
        better = best < self.gbest_fitness
        for g, p in zip(self.gbest, self.pbest):
            torch.where(better, p.index_select(0, i)[0], g, out=g)
        self.gbest_fitness.copy_(torch.where(better[0], best[0], self.gbest_fitness))
        src = i.expand(len(self.swarm)) if self.topology == "global" else self.neighborhood_best()
        assert self._best_rows is not None  # graph mode is fused
        for b, p in zip(self._best_rows, self.pbest):
            torch.index_select(p, 0, src, out=b)
        w, c1, c2 = float(self.inertia), float(self.cognitive), float(self.social)  # type: ignore[arg-type]
        clamp = [] if self.vmax is None else [-self.vmax, self.vmax]
        flats = self.swarm.flats
        _fuse.run_flat(
            _program(self.vmax is not None),
            [flats, self.velocity, self.pbest, self._best_rows],
            [w, c1, c2, *clamp],
            out=[flats, self.velocity],
            seed=self._rng_state,
        )
        div = _graph_diversity(flats) if self.track_diversity else None
        return self.gbest_fitness, f.mean(), div

    def _refresh_best_rows(self, improved: torch.Tensor) -> None:
        """Copy into ``_best_rows`` the rows whose neighbourhood best changed
        (another particle, or the same one with a new personal best)."""
        if self.topology == "global":
            src = torch.argmin(self.pbest_fitness).expand(len(self.swarm))
        else:
            src = self.neighborhood_best()
        changed = (src != self._row_src) | improved[src]
        rows = changed.nonzero().squeeze(1)
        assert self._best_rows is not None  # the fuse backend's
        n = rows.numel()
        if n == len(self.swarm) and self.topology == "global":  # one row everywhere: one broadcast copy
            i = int(src[0])
            for b, p in zip(self._best_rows, self.pbest):
                b.copy_(p[i].expand_as(b))
            self._row_src = src.clone()
        elif n:
            take = src.index_select(0, rows)
            for b, p in zip(self._best_rows, self.pbest):
                b.index_copy_(0, rows, p.index_select(0, take))
            self._row_src = src.clone()

    def _rows(self):
        """Row views of x, v, pbest, r1, r2 per group (built once)."""
        if self._rows_cache is None:
            self._rows_cache = [
                (list(x.unbind(0)), list(v.unbind(0)), list(p.unbind(0)), list(r1.unbind(0)), list(r2.unbind(0)))
                for x, v, p, r1, r2 in zip(self.swarm.flats, self.velocity, self.pbest, *self._r)
            ]
        return self._rows_cache

    def neighborhood_best(self) -> torch.Tensor:
        """Index of each particle's neighbourhood best (ring topology): [N]."""
        n = len(self.swarm)
        k = min(self.neighbors, (n - 1) // 2) if n > 2 else 0
        offs = torch.arange(-k, k + 1, device=self.device)
        window = (torch.arange(n, device=self.device)[:, None] + offs) % n
        j = torch.argmin(self.pbest_fitness[window], dim=1)
        return window.gather(1, j[:, None]).squeeze(1)

    def _move(self, w: float, c1: float, c2: float) -> None:
        if self.backend == "fuse":
            seed = int(torch.randint(0, 2**62, (), generator=self.seed_generator))
            flats = self.swarm.flats
            if self.vmax is None:
                run_flat(
                    _program(False),
                    [flats, self.velocity, self.pbest, self._best_rows],
                    [w, c1, c2],
                    out=[flats, self.velocity],
                    seed=seed,
                )
            else:
                run_flat(
                    _program(True),
                    [flats, self.velocity, self.pbest, self._best_rows],
                    [w, c1, c2, -self.vmax, self.vmax],
                    out=[flats, self.velocity],
                    seed=seed,
                )
            return
        assert self._r is not None  # the ops backend's
        ops.uniform_(self._r[0] + self._r[1], generator=self.generator)
        rows = self._rows()
        if self.topology == "ring":
            nb = self.neighborhood_best().tolist()
        for g, (xr, vr, pr, r1r, r2r) in enumerate(rows):
            if self.topology == "global":
                best = [self.gbest[g]] * len(xr)
            else:
                best = [pr[j] for j in nb]
            ops.pso_velocity_(vr, xr, pr, best, r1r, r2r, w, c1, c2)
        if self.vmax is not None:
            for v in self.velocity:
                v.clamp_(-self.vmax, self.vmax)
        ops.add_(self.swarm.flats, self.velocity)

    # -- checkpoints (the common keys: SwarmOptimizer.state_dict) --------------------
    _state_keys: Tuple[str, ...] = ("swarm", "velocity", "pbest", "pbest_fitness", "gbest", "gbest_fitness")

    def _own_state(self) -> Dict[str, Any]:
        """Positions, velocities, personal/global bests."""
        return {
            "swarm": {
                k: [t.clone() for t in v] if isinstance(v, list) else v for k, v in self.swarm.state_dict().items()
            },
            "velocity": [t.clone() for t in self.velocity],
            "pbest": [t.clone() for t in self.pbest],
            "pbest_fitness": self.pbest_fitness.clone(),
            "gbest": [t.clone() for t in self.gbest],
            "gbest_fitness": self.gbest_fitness.clone(),
            **({"rng_state": self._rng_state.clone()} if self._graph is not None else {}),
        }

    def _load_own_state(self, state: Dict[str, Any], where: str) -> None:
        for name in ("velocity", "pbest", "gbest"):
            mine, theirs = getattr(self, name), state[name]
            if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
                raise ValueError(f"{where}: {name} has other shapes than this optimizer's")
        self.swarm.load_state_dict(state["swarm"])
        with torch.no_grad():
            for name in ("velocity", "pbest", "gbest"):
                for a, b in zip(getattr(self, name), state[name]):
                    a.copy_(b)
        self.pbest_fitness = state["pbest_fitness"].to(self.device).clone()
        self.gbest_fitness = state["gbest_fitness"].to(self.device).clone()
        if self._graph is not None:
            self._rng_state.copy_(state["rng_state"])
        if self._best_rows is not None:  # derived state: rebuild it from the personal bests
            self._row_src.fill_(-1)
            self._refresh_best_rows(torch.zeros(len(self.swarm), dtype=torch.bool, device=self.device))
