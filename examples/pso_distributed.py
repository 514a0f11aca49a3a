"""Particle swarm optimization of an MLP on scikit-learn's digits, with the swarm sharded across ranks.

    torchrun --standalone --nproc-per-node=2 examples/pso_distributed.py          # 64 particles, 2 ranks
    torchrun --standalone --nproc-per-node=2 examples/pso_distributed.py --quick  # a few seconds
    torchrun --standalone --nproc-per-node=2 examples/pso_distributed.py --quick --check
    python examples/pso_distributed.py --quick                                    # 1 rank

Each rank holds its rows of the swarm (``nytorch.distributed.ShardedSwarm``)
and evaluates only those particles (one vmapped forward over its rows). A
step of ``ShardedPSO``: one all-gather of the fitness values, the global best
found exactly as in one process, one broadcast of the winning particle when it
improved, then the fused PSO update of the local rows. With the same seed the
run follows the single-process ``nytorch.algorithms.PSO`` run bitwise
(``--check`` reruns that on rank 0 and compares).

``--save DIR`` writes a sharded checkpoint at the end (one file per rank + a
manifest); ``--resume DIR`` continues that run up to ``--steps`` steps in all
(same number of ranks; another number is a clear error)::

    torchrun --standalone --nproc-per-node=2 examples/pso_distributed.py --quick --steps 20 --save ck
    torchrun --standalone --nproc-per-node=2 examples/pso_distributed.py --quick --resume ck
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nytorch as nyto  # noqa: E402
import nytorch.distributed as nd  # noqa: E402
from _digits import MLP, accuracy, load_digits, swarm_loss  # noqa: E402

W0, W1, C1, C2, VMAX = 0.9, 0.4, 1.5, 1.5, 0.5


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 particles, 30 steps")
    p.add_argument("--particles", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps in all (a resumed run continues up to it)")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="compare with the single-process PSO run (rank 0)")
    p.add_argument("--save", help="write a sharded checkpoint to this directory at the end")
    p.add_argument("--resume", help="continue from a sharded checkpoint directory")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a hung rank ends the job")
    args = p.parse_args(argv)
    n = args.particles or (16 if args.quick else 64)
    steps = args.steps or (30 if args.quick else 1500)

    rank, world = nd.init(timeout=args.timeout)
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = load_digits(args.seed)

    def build():
        torch.manual_seed(args.seed)  # the same swarm on every rank; each keeps its rows
        net = MLP(args.hidden)
        return net, (lambda i: MLP(args.hidden))

    def inertia(t: int) -> float:
        return W0 - (W0 - W1) * t / steps

    net, init = build()
    sw = nd.ShardedSwarm(net, n, init=init)
    pso = nd.ShardedPSO(sw, inertia=inertia, cognitive=C1, social=C2, vmax=VMAX, seed=args.seed)
    if args.resume:
        pso.load(args.resume)
    if rank == 0:
        print(
            f"sharded PSO: {n} particles x {sw.local.numel:,} parameters on {world} rank(s) "
            f"(rank 0 holds rows [{sw.lo}, {sw.hi})), steps {pso.steps_done}..{steps}"
        )
    t0 = time.perf_counter()
    every = max(1, steps // 10)
    todo = max(0, steps - pso.steps_done)
    for _ in range(todo):
        local = pso.ask()  # this rank's particles
        pso.tell(swarm_loss(local, xtr, ytr))  # their fitness; the rest is collective
        rec = pso.history.records[-1]
        if rank == 0 and (pso.steps_done % every == 0):
            print(
                f"step {pso.steps_done:5d}: best loss {rec['best']:.4f}, mean {rec['mean']:.4f}, "
                f"diversity {rec['diversity']:.3f}"
            )
    seconds = time.perf_counter() - t0
    acc = accuracy(pso.best, xte, yte)
    if rank == 0:
        print(
            f"best train loss {pso.best_fitness:.4f}; test accuracy {acc:.1%} "
            f"({seconds:.1f} s, {seconds / max(todo, 1) * 1e3:.1f} ms/step)"
        )
    if args.save:
        pso.save(args.save)
        if rank == 0:
            print(f"checkpoint: {args.save}")
    if args.check and not args.resume:
        full = sw.gather()
        if rank == 0:
            from nytorch.algorithms import PSO

            net1, init1 = build()
            swarm = nyto.Swarm(net1, n, init=init1)
            ref = PSO(swarm, inertia=inertia, cognitive=C1, social=C2, vmax=VMAX, seed=args.seed, track_diversity=False)
            for _ in range(steps):
                ref.tell(swarm_loss(ref.ask(), xtr, ytr))
            same = all(torch.equal(a, b) for a, b in zip(full.flats, swarm.flats))
            print(
                f"check: same positions as the single-process PSO run: {same} (bitwise), "
                f"best fitness {ref.best_fitness:.6f} vs {pso.best_fitness:.6f}"
            )
            if not same:
                raise SystemExit("check failed")
    nd.barrier()
    return acc


if __name__ == "__main__":
    main()
