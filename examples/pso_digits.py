"""Particle swarm optimization trains an MLP classifier on scikit-learn's digits.

    python examples/pso_digits.py            # full run: >= 80% test accuracy
    python examples/pso_digits.py --quick    # a few seconds

Every step evaluates all particles at once (``swarm(x)``: one vmapped forward
over the stacked parameters) and moves them with one fused PSO update.
"""

from __future__ import annotations

import nytorch as nyto
import torch
from _digits import MLP, Timer, accuracy, load_digits, parser, save_plot, setup, swarm_loss
from nytorch.algorithms import PSO


def main(argv=None) -> float:
    p = parser(__doc__.splitlines()[0], "pso_digits.png")
    p.add_argument("--particles", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--topology", choices=("global", "ring"), default="global")
    args = p.parse_args(argv)
    n = args.particles or (16 if args.quick else 64)
    steps = args.steps or (30 if args.quick else 500)
    setup(args)
    xtr, ytr, xte, yte = load_digits(args.seed)
    net = MLP(args.hidden)
    swarm = nyto.Swarm(net, n, init=lambda i: MLP(args.hidden))  # freshly initialized networks
    pso = PSO(
        swarm,
        inertia=lambda t: 0.9 - 0.5 * t / steps,
        cognitive=1.5,
        social=1.5,
        vmax=0.5,
        topology=args.topology,
        seed=args.seed,
    )
    print(f"PSO: {n} particles x {swarm.numel:,} parameters, {steps} steps, {args.topology} topology")
    with Timer() as t:
        hist = pso.run(lambda s: swarm_loss(s, xtr, ytr), steps, progress_bar=not args.no_progress, desc="PSO")
    best = pso.best
    acc = accuracy(best, xte, yte)
    print(
        f"best train loss {pso.best_fitness:.4f}; test accuracy {acc:.1%} "
        f"({t.seconds:.1f} s, {t.seconds / steps * 1e3:.1f} ms/step, {torch.get_num_threads()} threads)"
    )
    save_plot(hist, args.plot, f"PSO on digits: {n} particles, test acc {acc:.1%}")
    return acc


if __name__ == "__main__":
    main()
