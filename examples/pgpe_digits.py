"""PGPE (symmetric sampling, ClipUp) trains an MLP classifier on scikit-learn's digits.

    python examples/pgpe_digits.py            # full run
    python examples/pgpe_digits.py --quick    # a few seconds

Symmetric Gaussian pairs around the mean network form a Swarm that is evaluated
in one vectorized forward; ranked fitness gives gradients for the mean (applied
with ClipUp: normalized steps, momentum, a speed limit) and for the
per-parameter standard deviations.
"""

from __future__ import annotations

import torch
from _digits import MLP, Timer, accuracy, load_digits, parser, save_plot, setup, swarm_loss
from nytorch.algorithms import PGPE


def main(argv=None) -> float:
    p = parser(__doc__.splitlines()[0], "pgpe_digits.png")
    p.add_argument("--popsize", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--stdev", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.15)
    args = p.parse_args(argv)
    popsize = args.popsize or (20 if args.quick else 50)
    steps = args.steps or (30 if args.quick else 300)
    setup(args)
    xtr, ytr, xte, yte = load_digits(args.seed)
    opt = PGPE(MLP(args.hidden), popsize, stdev_init=args.stdev, center_lr=args.lr, seed=args.seed)
    print(f"PGPE: population {popsize} x {opt.population.numel:,} parameters, {steps} steps")
    with Timer() as t:
        hist = opt.run(lambda s: swarm_loss(s, xtr, ytr), steps, progress_bar=not args.no_progress, desc="PGPE")
    acc = accuracy(opt.center, xte, yte)
    print(
        f"mean network: test accuracy {acc:.1%} "
        f"({t.seconds:.1f} s, {t.seconds / steps * 1e3:.1f} ms/step, {torch.get_num_threads()} threads)"
    )
    save_plot(hist, args.plot, f"PGPE on digits: population {popsize}, test acc {acc:.1%}")
    return acc


if __name__ == "__main__":
    main()
