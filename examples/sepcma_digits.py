"""sep-CMA-ES (diagonal covariance) trains an MLP classifier on scikit-learn's digits.

    python examples/sepcma_digits.py            # full run
    python examples/sepcma_digits.py --quick    # a few seconds

Samples center + sigma * sqrt(C) * z form a Swarm evaluated in one vectorized
forward; weighted recombination of the best half moves the mean, cumulative
step-size adaptation sets sigma and the rank-one / rank-mu updates the
diagonal covariance C.
"""

from __future__ import annotations

import torch
from _digits import MLP, Timer, accuracy, load_digits, parser, save_plot, setup, swarm_loss
from nytorch.algorithms import SepCMAES


def main(argv=None) -> float:
    p = parser(__doc__.splitlines()[0], "sepcma_digits.png")
    p.add_argument("--popsize", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--sigma", type=float, default=0.05)
    args = p.parse_args(argv)
    popsize = args.popsize or (20 if args.quick else 50)
    steps = args.steps or (30 if args.quick else 300)
    setup(args)
    xtr, ytr, xte, yte = load_digits(args.seed)
    opt = SepCMAES(MLP(args.hidden), popsize, sigma_init=args.sigma, seed=args.seed)
    print(f"SepCMAES: population {popsize} x {opt.population.numel:,} parameters, {steps} steps")
    with Timer() as t:
        hist = opt.run(lambda s: swarm_loss(s, xtr, ytr), steps, progress_bar=not args.no_progress, desc="SepCMAES")
    acc = accuracy(opt.center, xte, yte)
    print(
        f"mean network: test accuracy {acc:.1%} "
        f"({t.seconds:.1f} s, {t.seconds / steps * 1e3:.1f} ms/step, {torch.get_num_threads()} threads)"
    )
    save_plot(hist, args.plot, f"SepCMAES on digits: population {popsize}, test acc {acc:.1%}")
    return acc


if __name__ == "__main__":
    main()
