"""PGPE (Sehnke et al. 2010) with the ClipUp optimizer (Toklu et al. 2020).

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import PGPE
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.full((5,), 3.0))
>>> pgpe = PGPE(Point(), 20, stdev_init=1.0, center_lr=0.05, seed=0)
>>> hist = pgpe.run(lambda s: s.dot(s), 200, progress_bar=False)   # sphere
>>> float(pgpe.center.x.detach().abs().max()) < 0.1
True
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..particle import NytoModule
from ._gaussian import GaussianStrategy, check_positive
from .es import centered_ranks


class PGPE(GaussianStrategy):
    """Policy gradients with parameter-based exploration: samples
    ``center +- stdev * eps`` (symmetric pairs, one fused pass), ranks the
    fitness (``rank_shaping``, centered ranks) and follows the gradients of the
    expected utility for the center and the per-element ``stdev``:

        a_i = (u_i+ - u_i-) / 2,   b_i = (u_i+ + u_i-) / 2 - mean(u)
        g_center = stdev * sum_i a_i eps_i / h
        g_stdev  = stdev * sum_i b_i (eps_i**2 - 1) / h

    The center moves with ClipUp (``optimizer="clipup"``: the gradient
    normalized to length ``center_lr``, heavy-ball ``momentum``, the velocity's
    norm clipped to ``max_speed``, default ``2 * center_lr``) or Adam
    (``optimizer="adam"``, step ``center_lr``). ``stdev += stdev_lr * g_stdev``,
    the change clipped to ``stdev_max_change`` times the stdev.
    Fitness is minimized unless ``maximize``.
    """

    _tensor_state = ("stdev", "velocity", "m", "v")

    def __init__(
        self,
        center: NytoModule,
        popsize: int,
        *,
        stdev_init: float = 0.1,
        center_lr: float = 0.1,
        stdev_lr: float = 0.1,
        optimizer: str = "clipup",
        momentum: float = 0.9,
        max_speed: Optional[float] = None,
        stdev_max_change: float = 0.2,
        rank_shaping: bool = True,
        maximize: bool = False,
        seed: Optional[int] = None,
        store_noise: Optional[bool] = None,
        track_diversity: bool = False,
    ) -> None:
        for name, x in (("stdev_init", stdev_init), ("center_lr", center_lr)):
            check_positive(x, "PGPE", name)
        for name, x in (("stdev_lr", stdev_lr), ("momentum", momentum), ("stdev_max_change", stdev_max_change)):
            check_positive(x, "PGPE", name, strict=False)
        if optimizer not in ("clipup", "adam"):
            raise ValueError(f"PGPE: optimizer must be 'clipup' or 'adam', got {optimizer!r}")
        super().__init__(
            center,
            popsize,
            antithetic=True,
            store_noise=store_noise,
            maximize=maximize,
            seed=seed,
            track_diversity=track_diversity,
        )
        self.center_lr, self.stdev_lr, self.momentum = float(center_lr), float(stdev_lr), float(momentum)
        self.max_speed = 2 * self.center_lr if max_speed is None else check_positive(max_speed, "PGPE", "max_speed")
        self.stdev_max_change, self.optimizer, self.rank_shaping = float(stdev_max_change), optimizer, rank_shaping
        self.stdev = [torch.full_like(f, float(stdev_init)) for f in self.flats]
        self.velocity = [torch.zeros_like(f) for f in self.flats]
        self.m = [torch.zeros_like(f) for f in self.flats] if optimizer == "adam" else []
        self.v = [torch.zeros_like(f) for f in self.flats] if optimizer == "adam" else []

    def scale(self):
        return self.stdev

    def _update(self, f: torch.Tensor) -> None:
        u = centered_ranks(f) if self.rank_shaping else -(f - f.mean()) / (f.std() + 1e-12)
        h = self.rows
        a = (u[:h] - u[h:]) / 2
        b = (u[:h] + u[h:]) / 2 - u.mean()
        s1, s2 = self._sums(a, b)
        sum_b = float(b.sum())
        grads = [sd * s / h for sd, s in zip(self.stdev, s1)]  # ascent direction of the utility
        if self.optimizer == "clipup":
            norm = math.sqrt(sum(float(g.square().sum()) for g in grads))
            step = self.center_lr / norm if norm > 0 else 0.0
            for vel, g in zip(self.velocity, grads):
                vel.mul_(self.momentum).add_(g, alpha=step)
            speed = math.sqrt(sum(float(vel.square().sum()) for vel in self.velocity))
            if speed > self.max_speed:
                for vel in self.velocity:
                    vel.mul_(self.max_speed / speed)
            for c, vel in zip(self.flats, self.velocity):
                c.add_(vel)
        else:
            t = self.steps_done + 1
            for c, g, m, v in zip(self.flats, grads, self.m, self.v):
                m.lerp_(g, 0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                c.addcdiv_(m, (v / (1 - 0.999**t)).sqrt_().add_(1e-8), value=self.center_lr / (1 - 0.9**t))
        for sd, s in zip(self.stdev, s2):
            delta = sd * (s - sum_b) * (self.stdev_lr / h)
            bound = sd * self.stdev_max_change
            sd.add_(torch.minimum(torch.maximum(delta, -bound), bound))
