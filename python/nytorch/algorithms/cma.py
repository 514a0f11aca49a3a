"""CMA-ES with a full covariance matrix (Hansen 2016, "The CMA Evolution
Strategy: A Tutorial"), for SMALL problems: the covariance is a dense n x n
matrix (float64), sampling is a matrix product and its eigendecomposition
costs O(n^3) (done lazily, every few generations). Meant for n up to a few
thousand parameters (n = 10k: 800 MB for C and B, seconds per decomposition);
for more, use :class:`SepCMAES` (diagonal, linear in n).

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import CMAES
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.full((5,), 3.0))
>>> cma = CMAES(Point(), sigma_init=1.0, seed=0)
>>> hist = cma.run(lambda s: s.dot(s), 150, progress_bar=False)   # sphere
>>> float(cma.center.x.detach().abs().max()) < 1e-4
True
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from .. import _checks
from ..particle import NytoModule
from ..storage import flat_storage
from ..swarm import Swarm
from ._base import SwarmOptimizer
from ._gaussian import check_positive
from .snes import default_popsize

MAX_N = 10_000


class CMAES(SwarmOptimizer):
    """CMA-ES: samples ``x_i = m + sigma * B D z_i`` (``C = B D^2 B^T``),
    recombines the ``popsize // 2`` best with log-decreasing weights, adapts
    sigma by cumulative step-size adaptation and C by rank-one and rank-mu
    updates (the tutorial's default parameters). ``popsize=None``: 4 + 3 ln(n).
    At most ``MAX_N`` (10,000) parameters. Fitness is minimized unless
    ``maximize``; ``best`` / ``best_fitness``: the best sampled particle."""

    def __init__(
        self,
        center: NytoModule,
        popsize: Optional[int] = None,
        *,
        sigma_init: float = 0.1,
        maximize: bool = False,
        seed: Optional[int] = None,
        track_diversity: bool = False,
    ) -> None:
        if not isinstance(center, NytoModule):
            raise TypeError(f"CMAES: center must be a particle (NytoModule), got {type(center).__name__}")
        n = sum(f.numel() for f in flat_storage(center).flats)
        if n > MAX_N:
            raise ValueError(
                f"CMAES: {n:,} parameters; the dense covariance is meant for at most {MAX_N:,} (use SepCMAES)"
            )
        popsize = default_popsize(n) if popsize is None else _checks.integer(popsize, "CMAES", "popsize")
        if popsize < 2:
            raise ValueError(f"CMAES: popsize must be >= 2, got {popsize}")
        self._setup(maximize=maximize, track_diversity=track_diversity, seed=seed)
        self.sigma = check_positive(sigma_init, "CMAES", "sigma_init")
        self.center = center.clone()
        self.population = Swarm(self.center, popsize, init="clone")
        flats = flat_storage(self.center).flats
        self.device = flats[0].device if flats else torch.device("cpu")
        self.popsize, self.n = popsize, n
        self.generator = self._new_generator(seed, self.device)
        dd: Dict[str, Any] = dict(dtype=torch.float64, device=self.device)
        mu = popsize // 2
        w = math.log(mu + 0.5) - torch.log(torch.arange(1, mu + 1, **dd))
        self.weights = w / w.sum()
        self.mu, self.mueff = mu, float(1 / self.weights.square().sum())
        me = self.mueff
        self.cc = (4 + me / n) / (n + 4 + 2 * me / n)
        self.cs = (me + 2) / (n + me + 5)
        self.c1 = 2 / ((n + 1.3) ** 2 + me)
        self.cmu = min(1 - self.c1, 2 * (me - 2 + 1 / me) / ((n + 2) ** 2 + me))
        self.ds = 1 + 2 * max(0.0, math.sqrt((me - 1) / (n + 1)) - 1) + self.cs
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.eigen_every = max(1, int(popsize / (self.c1 + self.cmu) / n / 10))
        self.C, self.B = torch.eye(n, **dd), torch.eye(n, **dd)
        self.D = torch.ones(n, **dd)
        self.p_sigma, self.p_c = torch.zeros(n, **dd), torch.zeros(n, **dd)
        self.eigen_step = 0
        self._y = torch.zeros(popsize, n, **dd)
        self._best = torch.zeros(n, **dd)

    def _mean(self) -> torch.Tensor:
        return torch.cat([f.reshape(-1).double() for f in flat_storage(self.center).flats])

    def _write(self, dst, vec: torch.Tensor) -> None:
        """Split a [..., n] float64 tensor into the groups' flats."""
        k = 0
        for f in dst:
            m = f.shape[-1]
            f.copy_(vec[..., k : k + m])
            k += m

    @property
    def best(self) -> NytoModule:
        p = self.center.clone()
        with torch.no_grad():
            self._write([f.view(-1) for f in flat_storage(p).flats], self._best)
        return p

    def ask(self) -> Swarm:
        z = torch.randn(self.popsize, self.n, generator=self.generator, dtype=torch.float64, device=self.device)
        self._y = (z * self.D) @ self.B.t()
        with torch.no_grad():
            self._write(self.population.flats, self._mean() + self.sigma * self._y)
        return self.population

    def tell(self, fitness: Any) -> None:
        f = self._fitness(fitness, self.popsize)
        order = torch.argsort(f, stable=True)
        if self._observe(f) is not None:
            self._best = self._mean() + self.sigma * self._y[order[0]]
        y = self._y[order[: self.mu]]
        yw = self.weights @ y
        cs, cc, c1, cmu = self.cs, self.cc, self.c1, self.cmu
        with torch.no_grad():
            self._write([f.view(-1) for f in flat_storage(self.center).flats], self._mean() + self.sigma * yw)
        inv_sqrt_c_yw = self.B @ ((self.B.t() @ yw) / self.D)
        self.p_sigma.mul_(1 - cs).add_(inv_sqrt_c_yw, alpha=math.sqrt(cs * (2 - cs) * self.mueff))
        ps_norm = float(self.p_sigma.norm())
        gen = self.steps_done + 1
        h_sig = ps_norm / math.sqrt(1 - (1 - cs) ** (2 * gen)) < (1.4 + 2 / (self.n + 1)) * self.chi_n
        self.p_c.mul_(1 - cc)
        if h_sig:
            self.p_c.add_(yw, alpha=math.sqrt(cc * (2 - cc) * self.mueff))
        keep = 1 - c1 - cmu + (0.0 if h_sig else c1 * cc * (2 - cc))
        self.C.mul_(keep).addr_(self.p_c, self.p_c, alpha=c1).addmm_(y.t() * self.weights, y, alpha=cmu)
        self.sigma *= math.exp(min(1.0, (cs / self.ds) * (ps_norm / self.chi_n - 1)))
        if gen - self.eigen_step >= self.eigen_every:
            self._decompose(gen)
        self._end_step(f, self.population)

    def _decompose(self, gen: int) -> None:
        self.C = (self.C + self.C.t()) / 2
        evals, self.B = torch.linalg.eigh(self.C)
        self.D = evals.clamp(min=1e-20).sqrt()
        self.eigen_step = gen

    # -- checkpoints (the common keys: SwarmOptimizer.state_dict) --------------------
    _state_keys = ("center", "center_buffers", "sigma", "C", "B", "D", "p_sigma", "p_c", "eigen_step", "best")

    def _own_state(self) -> Dict[str, Any]:
        st = flat_storage(self.center)
        return {
            "center": [t.clone() for t in st.flats],
            "center_buffers": [b.clone() for b in st.buffers],
            "sigma": self.sigma,
            "C": self.C.clone(),
            "B": self.B.clone(),
            "D": self.D.clone(),
            "p_sigma": self.p_sigma.clone(),
            "p_c": self.p_c.clone(),
            "eigen_step": self.eigen_step,
            "best": self._best.clone(),
        }

    def _load_own_state(self, state: Dict[str, Any], where: str) -> None:
        st = flat_storage(self.center)
        if state["C"].shape != self.C.shape or len(state["center"]) != len(st.flats):
            raise ValueError(f"{where}: the state has other shapes than this optimizer's")
        with torch.no_grad():
            for a, b in zip(list(st.flats) + list(st.buffers), state["center"] + state["center_buffers"]):
                a.copy_(b)
        for k in ("C", "B", "D", "p_sigma", "p_c"):
            setattr(self, k, state[k].to(self.device).clone())
        self._best = state["best"].to(self.device).clone()
        self.sigma, self.eigen_step = float(state["sigma"]), int(state["eigen_step"])
