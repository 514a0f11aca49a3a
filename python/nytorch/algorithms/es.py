"""An evolution strategy on a :class:`nytorch.Swarm` population (OpenAI-ES style).

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import ES
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.full((5,), 3.0))
>>> es = ES(Point(), 20, sigma=0.1, lr=0.1, seed=0)
>>> hist = es.run(lambda s: s.dot(s), 200, progress_bar=False)   # sphere
>>> float(es.center.x.detach().abs().max()) < 0.1
True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .. import _checks, ops
from .._fuse.api import random_state
from ..particle import NytoModule
from ..storage import flat_storage
from ..swarm import Swarm
from ._base import SwarmOptimizer, as_fitness
from ._graph import centered_ranks as _graph_ranks
from ._graph import diversity as _graph_diversity
from ._graph import graph_mode
from ._sampling import FusedSampler


def centered_ranks(f: torch.Tensor) -> torch.Tensor:
    """Rank-based fitness shaping: the lowest value gets +0.5, the highest -0.5,
    evenly spaced in between (ties broken by order).

    >>> centered_ranks(torch.tensor([3.0, 1.0, 2.0])).tolist()
    [-0.5, 0.5, 0.0]
    """
    n = f.shape[0]
    ranks = torch.empty_like(f)
    ranks[torch.argsort(f)] = torch.arange(n, dtype=f.dtype, device=f.device)
    return 0.5 - ranks / max(n - 1, 1)


class ES(SwarmOptimizer):
    """Gaussian evolution strategy with a search distribution N(center, sigma^2 I).

    ``ask()`` samples ``popsize`` particles around the center (antithetic pairs
    ``center + sigma*eps``, ``center - sigma*eps`` by default) into a Swarm;
    ``tell(fitness)`` estimates the gradient of the expected (rank-shaped,
    ``rank_shaping=True``) fitness, ``g = sum_i u_i eps_i / (popsize * sigma)``,
    and moves the center with ``optimizer="adam"`` or ``"sgd"`` (momentum),
    ``lr`` and ``weight_decay``. Fitness is minimized unless ``maximize``.

    ``center``: the starting particle (copied; ``es.center`` is the current mean).

    ``backend="ops"`` (default): the noise is drawn with ``nytorch.ops.normal_``
    from ``generator`` into ``es.noise`` and combined in separate passes.
    ``backend="fuse"``: ``ask()`` writes ``center +- sigma * eps`` in ONE
    :mod:`nytorch.fuse` pass with Philox normals drawn in the kernel (seeded per
    step from the optimizer's seed); ``tell()`` regenerates eps from the same
    (seed, counters) for the gradient sums (memory does not grow with the
    population) or, with ``store_noise=True``, reads the noise the same pass
    stored in ``es.noise``. Both give bitwise the same trajectory (float32 /
    float64). ``store_noise=None`` picks stored noise on the CPU (where the
    normals, not memory, bound the step: regenerating them costs a second
    draw) and regeneration elsewhere.

    ``cuda_graph=True`` (CUDA, ``backend="fuse"``, stored noise): ``step`` /
    ``run`` replay one CUDA graph per step (sampling from a device random
    state, fitness, ranks, gradient, Adam/SGD with a device step counter,
    records); ``ask``/``tell`` run the same code eagerly. ``"eager"``: that
    step without a graph, on any device. See docs/swarm.md.
    """

    def __init__(
        self,
        center: NytoModule,
        popsize: int,
        *,
        sigma: float = 0.05,
        lr: float = 0.01,
        optimizer: str = "adam",
        betas: Tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        antithetic: bool = True,
        rank_shaping: bool = True,
        maximize: bool = False,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        track_diversity: bool = False,
        backend: str = "ops",
        store_noise: Optional[bool] = None,
        cuda_graph: Union[bool, str] = False,
    ) -> None:
        if not isinstance(center, NytoModule):
            raise TypeError(f"ES: center must be a particle (NytoModule), got {type(center).__name__}")
        popsize = _checks.integer(popsize, "ES", "popsize")
        for name, x in (
            ("sigma", sigma),
            ("lr", lr),
            ("momentum", momentum),
            ("eps", eps),
            ("weight_decay", weight_decay),
        ):
            _checks.real(x, "ES", name)
        if not lr >= 0:
            raise ValueError(f"ES: lr must be >= 0 (maximize=True flips the direction), got {lr}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"ES: betas must be a pair of numbers (beta1, beta2), got {betas!r}")
        betas = (_checks.real(betas[0], "ES", "betas"), _checks.real(betas[1], "ES", "betas"))
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"ES: betas must be in [0, 1), got {betas}")
        self._setup(maximize=maximize, track_diversity=track_diversity, seed=seed, generator=generator)
        if antithetic and popsize % 2:
            raise ValueError(f"ES: antithetic sampling needs an even popsize, got {popsize}")
        if popsize < 2:
            raise ValueError("ES: popsize must be >= 2")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"ES: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not sigma > 0:
            raise ValueError("ES: sigma must be positive")
        if backend not in ("ops", "fuse"):
            raise ValueError(f"ES: backend must be 'ops' or 'fuse', got {backend!r}")
        self.center = center.clone()
        self.population = Swarm(self.center, popsize, init="clone")
        flats = flat_storage(self.center).flats
        dev = flats[0].device if flats else torch.device("cpu")
        self.device = dev
        self.popsize, self.sigma, self.lr = popsize, float(sigma), float(lr)
        self.optimizer, self.betas, self.momentum, self.eps = optimizer, betas, momentum, eps
        self.weight_decay = weight_decay
        self.antithetic, self.rank_shaping = antithetic, rank_shaping
        self.generator = self._new_generator(seed, dev) if generator is None else generator
        half = popsize // 2 if antithetic else popsize
        self.backend = backend
        self.sampler: Optional[FusedSampler] = None
        graphed = cuda_graph not in (False, None)
        if graphed and store_noise is False:
            raise ValueError("ES(cuda_graph=...) reads the stored noise in tell; store_noise=False is not capturable")
        if backend == "fuse":
            if store_noise is None:
                store_noise = dev.type == "cpu" or graphed
            if not store_noise and type(self).tell is not ES.tell:
                # a subclass with its own tell (nytorch.distributed.ShardedES) reads es.noise
                raise ValueError(
                    f"{type(self).__name__}: backend='fuse' with store_noise=False keeps no "
                    "es.noise for this class's tell; pass store_noise=True"
                )
            self.sampler = FusedSampler(flats, half, antithetic=antithetic, store_noise=bool(store_noise))
            self.noise: List[torch.Tensor] = self.sampler.noise if self.sampler.noise is not None else []
            self.seed_generator = self._seed_generator_from(self.generator, dev)  # the kernel's Philox seeds
            self.sample_seed = 0
        else:
            self.noise = [torch.empty((half, f.numel()), dtype=f.dtype, device=f.device) for f in flats]
        self.m = [torch.zeros_like(f) for f in flats]
        self.v = [torch.zeros_like(f) for f in flats]
        self._graph = graph_mode(self, cuda_graph, dev, fused=backend == "fuse")
        if self._graph is not None:  # the sampler's random state, step counter and best on the device
            self._rng_state = random_state(int(torch.randint(0, 2**62, (), generator=self.seed_generator)), dev)
            self._t = torch.zeros((), dtype=torch.float64, device=dev)
            self._best_dev = torch.full((), float("inf"), dtype=torch.float64, device=dev)
            self._state_keys = ES._state_keys + ("rng_state",)

    def ask(self) -> Swarm:
        """A new population around the center (the same Swarm object, refilled)."""
        if self._graph is not None:  # the random state: read and advanced on the device
            assert self.sampler is not None
            seed: Any = self._rng_state
            self.sampler.sample(
                seed, [f.reshape(-1) for f in flat_storage(self.center).flats], self.sigma, self.population.flats
            )
            return self.population
        if self.sampler is not None:
            self.sampler.sample(
                self._next_sample_seed(),
                [f.reshape(-1) for f in flat_storage(self.center).flats],
                self.sigma,
                self.population.flats,
            )
            return self.population
        ops.normal_(self.noise, generator=self.generator)
        c = flat_storage(self.center).flats
        with torch.no_grad():
            for pop, eps, cf in zip(self.population.flats, self.noise, c):
                h = eps.shape[0]
                torch.add(cf, eps, alpha=self.sigma, out=pop[:h])
                if self.antithetic:
                    torch.sub(cf, eps, alpha=self.sigma, out=pop[h:])
        return self.population

    def tell(self, fitness: Any) -> None:
        if self._graph is not None:
            return self._graph.tell(fitness)
        self._update(as_fitness(fitness, self.popsize, self.device, f"{type(self).__name__}.tell"), self._gradient_sums)

    def _gradient_sums(self, u: torch.Tensor) -> List[torch.Tensor]:
        """Per group: the utilities times the noise rows (the unscaled gradient)."""
        if self.sampler is not None:
            assert self.sample_seed is not None  # set with the sampler
            return self.sampler.sums(self.sample_seed, u, like=flat_storage(self.center).flats)[0]
        return [u.to(eps.dtype) @ eps for eps in self.noise]

    def _update(self, f: torch.Tensor, gradient_sums: Callable[[torch.Tensor], List[torch.Tensor]]) -> None:
        """The step from the whole population's fitness ``f``; ``gradient_sums``
        (utilities -> per-group sums) is where a sharded ES reduces across ranks.
        ``f`` in the caller's sign (minimized unless ``maximize``)."""
        if self.maximize:
            f = -f
        u = centered_ranks(f) if self.rank_shaping else -(f - f.mean()) / (f.std() + 1e-12)
        if self.antithetic:
            h = self.popsize // 2
            u = u[:h] - u[h:]
        c = flat_storage(self.center).flats
        scale = -1.0 / (self.popsize * self.sigma)  # gradient of the loss (utility ascent = loss descent)
        t = self.steps_done + 1
        with torch.no_grad():
            for cf, gsum, m, v in zip(c, gradient_sums(u), self.m, self.v):
                g = gsum * scale
                if self.weight_decay:
                    g.add_(cf, alpha=self.weight_decay)
                if self.optimizer == "adam":
                    b1, b2 = self.betas
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (v / (1 - b2**t)).sqrt_().add_(self.eps)
                    cf.addcdiv_(m, denom, value=-self.lr / (1 - b1**t))
                else:
                    m.mul_(self.momentum).add_(g)
                    cf.add_(m, alpha=-self.lr)
        self._observe(f)
        self._end_step(f, self.population)

    def _graph_tell(self, f: torch.Tensor):
        """The graph mode's update from the minimized fitness ``f``: device
        tensors only (pairwise ranks, stored noise, Adam with a device step
        counter). Returns (best, mean, diversity or None)."""
        u = _graph_ranks(f) if self.rank_shaping else -(f - f.mean()) / (f.std() + 1e-12)
        if self.antithetic:
            h = self.popsize // 2
            u = u[:h] - u[h:]
        scale = -1.0 / (self.popsize * self.sigma)
        self._t.add_(1)
        b1, b2 = self.betas
        step = -self.lr / (1 - torch.pow(b1, self._t))
        bc2 = 1 - torch.pow(b2, self._t)
        for cf, eps, m, v in zip(flat_storage(self.center).flats, self.noise, self.m, self.v):
            g = (u.to(eps.dtype) @ eps) * scale
            if self.weight_decay:
                g.add_(cf, alpha=self.weight_decay)
            if self.optimizer == "adam":
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / bc2.to(v.dtype)).sqrt_().add_(self.eps)
                cf.addcmul_(m / denom, step.to(cf.dtype))
            else:
                m.mul_(self.momentum).add_(g)
                cf.add_(m, alpha=-self.lr)
        torch.minimum(self._best_dev, f.min(), out=self._best_dev)
        div = _graph_diversity(self.population.flats) if self.track_diversity else None
        return self._best_dev, f.mean(), div

    def _best_value(self) -> float:
        return float(self._best_dev) if self._graph is not None else self.best_fitness_

    def _graph_sync(self) -> None:
        self.best_fitness_ = float(self._best_dev)

    def _graph_reload(self) -> None:
        self._t.fill_(float(self.steps_done))
        self._best_dev.fill_(self.best_fitness_)

    # -- checkpoints (the common keys: SwarmOptimizer.state_dict) --------------------
    _state_keys: Tuple[str, ...] = ("center", "center_buffers", "m", "v")

    def _own_state(self) -> Dict[str, Any]:
        """Center (and its buffers), optimizer moments."""
        return {
            "center": [t.clone() for t in flat_storage(self.center).flats],
            "center_buffers": [b.clone() for b in flat_storage(self.center).buffers],
            "m": [t.clone() for t in self.m],
            "v": [t.clone() for t in self.v],
            **({"rng_state": self._rng_state.clone()} if self._graph is not None else {}),
        }

    def _load_own_state(self, state: Dict[str, Any], where: str) -> None:
        c = flat_storage(self.center)
        for name, mine in (("center", c.flats), ("m", self.m), ("v", self.v)):
            if len(state[name]) != len(mine) or any(a.shape != b.shape for a, b in zip(mine, state[name])):
                raise ValueError(f"{where}: {name} has other shapes than this optimizer's")
        with torch.no_grad():
            for a, b in zip(
                list(c.flats) + self.m + self.v + list(c.buffers),
                state["center"] + state["m"] + state["v"] + state["center_buffers"],
            ):
                a.copy_(b)
            if self._graph is not None:
                self._rng_state.copy_(state["rng_state"])
