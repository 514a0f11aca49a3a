"""The cross-entropy method with a diagonal Gaussian (Rubinstein 1999).

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import CEM
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.full((5,), 3.0))
>>> cem = CEM(Point(), 40, stdev_init=1.0, seed=0)
>>> hist = cem.run(lambda s: s.dot(s), 100, progress_bar=False)   # sphere
>>> float(cem.center.x.detach().abs().max()) < 1e-3
True
"""

from __future__ import annotations

from typing import Optional

import torch

from ..particle import NytoModule
from ._gaussian import GaussianStrategy, check_positive


class CEM(GaussianStrategy):
    """Samples ``center + stdev * eps`` in one fused pass, keeps the
    ``elite_ratio`` best and refits the distribution to them: the new center
    is the elites' mean, the new stdev their per-element standard deviation
    (around the new mean), both from the weighted noise sums
    ``m1 = mean_elite eps``, ``m2 = mean_elite eps**2``:

        center += stdev * m1;   stdev *= sqrt(m2 - m1**2)

    ``stdev_max_change``: bound on the relative change of the stdev per step
    (default 0.1: without a bound the elites' spread collapses before the center
    arrives; None: unbounded); ``stdev_min``: a floor. Fitness is minimized unless
    ``maximize``.
    """

    _tensor_state = ("stdev",)

    def __init__(
        self,
        center: NytoModule,
        popsize: int,
        *,
        stdev_init: float = 0.1,
        elite_ratio: float = 0.5,
        stdev_max_change: Optional[float] = 0.1,
        stdev_min: float = 0.0,
        antithetic: bool = False,
        maximize: bool = False,
        seed: Optional[int] = None,
        store_noise: Optional[bool] = None,
        track_diversity: bool = False,
    ) -> None:
        check_positive(stdev_init, "CEM", "stdev_init")
        ratio = check_positive(elite_ratio, "CEM", "elite_ratio")
        if ratio > 1:
            raise ValueError(f"CEM: elite_ratio must be in (0, 1], got {elite_ratio}")
        if stdev_max_change is not None:
            stdev_max_change = check_positive(stdev_max_change, "CEM", "stdev_max_change")
        super().__init__(
            center,
            popsize,
            antithetic=antithetic,
            store_noise=store_noise,
            maximize=maximize,
            seed=seed,
            track_diversity=track_diversity,
        )
        self.elites = max(2, int(round(ratio * popsize)))
        self.stdev_max_change, self.stdev_min = stdev_max_change, check_positive(stdev_min, "CEM", "stdev_min", False)
        self.stdev = [torch.full_like(f, float(stdev_init)) for f in self.flats]

    def scale(self):
        return self.stdev

    def _update(self, f: torch.Tensor) -> None:
        w = torch.zeros_like(f)
        w[torch.argsort(f, stable=True)[: self.elites]] = 1.0 / self.elites
        m1, m2 = self._pop_sums(w, w)
        for c, sd, a, b in zip(self.flats, self.stdev, m1, m2):
            c.addcmul_(sd, a)
            ratio = (b - a * a).clamp_(min=0).sqrt_()
            if self.stdev_max_change is not None:
                ratio.clamp_(1 - self.stdev_max_change, 1 + self.stdev_max_change)
            sd.mul_(ratio).clamp_(min=self.stdev_min)
