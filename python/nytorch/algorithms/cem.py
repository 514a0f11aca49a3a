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

from .._fuse import api as _fuse
from ..particle import NytoModule
from ._gaussian import GaussianStrategy, check_positive
from ._sampling import run

_PROGRAMS: dict = {}


def _refit_program(bounded: bool):
    """center + stdev * m1 (one rounding: torch's addcmul) and
    max(stdev * clamp(sqrt(max(m2 - m1**2, 0)), lo, hi), stdev_min)."""
    prog = _PROGRAMS.get(bounded)
    if prog is None:

        def fn(c, sd, a, b, lo, hi, sd_min):
            ratio = _fuse.sqrt(_fuse.maximum(b - a * a, 0.0))
            if bounded:
                ratio = _fuse.clamp(ratio, lo, hi)
            return _fuse.fma(sd, a, c), _fuse.maximum(sd * ratio, sd_min)

        prog = _PROGRAMS[bounded] = _fuse.program(fn, "ppppnnn")
    return prog


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
        if getattr(self, "_elite_weights", None) is None:
            self._elite_weights = torch.full((self.elites,), 1.0 / self.elites, dtype=torch.float64)
        w = self._rank_weights(f, self._elite_weights)
        m1, m2 = self._pop_sums(w, w)
        change = self.stdev_max_change
        flats = self.flats
        run(
            _refit_program(change is not None),
            [flats, self.stdev, m1, m2],
            [1 - (change or 0.0), 1 + (change or 0.0), self.stdev_min],
            [flats, self.stdev],
        )
