"""Swarm optimizers on sharded swarms: :class:`ShardedPSO` and :class:`ShardedES`
(also ``nytorch.distributed.ShardedPSO`` / ``ShardedES``).

Both are the optimizers of :mod:`nytorch.algorithms` running on this rank's
rows, plus the collectives that make the step global:

- PSO: one all-gather of the fitness values (``[n]`` floats) per step gives
  every rank the personal-best fitness of every particle; the global best is
  then the same argmin as in one process, and when it improved, its owner
  broadcasts the winning particle (one broadcast per dtype group).
- ES: the population is evaluated by rows (rank r gets rows ``[lo, hi)`` of
  ``ask()``'s population), the fitness values are all-gathered, and each rank
  sums the gradient terms of its share of the noise rows; one all-reduce per
  dtype group gives the estimate, and every rank moves the same center.

Random numbers, ``rng="replicated"`` (default): every rank draws exactly its
rows of the single-process run's random numbers. PSO's fused backend makes
r1/r2 in the kernel from Philox counters: the shard passes its first element
index as the counter ``offset`` (free). PSO's ops backend steps the one torch
generator over the other rows' numbers (skipped in chunks of ``SKIP_CHUNK``
values on the CPU; drawn in full and sliced elsewhere). So a run with the
same seed follows the single-process trajectory: PSO bitwise, ES within float
rounding of the gradient sum (summed in another order). ``rng="local"``
(PSO): each rank its own stream (seed, rank): statistically the same, not
the same trajectory.

These classes override PSO's ``_update_bests``/``_move``/``_record`` and
ES's ``tell`` (the same update, with the reduce in the middle): a change to
those in ``nytorch.algorithms`` must be mirrored here; tests/test_distributed.py
compares both against the single-process runs and fails when they drift.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .. import ops
from .._fuse.api import run_flat
from ..distributed.core import (
    check_signature,
    launch,
    particle_lines,
    particle_signature,
    require_group,
    small_device,
    wait_work,
)
from ..distributed.sharded_swarm import ShardedSwarm, gather_rows, load_sharded, owner_of, save_sharded, shard_rows
from ..particle import NytoModule
from . import pso as _pso
from ._base import as_fitness
from .es import ES
from .pso import PSO

SKIP_CHUNK = 1 << 20  # values drawn per call while skipping other ranks' random numbers


def _shared_seed(seed: Optional[int], group: Optional[Any]) -> int:
    """``seed``, or one drawn on rank 0 and broadcast (every rank must agree)."""
    if seed is not None:
        return int(seed)
    t = torch.randint(2**62, (1,), dtype=torch.int64).to(small_device(group))
    src = dist.get_global_rank(group, 0) if group is not None else 0
    wait_work("seed", launch("seed", lambda: dist.broadcast(t, src, group=group, async_op=True)), None)
    return int(t.item())


def _global_rank(group: Optional[Any], rank: int) -> int:
    return dist.get_global_rank(group, rank) if group is not None else rank


def draw_rows_(
    dist_name: str,
    full_shapes: List[Tuple[int, int]],
    locals_: List[torch.Tensor],
    lo: int,
    generator: Optional[torch.Generator],
    a: float = 0.0,
    b: float = 1.0,
) -> None:
    """Fill ``locals_[k]`` (rows ``[lo, lo + len)`` of a ``[n, numel]`` tensor)
    with the numbers ``ops.uniform_/normal_`` would put there when filling
    the full tensors (one draw per (device, dtype) group, tensors in order).

    On the CPU each element takes the next number of the generator's stream,
    so other rows are skipped by drawing them into a scratch buffer; elsewhere
    the full tensor is drawn and the rows copied.
    """
    fill = {
        "uniform": lambda t: t.uniform_(a, b, generator=generator),
        "normal": lambda t: t.normal_(a, b, generator=generator),
    }[dist_name]
    order: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
    for k, t in enumerate(locals_):
        if full_shapes[k][0] * full_shapes[k][1]:
            order.setdefault((t.device, t.dtype), []).append(k)
    for (device, dtype), ks in order.items():
        if device.type != "cpu" or dist_name == "normal":
            # normal_ on the CPU fills in blocks of 16 (Box-Muller): draw in full
            fulls = [torch.empty(full_shapes[k], dtype=dtype, device=device) for k in ks]
            (ops.normal_ if dist_name == "normal" else ops.uniform_)(fulls, a, b, generator=generator)
            for k, f in zip(ks, fulls):
                locals_[k].copy_(f[lo : lo + locals_[k].shape[0]])
            continue
        scratch = torch.empty(
            min(SKIP_CHUNK, max(n * m for n, m in (full_shapes[k] for k in ks))), dtype=dtype, device=device
        )

        def skip(count: int, scratch: torch.Tensor = scratch) -> None:
            while count > 0:
                step = min(count, scratch.numel())
                fill(scratch[:step])
                count -= step

        for k in ks:
            n, numel = full_shapes[k]
            rows = locals_[k].shape[0]
            skip(lo * numel)
            if rows:
                fill(locals_[k].view(-1))
            skip((n - lo - rows) * numel)


class ShardedPSO(PSO):
    """:class:`nytorch.algorithms.PSO` on a :class:`ShardedSwarm` (global topology).

    ``ask()`` returns this rank's rows (``sharded.local``); ``tell(fitness)``
    takes their fitness (``[hi - lo]``). Every rank must call ``tell`` each
    step. ``best``, ``best_fitness``, ``gbest`` and ``history`` are global
    (the same on every rank)::

        sw = nd.ShardedSwarm(net, 64, init="randn")
        pso = nd.ShardedPSO(sw, seed=0)
        for _ in range(100):
            pso.tell(loss_of_each(pso.ask()))   # this rank's 32 particles

    Other keyword arguments are PSO's. ``rng``: see the module docs.
    """

    def __init__(
        self,
        sharded: ShardedSwarm,
        *,
        rng: str = "replicated",
        topology: str = "global",
        velocity_scale: float = 0.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        track_diversity: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(sharded, ShardedSwarm):
            raise TypeError(f"ShardedPSO: expected a nytorch.distributed.ShardedSwarm, got {type(sharded).__name__}")
        if topology != "global":
            raise ValueError("ShardedPSO: only topology='global' is sharded (ring neighbourhoods cross shard borders)")
        if rng not in ("replicated", "local"):
            raise ValueError(f"ShardedPSO: rng must be 'replicated' or 'local', got {rng!r}")
        self.sharded = sharded
        self.rng = rng
        group, rank = sharded.group, sharded.rank
        flats = sharded.local.flats
        dev = flats[0].device if flats else torch.device("cpu")
        if generator is None:
            s = _shared_seed(seed, group)
            generator = torch.Generator(device=dev)
            generator.manual_seed(s if rng == "replicated" else hash((s, rank)) & (2**63 - 1))
        local_scale = velocity_scale if rng == "local" else 0.0
        super().__init__(
            sharded.local,
            topology="global",
            velocity_scale=local_scale,
            generator=generator,
            track_diversity=False,
            **kwargs,
        )
        if velocity_scale and rng == "replicated":
            draw_rows_("normal", self._full_shapes(), self.velocity, sharded.lo, generator, 0.0, float(velocity_scale))
        self.track_sharded_diversity = track_diversity
        self._pbest_all = torch.full((sharded.n,), float("inf"), dtype=torch.float64, device=self.device)
        self._f_all: Optional[torch.Tensor] = None
        self._src = -1  # the personal best that _best_rows (fused backend) holds

    def _full_shapes(self) -> List[Tuple[int, int]]:
        return [(self.sharded.n, f.shape[1]) for f in self.swarm.flats]

    # -- the global parts of a step ---------------------------------------------
    def _update_bests(self, f: torch.Tensor) -> None:
        sh = self.sharded
        f_all = gather_rows(f, sh.n, sh.group, "ShardedPSO.tell")
        self._f_all = f_all
        improved_all = f_all < self._pbest_all
        idx = improved_all[sh.lo : sh.hi].nonzero().squeeze(1)
        if idx.numel():
            for p, x in zip(self.pbest, self.swarm.flats):
                p.index_copy_(0, idx, x.index_select(0, idx))
        self._pbest_all = torch.where(improved_all, f_all, self._pbest_all)
        self.pbest_fitness = self._pbest_all[sh.lo : sh.hi].clone()
        i = int(torch.argmin(self._pbest_all))
        better = bool(self._pbest_all[i] < self.gbest_fitness)
        # the fused backend follows pbest[argmin] row by row (PSO._refresh_best_rows)
        refresh = self._best_rows is not None and (i != self._src or bool(improved_all[i]))
        if better or refresh:
            win = self._winner(i)
            if better:
                for g, w in zip(self.gbest, win):
                    g.copy_(w)
                self.gbest_fitness = self._pbest_all[i].clone()
            if refresh:
                assert self._best_rows is not None
                for b, w in zip(self._best_rows, win):
                    b.copy_(w.expand_as(b))
                self._src = i

    def _winner(self, i: int) -> List[torch.Tensor]:
        """Personal best ``i`` on every rank: one broadcast per group from its owner."""
        sh = self.sharded
        owner = owner_of(i, sh.n, sh.world)
        win = [
            p[i - sh.lo].clone() if owner == sh.rank else torch.empty_like(g) for p, g in zip(self.pbest, self.gbest)
        ]
        src = _global_rank(sh.group, owner)
        works = [launch("ShardedPSO.tell", partial(dist.broadcast, w, src, group=sh.group, async_op=True)) for w in win]
        for w in works:
            wait_work("ShardedPSO.tell", w, None)
        return win

    def _move(self, w: float, c1: float, c2: float) -> None:
        # PSO._move on this rank's rows, with the random numbers of those rows
        if self.backend == "fuse":
            self._move_fused(w, c1, c2)
            return
        r = self._r
        assert r is not None  # the ops backend's random-number buffers
        if self.rng == "replicated":
            shapes = self._full_shapes()
            draw_rows_("uniform", shapes + shapes, r[0] + r[1], self.sharded.lo, self.generator)
        else:
            ops.uniform_(r[0] + r[1], generator=self.generator)
        for g, (xr, vr, pr, r1r, r2r) in enumerate(self._rows()):
            ops.pso_velocity_(vr, xr, pr, [self.gbest[g]] * len(xr), r1r, r2r, w, c1, c2)
        if self.vmax is not None:
            for v in self.velocity:
                v.clamp_(-self.vmax, self.vmax)
        ops.add_(self.swarm.flats, self.velocity)

    def _move_fused(self, w: float, c1: float, c2: float) -> None:
        """The fused PSO program over the local rows; its in-kernel Philox
        counters start at this shard's first element (``offset``), so the
        numbers are those of the one-process run."""
        seed = int(torch.randint(0, 2**62, (), generator=self.seed_generator))
        vmax = self.vmax
        prog = _pso._program(vmax is not None)
        numbers = [w, c1, c2] + ([-vmax, vmax] if vmax is not None else [])
        assert self._best_rows is not None  # the fused backend's neighbourhood-best rows
        ins: List[List[torch.Tensor]] = [self.swarm.flats, self.velocity, self.pbest, self._best_rows]
        lo = self.sharded.lo if self.rng == "replicated" else 0
        if len(ins[0]) == 1:
            run_flat(prog, ins, numbers, out=ins[:2], seed=seed, offset=lo * ins[0][0].shape[1])
            return
        # one call per group (the offset differs); size-1 stand-ins keep the group index
        for g in range(len(ins[0])):
            pad = [[torch.zeros(1, dtype=t.dtype, device=t.device) for t in lst[:g]] for lst in ins]
            call = [pad[k] + [ins[k][g]] for k in range(len(ins))]
            run_flat(prog, call, numbers, out=call[:2], seed=seed, offset=lo * ins[0][g].shape[1])

    def _record(self, fitness: torch.Tensor, best: float, diversity: Optional[float]) -> None:
        f = self._f_all if self._f_all is not None else fitness
        div = self.sharded.diversity() if self.track_sharded_diversity else None
        super()._record(f, best, div)

    # -- checkpoints --------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """This rank's PSO state (its rows) plus the global personal-best fitness."""
        state = super().state_dict()
        state.update(
            pbest_fitness_all=self._pbest_all.clone(),
            rows=(self.sharded.lo, self.sharded.hi),
            n=self.sharded.n,
            rng_mode=self.rng,
        )
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        sh = self.sharded
        if tuple(state["rows"]) != (sh.lo, sh.hi) or state["n"] != sh.n:
            raise ValueError(
                f"ShardedPSO.load_state_dict: the state holds rows {tuple(state['rows'])} of "
                f"{state['n']}, this rank holds [{sh.lo}, {sh.hi}) of {sh.n}"
            )
        super().load_state_dict(state)
        self._pbest_all = state["pbest_fitness_all"].to(self.device).clone()
        self.rng = state["rng_mode"]
        if self._best_rows is not None:  # PSO rebuilt them from the local rows: use the global best
            self._src = int(torch.argmin(self._pbest_all))
            with torch.no_grad():
                for b, g in zip(self._best_rows, self.gbest):
                    b.copy_(g.expand_as(b))

    def save(self, path: str) -> None:
        """Checkpoint directory ``path``: one shard per rank + ``manifest.json``."""
        sh = self.sharded
        save_sharded(path, self.state_dict(), "ShardedPSO", sh.local.species, sh._sig(), sh.n, sh.group)

    def load(self, path: str) -> None:
        """Resume from ``save(path)`` output (same world size, same swarm)."""
        sh = self.sharded
        self.load_state_dict(load_sharded(path, "ShardedPSO", sh._sig(), sh.n, sh.group))


