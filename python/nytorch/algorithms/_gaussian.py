"""The shared base of the Gaussian search-distribution strategies (PGPE, SNES,
CEM, sep-CMA-ES): a center particle, a per-element scale, a population Swarm
sampled in one fused pass (:class:`FusedSampler`), best tracking, history and
bitwise-resumable checkpoints. A subclass sets the scale and implements
``_update(f)`` with ``self._sums(w, v)``."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _checks
from ..particle import NytoModule
from ..storage import flat_storage
from ..swarm import Swarm
from ._base import SwarmOptimizer
from ._sampling import FusedSampler

Weights = Union[torch.Tensor, List[float]]


def check_positive(x: Any, where: str, name: str, strict: bool = True) -> float:
    x = _checks.real(x, where, name)
    if not (x > 0 if strict else x >= 0) or math.isinf(x):
        raise ValueError(f"{where}: {name} must be {'positive' if strict else '>= 0'} and finite, got {x}")
    return float(x)


def nes_utilities(f: torch.Tensor) -> torch.Tensor:
    """NES fitness shaping (Wierstra et al. 2014): the k-th best of n gets
    ``max(0, log(n/2 + 1) - log k)`` normalized to sum 1, minus ``1/n``
    (sum 0; lower fitness is better).

    >>> [round(x, 3) for x in nes_utilities(torch.tensor([3.0, 1.0, 2.0, 4.0])).tolist()]
    [-0.25, 0.48, 0.02, -0.25]
    """
    n = f.shape[0]
    k = torch.arange(1, n + 1, dtype=torch.float64, device=f.device)
    raw = (math.log(n / 2 + 1) - torch.log(k)).clamp_(min=0)
    util = raw / raw.sum() - 1.0 / n
    out = torch.empty_like(util)
    out[torch.argsort(f, stable=True)] = util
    return out


class GaussianStrategy(SwarmOptimizer):
    """Search distribution N(center, diag(scale^2)); ``ask()`` fills
    ``self.population`` (antithetic pairs when ``antithetic``), ``tell(f)``
    updates the distribution. ``best`` / ``best_fitness``: the best sampled
    particle so far. Subclasses list their state in ``_tensor_state`` (names
    of lists of tensors) and ``_scalar_state`` (names of numbers)."""

    _tensor_state: Tuple[str, ...] = ()
    _scalar_state: Tuple[str, ...] = ()

    def __init__(
        self,
        center: NytoModule,
        popsize: int,
        *,
        antithetic: bool,
        store_noise: Optional[bool],
        maximize: bool,
        seed: Optional[int],
        track_diversity: bool,
    ) -> None:
        name = type(self).__name__
        if not isinstance(center, NytoModule):
            raise TypeError(f"{name}: center must be a particle (NytoModule), got {type(center).__name__}")
        popsize = _checks.integer(popsize, name, "popsize")
        if popsize < 2:
            raise ValueError(f"{name}: popsize must be >= 2, got {popsize}")
        if antithetic and popsize % 2:
            raise ValueError(f"{name}: antithetic sampling needs an even popsize, got {popsize}")
        self._setup(maximize=maximize, track_diversity=track_diversity, seed=seed)
        self.center = center.clone()
        self.population = Swarm(self.center, popsize, init="clone")
        flats = flat_storage(self.center).flats
        self.device = flats[0].device if flats else torch.device("cpu")
        self.popsize, self.antithetic = popsize, antithetic
        self.rows = popsize // 2 if antithetic else popsize
        if store_noise is None:
            store_noise = self.device.type == "cpu"
        self.sampler = FusedSampler(flats, self.rows, antithetic=antithetic, store_noise=bool(store_noise))
        self.seed_generator = self._new_generator(seed)  # the kernels' Philox seeds (CPU: no device sync)
        self.sample_seed = 0
        self._best = [torch.zeros(f.numel(), dtype=f.dtype, device=f.device) for f in flats]

    # -- the distribution -------------------------------------------------------
    @property
    def flats(self) -> List[torch.Tensor]:
        """The center's flat buffers (1-D views)."""
        return [f.reshape(-1) for f in flat_storage(self.center).flats]

    def scale(self) -> Sequence[torch.Tensor]:  # pragma: no cover - abstract
        """The per-element standard deviation of the samples (one flat per group)."""
        raise NotImplementedError

    def _update(self, f: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sums(self, w: Weights, v: Optional[Weights] = None):
        """``(sum_i w_i eps_i, sum_i v_i eps_i**2)`` over this step's noise rows
        (weights: a tensor or a list of floats)."""
        assert self.sample_seed is not None  # set in __init__
        return self.sampler.sums(self.sample_seed, w, v, like=self.flats)

    def _rank_weights(self, f: torch.Tensor, table: torch.Tensor) -> Weights:
        """Per population row, ``table[k]`` for the k-th best (lowest ``f``,
        ties by position) of the ``len(table)`` best, 0 for the rest: a list
        for populations up to 4096 (an argsort and a few list writes: after
        ``ask`` has flushed the caches every tensor op costs tens of
        microseconds), else a tensor."""
        order = torch.argsort(f, stable=True)[: table.numel()]
        if self.popsize <= 4096:
            wl = [0.0] * self.popsize
            for i, x in zip(order.tolist(), table.tolist()):
                wl[i] = x
            return wl
        w = torch.zeros_like(f)
        w[order] = table.to(f.dtype)
        return w

    def _pop_sums(self, w: Weights, v: Optional[Weights] = None):
        """As ``_sums`` with one weight per population row (row ``h + i`` of an
        antithetic population holds ``-eps_i``)."""
        if self.antithetic:
            h = self.rows
            if isinstance(w, list):  # the same float64 arithmetic as the tensors'
                wl, vl = w, v if isinstance(v, list) or v is None else v.tolist()
                return self._sums(
                    [a - b for a, b in zip(wl[:h], wl[h:])],
                    None if vl is None else [a + b for a, b in zip(vl[:h], vl[h:])],
                )
            assert v is None or isinstance(v, torch.Tensor)
            return self._sums(w[:h] - w[h:], None if v is None else v[:h] + v[h:])
        return self._sums(w, v)

    # -- ask / tell ---------------------------------------------------------------
    def ask(self) -> Swarm:
        """A new population (the same Swarm object, refilled)."""
        self.sampler.sample(self._next_sample_seed(), self.flats, list(self.scale()), self.population.flats)
        return self.population

    def tell(self, fitness: Any) -> None:
        """Update the distribution with the fitness of the population ``ask`` returned."""
        f = self._fitness(fitness, self.popsize)
        i = self._observe(f)
        with torch.no_grad():
            if i is not None:
                for b, p in zip(self._best, self.population.flats):
                    b.copy_(p[i])
            self._update(f)
        self._end_step(f, self.population)

    @property
    def best(self) -> NytoModule:
        """A new particle holding the best sampled particle so far."""
        p = self.center.clone()
        with torch.no_grad():
            for dst, src in zip(flat_storage(p).flats, self._best):
                dst.copy_(src.view_as(dst))
        return p

    # -- checkpoints (the common keys: SwarmOptimizer.state_dict) --------------------
    _state_keys = ("center", "center_buffers", "tensors", "scalars", "best")

    def _own_state(self) -> Dict[str, Any]:
        """Center, the distribution's state, best."""
        st = flat_storage(self.center)
        return {
            "center": [t.clone() for t in st.flats],
            "center_buffers": [b.clone() for b in st.buffers],
            "tensors": {k: [t.clone() for t in getattr(self, k)] for k in self._tensor_state},
            "scalars": {k: getattr(self, k) for k in self._scalar_state},
            "best": [t.clone() for t in self._best],
        }

    def _load_own_state(self, state: Dict[str, Any], where: str) -> None:
        st = flat_storage(self.center)
        pairs = [("center", list(st.flats), state["center"]), ("best", self._best, state["best"])]
        pairs += [(k, getattr(self, k), state["tensors"].get(k, [])) for k in self._tensor_state]
        for k, mine, theirs in pairs:
            if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
                raise ValueError(f"{where}: {k} has other shapes than this optimizer's")
        with torch.no_grad():
            for _, mine, theirs in pairs:
                for a, b in zip(mine, theirs):
                    a.copy_(b)
            for a, b in zip(st.buffers, state["center_buffers"]):
                a.copy_(b)
        for k in self._scalar_state:
            setattr(self, k, state["scalars"][k])
