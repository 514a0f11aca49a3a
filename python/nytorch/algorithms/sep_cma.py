"""sep-CMA-ES: CMA-ES with a diagonal covariance (Ros & Hansen 2008); its
time and memory are linear in the number of parameters, so it scales to
millions of them.

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import SepCMAES
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.full((5,), 3.0))
>>> cma = SepCMAES(Point(), sigma_init=1.0, seed=0)
>>> hist = cma.run(lambda s: s.dot(s), 200, progress_bar=False)   # sphere
>>> float(cma.center.x.detach().abs().max()) < 1e-3
True
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..particle import NytoModule
from ._gaussian import GaussianStrategy, check_positive
from .snes import default_popsize


def _norm(xs) -> float:
    return math.sqrt(sum(float(x.double().square().sum()) for x in xs))


class SepCMAES(GaussianStrategy):
    """Samples ``x_i = center + sigma * sqrt(C) * z_i`` (one fused pass; C the
    diagonal covariance ``self.C``), recombines the ``popsize // 2`` best with
    log-decreasing weights, adapts sigma by cumulative step-size adaptation
    (path ``p_sigma``) and C by the rank-one (path ``p_c``) and rank-mu updates
    with the learning rates of sep-CMA-ES (c1, cmu times (n + 2) / 3).
    Everything is computed from the weighted noise sums ``sum w z`` and
    ``sum w z**2`` (noise regenerated or stored). ``popsize=None``:
    4 + 3 ln(n). Fitness is minimized unless ``maximize``.
    """

    _tensor_state = ("C", "p_sigma", "p_c")
    _scalar_state = ("sigma",)

    def __init__(
        self,
        center: NytoModule,
        popsize: Optional[int] = None,
        *,
        sigma_init: float = 0.1,
        maximize: bool = False,
        seed: Optional[int] = None,
        store_noise: Optional[bool] = None,
        track_diversity: bool = False,
    ) -> None:
        n = sum(p.numel() for p in center.parameters()) if isinstance(center, NytoModule) else 1
        popsize = default_popsize(n) if popsize is None else popsize
        self.sigma = check_positive(sigma_init, "SepCMAES", "sigma_init")
        super().__init__(
            center,
            popsize,
            antithetic=False,
            store_noise=store_noise,
            maximize=maximize,
            seed=seed,
            track_diversity=track_diversity,
        )
        mu = popsize // 2
        w = torch.log(torch.tensor(mu + 0.5, dtype=torch.float64)) - torch.log(
            torch.arange(1, mu + 1, dtype=torch.float64)
        )
        self.weights = (w / w.sum()).to(self.device)
        self.mu, self.n = mu, n
        mueff = float(1 / self.weights.square().sum())
        self.mueff = mueff
        self.cs = (mueff + 2) / (n + mueff + 5)
        self.ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + self.cs
        self.cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
        c1 = 2 / ((n + 1.3) ** 2 + mueff)
        cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
        self.c1 = min(1.0, c1 * (n + 2) / 3)
        self.cmu = min(1 - self.c1, cmu * (n + 2) / 3)
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.C = [torch.ones_like(f) for f in self.flats]
        self.p_sigma = [torch.zeros_like(f) for f in self.flats]
        self.p_c = [torch.zeros_like(f) for f in self.flats]

    def scale(self):
        # the same buffers every step (the sampler keeps its call plan while its tensors stay)
        if getattr(self, "_scale_bufs", None) is None or len(self._scale_bufs) != len(self.C):
            self._scale_bufs = [torch.empty_like(c) for c in self.C]
        return [torch.sqrt(c, out=b).mul_(self.sigma) for c, b in zip(self.C, self._scale_bufs)]

    def _update(self, f: torch.Tensor) -> None:
        w = torch.zeros_like(f)
        w[torch.argsort(f, stable=True)[: self.mu]] = self.weights
        zw, zw2 = self._pop_sums(w, w)
        cs, cc, c1, cmu = self.cs, self.cc, self.c1, self.cmu
        yw = [c.sqrt() * z for c, z in zip(self.C, zw)]
        for m, y in zip(self.flats, yw):
            m.add_(y, alpha=self.sigma)
        for ps, z in zip(self.p_sigma, zw):
            ps.mul_(1 - cs).add_(z, alpha=math.sqrt(cs * (2 - cs) * self.mueff))
        ps_norm = _norm(self.p_sigma)
        gen = self.steps_done + 1
        h_sig = ps_norm / math.sqrt(1 - (1 - cs) ** (2 * gen)) < (1.4 + 2 / (self.n + 1)) * self.chi_n
        for pc, y in zip(self.p_c, yw):
            pc.mul_(1 - cc)
            if h_sig:
                pc.add_(y, alpha=math.sqrt(cc * (2 - cc) * self.mueff))
        keep = 1 - c1 - cmu + (0.0 if h_sig else c1 * cc * (2 - cc))
        for c, pc, z2 in zip(self.C, self.p_c, zw2):
            c.mul_(keep + cmu * z2).addcmul_(pc, pc, value=c1)
        self.sigma *= math.exp(min(1.0, (cs / self.ds) * (ps_norm / self.chi_n - 1)))
