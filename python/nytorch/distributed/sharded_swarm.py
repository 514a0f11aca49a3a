"""Sharded swarms in :mod:`nytorch.distributed`: :class:`ShardedSwarm` (each
rank holds a contiguous block of rows), with sharded checkpoints.

Rows are split as evenly as possible: rank ``r`` of ``w`` holds rows
``[r*n//w, (r+1)*n//w)``. A sharded checkpoint is a directory holding
``manifest.json`` (world size, rows, species hash, what was saved) and one
``shard-RRRRR-of-WWWWW.pt`` per rank; it resumes on the same world size.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from ..particle import NytoModule
from ..storage import flat_storage
from ..swarm import Swarm
from .collectives import all_reduce_
from .core import (
    all_gather_flat,
    barrier,
    check_signature,
    launch,
    particle_lines,
    particle_signature,
    require_group,
    signature_hash,
    small_device,
    wait_work,
)

MANIFEST = "manifest.json"
FORMAT = "nytorch.sharded/1"


# ---------------------------------------------------------------------------
# Sharded swarms
def shard_rows(n: int, world: int, rank: int) -> Tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank`` when ``n`` rows are split over ``world`` ranks."""
    return rank * n // world, (rank + 1) * n // world


class ShardedSwarm:
    """A swarm of ``n`` particles split across the ranks of ``group``: this
    rank holds rows ``rows = range(lo, hi)`` in ``local`` (a ``nytorch.Swarm``).

    Build it on every rank with the same arguments (and seed) as the
    single-process swarm it stands for; each rank keeps its rows::

        torch.manual_seed(0)
        sw = nd.ShardedSwarm(net, 1024, init="randn")    # rank r: rows r*512..
        sw.local                                         # this rank's Swarm
        full = sw.gather()                               # every row, every rank

    ``init`` is :class:`nytorch.Swarm`'s; the full swarm is built once and
    sliced, so every rank starts with exactly the rows of the one-process
    swarm (``ShardedSwarm.from_local`` wraps rows built some other way).
    """

    def __init__(
        self, net: NytoModule, n: int, init: Any = "clone", *, group: Optional[Any] = None, **swarm_kwargs: Any
    ) -> None:
        rank, world = require_group("ShardedSwarm", group)
        if not isinstance(n, int) or isinstance(n, bool) or n < world:
            raise ValueError(
                f"nytorch.distributed.ShardedSwarm: n must be an int >= the world size ({world}), got {n!r}"
            )
        full = Swarm(net, n, init=init, **swarm_kwargs)
        lo, hi = shard_rows(n, world, rank)
        self._setup(full[lo:hi].clone(), n, group)

    @classmethod
    def from_local(cls, local: Any, n: int, group: Optional[Any] = None) -> ShardedSwarm:
        """Wrap this rank's rows (a Swarm of ``hi - lo`` rows of an ``n``-row
        sharded swarm). Checks the species across ranks."""
        rank, world = require_group("ShardedSwarm.from_local", group)
        lo, hi = shard_rows(n, world, rank)
        if len(local) != hi - lo:
            raise ValueError(
                f"nytorch.distributed.ShardedSwarm.from_local: rank {rank} of {world} holds rows "
                f"[{lo}, {hi}) of {n}, but the local swarm has {len(local)} rows"
            )
        self = cls.__new__(cls)
        self._setup(local, n, group)
        return self

    def _setup(self, local: Any, n: int, group: Optional[Any]) -> None:
        self.rank, self.world = require_group("ShardedSwarm", group)
        self.group = group
        self.n = n
        self.lo, self.hi = shard_rows(n, self.world, self.rank)
        self.local = local
        check_signature(
            "ShardedSwarm",
            local.species,
            ("sharded", n, particle_signature(local.template)),
            lambda: particle_lines(local.template),
            group,
        )

    @property
    def rows(self) -> range:
        return range(self.lo, self.hi)

    @property
    def template(self) -> NytoModule:
        return self.local.template

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (
            f"ShardedSwarm({type(self.template).__name__} x {self.n}, rank {self.rank} of {self.world} "
            f"holds rows [{self.lo}, {self.hi}))"
        )

    # -- collectives ---------------------------------------------------------
    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-row tensor (``[hi - lo, ...]`` on every rank) into
        ``[n, ...]`` on every rank, in row order (e.g. fitness values)."""
        return gather_rows(t, self.n, self.group)

    def gather(self) -> Any:
        """The full swarm (every row, parameters only; buffers are copies of
        the template's), on every rank."""
        outs = [self.gather_rows(f) for f in self.local.flats]
        return self.local.__class__.from_flats(self.template, outs)

    def mean(self) -> NytoModule:
        """The mean of all ``n`` particles (a new particle, on every rank)."""
        sums = [f.sum(0) for f in self.local.flats]
        out = self.template.clone()
        with torch.no_grad():
            for dst, s in zip(flat_storage(out).flats, sums):
                dst.copy_(s)
        all_reduce_(out, op="sum", group=self.group)
        with torch.no_grad():
            for dst in flat_storage(out).flats:
                dst.div_(self.n)
        return out

    def diversity(self) -> float:
        """Mean Euclidean distance of all particles to their centroid (like
        ``Swarm.diversity``; the sums run in another order: not bitwise)."""
        sq = None
        for f in self.local.flats:
            total = f.sum(0, dtype=torch.float64)
            _all_reduce(total, self.group, "ShardedSwarm.diversity")
            c = (total / self.n).to(f.dtype)
            d = (f - c).pow(2).sum(1).to(torch.float64)
            sq = d if sq is None else sq + d.to(sq.device)
        s = torch.tensor(
            [float(sq.sqrt().sum()) if sq is not None else 0.0], dtype=torch.float64, device=small_device(self.group)
        )
        _all_reduce(s, self.group, "ShardedSwarm.diversity")
        return float(s) / self.n

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"swarm": self.local.state_dict(), "rows": (self.lo, self.hi), "n": self.n}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if tuple(state["rows"]) != (self.lo, self.hi) or state["n"] != self.n:
            raise ValueError(
                f"ShardedSwarm.load_state_dict: the state holds rows {tuple(state['rows'])} of "
                f"{state['n']}, this rank holds [{self.lo}, {self.hi}) of {self.n}"
            )
        self.local.load_state_dict(state["swarm"])

    def save(self, path: str) -> None:
        """Write this rank's shard and (rank 0) the manifest into directory ``path``."""
        save_sharded(path, self.state_dict(), "ShardedSwarm", self.local.species, self._sig(), self.n, self.group)

    def load(self, path: str) -> None:
        """Load this rank's shard of a checkpoint written by ``save`` with the same world size."""
        self.load_state_dict(load_sharded(path, "ShardedSwarm", self._sig(), self.n, self.group))

    def _sig(self) -> Tuple:
        return ("sharded", self.n, particle_signature(self.template))


