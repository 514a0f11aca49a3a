"""An evolution strategy trains an MLP classifier on scikit-learn's digits.

    python examples/es_digits.py            # full run: >= 85% test accuracy
    python examples/es_digits.py --quick    # a few seconds

Antithetic Gaussian samples around the mean network form a Swarm that is
evaluated in one vectorized forward; rank-shaped fitness gives a gradient
estimate that Adam applies to the mean.
"""

from __future__ import annotations

import torch
from _digits import MLP, Timer, accuracy, load_digits, parser, save_plot, setup, swarm_loss
from nytorch.algorithms import ES


def main(argv=None) -> float:
    p = parser(__doc__.splitlines()[0], "es_digits.png")
    p.add_argument("--popsize", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    args = p.parse_args(argv)
    popsize = args.popsize or (20 if args.quick else 50)
    steps = args.steps or (30 if args.quick else 200)
    setup(args)
    xtr, ytr, xte, yte = load_digits(args.seed)
    es = ES(MLP(args.hidden), popsize, sigma=args.sigma, lr=args.lr, optimizer=args.optimizer, seed=args.seed)
    print(f"ES: population {popsize} x {es.population.numel:,} parameters, {steps} steps, {args.optimizer}")
    with Timer() as t:
        hist = es.run(lambda s: swarm_loss(s, xtr, ytr), steps, progress_bar=not args.no_progress, desc="ES")
    acc = accuracy(es.center, xte, yte)
    print(
        f"mean network: test accuracy {acc:.1%} "
        f"({t.seconds:.1f} s, {t.seconds / steps * 1e3:.1f} ms/step, {torch.get_num_threads()} threads)"
    )
    save_plot(hist, args.plot, f"ES on digits: population {popsize}, test acc {acc:.1%}")
    return acc


if __name__ == "__main__":
    main()
