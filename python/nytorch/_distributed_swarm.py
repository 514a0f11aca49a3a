"""Swarms in :mod:`nytorch.distributed` (needs ``nytorch.swarm``; every hook
answers None when it is not there)."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch


def _swarm_module():
    try:
        from . import swarm
    except ImportError:
        return None
    return swarm


def swarm_target(x: Any) -> Optional[Tuple]:
    """(obj, flats, species, signature, lines) of a swarm, or None."""
    return None


def swarm_from_rows(particle: Any, rows: List[torch.Tensor]) -> Optional[Any]:
    """A Swarm whose stacked buffers are ``rows`` ([world, numel] per group), or None."""
    return None


def gathered_swarm(swarm: Any, outs: List[torch.Tensor]) -> Any:
    raise TypeError("nytorch.distributed.all_gather: swarms need nytorch.swarm")
