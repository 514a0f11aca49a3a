"""SNES: separable natural evolution strategies (Schaul et al. 2011).

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import SNES
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.full((5,), 3.0))
>>> snes = SNES(Point(), 20, stdev_init=1.0, seed=0)
>>> hist = snes.run(lambda s: s.dot(s), 200, progress_bar=False)   # sphere
>>> float(snes.center.x.detach().abs().max()) < 1e-3
True
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..particle import NytoModule
from ._gaussian import GaussianStrategy, check_positive, nes_utilities


def default_popsize(n: int) -> int:
    """4 + floor(3 ln n), the NES / CMA-ES default population for n parameters."""
    return 4 + int(3 * math.log(max(n, 1)))


class SNES(GaussianStrategy):
    """Separable NES: search distribution N(center, diag(stdev^2)); samples
    ``center + stdev * s`` in one fused pass, ranks the fitness with NES
    utilities ``u`` (sum 0, :func:`nes_utilities`) and applies the natural
    gradient:

        center += center_lr * stdev * sum_i u_i s_i
        stdev  *= exp(stdev_lr / 2 * sum_i u_i (s_i**2 - 1))

    ``popsize=None``: 4 + 3 ln(n); ``stdev_lr=None``: (3 + ln n) / (5 sqrt n)
    (n: the number of parameters). ``antithetic=True`` samples mirrored pairs.
    Fitness is minimized unless ``maximize``.
    """

    _tensor_state = ("stdev",)

    def __init__(
        self,
        center: NytoModule,
        popsize: Optional[int] = None,
        *,
        stdev_init: float = 0.1,
        center_lr: float = 1.0,
        stdev_lr: Optional[float] = None,
        antithetic: bool = False,
        maximize: bool = False,
        seed: Optional[int] = None,
        store_noise: Optional[bool] = None,
        track_diversity: bool = False,
    ) -> None:
        n = sum(p.numel() for p in center.parameters()) if isinstance(center, NytoModule) else 1
        if popsize is None:
            popsize = default_popsize(n) + (default_popsize(n) % 2 if antithetic else 0)
        check_positive(stdev_init, "SNES", "stdev_init")
        check_positive(center_lr, "SNES", "center_lr")
        stdev_lr = (
            (3 + math.log(max(n, 1))) / (5 * math.sqrt(max(n, 1)))
            if stdev_lr is None
            else check_positive(stdev_lr, "SNES", "stdev_lr", strict=False)
        )
        super().__init__(
            center,
            popsize,
            antithetic=antithetic,
            store_noise=store_noise,
            maximize=maximize,
            seed=seed,
            track_diversity=track_diversity,
        )
        self.center_lr, self.stdev_lr = float(center_lr), float(stdev_lr)
        self.stdev = [torch.full_like(f, float(stdev_init)) for f in self.flats]

    def scale(self):
        return self.stdev

    def _update(self, f: torch.Tensor) -> None:
        u = nes_utilities(f)
        s1, s2 = self._pop_sums(u, u)
        sum_u = float(u.sum())
        for c, sd, g1, g2 in zip(self.flats, self.stdev, s1, s2):
            c.addcmul_(sd, g1, value=self.center_lr)
            sd.mul_(((g2 - sum_u) * (self.stdev_lr / 2)).exp_())