class ShardedES(ES):
    """:class:`nytorch.algorithms.ES` with the population evaluated by rows
    across ranks and the gradient estimate reduced across ranks.

    Every rank holds the center, the optimizer moments and the full noise
    (drawn from the one shared stream); ``ask()`` returns this rank's rows
    of the population (``rows``), ``tell(fitness)`` takes their fitness::

        es = nd.ShardedES(net, popsize=64, sigma=0.05, lr=0.02, seed=0)
        for _ in range(100):
            es.tell(loss_of_each(es.ask()))     # this rank's 32 candidates
        es.center                               # the same on every rank

    Other keyword arguments are ES's.
    """

    def __init__(
        self,
        center: NytoModule,
        popsize: int,
        *,
        group: Optional[Any] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        rank, world = require_group("ShardedES", group)
        if not isinstance(popsize, int) or popsize < world:
            raise ValueError(f"ShardedES: popsize must be >= the world size ({world}), got {popsize!r}")
        if "generator" not in kwargs or kwargs["generator"] is None:
            kwargs["seed"] = _shared_seed(seed, group)
        super().__init__(center, popsize, **kwargs)
        self.group, self.rank, self.world = group, rank, world
        self.lo, self.hi = shard_rows(popsize, world, rank)
        half = self.noise[0].shape[0] if self.noise else popsize
        self.plo, self.phi = shard_rows(half, world, rank)
        check_signature(
            "ShardedES",
            self.center._nyto_species,
            ("es", popsize, particle_signature(self.center)),
            lambda: particle_lines(self.center),
            group,
        )

    @property
    def rows(self) -> range:
        return range(self.lo, self.hi)

    def ask(self) -> Any:
        """This rank's rows of the new population (a sub-swarm view)."""
        super().ask()
        return self.population[self.lo : self.hi]

    def tell(self, fitness: Any) -> None:
        """ES.tell with the fitness of this rank's rows; the gradient terms are
        summed per rank and all-reduced."""
        f_loc = as_fitness(fitness, self.hi - self.lo, self.device, "ShardedES.tell")
        self._update(gather_rows(f_loc, self.popsize, self.group, "ShardedES.tell"), self._reduced_gradient_sums)

    def _reduced_gradient_sums(self, u: torch.Tensor) -> List[torch.Tensor]:
        """This rank's share of ES._gradient_sums, all-reduced over the group."""
        part = [u[self.plo : self.phi].to(eps.dtype) @ eps[self.plo : self.phi] for eps in self.noise]
        works = [launch("ShardedES.tell", partial(dist.all_reduce, p, group=self.group, async_op=True)) for p in part]
        for w in works:
            wait_work("ShardedES.tell", w, None)
        return part

    def save(self, path: str) -> None:
        """Checkpoint directory ``path`` (every rank's state is the same; each
        writes its own file, rank 0 the manifest)."""
        save_sharded(
            path, self.state_dict(), "ShardedES", self.center._nyto_species, self._sig(), self.popsize, self.group
        )

    def load(self, path: str) -> None:
        self.load_state_dict(load_sharded(path, "ShardedES", self._sig(), self.popsize, self.group))

    def _sig(self) -> Tuple:
        return ("es", self.popsize, particle_signature(self.center))


__all__ = ["ShardedPSO", "ShardedES", "draw_rows_"]