# ---------------------------------------------------------------------------
# Small collectives
def _all_reduce(t: torch.Tensor, group: Optional[Any], what: str) -> None:
    wait_work(what, launch(what, lambda: dist.all_reduce(t, group=group, async_op=True)), None)


def gather_rows(t: torch.Tensor, n: int, group: Optional[Any], what: str = "gather_rows") -> torch.Tensor:
    """Rank r's ``[hi_r - lo_r, ...]`` tensors concatenated into ``[n, ...]`` on
    every rank (padded to equal shards for the all-gather)."""
    rank, world = require_group(what, group)
    lo, hi = shard_rows(n, world, rank)
    if t.shape[0] != hi - lo:
        raise ValueError(f"nytorch.distributed.{what}: rank {rank} holds {hi - lo} rows, got {t.shape[0]}")
    m = max(shard_rows(n, world, r)[1] - shard_rows(n, world, r)[0] for r in range(world))
    dev = t.device if "nccl" not in str(dist.get_backend(group)).lower() else small_device(group)
    pad = torch.zeros((m,) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
    pad[: hi - lo].copy_(t)
    out = torch.empty((world,) + tuple(pad.shape), dtype=t.dtype, device=dev)
    wait_work(what, launch(what, lambda: all_gather_flat(out, pad, group, True)), None)
    parts = [out[r, : shard_rows(n, world, r)[1] - shard_rows(n, world, r)[0]] for r in range(world)]
    return torch.cat(parts).to(t.device)


def owner_of(row: int, n: int, world: int) -> int:
    """The group rank holding ``row``."""
    for r in range(world):
        lo, hi = shard_rows(n, world, r)
        if lo <= row < hi:
            return r
    raise IndexError(f"row {row} out of range for {n} rows")


# ---------------------------------------------------------------------------
# Checkpoint files
def shard_file(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}.pt"


def save_sharded(
    path: str, state: Dict[str, Any], kind: str, species: Any, sig: Tuple, n: int, group: Optional[Any]
) -> None:
    """Each rank writes its shard, rank 0 the manifest; returns after all did."""
    rank, world = require_group(f"{kind}.save", group)
    os.makedirs(path, exist_ok=True)
    torch.save(state, os.path.join(path, shard_file(rank, world)))
    if rank == 0:
        manifest = {
            "format": FORMAT,
            "kind": kind,
            "world_size": world,
            "n": n,
            "rows": [list(shard_rows(n, world, r)) for r in range(world)],
            "signature": signature_hash(sig),
            "files": [shard_file(r, world) for r in range(world)],
        }
        tmp = os.path.join(path, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, os.path.join(path, MANIFEST))
    barrier(group)


def read_manifest(path: str) -> Dict[str, Any]:
    file = os.path.join(path, MANIFEST)
    if not os.path.exists(file):
        raise FileNotFoundError(f"nytorch.distributed: {path!r} is not a sharded checkpoint (no {MANIFEST})")
    with open(file) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"nytorch.distributed: {file} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_sharded(path: str, kind: str, sig: Tuple, n: int, group: Optional[Any]) -> Dict[str, Any]:
    """This rank's shard state, after checking the manifest (every rank checks
    the same file, so every rank raises the same error)."""
    rank, world = require_group(f"{kind}.load", group)
    m = read_manifest(path)
    if m["kind"] != kind:
        raise ValueError(f"nytorch.distributed.{kind}.load: {path!r} holds a {m['kind']} checkpoint")
    if m["world_size"] != world:
        raise ValueError(
            f"nytorch.distributed.{kind}.load: the checkpoint {path!r} was written by {m['world_size']} ranks "
            f"but this group has {world}; resharding is not implemented: resume with "
            f"--nproc-per-node={m['world_size']} (same world size)"
        )
    if m["n"] != n or m["signature"] != signature_hash(sig):
        raise ValueError(
            f"nytorch.distributed.{kind}.load: the checkpoint {path!r} holds another swarm "
            f"({m['n']} particles of another structure or size than this one's {n})"
        )
    return torch.load(os.path.join(path, shard_file(rank, world)), weights_only=False)


__all__ = ["ShardedSwarm", "shard_rows", "gather_rows", "owner_of", "save_sharded", "load_sharded", "read_manifest"]
