"""Differential evolution (Storn & Price 1997), DE/rand/1/bin on swarm rows.

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import DE
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.zeros(5))
>>> _ = torch.manual_seed(0)
>>> de = DE(nyto.Swarm(Point(), 30, init="randn") * 3, seed=0)
>>> hist = de.run(lambda s: s.dot(s), 300, progress_bar=False)   # sphere
>>> de.best_fitness < 1e-6
True
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, cast

import torch

from .. import _checks
from .._fuse import api as _fuse
from ..particle import NytoModule
from ..swarm import Swarm
from ._base import SwarmOptimizer
from ._gaussian import check_positive

_PROGRAM: List[Any] = []


def _trial_program():
    """trial = mutant x_a + F (x_b - x_c) where a uniform draw < CR, else x."""
    if not _PROGRAM:
        _PROGRAM.append(
            _fuse.program(lambda x, a, b, c, f, cr: _fuse.where(_fuse.rand_like(x) < cr, a + f * (b - c), x), "ppppnn")
        )
    return _PROGRAM[0]


class DE(SwarmOptimizer):
    """DE/rand/1/bin: for every row i, three other distinct rows a, b, c give
    the mutant ``x_a + F (x_b - x_c)``; binomial crossover takes each element
    of the mutant with probability ``CR`` (one pass of a fused program with
    in-kernel random numbers; element ``j_rand`` of the first group always);
    the trial replaces row i when its fitness is no worse.

    ``ask()`` returns the swarm itself on the first step (its fitness is
    needed), then the trial swarm (``self.trials``); the swarm moves in place.
    Fitness is minimized unless ``maximize``. Needs at least 4 rows.
    """

    def __init__(
        self,
        swarm: Swarm,
        *,
        F: float = 0.8,
        CR: float = 0.9,
        maximize: bool = False,
        seed: Optional[int] = None,
        track_diversity: bool = True,
    ) -> None:
        if not isinstance(swarm, Swarm):
            raise TypeError(f"DE: swarm must be a nytorch.Swarm, got {type(swarm).__name__}")
        if len(swarm) < 4:
            raise ValueError(f"DE: needs at least 4 particles, got {len(swarm)}")
        self.F = check_positive(F, "DE", "F")
        self.CR = _checks.real(CR, "DE", "CR")
        if not 0.0 <= self.CR <= 1.0:
            raise ValueError(f"DE: CR must be in [0, 1], got {CR}")
        self._setup(maximize=maximize, track_diversity=track_diversity, seed=seed)
        if any(not f.is_contiguous() for f in swarm.flats):
            raise ValueError("DE: the swarm's flats must be contiguous (use swarm.clone())")
        self.swarm = swarm
        self.device = swarm.flats[0].device if swarm.flats else torch.device("cpu")
        self.generator = self._new_generator(seed)  # row choices (CPU: no device sync)
        self.seed_generator = self._seed_generator_from(self.generator)
        self.sample_seed = 0
        n = len(swarm)
        self.fitness = torch.full((n,), float("inf"), dtype=torch.float64, device=self.device)
        self.trials = cast(Swarm, swarm.clone())
        self._donors = [[torch.empty_like(f) for f in swarm.flats] for _ in range(3)]
        self._jrand = torch.zeros(n, dtype=torch.long)

    _saves_best_fitness = False  # the best row's fitness is in self.fitness

    def _best_value(self) -> float:
        return float(self.fitness.min())

    @property
    def best(self) -> NytoModule:
        """A copy of the best row."""
        return self.swarm.best(self.fitness)

    def ask(self) -> Swarm:
        if self.steps_done == 0:
            return self.swarm
        n = len(self.swarm)
        keys = torch.rand(n, n, generator=self.generator)
        keys.fill_diagonal_(2.0)  # never row i itself
        abc = keys.topk(3, dim=1, largest=False).indices.t().to(self.device)  # distinct, != i
        numel0 = self.swarm.flats[0].shape[1] if self.swarm.flats else 1
        self._jrand = torch.randint(0, numel0, (n,), generator=self.generator)
        self._next_sample_seed()
        with torch.no_grad():
            for d, idx in zip(self._donors, abc):
                for buf, x in zip(d, self.swarm.flats):
                    torch.index_select(x, 0, idx, out=buf)
            _fuse.run_flat(
                _trial_program(),
                [self.swarm.flats, *self._donors],
                [self.F, self.CR],
                out=[self.trials.flats],
                seed=self.sample_seed,
            )
            for t, b in zip(self.trials.buffers, self.swarm.buffers):  # row i's buffers go with its trial
                t.copy_(b)
            if self.swarm.flats:
                rows = torch.arange(n, device=self.device)
                j = self._jrand.to(self.device)
                a, b, c = (d[0][rows, j] for d in self._donors)
                self.trials.flats[0][rows, j] = a + self.F * (b - c)
        return self.trials

    def tell(self, fitness: Any) -> None:
        f = self._fitness(fitness, len(self.swarm))
        if self.steps_done == 0:
            self.fitness = f.clone()
        else:
            idx = (f <= self.fitness).nonzero().squeeze(1)
            if idx.numel():
                with torch.no_grad():
                    for x, t in zip(self.swarm.flats, self.trials.flats):
                        x.index_copy_(0, idx, t.index_select(0, idx))
                    for x, t in zip(self.swarm.buffers, self.trials.buffers):
                        x.index_copy_(0, idx, t.index_select(0, idx))
                self.fitness = torch.where(f <= self.fitness, f, self.fitness)
        self._end_step(f, self.swarm)

    # -- checkpoints (the common keys: SwarmOptimizer.state_dict) --------------------
    _state_keys = ("swarm", "fitness")

    def _own_state(self) -> Dict[str, Any]:
        return {
            "swarm": {
                k: [t.clone() for t in v] if isinstance(v, list) else v for k, v in self.swarm.state_dict().items()
            },
            "fitness": self.fitness.clone(),
        }

    def _load_own_state(self, state: Dict[str, Any], where: str) -> None:
        self.swarm.load_state_dict(state["swarm"])
        self.fitness = state["fitness"].to(self.device).clone()
