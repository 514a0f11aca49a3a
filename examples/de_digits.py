"""Differential evolution trains an MLP classifier on scikit-learn's digits.

    python examples/de_digits.py            # full run
    python examples/de_digits.py --quick    # a few seconds

A Swarm of MLPs (random initializations) evolves by DE/rand/1/bin: every row
gets a trial x_a + F (x_b - x_c) crossed over with it (one fused pass), the
trials are evaluated in one vectorized forward and replace rows they beat.
"""

from __future__ import annotations

import nytorch as nyto
import torch
from _digits import MLP, Timer, accuracy, load_digits, parser, save_plot, setup, swarm_loss
from nytorch.algorithms import DE


def main(argv=None) -> float:
    p = parser(__doc__.splitlines()[0], "de_digits.png")
    p.add_argument("--popsize", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--F", type=float, default=0.5)
    p.add_argument("--CR", type=float, default=0.9)
    args = p.parse_args(argv)
    popsize = args.popsize or (20 if args.quick else 64)
    steps = args.steps or (40 if args.quick else 1000)
    setup(args)
    xtr, ytr, xte, yte = load_digits(args.seed)
    swarm = nyto.Swarm(MLP(args.hidden), popsize, init=lambda i: MLP(args.hidden))
    de = DE(swarm, F=args.F, CR=args.CR, seed=args.seed)
    print(f"DE: population {popsize} x {swarm.numel:,} parameters, {steps} steps")
    with Timer() as t:
        hist = de.run(lambda s: swarm_loss(s, xtr, ytr), steps, progress_bar=not args.no_progress, desc="DE")
    acc = accuracy(de.best, xte, yte)
    print(
        f"best network: test accuracy {acc:.1%} "
        f"({t.seconds:.1f} s, {t.seconds / steps * 1e3:.1f} ms/step, {torch.get_num_threads()} threads)"
    )
    save_plot(hist, args.plot, f"DE on digits: population {popsize}, test acc {acc:.1%}")
    return acc


if __name__ == "__main__":
    main()
