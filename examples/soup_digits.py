"""A model soup on scikit-learn's digits: fine-tune several copies of one
network (a Swarm: each particle's Parameters are views of its row, so a plain
torch optimizer trains the row in place), then average them.

    python examples/soup_digits.py            # full run
    python examples/soup_digits.py --quick    # a few seconds

Prints the test accuracy of every ingredient, the uniform soup
(``swarm.mean()``), the greedy soup (ingredients kept only while the
held-out accuracy does not drop) and an EMA of the first ingredient's
training trajectory, and plots them.
"""

from __future__ import annotations

import nytorch as nyto
import torch
from _digits import MLP, Timer, accuracy, load_digits, loss, parser, setup
from nytorch.algorithms import EMA, greedy_soup, uniform_soup


def train(net, x, y, *, epochs: int, lr: float, seed: int, batch: int = 64, wd: float = 0.0, ema=None):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss(net, x[idx], y[idx]).backward()
            opt.step()
            if ema is not None:
                ema.update(net)
    return net


def main(argv=None) -> float:
    p = parser(__doc__.splitlines()[0], "soup_digits.png")
    p.add_argument("--ingredients", type=int, default=None)
    args = p.parse_args(argv)
    k = args.ingredients or (3 if args.quick else 8)
    pre_epochs, ft_epochs = (2, 1) if args.quick else (10, 5)
    setup(args)
    xtr, ytr, xte, yte = load_digits(args.seed)
    n_val = len(xtr) // 5  # held out from training for the greedy soup
    xval, yval, xfit, yfit = xtr[:n_val], ytr[:n_val], xtr[n_val:], ytr[n_val:]
    with Timer() as t:
        base = train(MLP(64), xfit, yfit, epochs=pre_epochs, lr=3e-3, seed=args.seed)
        swarm = nyto.Swarm(base, k)  # k copies of the pre-trained network, stacked
        ema = None
        for i in range(k):  # fine-tune each row in place with its own lr / seed / weight decay
            p_i = swarm[i]
            if i == 0:
                ema = EMA(p_i, decay=0.95)
            train(
                p_i,
                xfit,
                yfit,
                epochs=ft_epochs,
                lr=1e-3 * (1 + i % 3),
                seed=args.seed + 1 + i,
                wd=1e-4 * (i % 2),
                ema=ema if i == 0 else None,
            )
        soup = uniform_soup(swarm)
        greedy, kept = greedy_soup(swarm, lambda net: accuracy(net, xval, yval))
    accs = [accuracy(swarm[i], xte, yte) for i in range(k)]
    print(f"{k} fine-tuned ingredients, test accuracy: " + ", ".join(f"{a:.1%}" for a in accs))
    results = {
        "best ingredient": max(accs),
        "uniform soup": accuracy(soup, xte, yte),
        "greedy soup": accuracy(greedy, xte, yte),
        "EMA (ingredient 0)": accuracy(ema.average, xte, yte),
    }
    for name, a in results.items():
        print(f"{name:20} test accuracy {a:.1%}")
    print(f"greedy soup kept ingredients {sorted(kept)}; {t.seconds:.1f} s")
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 4))
            names = [f"ing. {i}" for i in range(k)] + list(results)[1:]
            vals = accs + list(results.values())[1:]
            ax.bar(names, vals, color=["#999"] * k + ["C0", "C1", "C2"])
            ax.set_ylim(min(vals) - 0.05, 1.0)
            ax.set_ylabel("test accuracy")
            ax.set_title("model soup on digits")
            plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
            fig.tight_layout()
            fig.savefig(args.plot, dpi=100)
            plt.close(fig)
            print(f"plot: {args.plot}")
        except ImportError:
            print("(no plot: matplotlib is not installed; pip install matplotlib)")
    return results["greedy soup"]


if __name__ == "__main__":
    main()
