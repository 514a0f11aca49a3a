"""Swarm optimizers on :class:`nytorch.Swarm` (ask/tell, ``step(fn)``, ``run``):

- :class:`PSO`: particle swarm optimization (global and ring topologies);
- :class:`ES`: an evolution strategy (antithetic sampling, rank shaping, Adam/SGD);
- :class:`PGPE` (ClipUp), :class:`SNES`, :class:`CEM`, :class:`SepCMAES`: Gaussian
  strategies sampled in one fused pass, noise regenerated from its seed or stored;
- :class:`DE`: differential evolution on swarm rows;
- :class:`CMAES`: CMA-ES with a dense covariance, for small problems (n <= 10k);
- model averaging: :func:`uniform_soup`, :func:`weighted_soup`, :func:`greedy_soup`, :class:`EMA`;
- :class:`History` (plots to a PNG), :class:`LogCallback`;
- ``cuda_graph=True`` (PSO, ES, EMA): one CUDA graph replay per step;
  :class:`GraphCaptureError` when a step can't be captured.
"""

from ._base import History, LogCallback, SwarmOptimizer
from ._gaussian import GaussianStrategy, nes_utilities
from ._graph import GraphCaptureError
from .averaging import EMA, greedy_soup, uniform_soup, weighted_soup
from .cem import CEM
from .cma import CMAES
from .de import DE
from .es import ES, centered_ranks
from .pgpe import PGPE
from .pso import PSO
from .sep_cma import SepCMAES
from .snes import SNES

__all__ = [
    "PSO",
    "ES",
    "PGPE",
    "SNES",
    "CEM",
    "SepCMAES",
    "CMAES",
    "DE",
    "EMA",
    "uniform_soup",
    "weighted_soup",
    "greedy_soup",
    "centered_ranks",
    "nes_utilities",
    "History",
    "LogCallback",
    "SwarmOptimizer",
    "GaussianStrategy",
    "GraphCaptureError",
]
