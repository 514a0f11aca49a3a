"""Whole-particle collectives on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

A particle keeps its parameters in one flat buffer per (device, dtype) group,
so a whole-model collective is one call per group (cut into buckets of at
most :data:`BUCKET_BYTES`), not one per parameter. Importing this module needs
no process group; every collective raises a clear ``RuntimeError`` when none
is initialised.

Run under ``torchrun --nproc-per-node=2 script.py`` (see docs/distributed.md)::

    import nytorch as nyto, nytorch.distributed as nd
    rank, world = nd.init()                  # gloo on CPU, NCCL when CUDA is there
    net = MyNet()                            # a NytoModule, same structure on every rank
    nd.broadcast_(net, src=0)                # every rank starts from rank 0's values
    ...                                      # local training
    nd.all_reduce_(net, weights=n_samples)   # FedAvg: weighted mean over ranks
    everyone = nd.all_gather(net)            # a nytorch.Swarm: row r = rank r's particle
    h = nd.all_reduce_(net, async_op=True)   # overlap with other work ...
    h.wait()                                 # ... then finish (divides the sum)

Swarms: the same calls take a ``nytorch.Swarm`` (its stacked buffers), and
:class:`ShardedSwarm` splits one swarm's rows across ranks, with
:class:`ShardedPSO` / :class:`ShardedES` running the swarm optimizers on it
(same trajectory as one process; sharded checkpoints).

Layout of this package (dependencies point one way):
:mod:`nytorch.distributed.core` (``init``, ``device``, ``barrier``, process-group
checks, buckets, handles, species signatures) <- :mod:`~nytorch.distributed.collectives`
(particles and swarms) <- :mod:`~nytorch.distributed.sharded_swarm`
(:class:`ShardedSwarm`, sharded checkpoints) <- :mod:`nytorch.algorithms.sharded`
(:class:`ShardedPSO`, :class:`ShardedES`, re-exported here on first use).

What is communicated: the particle's parameters (its flats). Buffers
(BatchNorm statistics) stay local, as in every particle op. The first
collective of a species on a group all-gathers a 64-bit hash of its structure
(:func:`check_species`) and raises :class:`SpeciesMismatchError` on every rank
when ranks differ. Failures of a peer (death, hang past the timeout, broken
connection) raise :class:`CollectiveError`; the group is unusable afterwards.
Every rank must issue the same collectives in the same order, as with
``torch.distributed`` itself.
"""

from __future__ import annotations

from typing import Any

from .collectives import Weights, all_gather, all_reduce_, broadcast_, check_species  # noqa: F401  (Weights: a type)
from .core import BUCKET_BYTES, DEFAULT_TIMEOUT_S, CollectiveError, Handle, SpeciesMismatchError, barrier, device, init  # noqa: F401  (the default timeout)
from .sharded_swarm import ShardedSwarm, gather_rows, read_manifest, shard_rows

__all__ = [
    "init",
    "device",
    "barrier",
    "all_reduce_",
    "broadcast_",
    "all_gather",
    "check_species",
    "Handle",
    "CollectiveError",
    "SpeciesMismatchError",
    "BUCKET_BYTES",
    "ShardedSwarm",
    "shard_rows",
    "gather_rows",
    "read_manifest",
    "ShardedPSO",
    "ShardedES",
]


def __getattr__(name: str) -> Any:
    # The sharded optimizers live in nytorch.algorithms.sharded, which imports
    # this package's modules: they are looked up on first use, so that either
    # import may come first.
    if name in ("ShardedPSO", "ShardedES"):
        from ..algorithms.sharded import ShardedES, ShardedPSO

        globals().update(ShardedPSO=ShardedPSO, ShardedES=ShardedES)
        return globals()[name]
    raise AttributeError(f"module 'nytorch.distributed' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | {"ShardedPSO", "ShardedES"})
