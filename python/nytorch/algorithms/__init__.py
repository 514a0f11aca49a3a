"""Swarm optimizers on :class:`nytorch.Swarm` (ask/tell, ``step(fn)``, ``run``):

- :class:`PSO`: particle swarm optimization (global and ring topologies);
- :class:`ES`: an evolution strategy (antithetic sampling, rank shaping, Adam/SGD);
- model averaging: :func:`uniform_soup`, :func:`weighted_soup`, :func:`greedy_soup`, :class:`EMA`;
- :class:`History` (plots to a PNG), :class:`LogCallback`.
"""
from ._base import History, LogCallback, SwarmOptimizer
from .averaging import EMA, greedy_soup, uniform_soup, weighted_soup
from .es import ES, centered_ranks
from .pso import PSO

__all__ = ["PSO", "ES", "EMA", "uniform_soup", "weighted_soup", "greedy_soup", "centered_ranks",
           "History", "LogCallback", "SwarmOptimizer"]
